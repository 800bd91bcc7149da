"""tools/package: the .deb's files, modes, conffiles and man pages, then its maintainer scripts through
install, upgrade, remove and purge in a throw-away root (dpkg --root with --force-script-chrootless: the
scripts run on this host with $DPKG_ROOT set), the upgrade from the packages that shipped
/etc/cvmgate/cvmgate.env, and nothing written outside that root."""

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import peers

REPO = Path(__file__).resolve().parents[2]
BINARIES = Path(os.environ.get("CVMGATE_BIN", REPO / "build" / "tools" / "cvmgate")).parent

pytestmark = peers.skip_in_kernel_suite("Building and installing the package")

for tool, package in [("dpkg-deb", "dpkg"), ("dpkg-shlibdeps", "dpkg-dev"), ("help2man", "help2man")]:
    if shutil.which(tool) is None:
        pytest.skip("%s not installed (package %s): tools/package cannot build" % (tool, package),
                    allow_module_level=True)

BASE_VERSION = re.search(r"version\s*:\s*'([^']+)'", (REPO / "meson.build").read_text()).group(1)
CONFIG = "/etc/cvmgate/cvmgate.toml"
LOGROTATE = "/etc/logrotate.d/cvmgate"
CONFFILES = sorted([CONFIG, LOGROTATE])
# The flags file the unit read before the config file; the package no longer ships it.
ENV_FILE = "/etc/cvmgate/cvmgate.env"
# The last commit whose package shipped ENV_FILE, and the next one, whose package dropped it without
# removing it (an upgrade to it left the file as an obsolete conffile).
ENV_SHIPPED_AT = "4f5cc92"
ENV_LEFT_AT = "ae7ed55"
# path in the package -> mode
FILES = {
    "usr/sbin/cvmgate": 0o755,
    "usr/sbin/cvmgatectl": 0o755,
    "usr/lib/cvmgate/cvmgate-nft": 0o755,
    "usr/lib/cvmgate/cvmgate.nft": 0o644,
    "usr/lib/cvmgate/acme-deploy-hook": 0o755,
    "lib/systemd/system/cvmgate.service": 0o644,
    "usr/lib/sysctl.d/90-cvmgate.conf": 0o644,
    "usr/lib/modules-load.d/cvmgate.conf": 0o644,
    "usr/share/man/man8/cvmgate.8.gz": 0o644,
    "usr/share/man/man8/cvmgatectl.8.gz": 0o644,
    "usr/share/doc/cvmgate/copyright": 0o644,
    "usr/share/doc/cvmgate/README.md": 0o644,
    "usr/share/doc/cvmgate/changelog.gz": 0o644,
}
FILES.update({c.lstrip("/"): 0o644 for c in CONFFILES})
# Where a package or tools/install would put cvmgate on this host: a test must leave them as they are.
HOST_PATHS = ["/etc/cvmgate", "/etc/logrotate.d/cvmgate", "/var/log/cvmgate", "/var/log/private/cvmgate",
              "/var/lib/cvmgate", "/var/lib/private/cvmgate", "/run/cvmgate",
              "/usr/sbin/cvmgate", "/usr/sbin/cvmgatectl", "/usr/bin/cvmgate", "/usr/lib/cvmgate",
              "/lib/systemd/system/cvmgate.service", "/etc/systemd/system/cvmgate.service",
              "/etc/systemd/system/multi-user.target.wants/cvmgate.service",
              "/usr/lib/sysctl.d/90-cvmgate.conf", "/usr/lib/modules-load.d/cvmgate.conf",
              "/usr/share/doc/cvmgate", "/usr/share/man/man8/cvmgate.8.gz"]
# Commands the maintainer scripts may only run on a live system, never under $DPKG_ROOT.
LIVE_COMMANDS = ["systemctl", "sysctl", "systemd-sysctl", "modprobe", "nft", "useradd", "adduser", "deb-systemd-invoke"]


def run(*args, expect=0, env=None, cwd=REPO):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == expect, "%s -> %d\n%s%s" % (" ".join(map(str, args)), p.returncode, p.stdout, p.stderr)
    return p.stdout + p.stderr


def package(out, *args, expect=0):
    return run(REPO / "tools" / "package", "--binaries", BINARIES, "--out", out, *args, expect=expect)


