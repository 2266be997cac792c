#!/usr/bin/env bash
# On the GPU machine, one command: build into build-gpu/, run the CUDA suite (CUDA vs the CPU reference, outputs
# poisoned), the same suite under compute-sanitizer memcheck, the CPU suite, and the kernel benchmark.
#   bash scripts/gpu_check.sh [--no-sanitizer] [--no-bench] [--no-cpu]
# The GPU machine has no fmt package: copy /usr/include/fmt to .deps/include/fmt beforehand (git ignores .deps) and
# send it along. Logs go to $OUT (or /tmp).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/cuda/bin:$PATH
OUT=${OUT:-/tmp}
sanitizer=1 bench=1 cpu=1
for a in "$@"; do
  case "$a" in --no-sanitizer) sanitizer=0 ;; --no-bench) bench=0 ;; --no-cpu) cpu=0 ;; esac
done
args=(-Dcuda=enabled)
if ! pkg-config --exists fmt 2>/dev/null; then
  [ -d .deps/include/fmt ] || { echo "no fmt headers: copy /usr/include/fmt to .deps/include/fmt"; exit 1; }
  args+=(-Dfmt_include=.deps/include)
fi
[ -f build-gpu/build.ninja ] || meson setup build-gpu "${args[@]}" >"$OUT/setup.log" 2>&1 || { tail -30 "$OUT/setup.log"; exit 1; }
ninja -C build-gpu >"$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head -30; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
rc=0
echo "== CUDA suite"
build-gpu/tests/nt_cuda_tests --no-colors >"$OUT/cuda_tests.log" 2>&1 || rc=1
grep -E "ERROR|THREW|test cases|assertions" "$OUT/cuda_tests.log" | head -40
if [ $cpu = 1 ]; then
  echo "== CPU suite"
  build-gpu/tests/nt_tests --no-colors >"$OUT/cpu_tests.log" 2>&1 || rc=1
  grep -E "test cases" "$OUT/cpu_tests.log"
fi
if [ $sanitizer = 1 ]; then
  echo "== CUDA suite under compute-sanitizer memcheck"
  compute-sanitizer --tool memcheck --leak-check no --report-api-errors no --error-exitcode 9 build-gpu/tests/nt_cuda_tests --no-colors \
    >"$OUT/sanitizer.log" 2>&1 || rc=1
  grep -E "ERROR SUMMARY|test cases|Invalid|THREW" "$OUT/sanitizer.log" | head -20
fi
if [ $bench = 1 ]; then
  echo "== benchmark"
  build-gpu/examples/bench_kernels 2>&1 | tee "$OUT/bench.txt"
fi
exit $rc
