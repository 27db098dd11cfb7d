"""The benchmark harness in smoke mode: a few seconds against Tollgate and the simulator, so that
scripts/bench.sh, scripts/bench.py and the k6 scripts in load-tests/ cannot rot unnoticed.
The full benchmark (BENCHMARKS.md) is not run here."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke(tmp_path):
    out = tmp_path / "report.json"
    p = subprocess.run(
        [str(ROOT / "scripts" / "bench.sh"), "--smoke", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "BENCH_PYTHON": sys.executable},
    )
    assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-2000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "smoke"
    assert report["versions"]["k6"].startswith("v")
    assert report["machine"]["nproc"] >= 1 and report["machine"]["kernel"]
    assert list(report["targets"]) == ["direct", "tollgate"]

    for name, t in report["targets"].items():
        assert t["status"] == "ok", (name, t["status"])
        step = t["fixed"]["200"]
        assert step["reqs"] > 0 and step["rps"] > 0, (name, step)
        assert step["errors"] == 0 and step["failed"] == 0, (name, step)
        assert 0 < step["p50_ms"] <= step["p99_ms"] < 1000, (name, step)
        # CPU read from /proc over the process tree, and peak RSS (VmHWM)
        assert step["cpu_s"] > 0 and 0 < t["cpu_s_per_10k"] < 1000, (name, t["cpu_s_per_10k"])
        assert 0 < t["peak_rss_mib"] < 4096, (name, t["peak_rss_mib"])
        c1 = t["c1"]
        assert c1["errors"] == 0 and c1["pairs"] > 0
        assert 0 < c1["target_p50_us"] < 1e6 and math.isfinite(c1["added_p50_us"])
        s = t["stream"]
        assert s["errors"] == 0, (name, s)
        assert 0 < s["target_ttft_p50_ms"] < 1000 and 0 < s["target_gap_mean_ms"] < 1000, s
        assert math.isfinite(s["added_ttft_p50_ms"]) and math.isfinite(s["added_gap_mean_ms"])
        for workload in ("k6_stream", "k6_mixed"):
            w = t[workload]
            assert w["reqs"] > 0 and w["errors"] == 0, (name, workload, w)

    tg = report["targets"]["tollgate"]
    # figures relative to direct are filled in for the target
    assert math.isfinite(tg["fixed"]["200"]["added_p50_ms"])
    assert math.isfinite(tg["k6_mixed"]["added_p50_ms"])
    # and the Markdown tables name every target
    assert "| tollgate |" in p.stdout and "| direct |" in p.stdout