def only_deb(directory):
    debs = list(Path(directory).glob("*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


def field(deb, name):
    return run("dpkg-deb", "-f", deb, name).strip()


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    """(v1, v2): the package as tools/package makes it, and a later version whose default config file
    differs (a new default the admin has not seen)."""
    d1 = tmp_path_factory.mktemp("deb1")
    out = package(d1)
    v1 = only_deb(d1)
    assert "built %s" % v1 in out, out
    d2 = tmp_path_factory.mktemp("deb2")
    version2 = field(v1, "Version") + "+1"
    package(d2, "--version", version2)
    built = only_deb(d2)
    tree = tmp_path_factory.mktemp("tree") / "cvmgate"
    run("dpkg-deb", "-R", built, tree)
    built.unlink()
    with open(tree / CONFIG.lstrip("/"), "a") as f:
        f.write("# a default new in %s\n" % version2)
    v2 = d2 / built.name
    run("dpkg-deb", "--root-owner-group", "-Zgzip", "-b", tree, v2)
    return v1, v2


def test_version_name_and_control_fields(debs):
    v1, v2 = debs
    version = field(v1, "Version")
    m = re.fullmatch(re.escape(BASE_VERSION) + r"(\+git\d+\.([0-9a-f]{7,}))?", version)
    assert m, version
    if m.group(2):
        run("git", "cat-file", "-e", m.group(2) + "^{commit}")
    arch = run("dpkg", "--print-architecture").strip()
    assert v1.name == "cvmgate_%s_%s.deb" % (version, arch)
    run("dpkg", "--compare-versions", field(v2, "Version"), "gt", version)
    assert field(v1, "Package") == "cvmgate" and field(v1, "Architecture") == arch
    assert re.fullmatch(r".+ <[^ ]+@[^ ]+>", field(v1, "Maintainer")), field(v1, "Maintainer")
    depends = field(v1, "Depends")
    for dep in ["libc6 (>=", "libssl3", "liburing2", "nftables"]:
        assert dep in depends, depends
    assert field(v1, "Recommends") == "logrotate", "the default config writes an access log"
    description = field(v1, "Description")
    assert CONFIG in description and "check-config" in description and "cvmgate.env" not in description


def test_files_modes_and_conffiles(debs, tmp_path):
    v1, _ = debs
    listing = run("dpkg-deb", "-c", v1).splitlines()
    files, dirs = {}, []
    for line in listing:
        perms, owner, _size, _date, _time, path = line.split(None, 5)
        assert owner == "root/root", line
        path = path[2:] if path.startswith("./") else path
        if perms.startswith("d"):
            assert perms == "drwxr-xr-x", line
            dirs.append(path)
        else:
            assert perms[0] == "-", "only regular files: " + line
            files[path] = perms
    assert sorted(files) == sorted(FILES)
    for path, mode in FILES.items():
        expected = "-" + "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
        assert files[path] == expected, (path, files[path])
    control = run("dpkg-deb", "-I", v1)
    for member in ["preinst", "postinst", "prerm", "postrm", "md5sums", "conffiles"]:
        assert re.search(r"\s%s\s" % member, control), member
    assert sorted(run("dpkg-deb", "-I", v1, "conffiles").split()) == CONFFILES
    # The obsolete flags file goes the Debian way: the same rm_conffile in preinst, postinst and postrm,
    # with tools/package's bound substituted.
    calls = {}
    for script in ["preinst", "postinst", "postrm"]:
        text = run("dpkg-deb", "-I", v1, script)
        assert not re.search(r"@[A-Z_]+@", text), "a placeholder left in " + script
        found = re.findall(r'^\s*dpkg-maintscript-helper rm_conffile (\S+) (\S+) -- "\$@"$', text, re.M)
        assert len(found) == 1, (script, found)
        calls[script] = found[0]
    assert set(calls.values()) == {(ENV_FILE, calls["preinst"][1])}, calls
    run("dpkg", "--validate-version", calls["preinst"][1])

    tree = tmp_path / "x"
    run("dpkg-deb", "-x", v1, tree)
    assert run(tree / "usr/sbin/cvmgate", "--version").strip() == "cvmgate " + BASE_VERSION
    sections = run("readelf", "-S", tree / "usr/sbin/cvmgate")
    assert ".debug_info" not in sections and ".symtab" not in sections, "the binaries are stripped"
    unit = (tree / "lib/systemd/system/cvmgate.service").read_text()
    for line in ["ExecStart=/usr/sbin/cvmgate ", "ExecStartPre=+/usr/lib/cvmgate/cvmgate-nft apply",
                 "Documentation=man:cvmgate(8) file:/usr/share/doc/cvmgate/README.md", "DynamicUser=yes",
                 "StateDirectory=cvmgate", "NoNewPrivileges=yes", "ProtectSystem=strict"]:
        assert line in unit, line
    assert "/usr/local" not in unit
    sysctl = (tree / "usr/lib/sysctl.d/90-cvmgate.conf").read_text()
    assert "net.core.somaxconn = 65535" in sysctl and "net.ipv4.conf.wg-cvm.rp_filter = 1" in sysctl
    assert (tree / "usr/lib/modules-load.d/cvmgate.conf").read_text() == \
        (REPO / "kernel-config/modules-load.d/cvmgate.conf").read_text()
    assert (tree / "usr/lib/cvmgate/cvmgate.nft").read_text() == \
        (REPO / "kernel-config/nftables/cvmgate.nft").read_text()
    assert "ExecStart=/usr/sbin/cvmgate --config %s " % CONFIG in unit and "LogsDirectory=cvmgate" in unit
    assert "EnvironmentFile" not in unit and "cvmgate.env" not in unit
    # The default config file is the one tools/install writes for the default interface, and one the
    # daemon takes (its access log aside: /var/log/cvmgate is made by systemd at start).
    config = tree / CONFIG.lstrip("/")
    assert config.read_bytes() == (REPO / "kernel-config/cvmgate.toml").read_bytes()
    staged = tmp_path / "installed"
    run(REPO / "tools" / "install", "--root", staged, "--binaries", BINARIES)
    assert config.read_text() == (staged / CONFIG.lstrip("/")).read_text()
    check = run(tree / "usr/sbin/cvmgate", "check-config", "--config", config, "--access-log", "off")
    assert "configuration ok" in check, check
    # The access log it names is under the unit's LogsDirectory=, and the logrotate rule rotates it.
    access_log = re.search(r'^access-log = "([^"]+)"', config.read_text(), re.M).group(1)
    assert access_log == "/var/log/cvmgate/access.log"
    rule = (tree / LOGROTATE.lstrip("/")).read_text()
    assert rule == (REPO / "kernel-config/logrotate.d/cvmgate").read_text()
    assert re.search(r"^%s \{$" % re.escape(access_log), rule, re.M) and "SIGUSR2" in rule, rule
    copyright_text = (tree / "usr/share/doc/cvmgate/copyright").read_text()
    assert copyright_text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    assert "License: Apache-2.0" in copyright_text
    changelog = gzip.decompress((tree / "usr/share/doc/cvmgate/changelog.gz").read_bytes()).decode()
    assert changelog.startswith("cvmgate (%s) " % field(v1, "Version")), changelog


def test_man_pages_render_without_warnings_and_list_every_flag(debs, tmp_path):
    v1, _ = debs
    tree = tmp_path / "x"
    run("dpkg-deb", "-x", v1, tree)
    for page, binary in [("cvmgate", "cvmgate"), ("cvmgatectl", "cvmgatectl")]:
        path = tree / ("usr/share/man/man8/%s.8.gz" % page)
        source = tmp_path / ("%s.8" % page)
        source.write_bytes(gzip.decompress(path.read_bytes()))
        p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(source)], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0 and p.stderr == "", p.stderr
        if shutil.which("mandoc"):
            p = subprocess.run(["mandoc", "-Tlint", "-W", "warning", str(source)], capture_output=True, text=True,
                               timeout=60)
            assert p.stdout + p.stderr == "", p.stdout + p.stderr
        if shutil.which("lexgrog"):
            assert ': "%s - ' % page in run("lexgrog", path)
        text = run("man", "-l", path, env=dict(os.environ, MANWIDTH="80"))
        for heading in ["NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"] + (
                ["COMMANDS", "SIGNALS", "FILES"] if page == "cvmgate" else ["VERBS"]):
            assert re.search(r"^%s$" % heading, text, re.M), "%s(8) lacks %s" % (page, heading)
        roff = source.read_text().replace("\\-", "-")
        helptext = run(BINARIES / binary, "--help")
        for flag in sorted(set(re.findall(r"^\s+(--[a-z0-9-]+)", helptext, re.M))):
            assert re.search(r"(?<![a-z-])%s(?![a-z-])" % flag, roff), "%s(8) lacks %s" % (page, flag)
    roff = gzip.decompress((tree / "usr/share/man/man8/cvmgatectl.8.gz").read_bytes()).decode().replace("\\-", "-")
    verbs = re.findall(r"^  ([a-z][a-z-]+)", run(BINARIES / "cvmgatectl", "--help").split("verbs:")[1], re.M)
    assert len(verbs) >= 5, verbs
    section = roff.split(".SH VERBS", 1)[1]
    for verb in verbs:
        assert ".B %s" % verb in section, "cvmgatectl(8) VERBS lacks " + verb
    roff = gzip.decompress((tree / "usr/share/man/man8/cvmgate.8.gz").read_bytes()).decode().replace("\\-", "-")
    sections = dict(re.findall(r"^\.SH \"?([A-Z ]+)\"?\n(.*?)(?=^\.SH |\Z)", roff, re.M | re.S))
    assert ".B cvmgate probe" in sections["COMMANDS"] and ".B cvmgate check-config" in sections["COMMANDS"]
    files = re.findall(r"^\.TP\n\.I (\S+)$", sections["FILES"], re.M)
    for path in [CONFIG, LOGROTATE, "/var/log/cvmgate/access.log", "/var/lib/cvmgate/state.json"]:
        assert path in files, "cvmgate(8) FILES lacks " + path
    signals = " ".join(sections["SIGNALS"].split())
    assert re.search(r"SIGHUP reads --config again", signals), signals
    assert re.search(r"systemctl kill --kill-whom=main -s HUP cvmgate\s+sends SIGHUP.*%s" % re.escape(CONFIG),
                     signals), signals
    assert re.search(r"systemctl reload cvmgate\s+is not SIGHUP", signals), signals
    assert "SIGUSR2 reopens the access log" in signals and LOGROTATE in signals, signals
    assert "signals:" not in sections["DESCRIPTION"], "the signals paragraph moved to SIGNALS"
    assert "cvmgate.env" not in roff


class Root:
    """A throw-away root with an empty dpkg database; dpkg runs the maintainer scripts on this host with
    $DPKG_ROOT pointing here, and stubs of the live-system commands record any call."""

    def __init__(self, path):
        self.path = path
        for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "var/log"]:
            (path / d).mkdir(parents=True)
        for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"]:
            (path / f).touch()
        # What a host with systemd has before cvmgate comes.
        for d in ["etc/systemd/system", "run", "var/lib/private", "var/log/private"]:
            (path / d).mkdir(parents=True)
        self.stubs = path.parent / (path.name + "-stubs")
        self.stubs.mkdir()
        self.calls = path.parent / (path.name + "-calls")
        for cmd in LIVE_COMMANDS:
            stub = self.stubs / cmd
            stub.write_text('#!/bin/sh\necho "%s $*" >> "%s"\n' % (cmd, self.calls))
            stub.chmod(0o755)
        self.env = dict(os.environ, DEBIAN_FRONTEND="noninteractive",
                        PATH="%s:%s" % (self.stubs, os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")))
        self.empty = self.entries()

    def dpkg(self, *args, expect=0):
        # --log: dpkg --root still logs to the host's /var/log/dpkg.log unless told otherwise.
        return run("dpkg", "--root", self.path, "--log", self.path / "var/log/dpkg.log", "--force-script-chrootless",
                   "--force-depends", *args, expect=expect, env=self.env)

    def status(self):
        p = subprocess.run(["dpkg-query", "--admindir", str(self.path / "var/lib/dpkg"), "-W",
                            "-f", "${Status} ${Version}", "cvmgate"], capture_output=True, text=True, timeout=60)
        return p.stdout.strip() if p.returncode == 0 else "not installed"

    def conffiles(self):
        """The package's conffiles as dpkg's database has them: path -> flags ("" or "obsolete")."""
        p = subprocess.run(["dpkg-query", "--admindir", str(self.path / "var/lib/dpkg"), "-W",
                            "-f", "${Conffiles}", "cvmgate"], capture_output=True, text=True, timeout=60)
        return {line.split()[0]: " ".join(line.split()[2:]) for line in p.stdout.splitlines() if line.strip()}

    def live_calls(self):
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def ran(self):
        """What a start of the unit leaves, as systemd lays it out with DynamicUser=yes: the registry and
        the WireGuard key (StateDirectory=), the access log and a rotated one (LogsDirectory=), the admin
        socket (RuntimeDirectory=); and the link `systemctl enable` makes."""
        for kind in ["lib", "log"]:
            private = self.path / ("var/%s/private/cvmgate" % kind)
            private.mkdir(mode=0o700 if kind == "lib" else 0o750)
            (self.path / ("var/%s/cvmgate" % kind)).symlink_to("private/cvmgate")
        (self.path / "var/lib/cvmgate/state.json").write_text('{"apps": {}, "instances": {}}\n')
        (self.path / "var/lib/cvmgate/wg.key").write_text("key\n")
        (self.path / "var/log/cvmgate/access.log").write_text("ts=1 sni=a-443.gw.example.com\n")
        (self.path / "var/log/cvmgate/access.log.1.gz").write_bytes(gzip.compress(b"ts=0\n"))
        (self.path / "run/cvmgate").mkdir()
        (self.path / "run/cvmgate/admin.sock").touch()
        wants = self.path / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir()
        (wants / "cvmgate.service").symlink_to("/lib/systemd/system/cvmgate.service")

    def entries(self, files_only=False):
        """Every path under the root (or every file), but dpkg's own database and log."""
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*")
                      if not str(p.relative_to(self.path)).startswith(("var/lib/dpkg", "var/log/dpkg.log"))
                      and (p.is_file() or not files_only))


def host_state():
    state = {}
    for path in HOST_PATHS:
        try:
            st = os.lstat(path)
            state[path] = (st.st_mode, st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            state[path] = None
    p = subprocess.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "cvmgate"], capture_output=True, text=True)
    state["dpkg-query cvmgate"] = p.stdout
    try:
        log = Path("/var/log/dpkg.log").read_text(errors="replace")
        state["host dpkg.log mentions cvmgate"] = log.count(" cvmgate")
    except FileNotFoundError:
        pass
    return state


