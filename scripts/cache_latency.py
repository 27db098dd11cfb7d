#!/usr/bin/env python3
"""End-to-end cache latency through the gateway: an exact hit, a semantic hit (static
embedder) and a miss to the zero-delay simulator, measured in one run on one keep-alive
connection, one request at a time, the rows interleaved. Prints a markdown table with p50/p99
and ratios to the miss.

  .venv/bin/python scripts/cache_latency.py [--n 2000]

Needs target/release/{tollgate,tollgate-sim} and models/static (scripts/fetch-models.sh).
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(port: int) -> None:
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} did not open")


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    models = os.environ.get("TOLLGATE_MODELS", str(ROOT / "models"))
    tmp = Path(tempfile.mkdtemp())
    sim_port, gw_port = free_port(), free_port()
    (tmp / "rules.yaml").write_text("rules: []\n")
    (tmp / "gateway.yaml").write_text(
        f"listen: 127.0.0.1:{gw_port}\naccess_log: access.log\n"
        f"providers:\n  sim: {{kind: openai, base_url: 'http://127.0.0.1:{sim_port}/v1'}}\n"
        "models: [{id: sim/gpt-4o-mini, aliases: [gpt-4o-mini]}]\n"
        "cache:\n  mode: exact\n"
        f"  semantic:\n    embedder: {{kind: static, path: {models}/static}}\n    threshold: 0.9\n")
    procs = [
        subprocess.Popen([str(BIN / "tollgate-sim"), "--listen", f"127.0.0.1:{sim_port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    wait(sim_port)
    procs.append(subprocess.Popen([str(BIN / "tollgate"), "run", "--config",
                                   str(tmp / "gateway.yaml")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait(gw_port)
    conn = http.client.HTTPConnection("127.0.0.1", gw_port)

    def call(content: str, headers: dict) -> tuple[float, str]:
        body = json.dumps({"model": "gpt-4o-mini",
                           "messages": [{"role": "user", "content": content}]})
        t = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body,
                     {"content-type": "application/json", **headers})
        r = conn.getresponse()
        r.read()
        return time.perf_counter() - t, r.getheader("x-tollgate-cache", "")

    try:
        call("How do I reset my password?", {})
        time.sleep(0.2)
        runs = {
            "miss (new question each time)": lambda i: call(f"question number {i} about fees", {}),
            "cache off": lambda i: call("How do I reset my password?", {"x-tollgate-cache": "off"}),
            "exact hit": lambda i: call("How do I reset my password?", {}),
            "semantic hit": lambda i: call("how do i reset my password",
                                           {"x-tollgate-cache": "semantic"}),
        }
        for fn in runs.values():
            for i in range(100):
                fn(-i - 1)
        # Interleaved, so that drift in the machine's load hits every row alike.
        times = {name: [] for name in runs}
        statuses = {name: set() for name in runs}
        for i in range(args.n):
            for name, fn in runs.items():
                t, status = fn(i)
                times[name].append(t)
                statuses[name].add(status)
        results = {name: (percentile(times[name], 0.5), percentile(times[name], 0.99),
                          statuses[name]) for name in runs}
        base = results["miss (new question each time)"][0]
        print(f"n={args.n} per row, one connection, zero-delay simulator\n")
        print("| request | p50 µs | p99 µs | p50 / miss p50 | x-tollgate-cache |")
        print("|---|---|---|---|---|")
        for name, (p50, p99, statuses) in results.items():
            print(f"| {name} | {p50 * 1e6:.0f} | {p99 * 1e6:.0f} | {p50 / base:.2f} | "
                  f"{', '.join(sorted(s or 'none' for s in statuses))} |")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


if __name__ == "__main__":
    main()
