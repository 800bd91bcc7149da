"""Integration tests for cvmgate's limits: idle timeout, drain cut-off, connection cap, connect retries."""

import os
import signal
import subprocess
import time

import peers
from peers import TlsClient, sni_name
from test_admin import ctl
from test_passthrough import assert_echo, expect_closed, open_relay


def test_idle_relay_closed_after_idle_timeout(make_gateway, backends):
    gw = make_gateway(args=["--idle-timeout", "1s"])
    c, _ = open_relay(gw, backends)
    # Traffic keeps it alive past the timeout...
    for i in range(3):
        if i:
            time.sleep(0.6)  # part of the scenario: a pause shorter than the idle timeout
        payload = os.urandom(1024)
        assert c.echo(payload, timeout=5) == payload
        last_traffic = time.monotonic()
    # ...silence closes it, about one idle timeout after the last byte.
    closed = c.wait_closed(5)
    silent = time.monotonic() - last_traffic
    c.close()
    assert closed.how in ("eof", "reset"), closed
    assert 0.9 <= silent <= 3.5, "closed %.2fs after the last byte, idle timeout 1s" % silent
    gw.wait_counter("closed_idle_timeout", 1)


def test_drain_timeout_cuts_relays_that_do_not_finish(make_gateway, backends):
    gw = make_gateway(args=["--drain-timeout", "1s"])
    c, _ = open_relay(gw, backends)
    started = time.monotonic()
    gw.signal(signal.SIGTERM)
    rc = gw.wait_exit(10)
    elapsed = time.monotonic() - started
    assert rc == 0, gw.log()
    assert 0.8 <= elapsed <= 5, "exit after %.2fs, drain timeout 1s" % elapsed
    final = gw.snapshots[-1]
    assert final["closed_drain_timeout"] == 1, final
    closed = c.wait_closed(5)
    c.close()
    assert closed.how in ("eof", "reset"), closed


def test_connections_over_max_connections_are_refused(make_gateway, backends):
    gw = make_gateway(workers=1, args=["--max-connections", "2"])
    held = [open_relay(gw, backends)[0] for _ in range(2)]
    expect_closed(gw, "closed_overload", sni=sni_name("app", backends.port))
    # The held relays are unharmed, and a freed slot is reused.
    payload = os.urandom(4096)
    assert_echo(held[0].exchange(payload), payload)
    held[0].close()
    peers.wait_until(lambda: gw.counters()["live_connections"] == 1, 5, "the closed relay to free its slot")
    again, _ = open_relay(gw, backends)
    again.close()
    held[1].close()


def test_failed_connect_moves_on_to_another_instance(make_gateway, backends):
    state = peers.default_state()
    # Nothing listens on 127.0.0.4: every pick of it fails fast and must be retried elsewhere.
    state["apps"]["app"]["instances"].append({"id": "app-dead", "address": "127.0.0.4", "ports": peers.TEST_PORTS})
    gw = make_gateway(state=state)
    for _ in range(30):
        c, inst = open_relay(gw, backends)
        c.close()
        assert inst in ("app-i1", "app-i2")
    counters = gw.counters()
    # 30 picks among 3 instances: P(the dead one never drawn) = (2/3)^30 < 1e-5.
    assert counters["connect_failed"] >= 1, counters
    assert counters.get("closed_connect_failed", 0) == 0, counters
    assert counters["routed_passthrough"] == 30, counters


def test_kernel_default_pipe_size_still_relays_intact(make_gateway, backends):
    gw = make_gateway(args=["--pipe-size", "0"])
    c, _ = open_relay(gw, backends)
    payload = os.urandom(4 << 20)
    ex = c.exchange(payload, timeout=30)
    c.close()
    assert_echo(ex, payload)
    counters = gw.counters()
    assert counters["pipe_resize_failed"] == 0, counters
    assert counters["bytes_client_to_backend"] >= len(payload), counters


