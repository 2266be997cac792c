#!/usr/bin/env bash
# One device call for branch wip/fused-slc-dq (written 2026-12-06, twelfth session; delete when merged):
#   run(command="bash scripts/gpu_wip_run.sh", carry=[".deps"], kind nvidia-h200)
# Verifies and measures: NSA selected versions 4 (dq fused into dk/dv) and 5 (block-major forward), the grouped
# GEMM's 16-byte epilogue stores, the MoE layer's V3 case from main; profiles the grouped weight gradient.
# The device returns at most 8 files from $OUT: everything goes into 6.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/cuda/bin:$PATH
OUT=${OUT:-/tmp}
T0=$(date +%s)
step() {  # step LOG LIMIT CMD...: appends to $OUT/LOG.log
  local log=$1 lim=$2; shift 2
  local s=$(date +%s)
  echo "== $* (t=$((s - T0))s)" | tee -a "$OUT/$log.log"
  timeout "$lim" "$@" >>"$OUT/$log.log" 2>&1
  local rc=$?
  echo "   rc=$rc in $(($(date +%s) - s))s" | tee -a "$OUT/$log.log"
  return $rc
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
[ -f build-gpu/build.ninja ] || step build 60 meson setup build-gpu -Dcuda=enabled -Dfmt_include=.deps/include
step build 240 ninja -C build-gpu -j16 || { grep -E "error|FAILED" "$OUT/build.log" | head -30; exit 1; }
step tests 200 build-gpu/tests/nt_cuda_tests --no-colors
step tests 90 build-gpu/tests/nt_tests --no-colors -tc="*CUDA*,*GPU*,*cuda*"
step tests 200 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 build-gpu/tests/nt_cuda_tests \
  --no-colors -tc="nsa_selected_attention*,*grouped*"
grep -E "ERROR|THREW|test cases|assertions|ERROR SUMMARY" "$OUT/tests.log" | head -40
for v in 3 4 5; do
  step nsa 150 env NT_NSA_SLC_KERNEL=$v build-gpu/examples/bench_nsa T=65536 fused_max_t=0 profile=1
done
grep -E "^NT_|== |NSA branch|branch  |dense causal|nsa_slc|attn_|select" "$OUT/nsa.log" | head -80
for st in 1 0; do
  for tok in 8192 4096; do
    step moe 90 env NT_GROUPED_STORE16=$st build-gpu/examples/bench_moe layer=0 offload_layers=0 tokens=$tok
  done
done
grep -E "== |our|alone" "$OUT/moe.log" | head -60
step ncu 150 ncu --clock-control none --target-processes application-only --kernel-name-base mangled \
  -k "regex:grouped_gemm_kernelILi256ELi128ELb1ELb0E" --launch-skip 2 --launch-count 1 --section SpeedOfLight \
  --section MemoryWorkloadAnalysis --section WarpStateStats --section SourceCounters -o "$OUT/wgrad" \
  build-gpu/examples/bench_moe layer=0 tokens=4096
ncu --import "$OUT/wgrad.ncu-rep" --page details >>"$OUT/ncu.log" 2>&1
ncu --import "$OUT/wgrad.ncu-rep" --page source --print-source sass --csv >"$OUT/wgrad_sass.csv" 2>&1
rm -f "$OUT/wgrad.ncu-rep"
grep -E "Duration|Throughput|Hit Rate|Warp Cycles" "$OUT/ncu.log" | head -20
# Mutations (the selected case must fail): version 5 with every slot 0; version 4 without dq's scale.
sed -i 's/= __int_as_float(slot);/= __int_as_float(slot >= 0 ? 0 : -1);/' cuda/nsa_selected_sm90.cu
step mutation 120 ninja -C build-gpu -j16 tests/nt_cuda_tests
step mutation 90 env NT_NSA_SLC_KERNEL=5 build-gpu/tests/nt_cuda_tests --no-colors -tc="nsa_selected_attention*"
git checkout cuda/nsa_selected_sm90.cu
sed -i 's/(float)a.scale, a, warp, lane);/1.f, a, warp, lane);/' cuda/nsa_selected_sm90.cu
step mutation 120 ninja -C build-gpu -j16 tests/nt_cuda_tests
step mutation 90 env NT_NSA_SLC_KERNEL=4 build-gpu/tests/nt_cuda_tests --no-colors -tc="nsa_selected_attention*"
git checkout cuda/nsa_selected_sm90.cu
grep -E "== |rc=|test cases|assertions" "$OUT/mutation.log"
echo "total $(($(date +%s) - T0))s"