@pytest.fixture
def host_untouched():
    before = host_state()
    yield
    assert host_state() == before, "something was written outside the throw-away root"


def test_install_upgrade_remove_purge(debs, tmp_path, host_untouched):
    v1, v2 = debs
    version1, version2 = field(v1, "Version"), field(v2, "Version")
    root = Root(tmp_path / "root")

    out = root.dpkg("-i", v1)
    assert root.status() == "install ok installed " + version1, out
    assert "systemctl enable --now cvmgate" in out, "first install says how to start it"
    for path, mode in FILES.items():
        st = os.lstat(root.path / path)
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, 0, 0), path
    assert run(root.path / "usr/sbin/cvmgate", "--version").strip() == "cvmgate " + BASE_VERSION
    assert run(root.path / "usr/sbin/cvmgatectl", "--help").startswith("usage: cvmgatectl")
    # DynamicUser=yes, StateDirectory= and LogsDirectory=: systemd makes the user, /var/lib/private/cvmgate
    # and /var/log/private/cvmgate at start.
    assert not (root.path / "var/lib/cvmgate").exists() and not (root.path / "etc/passwd").exists()
    assert not (root.path / "var/log/cvmgate").exists()
    assert "check-config --config %s" % CONFIG in out, "first install says how to check the config"
    assert "cvmgate.env" not in out
    assert root.live_calls() == [], "a maintainer script touched the live system under DPKG_ROOT"
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", "--root=%s" % root.path, "cvmgate.service"],
                                capture_output=True, text=True, timeout=60)
        problems = [l for l in verify.stderr.splitlines() if re.search(r"Unknown|Invalid|Failed to parse|bad", l)]
        assert not problems, problems
        security = subprocess.run(["systemd-analyze", "security", "--offline=true", "--root=%s" % root.path,
                                   "cvmgate.service"], capture_output=True, text=True, timeout=60)
        level = re.search(r"Overall exposure level for cvmgate.service: ([0-9.]+)", security.stdout)
        assert level and float(level.group(1)) <= 2.5, security.stdout + security.stderr

    # The gateway ran and was enabled, and the admin edited its config.
    root.ran()
    private = root.path / "var/lib/private/cvmgate"
    logs = root.path / "var/log/private/cvmgate"
    wants = root.path / "etc/systemd/system/multi-user.target.wants"
    conf = root.path / CONFIG.lstrip("/")
    conf.write_text(conf.read_text().replace('base-domain = ["gw.example.com"]', 'base-domain = ["gw.test"]'))
    edited = conf.read_text()
    assert "gw.test" in edited

    out = root.dpkg("--force-confold", "--force-confdef", "-i", v2)
    assert root.status() == "install ok installed " + version2, out
    assert "systemctl enable --now cvmgate" not in out, "an upgrade is not a first install"
    assert "cvmgate.env" not in out, out
    assert conf.read_text() == edited, "the upgrade kept the admin's config"
    assert "a default new in" in Path(str(conf) + ".dpkg-dist").read_text(), "the new default beside it"
    assert (private / "wg.key").read_text() == "key\n" and (wants / "cvmgate.service").is_symlink()
    assert (logs / "access.log").exists()
    assert root.live_calls() == []

    root.dpkg("-r", "cvmgate")
    assert root.status() == "deinstall ok config-files " + version2
    for path in FILES:
        assert ("/" + path in CONFFILES) == (root.path / path).exists(), path
    assert conf.read_text() == edited, "removal keeps the configuration"
    assert (private / "state.json").exists(), "removal keeps the registry"
    assert (logs / "access.log").exists() and (root.path / "var/log/cvmgate").is_symlink(), "and the logs"

    out = root.dpkg("-P", "cvmgate")
    assert root.status() == "not installed"
    assert "no packages found matching cvmgate" in run("dpkg", "--root", root.path, "-l", "cvmgate", expect=1)
    assert root.entries() == root.empty, "purge left: %s" % sorted(set(root.entries()) - set(root.empty))
    assert not os.path.lexists(root.path / "var/log/cvmgate"), "purge removes the access logs"
    assert root.live_calls() == []


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, timeout=60)