def _fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def test_refused_and_finished_connections_leave_no_descriptor_behind(make_gateway, backends):
    # One worker, so the one pipe pool warmed up below is the only one.
    gw = make_gateway(workers=1, args=["--hello-timeout", "1s"])
    pid = gw.proc.pid
    # One relay first, so the worker's pipe pool is warm and counted in the baseline.
    c, _ = open_relay(gw, backends)
    assert_echo(c.exchange(b"warm-up"), b"warm-up")
    c.close()
    peers.wait_until(lambda: gw.counters()["live_connections"] == 0, 5, "the warm-up relay to end")
    baseline = _fds(pid)
    hello = TlsClient(gw.addr, sni_name("app", backends.port)).client_hello()
    for send in [b"GET / HTTP/1.0\r\n\r\n", b"\x16\x03\x01\x00", hello[: len(hello) // 2], b"", hello]:
        for _ in range(5):
            s = peers.raw_connect(gw.addr)
            if send:
                s.sendall(send)
            s.close()  # mid-hello, right after a complete hello, or before any byte
    for _ in range(5):
        c, _ = open_relay(gw, backends)
        c.close()  # abrupt close of a live relay
    peers.wait_until(lambda: gw.counters()["live_connections"] == 0, 10, "every connection to be released")
    assert _fds(pid) <= baseline, "descriptors before %d, after %d" % (baseline, _fds(pid))


def test_per_app_connection_limit(make_gateway, backends):
    state = peers.default_state()
    state["apps"]["other"] = {"instances": [{"id": "other-i1", "address": "127.0.0.2", "ports": peers.TEST_PORTS}]}
    gw = make_gateway(state=state, args=["--app-max-connections", "2"])
    held = [open_relay(gw, backends)[0] for _ in range(2)]
    expect_closed(gw, "closed_app_limit", sni=sni_name("app", backends.port))
    # What a user sees: the name is known, nothing can serve it now.
    s_client = subprocess.run(["openssl", "s_client", "-connect", "%s:%d" % gw.addr, "-servername",
                               sni_name("app", backends.port)], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=30)
    said = s_client.stdout + s_client.stderr
    assert "alert internal error" in said and "SSL alert number 80" in said, said
    # Another app is not affected; the full app takes connections again once one ends.
    other, inst = open_relay(gw, backends, ident="other")
    other.close()
    assert inst == "app-i1"
    held[0].close()
    peers.wait_until(lambda: gw.counters()["live_connections"] == 1, 5, "the closed relay to free its app slot")
    again, _ = open_relay(gw, backends)
    again.close()
    held[1].close()


def test_per_app_connection_limit_override(ctl_bin, make_gateway, backends):
    state = peers.default_state()
    state["apps"]["other"] = {"instances": [{"id": "other-i1", "address": "127.0.0.2", "ports": peers.TEST_PORTS}]}
    gw = make_gateway(state=state)
    out = ctl(ctl_bin, gw, "app-set", "app", "--max-connections", "1")
    assert out.strip() == "app app: max connections 1, proxy protocol off", out
    held, _ = open_relay(gw, backends)
    expect_closed(gw, "closed_app_limit", sni=sni_name("app", backends.port))
    explained = ctl(ctl_bin, gw, "explain", sni_name("app", backends.port))
    assert "refused: app app holds 1 connections, its limit" in explained, explained
    others = [open_relay(gw, backends, ident="other")[0] for _ in range(2)]  # the default (2000) still applies
    for o in others:
        o.close()
    ctl(ctl_bin, gw, "app-set", "app", "--max-connections", "default")
    again, _ = open_relay(gw, backends)
    again.close()
    held.close()
    bad = ctl(ctl_bin, gw, "app-set", "app", "--max-connections", "0", expect=1)
    assert "'max_connections' must be an integer in [1, 16777216]" in bad, bad
    bad = ctl(ctl_bin, gw, "app-set", "app", "--max-connections", "many", expect=2)
    assert "--max-connections takes a number or default, not 'many'" in bad, bad
