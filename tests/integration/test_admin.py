"""Integration tests of the admin API and cvmgatectl: registration, list, explain, metrics, persistence, auth."""

import json
import os
import re
import signal
import stat
import subprocess

import pytest

import peers
from peers import sni_name
from test_passthrough import assert_echo, expect_closed, open_relay


def ctl(ctl_bin, gw, *args, admin=None, expect=0):
    admin = admin or "unix:" + os.path.join(gw.workdir, "admin.sock")
    p = subprocess.run([ctl_bin, "--admin", admin] + list(args), capture_output=True, text=True, timeout=30)
    assert p.returncode == expect, "cvmgatectl %s -> %d\nstdout: %s\nstderr: %s" % (
        " ".join(args), p.returncode, p.stdout, p.stderr)
    return p.stdout + p.stderr


@pytest.fixture
def empty_gateway(make_gateway):
    return make_gateway(state={"version": 1})


def test_register_static_instance_then_route_to_it(ctl_bin, empty_gateway, backends):
    gw = empty_gateway
    expect_closed(gw, "closed_unknown_app", sni=sni_name("app", backends.port))
    out = ctl(ctl_bin, gw, "register", "--app", "app", "--instance", "app-i1", "--address", "127.0.0.2", "--ports", peers.TEST_PORTS)
    assert "registered instance app-i1 of app app at 127.0.0.2, ports 1024-65535" in out, out
    c, inst = open_relay(gw, backends)
    payload = os.urandom(64 << 10)
    assert_echo(c.exchange(payload), payload)
    c.close()
    assert inst == "app-i1"
    again = ctl(ctl_bin, gw, "register", "--app", "app", "--instance", "app-i1", "--address", "127.0.0.2", "--ports", peers.TEST_PORTS)
    assert "already registered" in again, again


def test_list_explain_and_json(ctl_bin, empty_gateway, backends):
    gw = empty_gateway
    ctl(ctl_bin, gw, "register", "--app", "app", "--instance", "app-i1", "--address", "127.0.0.2", "--ports", peers.TEST_PORTS)
    ctl(ctl_bin, gw, "register", "--app", "app", "--instance", "app-i2", "--address", "127.0.0.3", "--ports", peers.TEST_PORTS)
    table = ctl(ctl_bin, gw, "list")
    lines = table.splitlines()
    assert lines[0].split() == ["APP", "INSTANCE", "IP", "PORTS", "HANDSHAKE", "HEALTH"], table
    assert lines[1].split() == ["app", "app-i1", "127.0.0.2", "1024-65535", "static", "healthy"], table
    listed = json.loads(ctl(ctl_bin, gw, "--json", "list"))
    assert [i["instance"] for i in listed["instances"]] == ["app-i1", "app-i2"]
    explained = ctl(ctl_bin, gw, "explain", sni_name("app", backends.port))
    assert "verdict: passthrough to one of 2 healthy instances" in explained, explained
    assert "127.0.0.3:%d" % backends.port in explained, explained
    pinned = ctl(ctl_bin, gw, "explain", sni_name("app-i2", backends.port))
    assert "pinned" in pinned and "app-i1" not in pinned, pinned
    assert "refused: no app or instance 'nope'" in ctl(ctl_bin, gw, "explain", sni_name("nope", 443))
    assert "unknown_domain" in ctl(ctl_bin, gw, "explain", "app-443s.other.test")
    assert "no --tls-cert for example.test" in ctl(ctl_bin, gw, "explain", "app-8080.example.test")


def test_deregister_stops_routing(ctl_bin, empty_gateway, backends):
    gw = empty_gateway
    ctl(ctl_bin, gw, "register", "--app", "app", "--instance", "app-i1", "--address", "127.0.0.2", "--ports", peers.TEST_PORTS)
    live, _ = open_relay(gw, backends)
    out = ctl(ctl_bin, gw, "deregister", "--instance", "app-i1")
    assert "deregistered instance app-i1 of app app" in out, out
    expect_closed(gw, "closed_unknown_app", sni=sni_name("app", backends.port))
    assert_echo(live.exchange(b"live relays are not cut"), b"live relays are not cut")
    live.close()
    err = ctl(ctl_bin, gw, "deregister", "--instance", "app-i1", expect=1)
    assert "no instance 'app-i1'" in err and "HTTP 404" in err, err


