"""tools/check-layers: the source tree's includes run downward, and an upward one is named."""
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHECK = os.path.join(ROOT, "tools", "check-layers")


def run(root):
    return subprocess.run([sys.executable, CHECK, root], capture_output=True, text=True, timeout=60)


def tree(tmp_path, files):
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


def test_source_tree_keeps_its_layers():
    r = run(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("layers kept:")


def test_data_plane_including_control_is_named(tmp_path):
    root = tree(tmp_path, {
        "control/config.h": "#pragma once\n",
        "dataplane/worker.h": '#pragma once\n#include "dataplane/options.h"\n#include "control/config.h"\n',
        "dataplane/options.h": "#pragma once\n",
    })
    r = run(root)
    assert r.returncode == 1
    assert "dataplane/worker.h:3: includes control/config.h: the data plane gets options and snapshots only" in r.stdout
    assert "layers broken: 1 upward include(s)" in r.stdout


def test_kernel_layer_including_control_or_data_plane_is_named(tmp_path):
    root = tree(tmp_path, {
        "kernel-config/probe.cc": '#include "control/wireguard/nl.h"\n#include  "dataplane/tls.h"\n',
    })
    r = run(root)
    assert r.returncode == 1
    assert "kernel-config/probe.cc:1: includes control/wireguard/nl.h" in r.stdout
    assert "kernel-config/probe.cc:2: includes dataplane/tls.h" in r.stdout


def test_control_may_include_both_lower_layers(tmp_path):
    root = tree(tmp_path, {
        "control/control_plane.cc": '#include "dataplane/snapshot.h"\n#include "kernel-config/netlink.h"\n'
                                    '#include "absl/status/status.h"\n',
        "tools/cvmgate.cc": '#include "control/config.h"\n',
    })
    r = run(root)
    assert r.returncode == 0, r.stdout
