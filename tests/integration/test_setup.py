"""tools/setup on a machine that lacks something: every command the project runs is checked after installing, and a
missing one is named with its package, so a fresh machine fails at setup, not deep inside a test or the demo."""

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "tools" / "setup"


def setup_lists():
    text = SETUP.read_text()
    packages = set(re.search(r"^packages=\((.*?)^\)", text, re.S | re.M).group(1).split())
    packages |= set(re.search(r"packages\+=\(([^)]*)\)", text).group(1).split())
    commands = re.findall(r"([\w.+/-]+):([\w.+-]+)", re.search(r"^commands=\((.*?)^\)", text, re.S | re.M).group(1))
    commands += re.findall(r"([\w.+/-]+):([\w.+-]+)", re.search(r"commands\+=\(([^)]*)\)", text).group(1))
    return packages, commands


def path_without(tmp_path, hidden):
    """A PATH holding every command of this machine's PATH but `hidden`."""
    shadow = tmp_path / "bin"
    shadow.mkdir()
    for d in os.environ["PATH"].split(":"):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            target = Path(d) / name
            if name != hidden and not (shadow / name).exists() and os.access(target, os.X_OK):
                (shadow / name).symlink_to(target)
    return str(shadow)


def test_every_checked_command_comes_from_a_package_setup_installs():
    packages, commands = setup_lists()
    assert len(commands) >= 15, commands
    for command, package in commands:
        # util-linux is Essential: on every Debian system, never in the install list.
        assert package in packages or package == "util-linux", (command, package)
    for needed in ["nft", "wg", "wireguard-go", "ip", "ping", "curl", "openssl", "nghttp", "nghttpd"]:
        assert needed in dict(commands), needed


def test_setup_check_passes_here():
    out = subprocess.run([str(SETUP), "--check"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "every command is present" in out.stdout


def test_setup_names_a_missing_command_and_its_package(tmp_path):
    env = dict(os.environ, PATH=path_without(tmp_path, "nft"))
    out = subprocess.run([str(SETUP), "--check"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 1, out
    assert "nft (package nftables)" in out.stderr, out.stderr
    assert "wg (package" not in out.stderr, out.stderr  # only what is really missing