def test_bad_input_gets_a_clear_error_and_changes_nothing(ctl_bin, empty_gateway):
    gw = empty_gateway
    ctl(ctl_bin, gw, "register", "--app", "app", "--instance", "app-i1", "--address", "127.0.0.2", "--ports", peers.TEST_PORTS)
    before = open(gw.state_path).read()
    cases = [
        (["register", "--app", "app", "--instance", "x", "--address", "not-an-ip", "--ports", "80"], 1,
         "not an IPv4 or IPv6"),
        (["register", "--app", "app", "--instance", "x", "--public-key", "short"], 1, None),
        (["register", "--app", "Bad_App", "--instance", "x", "--address", "127.0.0.9", "--ports", "80"], 1, "app id"),
        (["register", "--app", "other", "--instance", "app-i1", "--address", "127.0.0.2", "--ports", "80"], 1,
         "belongs to app"),
        (["register", "--app", "evil", "--instance", "app", "--address", "127.0.0.2", "--ports", "80"], 1,
         "instance id 'app' is an app's id"),
        (["register", "--app", "app", "--instance", "y", "--address", "10.0.0.1", "--ports", "80"], 1,
         "the gateway's own address"),
        (["register", "--app", "app", "--instance", "y", "--address", "0.0.0.0", "--ports", "80"], 1, "unspecified"),
        (["register", "--app", "app", "--instance", "y", "--address", "127.0.0.2", "--ports", "80-"], 1, "not a port"),
        (["register", "--app", "app", "--instance", "y", "--address", "127.0.0.2"], 2, "give --ports"),
        (["register", "--app", "app"], 2, "give --app, --instance"),
        (["register", "--app", "a", "--instance", "b", "--address", "1.2.3.4", "--ports", "1", "--bogus", "1"], 2,
         "unknown option"),
        (["frobnicate"], 2, "unknown verb"),
        (["explain"], 2, "exactly one host name"),
    ]
    for args, code, message in cases:
        out = ctl(ctl_bin, gw, *args, expect=code)
        if message:
            assert message in out, (args, out)
    # A CVM key without a WireGuard interface is refused with the reason.
    key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
    out = ctl(ctl_bin, gw, "register", "--app", "app", "--instance", "cvm", "--public-key", key, expect=1)
    assert "no WireGuard interface" in out, out
    assert open(gw.state_path).read() == before


def test_registrations_survive_kill_9(ctl_bin, make_gateway, backends):
    gw = make_gateway(state={"version": 1})
    ctl(ctl_bin, gw, "register", "--app", "app", "--instance", "app-i2", "--address", "127.0.0.3", "--ports", peers.TEST_PORTS)
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    again = peers.Gateway(gw.binary, gw.workdir, listen=gw.listen, state=None)
    again.write_state = lambda state: None  # keep the file the killed gateway wrote
    again.start()
    try:
        assert "app-i2" in ctl(ctl_bin, again, "list")
        c, inst = open_relay(again, backends)
        c.close()
        assert inst == "app-i2"
    finally:
        again.kill()


def test_help_per_verb(ctl_bin):
    for verb, words in [("register", "--public-key"), ("deregister", "--instance"), ("list", "health"),
                        ("explain", "HOST"), ("metrics", "Prometheus"), ("apps", "overrides"),
                        ("app-set", "--max-connections N|default")]:
        p = subprocess.run([ctl_bin, verb, "--help"], capture_output=True, text=True, timeout=10)
        assert p.returncode == 0 and words in p.stdout, (verb, p.stdout)


def test_admin_socket_is_owner_only_and_metrics_are_prometheus(ctl_bin, empty_gateway, backends):
    gw = empty_gateway
    mode = stat.S_IMODE(os.stat(os.path.join(gw.workdir, "admin.sock")).st_mode)
    assert mode == 0o600, oct(mode)
    expect_closed(gw, "closed_unknown_app", sni=sni_name("app", backends.port))
    metrics = ctl(ctl_bin, gw, "metrics")
    assert "# TYPE cvmgate_accepted_total counter" in metrics, metrics
    assert "cvmgate_closed_unknown_app_total 1" in metrics, metrics
    assert "cvmgate_instances 0" in metrics, metrics