def package_at(commit):
    """The version tools/package gave a build of COMMIT, and what its package shipped that this one
    does not: (version, maintainer scripts, the contents of cvmgate.env or None, the TOML config?)."""
    if git("cat-file", "-e", commit + "^{commit}").returncode != 0:
        pytest.skip("commit %s is not in this checkout's history" % commit)
    base = re.search(r"version\s*:\s*'([^']+)'", git("show", commit + ":meson.build").stdout).group(1)
    count = git("rev-list", "--count", commit).stdout.strip()
    version = "%s+git%s.%s" % (base, count, git("rev-parse", "--short=7", commit).stdout.strip())
    scripts = {name: git("show", "%s:tools/debian/%s" % (commit, name)) for name in
               ["preinst", "postinst", "prerm", "postrm"]}
    scripts = {name: p.stdout for name, p in scripts.items() if p.returncode == 0}
    old_package = git("show", commit + ":tools/package").stdout
    unit = git("show", commit + ":kernel-config/systemd/cvmgate.service").stdout
    env = None
    if re.search(r"^EnvironmentFile=-?%s" % re.escape(ENV_FILE), unit, re.M):
        env = re.search(r"put - %s 0644 <<'ENV'\n(.*?\n)ENV\n" % re.escape(ENV_FILE), old_package, re.S).group(1)
    toml = git("cat-file", "-e", commit + ":kernel-config/cvmgate.toml").returncode == 0
    assert "logrotate" not in old_package
    return version, scripts, env, toml


