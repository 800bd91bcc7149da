"""Captures real TLS ClientHello bytes from real clients into the fixture files beside this script, and verifies them."""
# Usage (from any directory, with the system Python 3):
#   /usr/bin/python3 tests/data/hello/capture.py            capture every fixture
#   /usr/bin/python3 tests/data/hello/capture.py curl.bin   capture just the named ones
#   /usr/bin/python3 tests/data/hello/capture.py --verify   parse every .bin, print a table, exit 1 on error
#
# A capture listens on 127.0.0.1 on an ephemeral port, starts one client
# against it, reads whole TLS records until the complete ClientHello handshake
# message is in (it may span several records), writes exactly those bytes,
# and closes the connection without answering. The client then fails, which
# is expected.

import os
import socket
import ssl
import struct
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
SNI = "app-8443s.example.test"
READ_TIMEOUT = 15.0

CONTENT_HANDSHAKE = 22
HS_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43


class HelloError(Exception):
    pass


# ---------------------------------------------------------------- parsing


def split_records(data):
    """Split bytes into (content_type, version, payload) TLS records; all bytes must be used."""
    records = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 5:
            raise HelloError("truncated record header at offset %d" % pos)
        ctype, ver, length = struct.unpack_from("!BHH", data, pos)
        if pos + 5 + length > len(data):
            raise HelloError("record at offset %d claims %d bytes, only %d left"
                             % (pos, length, len(data) - pos - 5))
        records.append((ctype, ver, data[pos + 5:pos + 5 + length]))
        pos += 5 + length
    return records


def handshake_complete(hs):
    """True when hs holds at least one whole handshake message."""
    if len(hs) < 4:
        return False
    length = int.from_bytes(hs[1:4], "big")
    return len(hs) >= 4 + length


