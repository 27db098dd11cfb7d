#!/usr/bin/env bash
# Builds and runs the gateway with the default config (conf/gateway.yaml) on 127.0.0.1:8080.
# With no API keys set, the bundled simulator answers; with OPENAI_API_KEY set, OpenAI does.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null || ! command -v cc >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq cmake build-essential
fi
cargo build --release --bins
exec target/release/tollgate run --config conf/gateway.yaml "$@"
