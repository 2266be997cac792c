#!/bin/bash
# Builds on this machine (no GPU) the binaries a device call runs, strips and gzips them into build-bin/ (~20 MB of the
# 64 MiB a call may carry): `run` with carry ["build-bin"] and `bash scripts/carry_check.sh ...`, which unpacks them
# there (docs/cuda.md). build-bin is emptied first, so build mutants (scripts/build_mutant.sh) after this.
# Every CUDA source is touched first: Debian 12's meson (1.0.1) records no header dependencies for CUDA objects,
# so an edited .cuh would otherwise leave stale objects in the binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build-dev/build.ninja ] || meson setup build-dev -Dblas=disabled -Dcuda=enabled
touch cuda/*.cu
targets=(tests/nt_cuda_tests tests/nt_tests examples/bench_nsa examples/bench_kernels)
ninja -C build-dev "${targets[@]}"
rm -rf build-bin && mkdir -p build-bin
for t in "${targets[@]}"; do strip -o "build-bin/$(basename "$t")" "build-dev/$t" && gzip -9f "build-bin/$(basename "$t")"; done
du -sh build-bin
echo "built from $(git rev-parse --short HEAD)$(git diff --quiet || echo ' plus uncommitted changes')"
