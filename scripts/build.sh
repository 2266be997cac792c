#!/usr/bin/env bash
# Configures (once) and builds into build/. CUDA is compiled in when nvcc is found (PATH or /usr/local/cuda).
# Extra arguments go to `meson setup` on the first configure, e.g. scripts/build.sh -Dcuda=disabled.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
BUILD=${BUILD:-build}
if [ ! -f "$BUILD/build.ninja" ]; then
  mkdir -p "$BUILD"; meson setup "$BUILD" "$@" > "$BUILD/setup.log" 2>&1 || {
    cat "$BUILD/setup.log"; echo "meson setup failed (log: $BUILD/meson-logs/meson-log.txt)"; exit 1; }
  grep -E "WARNING|Cuda compiler|Compiler for language cuda" "$BUILD/setup.log" || true
fi
ninja -C "$BUILD"
