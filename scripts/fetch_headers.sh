#!/usr/bin/env bash
# Fetch the build dependencies of the C++ core from the Debian archive, offline-friendly:
#   - ONNX Runtime C/C++ API headers (Debian trixie: libonnxruntime-dev; the library itself is
#     loaded at run time)
#   - nlohmann/json (Debian: nlohmann-json3-dev; header-only)
#   - PCRE2 with its JIT (Debian: libpcre2-dev): the tokenizer's pre-tokenizer regular
#     expressions; header + static libpcre2-8.a
#   - utf8proc (Debian: libutf8proc-dev): Unicode normalization (NFC/NFKC...) for tokenizers
#     that ask for it; header + static libutf8proc.a
# The two static libraries are position-independent on Debian (built as PIE), so CMake merges
# their objects into libtandem.a and the Python extension: apps and wheels need nothing extra.
# The same script serves `make`, CI and wheel builds (pip install . runs it through CMake when
# the files are missing).
# Uses a private apt state under $DEST, so the system apt configuration is untouched.
# Skips the download when the files are already there, or when the caller points the build
# at its own copies (ORT_INCLUDE_DIR / JSON_INCLUDE_DIR / PCRE2_ROOT / UTF8PROC_ROOT, each a
# prefix with include/ and lib/ or the Debian layout).
set -euo pipefail
DEST=${1:-third_party}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
ROOT="$DEST/root"
have_lib() {  # $1: library file name; true when the Debian layout under $ROOT has it
  compgen -G "$ROOT/usr/lib/*/$1" > /dev/null || [ -f "$ROOT/usr/lib/$1" ]
}
need=()
if [ -z "${ORT_INCLUDE_DIR:-}" ] && [ ! -f "$ROOT/usr/include/onnxruntime/onnxruntime_cxx_api.h" ]; then
  need+=(libonnxruntime-dev)
fi
if [ -z "${JSON_INCLUDE_DIR:-}" ] && [ ! -f "$ROOT/usr/include/nlohmann/json.hpp" ]; then
  need+=(nlohmann-json3-dev)
fi
if [ -z "${PCRE2_ROOT:-}" ] && { [ ! -f "$ROOT/usr/include/pcre2.h" ] || ! have_lib libpcre2-8.a; }; then
  need+=(libpcre2-dev)
fi
if [ -z "${UTF8PROC_ROOT:-}" ] && { [ ! -f "$ROOT/usr/include/utf8proc.h" ] || ! have_lib libutf8proc.a; }; then
  need+=(libutf8proc-dev)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "fetching build dependencies: ${need[*]}"
APT="$DEST/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main' > "$APT/sources.list"
A=(-o Dir::Etc::sourcelist="$APT/sources.list" -o Dir::Etc::sourceparts=/dev/null
   -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache" -o Debug::NoLocking=1)
if ! apt-get "${A[@]}" -qq update; then
  echo "error: could not reach the Debian archive to fetch ${need[*]}." >&2
  echo "       Set ORT_INCLUDE_DIR / JSON_INCLUDE_DIR / PCRE2_ROOT / UTF8PROC_ROOT to existing copies instead." >&2
  exit 1
fi
(cd "$APT" && apt-get "${A[@]}" -qq download "${need[@]}")
for deb in "$APT"/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
rm -f "$APT"/*.deb
test -f "$ROOT/usr/include/onnxruntime/onnxruntime_cxx_api.h" || [ -n "${ORT_INCLUDE_DIR:-}" ]
have_lib libpcre2-8.a || [ -n "${PCRE2_ROOT:-}" ]
have_lib libutf8proc.a || [ -n "${UTF8PROC_ROOT:-}" ]
echo "build dependencies in $ROOT/usr"
