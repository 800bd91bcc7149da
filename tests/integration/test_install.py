"""tools/install and tools/uninstall into a staging root: the files, the unit's hardening, the sysctl
profile for the chosen interface, the ruleset helper as installed, and a clean removal."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARIES = Path(os.environ.get("CVMGATE_BIN", REPO / "build" / "tools" / "cvmgate")).parent


def install(*args, expect=0):
    return run(REPO / "tools" / "install", "--binaries", BINARIES, *args, expect=expect)


def run(*args, expect=0):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == expect, "%s -> %d\n%s%s" % (" ".join(map(str, args)), p.returncode, p.stdout, p.stderr)
    return p.stdout + p.stderr


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_install_then_uninstall_leaves_nothing_behind(tmp_path):
    root = tmp_path / "root"
    out = install("--root", root, "--wg-interface", "wgtest0")
    assert "installed 11 files" in out, out
    assert files_under(root) == sorted([
        "etc/cvmgate/cvmgate.toml", "etc/logrotate.d/cvmgate", "etc/modules-load.d/cvmgate.conf",
        "etc/sysctl.d/90-cvmgate.conf",
        "etc/systemd/system/cvmgate.service", "usr/local/bin/cvmgate", "usr/local/bin/cvmgatectl",
        "usr/local/lib/cvmgate/acme-deploy-hook", "usr/local/lib/cvmgate/cvmgate-nft",
        "usr/local/lib/cvmgate/cvmgate.nft",
        "usr/local/lib/cvmgate/installed-files", "usr/local/share/doc/cvmgate/README.md"])
    assert run(root / "usr/local/bin/cvmgate", "--version").strip() == "cvmgate 0.1.0"
    sysctl = (root / "etc/sysctl.d/90-cvmgate.conf").read_text()
    assert "net.ipv4.conf.wgtest0.rp_filter = 1" in sysctl and ".wg-cvm." not in sysctl
    conf = root / "etc/cvmgate/cvmgate.toml"
    assert 'wg-interface = "wgtest0"' in conf.read_text()
    # The config as installed is one the daemon takes (its certificate line is commented out).
    check = subprocess.run([str(root / "usr/local/bin/cvmgate"), "check-config", "--config", str(conf),
                            "--access-log", "off"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "configuration ok" in check.stdout, check
    conf.write_text(conf.read_text() + "# edited by the operator\n")
    install("--root", root, "--wg-interface", "wgtest0")
    assert conf.read_text().endswith("# edited by the operator\n"), "a second install keeps the operator's config"

    out = run(REPO / "tools" / "uninstall", "--root", root)
    assert "removed 11 files" in out, out
    assert files_under(root) == ["etc/cvmgate/cvmgate.toml"], "only the operator's config stays"
    assert "nothing to do" in run(REPO / "tools" / "uninstall", "--root", root)
    install("--root", root)
    run(REPO / "tools" / "uninstall", "--root", root, "--purge")
    assert files_under(root) == []


def test_unit_is_hardened_and_follows_the_prefix(tmp_path):
    root = tmp_path / "root"
    install("--root", root, "--prefix", "/opt/cvmgate")
    unit = (root / "etc/systemd/system/cvmgate.service").read_text()
    for line in ["ExecStart=/opt/cvmgate/bin/cvmgate --config /etc/cvmgate/cvmgate.toml ",
                 "ExecStartPre=+/opt/cvmgate/lib/cvmgate/cvmgate-nft apply --config /etc/cvmgate/cvmgate.toml",
                 "ExecReload=/opt/cvmgate/bin/cvmgatectl --admin unix:/run/cvmgate/admin.sock upgrade",
                 "Type=notify", "NotifyAccess=all", "LogsDirectory=cvmgate",
                 "DynamicUser=yes", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
                 "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "PrivateTmp=yes", "LimitNOFILE=1048576", "Restart=on-failure"]:
        assert line in unit, line
    assert "/usr/local" not in unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed: the unit's syntax and exposure were not checked")
    verify = subprocess.run(["systemd-analyze", "verify", str(root / "etc/systemd/system/cvmgate.service")],
                            capture_output=True, text=True, timeout=60)
    problems = [l for l in verify.stderr.splitlines() if re.search(r"Unknown|Invalid|Failed to parse|bad", l)]
    assert not problems, problems
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", "--root=%s" % root,
                               "cvmgate.service"], capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for cvmgate.service: ([0-9.]+)", security.stdout)
    assert level, security.stdout + security.stderr
    assert float(level.group(1)) <= 2.5, security.stdout


def test_installed_ruleset_helper_applies_and_removes(tmp_path):
    root = tmp_path / "root"
    install("--root", root)
    helper = root / "usr/local/lib/cvmgate/cvmgate-nft"
    ns = "cvmgate-inst-%d" % (id(tmp_path) & 0xffff)
    run("ip", "netns", "add", ns)
    try:
        run("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "neighbour")  # someone else's table
        run("ip", "netns", "exec", ns, helper, "apply", "--wg-interface", "wgx0")
        shown = run("ip", "netns", "exec", ns, helper, "show")
        assert 'iifname "wgx0" counter packets 0 bytes 0 drop' in shown, shown
        # As the unit runs it: the interface from the installed config file's wg-interface key.
        conf = root / "etc/cvmgate/cvmgate.toml"
        conf.write_text(conf.read_text().replace('wg-interface = "wg-cvm"', 'wg-interface = "wgy1"  # ours'))
        run("ip", "netns", "exec", ns, helper, "apply", "--config", conf)
        shown = run("ip", "netns", "exec", ns, helper, "show")
        assert 'iifname "wgy1" counter packets 0 bytes 0 drop' in shown and "wgx0" not in shown, shown
        run("ip", "netns", "exec", ns, helper, "remove")
        tables = run("ip", "netns", "exec", ns, "nft", "list", "tables")
        assert tables.strip() == "table inet neighbour", tables
        assert "bad interface name" in run("ip", "netns", "exec", ns, helper, "apply", "--wg-interface", "a b",
                                           expect=2)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_bad_install_arguments_are_refused():
    assert "bad interface name" in install("--wg-interface", "x;y", expect=2)
    assert "unknown argument" in install("--frobnicate", expect=2)
    assert "--prefix must be absolute" in install("--prefix", "rel", expect=2)