def parse_hello(data):
    """Parse a captured file; return a dict describing the ClientHello.

    Requires: only handshake records, a single ClientHello message that ends
    exactly at the end of the last record.
    """
    records = split_records(data)
    if not records:
        raise HelloError("empty file")
    hs = b""
    for i, (ctype, _ver, payload) in enumerate(records):
        if ctype != CONTENT_HANDSHAKE:
            raise HelloError("record %d has content type %d, not 22" % (i, ctype))
        if not payload:
            raise HelloError("record %d is empty" % i)
        hs += payload
    if hs[0] != HS_CLIENT_HELLO:
        raise HelloError("handshake type %d, not ClientHello" % hs[0])
    msg_len = int.from_bytes(hs[1:4], "big")
    if len(hs) != 4 + msg_len:
        raise HelloError("handshake message is %d bytes but records carry %d"
                         % (msg_len, len(hs) - 4))
    body = hs[4:]
    p = 0

    def take(n):
        nonlocal p
        if p + n > len(body):
            raise HelloError("ClientHello truncated at body offset %d" % p)
        out = body[p:p + n]
        p += n
        return out

    legacy_version = struct.unpack("!H", take(2))[0]
    take(32)  # random
    take(take(1)[0])  # session id
    take(struct.unpack("!H", take(2))[0])  # cipher suites
    take(take(1)[0])  # compression methods
    info = {
        "records": len(records),
        "record_sizes": [len(r[2]) for r in records],
        "hello_len": msg_len,
        "legacy_version": legacy_version,
        "sni": None,
        "alpn_count": 0,
        "supported_versions": [],
    }
    if p == len(body):
        return info
    ext_total = struct.unpack("!H", take(2))[0]
    if p + ext_total != len(body):
        raise HelloError("extensions length %d does not match body" % ext_total)
    while p < len(body):
        etype, elen = struct.unpack("!HH", take(4))
        ext = take(elen)
        if etype == EXT_SERVER_NAME:
            # server_name_list: u16 len, then (u8 type, u16 len, name)*
            lst_len = struct.unpack_from("!H", ext, 0)[0]
            if lst_len + 2 != len(ext):
                raise HelloError("bad server_name list length")
            q = 2
            while q < len(ext):
                ntype, nlen = struct.unpack_from("!BH", ext, q)
                name = ext[q + 3:q + 3 + nlen]
                if ntype == 0:
                    info["sni"] = name.decode("ascii")
                q += 3 + nlen
        elif etype == EXT_ALPN:
            q = 2
            while q < len(ext):
                q += 1 + ext[q]
                info["alpn_count"] += 1
        elif etype == EXT_SUPPORTED_VERSIONS:
            n = ext[0]
            info["supported_versions"] = [
                struct.unpack_from("!H", ext, 1 + 2 * i)[0] for i in range(n // 2)]
    return info


def version_name(v):
    return {0x0301: "TLS1.0", 0x0302: "TLS1.1", 0x0303: "TLS1.2",
            0x0304: "TLS1.3"}.get(v, hex(v))


# ---------------------------------------------------------------- capture


def read_hello(conn):
    """Read whole records from conn until a complete handshake message is in."""
    conn.settimeout(READ_TIMEOUT)
    raw = b""
    hs = b""

    def recv_exact(n):
        out = b""
        while len(out) < n:
            chunk = conn.recv(n - len(out))
            if not chunk:
                raise HelloError("client closed after %d bytes" % (len(raw) + len(out)))
            out += chunk
        return out

    while not handshake_complete(hs):
        header = recv_exact(5)
        ctype, _ver, length = struct.unpack("!BHH", header)
        if ctype != CONTENT_HANDSHAKE:
            raise HelloError("client sent content type %d" % ctype)
        payload = recv_exact(length)
        raw += header + payload
        hs += payload
    return raw


def capture(start_client):
    """Listen, run start_client(port) -> Popen or Thread, return captured bytes."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.settimeout(READ_TIMEOUT)
    port = lsock.getsockname()[1]
    client = start_client(port)
    try:
        conn, _ = lsock.accept()
        try:
            data = read_hello(conn)
        finally:
            conn.close()
    finally:
        lsock.close()
        if isinstance(client, subprocess.Popen):
            try:
                client.wait(timeout=READ_TIMEOUT)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait()
        else:
            client.join(READ_TIMEOUT)
    return data


def run_cmd(argv):
    def start(port):
        args = [a.replace("{port}", str(port)) for a in argv]
        return subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return start


def python_client(alpn=None):
    def start(port):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(alpn)

        def run():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as s:
                    with ctx.wrap_socket(s, server_hostname=SNI):
                        pass
            except (OSError, ssl.SSLError):
                pass  # the capture side hangs up without answering
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t
    return start


# About 2 KiB in all: without ALPN the hello body is ~330 bytes (OpenSSL pads
# it to 512 only when it would otherwise be 256..511); each 'proto-NNN' entry
# adds 10 bytes.
ALPN_2K = ["proto-%03d" % i for i in range(171)]
# Over 16 KiB of ALPN alone, so OpenSSL must split the hello over two records.
ALPN_20K = ["proto-%04d" % i for i in range(1800)]

CLIENTS = {
    "openssl_tls12.bin": ("openssl s_client -tls1_2", run_cmd(
        ["openssl", "s_client", "-connect", "127.0.0.1:{port}",
         "-servername", SNI, "-tls1_2"])),
    "openssl_tls13.bin": ("openssl s_client -tls1_3", run_cmd(
        ["openssl", "s_client", "-connect", "127.0.0.1:{port}",
         "-servername", SNI, "-tls1_3"])),
    "curl.bin": ("curl -k --resolve", run_cmd(
        ["curl", "-sS", "-k", "--max-time", "10", "--resolve",
         SNI + ":{port}:127.0.0.1", "https://" + SNI + ":{port}/"])),
    "python.bin": ("Python ssl default context", python_client()),
    "python_2k.bin": ("Python ssl, 171 dummy ALPN names", python_client(ALPN_2K)),
    "python_20k.bin": ("Python ssl, 1800 dummy ALPN names", python_client(ALPN_20K)),
    "no_sni.bin": ("openssl s_client -noservername", run_cmd(
        ["openssl", "s_client", "-connect", "127.0.0.1:{port}", "-noservername"])),
}

# What each fixture must look like: (expected SNI, minimum records).
EXPECT = {
    "openssl_tls12.bin": (SNI, 1),
    "openssl_tls13.bin": (SNI, 1),
    "curl.bin": (SNI, 1),
    "python.bin": (SNI, 1),
    "python_2k.bin": (SNI, 1),
    "python_20k.bin": (SNI, 2),
    "no_sni.bin": (None, 1),
}


def verify():
    ok = True
    print("%-18s %6s %7s %-8s %-14s %s" % ("file", "bytes", "records", "legacy",
                                            "versions", "sni"))
    for name in sorted(EXPECT):
        path = os.path.join(HERE, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
            info = parse_hello(data)
            want_sni, min_records = EXPECT[name]
            if info["sni"] != want_sni:
                raise HelloError("SNI %r, expected %r" % (info["sni"], want_sni))
            if info["records"] < min_records:
                raise HelloError("%d records, expected at least %d"
                                 % (info["records"], min_records))
            if name == "python_2k.bin" and not 1800 <= len(data) <= 2400:
                raise HelloError("%d bytes, expected about 2 KiB" % len(data))
            if name == "python_20k.bin" and info["hello_len"] <= 16384:
                raise HelloError("hello is only %d bytes" % info["hello_len"])
            versions = ",".join(version_name(v) for v in info["supported_versions"]) or "-"
            print("%-18s %6d %7d %-8s %-14s %s  record payloads=%s"
                  % (name, len(data), info["records"],
                     version_name(info["legacy_version"]), versions,
                     info["sni"] or "(none)", info["record_sizes"]))
        except (OSError, HelloError) as e:
            ok = False
            print("%-18s ERROR %s" % (name, e))
    return ok


def main(argv):
    if argv and argv[0] == "--verify":
        return 0 if verify() else 1
    names = argv or sorted(CLIENTS)
    for name in names:
        if name not in CLIENTS:
            print("unknown fixture %s; known: %s" % (name, " ".join(sorted(CLIENTS))))
            return 2
        desc, start = CLIENTS[name]
        data = capture(start)
        parse_hello(data)
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
        print("%s: %d bytes from %s" % (name, len(data), desc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
