#!/usr/bin/env bash
# One device call for branch wip/attn-ws (fifteenth session; delete when merged):
#   run(command="bash scripts/gpu_wip_run.sh", carry=[".deps", "data"])
# The final state with flash_attention version 7 as the default: the CUDA suite, the GPU cases of the CPU suite,
# bench_nsa 8k-64k, and the NSA + MoE and dense train_lm smoke runs with their profiles.
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
step tests 120 build-gpu/tests/nt_tests --no-colors -tc="*CUDA*,*GPU*,*cuda*,*offload*,pin_memory*,NSA selection on tensor cores*"
grep -E "ERROR|THREW|test cases|assertions" "$OUT/tests.log" | head -20
step nsa 200 build-gpu/examples/bench_nsa fused_max_t=0
grep -E "^[0-9]|NSA|dense|branch" "$OUT/nsa.log" | cut -c1-170 | head -40
NSAMOE="model=small model.attention=nsa model.mlp=moe model.dim=1024 model.heads=8 model.kv_heads=2 model.seq=4096 model.nsa.block=32 model.nsa.stride=16 model.nsa.select_block=64 model.nsa.n_select=16 model.nsa.window=512 model.moe.n_routed=64 model.moe.top_k=6 model.moe.n_shared=2 model.moe.expert_hidden=256 training.batch=2 training.warmup=10 training.eval_every=100 training.log_every=10"
for v in 4 7; do
  NT_ATTENTION_KERNEL=$v step train 150 build-gpu/examples/train_lm $NSAMOE training.steps=60 training.profile_steps=3 training.out=/tmp/r$v
done
grep -E "^==|rc=|^step .*tok/s|GPU profile|attn_" "$OUT/train.log" | cut -c1-200 | head -40
echo "total $(($(date +%s) - T0))s"