def old_package(new_deb, commit, out):
    """The package as tools/package built it at COMMIT, made from NEW_DEB: its version, its maintainer
    scripts, and its conffiles (cvmgate.env while the unit read it; no logrotate rule)."""
    version, scripts, env, toml = package_at(commit)
    tree = out / ("tree-" + commit)
    run("dpkg-deb", "-R", new_deb, tree)
    for name in ["preinst", "postinst", "prerm", "postrm"]:
        (tree / "DEBIAN" / name).unlink()
        if name in scripts:
            (tree / "DEBIAN" / name).write_text(scripts[name])
            (tree / "DEBIAN" / name).chmod(0o755)
    (tree / LOGROTATE.lstrip("/")).unlink()
    (tree / LOGROTATE.lstrip("/")).parent.rmdir()
    if not toml:
        (tree / CONFIG.lstrip("/")).unlink()
    if env is not None:
        (tree / ENV_FILE.lstrip("/")).write_text(env)
        (tree / ENV_FILE.lstrip("/")).chmod(0o644)
    conffiles = sorted("/" + str(p.relative_to(tree)) for p in (tree / "etc").rglob("*") if p.is_file())
    (tree / "DEBIAN/conffiles").write_text("".join(c + "\n" for c in conffiles))
    control = tree / "DEBIAN/control"
    control.write_text(re.sub(r"^Version: .*$", "Version: " + version, control.read_text(), flags=re.M))
    deb = out / ("cvmgate_%s.deb" % version)
    run("dpkg-deb", "--root-owner-group", "-Zgzip", "-b", tree, deb)
    assert field(deb, "Version") == version
    return deb