def test_metrics_parse_as_prometheus_text(ctl_bin, empty_gateway, backends):
    """What a Prometheus server scrapes, read by Prometheus' own parser: every family cvmgate_*, with
    HELP and TYPE, counters named *_total, workers as a label."""
    from prometheus_client.parser import text_string_to_metric_families
    gw = empty_gateway
    expect_closed(gw, "closed_unknown_app", sni=sni_name("app", backends.port))
    text = ctl(ctl_bin, gw, "metrics")
    families = list(text_string_to_metric_families(text))
    # The parser names a counter's samples *_total whatever the text says: the text itself is checked.
    counters = re.findall(r"^# TYPE (\S+) counter$", text, re.M)
    assert counters and all(name.endswith("_total") for name in counters), counters
    by_name = {f.name: f for f in families}
    assert len(by_name) == len(families), "a family is exposed twice"
    assert len(families) >= 60, [f.name for f in families]
    for f in families:
        assert f.name.startswith("cvmgate_"), f.name
        assert f.documentation, "%s has no HELP" % f.name
        assert f.type in ("counter", "gauge", "histogram"), (f.name, f.type)
        if f.type == "counter":
            assert all(sample.value >= 0 for sample in f.samples), f
        if f.type == "histogram":
            buckets = [s for s in f.samples if s.name.endswith("_bucket")]
            counts = [s.value for s in buckets]
            assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf", f
            count = [s.value for s in f.samples if s.name.endswith("_count")]
            assert count == [counts[-1]], f
    assert by_name["cvmgate_closed_unknown_app"].samples[0].value == 1
    reasons = {s.labels["reason"]: s.value for s in by_name["cvmgate_connections_closed"].samples}
    assert reasons["unknown_app"] == 1 and reasons["done"] == 0 and "no_sni" in reasons, reasons
    durations = {s.name: s.value for s in by_name["cvmgate_connection_duration_seconds"].samples
                 if not s.name.endswith("_bucket")}
    assert durations["cvmgate_connection_duration_seconds_count"] == 1, durations
    assert set(by_name) >= {"cvmgate_connect_seconds", "cvmgate_handshake_seconds"}
    assert by_name["cvmgate_accepted"].samples[0].value >= 1
    workers = by_name["cvmgate_worker_live_connections"].samples
    assert sorted(s.labels["worker"] for s in workers) == ["0", "1"], workers


def test_tcp_admin_needs_the_bearer_token(ctl_bin, make_gateway, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    port = peers.free_port("127.0.0.1")
    admin = "tcp:127.0.0.1:%d" % port
    gw = make_gateway(state={"version": 1}, args=["--admin", admin, "--admin-token-file", str(token)])
    curl = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                           "http://127.0.0.1:%d/v1/list" % port], capture_output=True, text=True, timeout=10)
    assert curl.stdout == "401", curl
    err = ctl(ctl_bin, gw, "list", admin=admin, expect=1)
    assert "401" in err, err
    p = subprocess.run([ctl_bin, "--admin", admin, "--token-file", str(token), "list"], capture_output=True,
                       text=True, timeout=10)
    assert p.returncode == 0 and "0 instances" in p.stdout, p


def test_tcp_admin_without_token_file_refuses_to_start(cvmgate_bin, tmp_path):
    p = subprocess.run([cvmgate_bin, "--base-domain", "example.test", "--listen", "127.0.0.1:0",
                        "--state", str(tmp_path / "s.json"), "--admin", "tcp:127.0.0.1:0"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 2 and "needs --admin-token-file" in p.stderr, p
    p = subprocess.run([cvmgate_bin, "--base-domain", "example.test", "--listen", "127.0.0.1:0",
                        "--state", str(tmp_path / "s.json"), "--admin", "tcp:0.0.0.0:9",
                        "--admin-token-file", "/dev/null"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 2 and "loopback only" in p.stderr, p
