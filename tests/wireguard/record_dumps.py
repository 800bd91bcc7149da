"""Records the kernel's WG_CMD_GET_DEVICE answers into tests/wireguard/data/ (run inside kernel-lab, as root).

From the repository root, after building:

    tools/kernel-lab/run-in-kernel /usr/bin/python3 tests/wireguard/record_dumps.py \
        build/tests/wireguard/wg_record tests/wireguard/data

Devices and keys follow fixed rules that tests/wireguard/genl_test.cc knows:
device private keys are 32 bytes of one value, peers' public keys are
pattern(tag, i) = [tag, i >> 8, i & 255] + [0x5a] * 29. Each recording
NAME.nl comes with NAME.wg.txt, `wg show IFNAME dump` taken right after it,
which the unit test compares field by field.
"""
import base64
import os
import subprocess
import sys
import time


def key(raw):
    return base64.b64encode(bytes(raw)).decode()


def pattern(tag, i):
    return key([tag, i >> 8, i & 255] + [0x5A] * 29)


def run(*args, ns=None):
    if ns:
        args = ("ip", "netns", "exec", ns) + args
    subprocess.run(args, check=True, timeout=120)


def out(*args, ns=None):
    if ns:
        args = ("ip", "netns", "exec", ns) + args
    return subprocess.run(args, check=True, timeout=120, capture_output=True, text=True).stdout


def private_key_file(value):
    path = f"/tmp/wgrec-key-{value:02x}"
    with open(path, "w") as f:
        f.write(key([value] * 32) + "\n")
    return path


def setconf(ifname, lines, ns=None):
    path = f"/tmp/wgrec-{ifname}.conf"
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    run("wg", "setconf", ifname, path, ns=ns)


def record(recorder, datadir, name, ifname, ns=None):
    path = os.path.join(datadir, name + ".nl")
    print(out(recorder, ifname, path, ns=ns), end="")
    with open(os.path.join(datadir, name + ".wg.txt"), "w") as f:
        f.write(out("wg", "show", ifname, "dump", ns=ns))


def main():
    recorder, datadir = os.path.abspath(sys.argv[1]), sys.argv[2]

    # small: 3 peers; one is a real peer in another namespace that has
    # completed a handshake (endpoint, handshake time, byte counts), one has
    # several allowed-ips of both families and an IPv6 endpoint, one has none.
    for ns in ("wgrec-a", "wgrec-b"):
        run("ip", "netns", "add", ns)
        run("ip", "link", "set", "lo", "up", ns=ns)
    run("ip", "-n", "wgrec-a", "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", "wgrec-b")
    run("ip", "-n", "wgrec-a", "addr", "add", "192.0.2.1/24", "dev", "veth-a")
    run("ip", "-n", "wgrec-b", "addr", "add", "192.0.2.2/24", "dev", "veth-b")
    run("ip", "-n", "wgrec-a", "link", "set", "veth-a", "up")
    run("ip", "-n", "wgrec-b", "link", "set", "veth-b", "up")
    priv_a, priv_b = private_key_file(0x10), private_key_file(0x20)
    a_pub = subprocess.run(["wg", "pubkey"], input=open(priv_a).read(), capture_output=True, text=True,
                           check=True).stdout.strip()
    b_pub = subprocess.run(["wg", "pubkey"], input=open(priv_b).read(), capture_output=True, text=True,
                           check=True).stdout.strip()
    run("ip", "-n", "wgrec-a", "link", "add", "wgsmall", "type", "wireguard")
    run("ip", "-n", "wgrec-b", "link", "add", "wgsmall-b", "type", "wireguard")
    setconf("wgsmall", ["[Interface]", f"PrivateKey = {key([0x10] * 32)}", "ListenPort = 51820",
                        "[Peer]", f"PublicKey = {b_pub}", "AllowedIPs = 10.0.0.2/32",
                        "[Peer]", f"PublicKey = {pattern(0xA2, 0)}",
                        "AllowedIPs = 10.0.0.3/32, 10.1.0.0/16, fd00::3/128",
                        "Endpoint = [2001:db8::3]:51823",
                        "[Peer]", f"PublicKey = {pattern(0xA3, 0)}"], ns="wgrec-a")
    setconf("wgsmall-b", ["[Interface]", f"PrivateKey = {key([0x20] * 32)}", "ListenPort = 51821",
                          "[Peer]", f"PublicKey = {a_pub}", "AllowedIPs = 10.0.0.1/32",
                          "Endpoint = 192.0.2.1:51820"], ns="wgrec-b")
    run("ip", "-n", "wgrec-a", "addr", "add", "10.0.0.1/8", "dev", "wgsmall")
    run("ip", "-n", "wgrec-b", "addr", "add", "10.0.0.2/8", "dev", "wgsmall-b")
    run("ip", "-n", "wgrec-a", "link", "set", "wgsmall", "up")
    run("ip", "-n", "wgrec-b", "link", "set", "wgsmall-b", "up")
    # A keepalive makes B start a handshake at once; switch it off after, so
    # the byte counters hold still between the recording and `wg show`.
    run("wg", "set", "wgsmall-b", "peer", a_pub, "persistent-keepalive", "1", ns="wgrec-b")
    deadline = time.monotonic() + 60
    while True:
        handshakes = out("wg", "show", "wgsmall", "latest-handshakes", ns="wgrec-a")
        if any(line.split()[1] != "0" for line in handshakes.splitlines()):
            break
        if time.monotonic() > deadline:
            sys.exit("no handshake between the two namespaces within 60 s")
        time.sleep(0.1)
    run("wg", "set", "wgsmall-b", "peer", a_pub, "persistent-keepalive", "0", ns="wgrec-b")
    record(recorder, datadir, "small", "wgsmall", ns="wgrec-a")

    # empty: a fresh device, no private key, no peers.
    run("ip", "link", "add", "wgempty", "type", "wireguard")
    record(recorder, datadir, "empty", "wgempty")

    # many_peers: 1000 peers, more than one message holds.
    run("ip", "link", "add", "wgmany", "type", "wireguard")
    lines = ["[Interface]", f"PrivateKey = {key([0x30] * 32)}", "ListenPort = 51830"]
    for i in range(1000):
        lines += ["[Peer]", f"PublicKey = {pattern(0xC0, i)}", f"AllowedIPs = 10.1.{i >> 8}.{i & 255}/32"]
    setconf("wgmany", lines)
    record(recorder, datadir, "many_peers", "wgmany")

    # many_allowedips: one peer whose 3000 allowed-ips span several
    # messages, and a peer after it.
    run("ip", "link", "add", "wgbig", "type", "wireguard")
    ips = ", ".join(f"10.2.{j >> 8}.{j & 255}/32" for j in range(3000))
    setconf("wgbig", ["[Interface]", f"PrivateKey = {key([0x40] * 32)}", "ListenPort = 51840",
                      "[Peer]", f"PublicKey = {pattern(0xD1, 0)}", f"AllowedIPs = {ips}",
                      "[Peer]", f"PublicKey = {pattern(0xD2, 0)}", "AllowedIPs = 10.3.0.1/32"])
    record(recorder, datadir, "many_allowedips", "wgbig")
    print("kernel", os.uname().release)


if __name__ == "__main__":
    main()
