#!/usr/bin/env bash
# Semantic-cache quality (hit and false-hit rates per threshold and embedder, on Banking77 and
# QQP): the method is in scripts/cache_eval.rs.
#   scripts/cache_eval.sh [--embedders static,minilm] [--thresholds 0.8,0.9] [--threads N]
# Data dir: $TOLLGATE_DATA, else <repo>/../shared/data/paraphrase (QQP is evaluation-only data:
# it is read there, never copied into the repo). Models: $TOLLGATE_MODELS, else <repo>/models,
# fetched with scripts/fetch-models.sh when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

data="${TOLLGATE_DATA:-$PWD/../shared/data/paraphrase}"
models="${TOLLGATE_MODELS:-$PWD/models}"
for f in banking77_test.csv qqp_pairs_10k.csv; do
  if [ ! -s "$data/$f" ]; then
    echo "cache_eval: $data/$f missing (set TOLLGATE_DATA)" >&2
    exit 1
  fi
done
for m in static minilm; do
  for f in config.json model.safetensors tokenizer.json; do
    if [ ! -s "$models/$m/$f" ]; then
      TOLLGATE_MODELS="$models" scripts/fetch-models.sh
      break 2
    fi
  done
done

cargo run --release --example cache_eval -- --data "$data" --models "$models" "$@"
