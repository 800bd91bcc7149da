"""Pytest fixtures for the cvmgate integration tests: the binary, a test certificate, backends and gateways."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers  # noqa: E402

ECHO_HOSTS = {"app-i1": "127.0.0.2", "app-i2": "127.0.0.3"}


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session")
def cvmgate_bin():
    path = os.environ.get("CVMGATE_BIN")
    if not path:
        pytest.fail("CVMGATE_BIN is not set: point it at the cvmgate binary under test "
                    "(e.g. CVMGATE_BIN=build/tools/cvmgate)", pytrace=False)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail("CVMGATE_BIN=%s is not an executable file" % path, pytrace=False)
    return os.path.abspath(path)


@pytest.fixture(scope="session")
def ctl_bin(cvmgate_bin):
    path = os.environ.get("CVMGATECTL_BIN") or os.path.join(os.path.dirname(cvmgate_bin), "cvmgatectl")
    if not os.access(path, os.X_OK):
        pytest.fail("cvmgatectl not found at %s (set CVMGATECTL_BIN)" % path, pytrace=False)
    return path


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory):
    """(cert.pem, key.pem, DER bytes) of the backends' self-signed certificate."""
    return peers.make_cert(str(tmp_path_factory.mktemp("cert")))


class Backends:
    """Echo and HTTPS backends for app 'app' on 127.0.0.2 (app-i1) and 127.0.0.3 (app-i2)."""

    def __init__(self, cert, key, der):
        self.cert_der = der
        hosts = list(ECHO_HOSTS.values())
        self.port = peers.free_port_on_all(hosts)
        self.echo = {name: peers.Backend(ip, self.port, name, cert, key, "echo")
                     for name, ip in ECHO_HOSTS.items()}
        self.https_port = peers.free_port_on_all(hosts)
        self.https = {name: peers.Backend(ip, self.https_port, name, cert, key, "https")
                      for name, ip in ECHO_HOSTS.items()}

    def counts(self):
        return {name: b.connections() for name, b in self.echo.items()}

    def close(self):
        for b in list(self.echo.values()) + list(self.https.values()):
            b.close()


@pytest.fixture(scope="session")
def backends(tls_cert):
    b = Backends(*tls_cert)
    yield b
    b.close()


@pytest.fixture
def make_gateway(cvmgate_bin, tmp_path, request):
    """Factory: make_gateway(state=None, args=[...], listen=None, ...) -> started Gateway."""
    made = []

    def make(**kw):
        workdir = tmp_path / ("gw%d" % len(made))
        workdir.mkdir()
        gw = peers.Gateway(cvmgate_bin, str(workdir), **kw)
        made.append(gw)
        return gw.start()

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for gw in made:
        gw.kill()
        if failed:
            print("---- cvmgate %s stderr ----\n%s" % (" ".join(gw.command()), gw.log()))


@pytest.fixture
def gateway(make_gateway, backends):
    """A cvmgate routing app 'app' to the two echo backends, default flags."""
    return make_gateway()
