"""The capability probe against the kernel it runs on: `cvmgate probe` and the daemon's start-up choices.

On this host (no tls module, no kernel WireGuard) it must report both absent with their fallbacks; in the
kernel suite (Debian's stock kernels under kernel-lab, CVMGATE_TEST_WG=kernel) both present."""

import json
import os
import subprocess



KERNEL_SUITE = os.environ.get("CVMGATE_TEST_WG") == "kernel"


def probe(cvmgate_bin, *args):
    p = subprocess.run([cvmgate_bin, "probe"] + list(args), capture_output=True, text=True, timeout=60)
    print(p.stdout)  # kept in the test log: the probe's view of this kernel
    return p


def line(report, feature):
    found = [l for l in report["lines"] if l["feature"] == feature]
    assert found, "no line %r in %s" % (feature, [l["feature"] for l in report["lines"]])
    return found[0]


def test_probe_json_matches_this_kernel(cvmgate_bin):
    p = probe(cvmgate_bin, "--json", "--wg-interface", "lo")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["ok"] is True
    assert report["io_uring"] and all(report["ring_ops"].values()), report["ring_ops"]
    assert report["splice_tcp"] and report["uses"]["splice"]
    # The probe's TCP_ULP attempt loads the tls module where the kernel has one.
    with open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
        kernel_has_tls = "tls" in f.read().split()
    kernel_has_wireguard = os.path.isdir("/sys/module/wireguard")
    if KERNEL_SUITE:
        assert kernel_has_tls and kernel_has_wireguard, "the kernel suite runs on kernels with tls and wireguard"
    assert report["ktls_ulp"] is kernel_has_tls
    assert report["uses"]["ktls"] is kernel_has_tls
    assert report["wireguard_netlink"] is kernel_has_wireguard
    if kernel_has_tls:
        for version in ("1.2", "1.3"):
            for cipher in ("AES-128-GCM", "AES-256-GCM"):
                k = [x for x in report["ktls"] if x["version"] == version and x["cipher"] == cipher]
                assert k and k[0]["tx"] and k[0]["rx"], (version, cipher, report["ktls"])
        assert line(report, "kTLS")["verdict"] == "ok"
    else:
        ktls = line(report, "kTLS")
        assert ktls["verdict"] == "fallback"
        assert ktls["choice"] == "userspace TLS (SSL_read/SSL_write), counted as ktls_fallback_no_kernel_tls"
    wg = line(report, "WireGuard")
    if kernel_has_wireguard:
        assert report["uses"]["wireguard"] == "netlink" and wg["verdict"] == "ok"
    else:
        assert report["wireguard_go"], "tools/setup installs wireguard-go"
        assert report["uses"]["wireguard"] == "uapi" and wg["choice"] == "wireguard-go over its UAPI socket"
    assert "net.ipv4.conf.lo.rp_filter" in report["sysctls"], "per-interface sysctls use --wg-interface"


def test_probe_table_and_usage(cvmgate_bin):
    p = probe(cvmgate_bin)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("FEATURE"), p.stdout
    assert "all required features present" in p.stdout
    assert "kTLS" in p.stdout and "splice on TCP" in p.stdout and "sysctl fs.pipe-user-pages-soft" in p.stdout
    bad = probe(cvmgate_bin, "--bogus")
    assert bad.returncode == 2 and "unexpected argument '--bogus'" in bad.stderr, bad.stderr
    assert "usage: cvmgate probe" in probe(cvmgate_bin, "--help").stdout


def test_daemon_logs_its_choices_at_start(make_gateway):
    gw = make_gateway(state={"version": 1})
    log = gw.log()
    assert "probe: kernel " in log, log
    with open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
        kernel_has_tls = "tls" in f.read().split()
    if kernel_has_tls:
        assert "TLS kTLS where it can" in log, log
    else:
        assert 'probe: kTLS: TCP_ULP "tls"' in log and "-> userspace TLS" in log, log
        assert "TLS userspace" in log, log
