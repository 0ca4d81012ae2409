#!/usr/bin/env bash
# Fetch the header-only build dependencies of the C++ core, offline-friendly:
#   - ONNX Runtime C/C++ API headers (Debian trixie: libonnxruntime-dev)
#   - nlohmann/json (Debian: nlohmann-json3-dev)
# Uses a private apt state under $DEST, so the system apt configuration is untouched.
# Skips the download when the headers are already there, or when the caller points the
# build at its own copies (ORT_INCLUDE_DIR / JSON_INCLUDE_DIR).
set -euo pipefail
DEST=${1:-third_party}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
ROOT="$DEST/root"
need=()
if [ -z "${ORT_INCLUDE_DIR:-}" ] && [ ! -f "$ROOT/usr/include/onnxruntime/onnxruntime_cxx_api.h" ]; then
  need+=(libonnxruntime-dev)
fi
if [ -z "${JSON_INCLUDE_DIR:-}" ] && [ ! -f "$ROOT/usr/include/nlohmann/json.hpp" ]; then
  need+=(nlohmann-json3-dev)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "fetching headers: ${need[*]}"
APT="$DEST/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main' > "$APT/sources.list"
A=(-o Dir::Etc::sourcelist="$APT/sources.list" -o Dir::Etc::sourceparts=/dev/null
   -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache" -o Debug::NoLocking=1)
if ! apt-get "${A[@]}" -qq update; then
  echo "error: could not reach the Debian archive to fetch ${need[*]}." >&2
  echo "       Set ORT_INCLUDE_DIR / JSON_INCLUDE_DIR to existing header folders instead." >&2
  exit 1
fi
(cd "$APT" && apt-get "${A[@]}" -qq download "${need[@]}")
for deb in "$APT"/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
rm -f "$APT"/*.deb
test -f "$ROOT/usr/include/onnxruntime/onnxruntime_cxx_api.h" || [ -n "${ORT_INCLUDE_DIR:-}" ]
echo "headers in $ROOT/usr/include"
