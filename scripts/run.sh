#!/usr/bin/env bash
# Builds and runs the gateway with the default config (conf/gateway.yaml) on 127.0.0.1:8080.
# With no API keys set, the bundled simulator answers; with OPENAI_API_KEY set, OpenAI does.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v cc >/dev/null || need+=(build-essential)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}"
fi
# The default config's semantic cache layer uses MiniLM (the static model is fetched too).
scripts/fetch-models.sh
cargo build --release --bins
exec target/release/tollgate run --config conf/gateway.yaml "$@"
