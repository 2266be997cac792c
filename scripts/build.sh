#!/usr/bin/env bash
# Configures (once) and builds into build/. CUDA is compiled in when nvcc is found (PATH or /usr/local/cuda).
# Extra arguments go to `meson setup` on the first configure, e.g. scripts/build.sh -Dcuda=disabled.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
BUILD=${BUILD:-build}
if [ ! -f "$BUILD/build.ninja" ]; then meson setup "$BUILD" "$@" >/dev/null; fi
ninja -C "$BUILD"
