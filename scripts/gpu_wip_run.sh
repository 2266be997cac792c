#!/usr/bin/env bash
# One device call for branch wip/rotary-cache (fifteenth session; delete when merged):
#   run(command="bash scripts/gpu_wip_run.sh", carry=[".deps", "data"])
# Rotary tables copied to the GPU once (nn/rotary.cpp) and the review's fixes to attn_bwd_ws (dS^T stored between
# the dV and dK issues) and flash_attention's window (>= max_len means none): the CUDA suite (new flash_attention
# shapes: T = 40 at D = 128, 140 packed sequences so the wgmma backwards walk 2 heads a block), the GPU cases of
# the CPU suite (one new: "Rotary tables built on the host apply on CUDA"), the NSA + MoE and dense train_lm
# profiles (uploads per 3 steps: 642 and 84 in this session's first run).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/cuda/bin:$PATH
OUT=${OUT:-/tmp}
T0=$(date +%s)
step() { local log=$1 lim=$2; shift 2; local s=$(date +%s); echo "== $* (t=$((s - T0))s)" | tee -a "$OUT/$log.log"
  timeout "$lim" "$@" >>"$OUT/$log.log" 2>&1; local rc=$?; echo "   rc=$rc in $(($(date +%s) - s))s" | tee -a "$OUT/$log.log"; return $rc; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
[ -f build-gpu/build.ninja ] || step build 60 meson setup build-gpu -Dcuda=enabled -Dfmt_include=.deps/include
step build 200 ninja -C build-gpu -j16 tests/nt_tests tests/nt_cuda_tests examples/train_lm || { grep -E "error|FAILED" "$OUT/build.log" | head -30; exit 1; }
step tests 120 build-gpu/tests/nt_cuda_tests --no-colors
step tests 60 build-gpu/tests/nt_tests --no-colors -tc="*CUDA*,*GPU*,*cuda*,*offload*,pin_memory*,NSA selection on tensor cores*"
grep -E "ERROR|THREW|test cases|assertions" "$OUT/tests.log" | head -20
NSAMOE="model=small model.attention=nsa model.mlp=moe model.dim=1024 model.heads=8 model.kv_heads=2 model.seq=4096 model.nsa.block=32 model.nsa.stride=16 model.nsa.select_block=64 model.nsa.n_select=16 model.nsa.window=512 model.moe.n_routed=64 model.moe.top_k=6 model.moe.n_shared=2 model.moe.expert_hidden=256 training.batch=2 training.warmup=10 training.eval_every=100 training.log_every=10"
step train 80 build-gpu/examples/train_lm $NSAMOE training.steps=20 training.profile_steps=3 training.out=/tmp/r1
step train 30 build-gpu/examples/train_lm training.steps=30 training.log_every=10 training.eval_every=100 training.profile_steps=3 training.out=/tmp/rd1
grep -E "^==|rc=|^step .*tok/s|GPU profile|host:|copy host to device" "$OUT/train.log" | cut -c1-200 | head -30
echo "total $(($(date +%s) - T0))s"
