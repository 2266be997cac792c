#!/usr/bin/env bash
# One device call for branch wip/attn-ws (fifteenth session; delete when merged):
#   run(command="bash scripts/gpu_wip_run.sh", carry=[".deps", "data"])
# flash_attention version 7 (cuda/attention_ws.cu: version 6's forward and a warp-specialized backward): the CUDA
# suite (flash_attention runs versions 1-7), memcheck of that case, the attention benchmark with 6 and 7 as the
# default (forward + backward), bench_nsa at 64k with versions 6 and 7.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/cuda/bin:$PATH
OUT=${OUT:-/tmp}
T0=$(date +%s)
step() { local log=$1 lim=$2; shift 2; local s=$(date +%s); echo "== $* (t=$((s - T0))s)" | tee -a "$OUT/$log.log"
  timeout "$lim" "$@" >>"$OUT/$log.log" 2>&1; local rc=$?; echo "   rc=$rc in $(($(date +%s) - s))s" | tee -a "$OUT/$log.log"; return $rc; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
[ -f build-gpu/build.ninja ] || step build 60 meson setup build-gpu -Dcuda=enabled -Dfmt_include=.deps/include
step build 240 ninja -C build-gpu -j16 || { grep -E "error|FAILED" "$OUT/build.log" | head -30; exit 1; }
step tests 200 build-gpu/tests/nt_cuda_tests --no-colors
grep -E "ERROR|THREW|test cases|assertions|CHECK|forward kernel" "$OUT/tests.log" | head -30
NT_ATTENTION_KERNEL=7 step memcheck 120 compute-sanitizer --tool memcheck build-gpu/tests/nt_cuda_tests --no-colors -tc="flash_attention*"
tail -5 "$OUT/memcheck.log"
for v in 6 7; do NT_ATTENTION_KERNEL=$v step bench 150 build-gpu/examples/bench_kernels --only=attention; done
grep -E "^==|^fwd" "$OUT/bench.log"
for v in 6 7; do NT_ATTENTION_KERNEL=$v step nsa 120 build-gpu/examples/bench_nsa T=65536 fused_max_t=0 profile=1; done
grep -E "^==|rc=|NSA|dense|branch|attn_|nsa_|select" "$OUT/nsa.log" | cut -c1-160 | head -60
echo "total $(($(date +%s) - T0))s"
