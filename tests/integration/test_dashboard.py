"""The Grafana dashboard (kernel-config/grafana/cvmgate-dashboard.json) against a real gateway: it is a
well-formed Grafana 9/10 dashboard, and every metric its PromQL queries (panels and variables) is one
that a running cvmgate exposes, with the labels the queries group and filter by. The gateway runs in a
network namespace of the test's own with a wireguard-go interface (the WireGuard gauges exist only with
one), serves one passthrough, one terminated and one refused connection, and is read with Prometheus'
own parser."""

import json
import os
import re
import shutil
import subprocess

import pytest

import peers
from peers import TlsClient, sni_name
from test_cvm_topology import in_netns

# Its gateway adopts a wireguard-go interface, and the guest has no /dev/net/tun.
pytestmark = peers.skip_in_kernel_suite("The dashboard's metrics")

DASHBOARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "kernel-config", "grafana",
                         "cvmgate-dashboard.json")
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
BACKEND_IP = "127.0.0.2"
# Labels Prometheus adds to every sample it scrapes: no exposition carries them.
SCRAPE_LABELS = {"instance", "job"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load():
    with open(DASHBOARD) as f:
        return json.load(f)


def all_panels(dashboard):
    """Every panel, those inside collapsed rows too."""
    for p in dashboard["panels"]:
        yield p
        for inner in p.get("panels", []):
            yield inner


def queries(dashboard):
    """(where, PromQL) of every panel target and every query variable."""
    for p in all_panels(dashboard):
        for t in p.get("targets", []):
            yield "panel %d %r %s" % (p["id"], p["title"], t["refId"]), t["expr"]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            yield "variable $%s" % v["name"], q


# ---------------------------------------------------------------- PromQL, read far enough to name metrics

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "inf", "nan", "atan2"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _label_names(matchers):
    return {m.split("=")[0].split("!")[0].strip() for m in re.split(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", matchers)
            if m.strip()}


def parse_promql(expr):
    """(metric names, {metric: labels its selector matches on}, labels the expression groups by).

    Enough of PromQL for what dashboards write: label_values(metric, label) for variables, selectors,
    functions and aggregations with by/without, binary operators, ranges, numbers and Grafana variables."""
    m = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*,\s*(\w+)\s*\)\s*", expr)
    if m:
        matchers = _label_names(m.group(2)[1:-1]) if m.group(2) else set()
        return {m.group(1)}, {m.group(1): matchers}, {m.group(3)}
    selectors, grouped = {}, set()
    for sm in SELECTOR.finditer(expr):
        if sm.group(1) and sm.group(1) not in PROMQL_KEYWORDS:
            selectors.setdefault(sm.group(1), set()).update(_label_names(sm.group(2)))
    for gm in GROUPING.finditer(expr):
        if gm.group(1) in ("by", "without"):
            grouped.update(l.strip() for l in gm.group(2).split(",") if l.strip())
    rest = re.sub(r"\{[^}]*\}", " ", expr)          # selectors' matchers (and the strings in them)
    rest = re.sub(r"\"[^\"]*\"|'[^']*'", " ", rest)  # other strings
    rest = re.sub(r"\[[^\]]*\]", " ", rest)          # ranges and subqueries
    rest = GROUPING.sub(" ", rest)
    rest = re.sub(r"\$\{?\w+\}?", " ", rest)         # Grafana variables
    rest = re.sub(r"\boffset\s+\S+", " ", rest)
    rest = re.sub(r"(?<![A-Za-z0-9_:])\d[\w.]*", " ", rest)  # numbers, not digits inside a name
    names = set()
    for im in IDENT.finditer(rest):
        name = im.group(0)
        if name in PROMQL_KEYWORDS or re.match(r"\s*\(", rest[im.end():]):
            continue  # a keyword, or a function or aggregation
        names.add(name)
    return names, selectors, grouped


def base_name(name):
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def test_promql_reader_names_metrics_and_labels():
    names, selectors, grouped = parse_promql(
        'histogram_quantile(0.99, sum by (le) (rate(cvmgate_connect_seconds_bucket{instance=~"$instance"}[5m])))')
    assert names == {"cvmgate_connect_seconds_bucket"} and grouped == {"le"}
    assert selectors == {"cvmgate_connect_seconds_bucket": {"instance"}}
    names, selectors, grouped = parse_promql(
        'count(min by (app) (cvmgate_app_healthy_instances{instance=~"$instance", app=~"a,b"}) == 0) or vector(0)')
    assert names == {"cvmgate_app_healthy_instances"} and grouped == {"app"}
    assert selectors == {"cvmgate_app_healthy_instances": {"instance", "app"}}
    names, _, _ = parse_promql('time() - min(cvmgate_health_poll_last_timestamp_seconds) + up offset 5m * 1e3 '
                               '+ sum(rate(cvmgate_ktls_fallback_tls13_rx_total[$__rate_interval]))')
    assert names == {"cvmgate_health_poll_last_timestamp_seconds", "up", "cvmgate_ktls_fallback_tls13_rx_total"}
    assert parse_promql("label_values(cvmgate_accepted_total, instance)") == (
        {"cvmgate_accepted_total"}, {"cvmgate_accepted_total": set()}, {"instance"})
    assert base_name("cvmgate_handshake_seconds_count") == "cvmgate_handshake_seconds"


# ---------------------------------------------------------------- the dashboard as Grafana reads it


def test_dashboard_is_a_grafana_dashboard():
    d = load()
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36, d.get("schemaVersion")
    assert d["title"] and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"]), (d["title"], d["uid"])
    assert d["__inputs"] == [{"name": "DS_PROMETHEUS", "label": "Prometheus", "description": d["__inputs"][0].get(
        "description", ""), "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["instance"]["query"] == "label_values(cvmgate_accepted_total, instance)"
    assert variables["app"]["query"] == "label_values(cvmgate_app_live_connections, app)"
    for name in ("instance", "app"):
        assert variables[name]["type"] == "query" and variables[name]["datasource"] == DATASOURCE, variables[name]

    panels = list(all_panels(d))
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), ids
    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0 and g["y"] >= 0, (p["id"], g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, "panel %d overlaps panel %d" % (p["id"], cells[(x, y)])
                cells[(x, y)] = p["id"]
        if p["type"] == "row":
            assert not p.get("targets"), "a row draws nothing: %r" % p["title"]
            continue
        assert p["type"] in ("timeseries", "stat", "gauge", "bargauge", "table", "text"), p["type"]
        assert p["title"] and p.get("description"), p["id"]
        assert p["datasource"] == DATASOURCE, (p["id"], p.get("datasource"))
        assert p["targets"], "panel %d %r has no query" % (p["id"], p["title"])
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), (p["id"], ref_ids)
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE and t["expr"].strip(), (p["id"], t)
            assert t["expr"].count("(") == t["expr"].count(")"), (p["id"], t["expr"])
    # Every ${VAR} the dashboard names is one of its variables (or one of Grafana's own).
    used = set(re.findall(r"\$\{?(\w+)", json.dumps(d["panels"])))
    assert used <= set(variables) | {"__rate_interval", "__range", "__interval"}, used - set(variables)


# ---------------------------------------------------------------- against a real gateway


def sh(*args, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=True, **kw)


@pytest.fixture
def wg_netns(tmp_path):
    """A network namespace with its own wireguard-go interface, started here (the gateway adopts it)."""
    if shutil.which("wg") is None or shutil.which("wireguard-go") is None:
        pytest.skip("wg and wireguard-go are needed (tools/setup installs them)")
    tag = "%x" % (os.getpid() & 0xfffff)
    ns, ifname = "cvmdash-" + tag, "wgdash" + tag
    sock = "/var/run/wireguard/%s.sock" % ifname
    sh("ip", "netns", "add", ns)
    wg = None
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        # ip netns exec execs wireguard-go: this is its pid, ended below by it.
        wg = subprocess.Popen(["ip", "netns", "exec", ns, "wireguard-go", "-f", ifname], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peers.wait_until(lambda: os.path.exists(sock) or wg.poll() is not None, 10, "wireguard-go's socket")
        assert wg.poll() is None, "wireguard-go %s exited with %s" % (ifname, wg.returncode)
        yield ns, ifname
    finally:
        if wg is not None and wg.poll() is None:
            wg.terminate()
            try:
                wg.wait(10)
            except subprocess.TimeoutExpired:
                wg.kill()
                wg.wait(10)
        if os.path.exists(sock):
            os.unlink(sock)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def metrics_text(ctl_bin, gw):
    p = subprocess.run([ctl_bin, "--admin", "unix:" + os.path.join(gw.workdir, "admin.sock"), "metrics"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p
    return p.stdout


@pytest.fixture
def exposition(wg_netns, make_gateway, ctl_bin, tls_cert, tmp_path):
    """{sample name: (family type, label names)} of a gateway that has WireGuard, an app, and served a
    passthrough, a terminated and a refused connection."""
    from prometheus_client.parser import text_string_to_metric_families
    ns, ifname = wg_netns
    cert, key, _ = tls_cert
    with in_netns(ns):
        tls_port = peers.free_port(BACKEND_IP)
        tls_backend = peers.Backend(BACKEND_IP, tls_port, "app-i1", cert, key, "echo")
        plain_port = peers.free_port(BACKEND_IP)
        plain_backend = peers.TcpServer(BACKEND_IP, plain_port, peers.plain_echo)
    try:
        gw = make_gateway(netns=ns, listen=["127.0.0.1:%d" % peers.free_port()], state={"version": 1, "apps": {
            "app": {"instances": [{"id": "app-i1", "address": BACKEND_IP, "ports": peers.TEST_PORTS}]}}}, args=[
            "--tls-cert", "example.test=%s,%s" % (cert, key), "--wg-interface", ifname, "--wg-backend", "uapi",
            "--wg-private-key-file", str(tmp_path / "wg.key"), "--wg-listen-port", "51820",
            "--health-poll", "200ms"])
        with in_netns(ns):
            passthrough = TlsClient(gw.addr, sni_name("app", tls_port), timeout=10).connect()
            terminated = TlsClient(gw.addr, sni_name("app", plain_port, mode=""), timeout=10).connect()
            refused = TlsClient(gw.addr, sni_name("nosuchapp", 443), timeout=10).connect()
        try:
            passthrough.handshake()
            assert passthrough.read_banner() == "instance=app-i1"
            assert passthrough.exchange(b"ping").echoed == b"ping"
            terminated.handshake()
            assert terminated.exchange(b"pong").raw == b"pong"
            refused.send_hello()
            assert refused.wait_closed().how == "eof"
        finally:
            for c in (passthrough, terminated, refused):
                c.close()

        def settled():
            text = metrics_text(ctl_bin, gw)
            values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
                      if not s.labels}
            done = (values.get("cvmgate_accepted_total", 0) >= 3 and values.get("cvmgate_live_connections") == 0
                    and values.get("cvmgate_health_polls_total", 0) >= 1)
            return text if done else None

        text = peers.wait_until(settled, 10, "the three connections to close and a health poll", interval=0.1)
    finally:
        tls_backend.close()
        plain_backend.close()
    exposed = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            kind, labels = exposed.setdefault(s.name, (family.type, set()))
            labels.update(s.labels)
    return exposed


def test_every_metric_the_dashboard_queries_is_exposed(exposition):
    missing, problems = set(), []
    for where, expr in queries(load()):
        names, selectors, grouped = parse_promql(expr)
        assert names, "%s: no metric in %r" % (where, expr)
        for name in sorted(names):
            if name not in exposition:
                missing.add(base_name(name))
                continue
            kind, labels = exposition[name]
            if name != base_name(name) and kind not in ("histogram", "summary"):
                problems.append("%s: %s is a %s, not a histogram's %s" % (where, name, kind, name[len(base_name(name)):]))
            for label in sorted(selectors.get(name, set()) - SCRAPE_LABELS - labels):
                problems.append("%s: %s has no label %r (it has %s)" % (where, name, label, sorted(labels)))
        known = {n for n in names if n in exposition}
        for label in sorted(grouped - SCRAPE_LABELS):
            carriers = {n for n in known if label in exposition[n][1]}
            if known == names and not carriers:
                problems.append("%s: no metric in %r has the label %r it groups or reads values by" % (where, expr, label))
    if missing:
        problems.insert(0, "metrics the dashboard queries that the gateway does not expose: %s" % ", ".join(
            sorted(missing)))
    assert not problems, "\n".join(problems)