def rm_conffile_bound(deb):
    scripts = "".join(run("dpkg-deb", "-I", deb, s) for s in ["preinst", "postinst", "postrm"])
    return re.search(r"rm_conffile %s (\S+) --" % re.escape(ENV_FILE), scripts).group(1)


@pytest.fixture(scope="module")
def after_bound(debs, tmp_path_factory):
    """The package with the version just after rm_conffile's bound (the first that removes cvmgate.env):
    a build of an uncommitted tree may have one below it."""
    v1, _ = debs
    bound = rm_conffile_bound(v1)
    assert bound.endswith("~"), "the bound is the first version without the file, and ~ (before it)"
    out = tmp_path_factory.mktemp("after-bound")
    tree = out / "tree"
    run("dpkg-deb", "-R", v1, tree)
    control = tree / "DEBIAN/control"
    control.write_text(re.sub(r"^Version: .*$", "Version: " + bound[:-1], control.read_text(), flags=re.M))
    deb = out / ("cvmgate_%s.deb" % bound[:-1])
    run("dpkg-deb", "--root-owner-group", "-Zgzip", "-b", tree, deb)
    return deb


@pytest.mark.parametrize("via_obsolete", [False, True], ids=["direct", "via-obsolete"])
@pytest.mark.parametrize("edited", [False, True], ids=["unedited", "edited"])
def test_upgrade_from_a_package_that_shipped_cvmgate_env(after_bound, tmp_path, host_untouched, edited,
                                                         via_obsolete):
    """The packages that shipped cvmgate.env, and the one after (to which an upgrade kept it as an
    obsolete conffile), upgrade to this one: rm_conffile deletes the file, or keeps an admin's edit as
    cvmgate.env.dpkg-bak and says to move its flags into cvmgate.toml; purge deletes that too."""
    new = after_bound
    env_deb = old_package(new, ENV_SHIPPED_AT, tmp_path)
    root = Root(tmp_path / "root")
    env = root.path / ENV_FILE.lstrip("/")
    bak = Path(str(env) + ".dpkg-bak")

    out = root.dpkg("-i", env_deb)
    assert root.conffiles() == {ENV_FILE: ""}, out
    assert sorted(os.listdir(env.parent)) == ["cvmgate.env"]
    root.ran()
    if edited:
        env.write_text(env.read_text().replace("gw.example.com", "gw.test"))
    admins = env.read_text()
    if via_obsolete:
        out = root.dpkg("-i", old_package(new, ENV_LEFT_AT, tmp_path))
        assert root.conffiles() == {ENV_FILE: "obsolete", CONFIG: ""}, out
        assert env.read_text() == admins, "that upgrade left it"

    out = root.dpkg("-i", new)
    assert root.status() == "install ok installed " + field(new, "Version"), out
    assert ENV_FILE not in root.conffiles() or root.conffiles()[ENV_FILE] == "obsolete", root.conffiles()
    assert not env.exists(), "the obsolete conffile is gone"
    shipped = tmp_path / "shipped"
    run("dpkg-deb", "-x", new, shipped)
    for conffile in CONFFILES:
        assert (root.path / conffile.lstrip("/")).read_bytes() == (shipped / conffile.lstrip("/")).read_bytes()
    if edited:
        assert bak.read_text() == admins, "the admin's edit is kept"
        notice = " ".join(out.split())
        assert "%s is no longer read" % ENV_FILE in notice and str(ENV_FILE) + ".dpkg-bak" in notice, out
        assert "Move its flags into %s" % CONFIG in notice, out
        assert "cvmgate check-config --config %s" % CONFIG in notice, out
    else:
        assert not bak.exists() and "no longer read" not in out, out
    assert sorted(os.listdir(env.parent)) == sorted(["cvmgate.toml"] + (["cvmgate.env.dpkg-bak"] if edited else []))
    assert "systemctl enable --now cvmgate" not in out, "an upgrade is not a first install"
    # Another upgrade leaves the kept copy alone and says nothing more about it.
    out = root.dpkg("-i", new)
    assert "no longer read" not in out and bak.exists() == edited, out
    assert root.live_calls() == []

    root.dpkg("-r", "cvmgate")
    assert bak.exists() == edited, "removal keeps the configuration"
    root.dpkg("-P", "cvmgate")
    assert root.entries() == root.empty, "purge left: %s" % sorted(set(root.entries()) - set(root.empty))
    assert root.live_calls() == []


