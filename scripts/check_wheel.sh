#!/usr/bin/env bash
# Packaging check (`make wheel-check`, run by CI):
#   1. builds the sdist, then a wheel FROM that sdist with pip's build isolation: the build
#      starts from a source tree without third_party/, so it must fetch the ONNX Runtime
#      headers itself;
#   2. installs the wheel into a fresh venv with binary packages only and no compiler on PATH;
#   3. runs `tandem generate` and `tandem.load()` on the shipped default model there, and checks
#      that torch is not installed.
# Usage: scripts/check_wheel.sh [PYTHON]   (PYTHON: the dev venv's python, with scikit-build-core)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
OUT=build/wheel-check
rm -rf "$OUT"
mkdir -p "$OUT/dist"
OUT=$(cd "$OUT" && pwd)

echo "== sdist"
"$PY" -c "import sys; from scikit_build_core.build import build_sdist; print(build_sdist(sys.argv[1]))" "$OUT/dist"
SDIST=$(ls "$OUT"/dist/*.tar.gz)
if tar -tzf "$SDIST" | grep -q '/third_party/'; then
  echo "error: the sdist carries third_party/" >&2; exit 1
fi

echo "== wheel from the sdist (isolated build; fetches the headers itself)"
env -u ORT_INCLUDE_DIR -u JSON_INCLUDE_DIR "$PY" -m pip wheel -q --no-deps -w "$OUT/dist" "$SDIST"
WHEEL=$(ls "$OUT"/dist/*.whl)
echo "$WHEEL ($(du -h "$WHEEL" | cut -f1))"

echo "== fresh venv, binary-only install, no compiler"
python3 -m venv "$OUT/venv"
NOCC="$OUT/nocc"
mkdir -p "$NOCC"
for tool in cc gcc g++ c++ clang clang++ cmake ninja; do
  printf '#!/bin/sh\necho "%s: no compiler in the wheel check" >&2\nexit 1\n' "$tool" > "$NOCC/$tool"
  chmod +x "$NOCC/$tool"
done
PATH="$NOCC:$PATH" CC=false CXX=false "$OUT/venv/bin/python" -m pip install -q --only-binary=:all: "$WHEEL"
if "$OUT/venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
  echo "error: the runtime install pulled torch" >&2; exit 1
fi

echo "== run the default model from the installed wheel"
cd "$OUT"   # away from the source tree, so `tandem` is the installed package
"$OUT/venv/bin/tandem" generate --prompt "def add(a, b):" --max-new-tokens 24 --threads 1 --stats
"$OUT/venv/bin/python" - <<'PY'
import tandem
from pathlib import Path
assert "site-packages" in Path(tandem.__file__).parts, tandem.__file__
model = tandem.load(threads=1)
large = model.generate("import os\n", mode="large", max_new_tokens=16)
speed = model.generate("import os\n", mode="speed", max_new_tokens=16)
assert speed.ids == large.ids, (speed.ids, large.ids)   # lossless, from the installed wheel
print("wheel check ok:", repr(speed.text))
PY
