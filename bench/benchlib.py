# Helpers shared by cvmgate's benchmark scripts: building the tools, ports, process CPU, bounded waits.
"""Shared by bench/passthrough_bulk.py and bench/terminate.py."""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BUILD = BENCH / ".build"
CXXFLAGS = ["-std=c++20", "-O2", "-Wall", "-Wextra", "-Werror"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_size(s):
    s = s.strip()
    mul = 1
    for suf, m in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if s.endswith(suf):
            s, mul = s[: -len(suf)], m
            break
    return int(s) * mul


def fmt_size(n):
    for unit, m in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m} {unit}"
    return f"{n} B"


def build_tools(names, libs=()):
    """Builds bench/NAME.cc into bench/.build/NAME when the binary is missing or older than its source."""
    BUILD.mkdir(parents=True, exist_ok=True)
    for name in names:
        src, out = BENCH / f"{name}.cc", BUILD / name
        if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
            continue
        cmd = ["g++", *CXXFLAGS, str(src), "-o", str(out), *libs]
        log("building: " + " ".join(cmd))
        subprocess.run(cmd, check=True, timeout=300)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_ticks(pid):
    """utime + stime of the whole process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def tree_ticks(pid):
    """proc_ticks of pid and every live descendant (e.g. nginx's master and workers)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += proc_ticks(p)
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return total


def proc_sockets(pid):
    """Number of socket fds the process holds (pipes are pooled by cvmgate, so not counted)."""
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    n += 1
            except OSError:
                pass
    except OSError:
        return -1
    return n


def cpu_times():
    """Per-CPU jiffies from /proc/stat: {cpu index: [user, nice, system, idle, iowait, irq, softirq, steal]}."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                out[int(parts[0][3:])] = [int(x) for x in parts[1:9]]
    return out


def cpu_usage(before, after):
    """{cpu: (busy fraction, steal fraction)} between two cpu_times() samples; iowait counts as idle."""
    res = {}
    for cpu, a in after.items():
        d = [y - x for x, y in zip(before.get(cpu, a), a)]
        total = sum(d)
        if total > 0:
            busy = d[0] + d[1] + d[2] + d[5] + d[6]
            res[cpu] = (busy / total, d[7] / total)
    return res


def proc_status(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def wait_for_port(port, seconds, proc=None):
    """True once 127.0.0.1:port accepts a connection; False on timeout or when proc exits."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.02)
    return False


def stop_process(p, grace=5.0):
    """SIGTERM, then SIGKILL after grace seconds. Returns (returncode, killed)."""
    if p.poll() is not None:
        return p.returncode, False
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout=grace), False
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait(timeout=5), True


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()


class Sink:
    """bench/sink.cc as a backend: `mode` sink or rr, extra flags, stats on demand (SIGUSR1)."""

    def __init__(self, cpus, start_timeout, mode="sink", flags=()):
        self.port = free_port()
        cmd = [str(BUILD / "sink"), mode, "--listen", f"127.0.0.1:{self.port}", *flags]
        self.errfile = tempfile.TemporaryFile(mode="w+")
        self.p = subprocess.Popen(taskset(cpus) + cmd, stdout=subprocess.PIPE, stderr=self.errfile)
        self.buf = b""
        line = self._line(start_timeout)
        if line != "ready":
            stop_process(self.p)
            raise RuntimeError(f"sink did not become ready (got {line!r})")

    def _line(self, timeout):
        dl = Deadline(timeout)
        fd = self.p.stdout.fileno()
        while b"\n" not in self.buf:
            left = dl.left()
            if left <= 0 or self.p.poll() is not None:
                return None
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode().strip()

    def stats(self):
        self.p.send_signal(signal.SIGUSR1)
        line = self._line(5.0)
        if line is None:
            raise RuntimeError("sink did not answer SIGUSR1")
        return json.loads(line)

    def stop(self):
        rc, killed = stop_process(self.p)
        self.errfile.seek(0)
        return rc, killed, self.errfile.read()


class Process:
    """A server process with its log; ready when its port accepts connections."""

    def __init__(self, name, cmd, port, cpus, logpath, start_timeout, ready_text=None):
        self.name, self.port, self.logpath = name, port, logpath
        self.logf = open(logpath, "wb")
        self.p = subprocess.Popen(taskset(cpus) + cmd, stdout=self.logf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        ok = wait_for_port(port, start_timeout, self.p)
        if ok and ready_text:  # cvmgate also says when its routes are loaded
            dl = Deadline(start_timeout)
            while ready_text not in logpath.read_bytes() and dl.left() > 0 and self.p.poll() is None:
                time.sleep(0.02)
            ok = ready_text in logpath.read_bytes()
        if not ok:
            self.stop()
            raise RuntimeError(f"{name} did not start: {self.log_tail()}")

    def ticks(self):
        return tree_ticks(self.p.pid)

    def alive(self):
        return self.p.poll() is None

    def log_tail(self, n=4):
        try:
            return " | ".join(self.logpath.read_text(errors="replace").strip().splitlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        rc, killed = stop_process(self.p)
        self.logf.close()
        return rc, killed


def add_product_args(ap, products):
    """The flags both comparison harnesses take: where each product's binary is, and which products run."""
    ap.add_argument("--cvmgate", type=Path, default=ROOT / "build" / "tools" / "cvmgate")
    ap.add_argument("--cvmgate-arg", action="append", default=[], help="extra cvmgate flag, repeatable")
    ap.add_argument("--haproxy", default="/usr/sbin/haproxy")
    ap.add_argument("--nginx", default="/usr/sbin/nginx")
    ap.add_argument("--products", default=",".join(products))


def check_products(ap, args, known):
    """The --products list, each known and installed (exits with what to install otherwise)."""
    products = [p for p in args.products.split(",") if p]
    for p in products:
        if p not in known:
            ap.error(f"unknown product {p} (have {', '.join(known)})")
    for name, path in (("cvmgate", args.cvmgate), ("haproxy", Path(args.haproxy)), ("nginx", Path(args.nginx))):
        if any(p.startswith(name) for p in products) and not os.access(path, os.X_OK):
            ap.exit(1, f"{ap.prog}: {name} not found at {path} (tools/setup --bench installs HAProxy and nginx)\n")
    if any(p.startswith("nginx") for p in products) and not os.path.exists(NGINX_STREAM_MODULE):
        ap.exit(1, f"{ap.prog}: nginx's stream module is missing ({NGINX_STREAM_MODULE}; apt libnginx-mod-stream)\n")
    return products


def rotated(products, reps):
    """(rep, product) for every repetition, the product order rotated by one each time, so drift in the
    machine spreads over all products alike."""
    for rep in range(reps):
        for product in products[rep % len(products):] + products[:rep % len(products)]:
            yield rep, product


def finish_report(problems, clean_text, json_path, results, rows):
    """Prints the problems (or clean_text), writes the per-run JSON, and returns the exit status."""
    print()
    if problems:
        print("### problems seen\n")
        for p in problems:
            print(f"- {p}")
    else:
        print(clean_text)
    if json_path:
        json_path.write_text(json.dumps({"results": results, "rows": rows}, indent=1))
    return 1 if problems else 0


def taskset(cpus):
    return ["taskset", "-c", cpus] if cpus else []