def test_a_failed_upgrade_puts_cvmgate_env_back(after_bound, tmp_path, host_untouched):
    """An upgrade from a package that shipped cvmgate.env which fails at unpacking (here: another package
    owns a file of the new one) leaves the old package and the admin's cvmgate.env as they were."""
    new = after_bound
    env_deb = old_package(new, ENV_SHIPPED_AT, tmp_path)
    other = tmp_path / "other"
    (other / "DEBIAN").mkdir(parents=True)
    (other / "DEBIAN/control").write_text("Package: cvmgate-test-other\nVersion: 1\nArchitecture: all\n"
                                          "Maintainer: test <test@example.com>\nDescription: test\n")
    (other / LOGROTATE.lstrip("/")).parent.mkdir(parents=True)
    (other / LOGROTATE.lstrip("/")).write_text("# another package's\n")
    run("dpkg-deb", "--root-owner-group", "-b", other, tmp_path / "other.deb")
    root = Root(tmp_path / "root")
    root.dpkg("-i", env_deb, tmp_path / "other.deb")
    env = root.path / ENV_FILE.lstrip("/")
    env.write_text(env.read_text() + "# edited by the admin\n")
    admins = env.read_text()

    out = root.dpkg("-i", new, expect=1)
    assert "trying to overwrite '%s'" % LOGROTATE in out, out
    # The new preinst had set the file aside, and the new postrm (abort-upgrade) put it back.
    assert re.search(r"Reinstalling \S*%s that was backed-up" % re.escape(ENV_FILE), out), out
    assert root.status() == "install ok installed " + field(env_deb, "Version"), out
    assert env.read_text() == admins, "the upgrade put it back"
    assert sorted(os.listdir(env.parent)) == ["cvmgate.env"], out
    assert root.live_calls() == []

    root.dpkg("-P", "cvmgate", "cvmgate-test-other")
    assert root.entries() == root.empty, "purge left: %s" % sorted(set(root.entries()) - set(root.empty))


def test_purge_keeps_files_the_package_did_not_ship(debs, tmp_path, host_untouched):
    v1, _ = debs
    root = Root(tmp_path / "root")
    root.dpkg("-i", v1)
    (root.path / "etc/cvmgate/gw.example.com.pem").write_text("certificate\n")
    out = root.dpkg("-P", "cvmgate")
    assert root.status() == "not installed"
    assert "kept /etc/cvmgate" in out, out
    assert root.entries() == sorted(root.empty + ["etc/cvmgate", "etc/cvmgate/gw.example.com.pem"])


def test_install_over_a_tools_install_copy_warns_about_its_unit(debs, tmp_path, host_untouched):
    v1, _ = debs
    root = Root(tmp_path / "root")
    run(REPO / "tools" / "install", "--root", root.path, "--binaries", BINARIES)
    out = root.dpkg("-i", v1)
    assert root.status().startswith("install ok installed"), out
    assert "installed by tools/install" in out and "/etc/systemd/system/cvmgate.service" in out, out
    root.dpkg("-P", "cvmgate")
    run(REPO / "tools" / "uninstall", "--root", root.path, "--purge")
    assert root.entries(files_only=True) == []


def test_bad_package_arguments_are_refused(tmp_path):
    assert "unknown argument" in package(tmp_path, "--frobnicate", expect=2)
    assert "has no '-'" in package(tmp_path, "--version", "1.0-1", expect=1)
    assert "not a valid Debian version" in package(tmp_path, "--version", "1.0 beta", expect=1)
    assert "not found" in run(REPO / "tools" / "package", "--binaries", tmp_path / "none", "--out", tmp_path,
                              expect=1)
    assert list(tmp_path.glob("*.deb")) == []
