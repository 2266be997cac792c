#!/usr/bin/env bash
# Device run for wip/deferred-checks (delete when merged).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/cuda/bin:$PATH
OUT=${OUT:-/tmp}
T0=$(date +%s)
step() { local log=$1 lim=$2; shift 2; local s=$(date +%s); echo "== $* (t=$((s - T0))s)" | tee -a "$OUT/$log.log"
  timeout "$lim" "$@" >>"$OUT/$log.log" 2>&1; local rc=$?; echo "   rc=$rc in $(($(date +%s) - s))s" | tee -a "$OUT/$log.log"; return $rc; }
[ -f build-gpu/build.ninja ] || step build 60 meson setup build-gpu -Dcuda=enabled -Dfmt_include=.deps/include
step build 240 ninja -C build-gpu -j16 || { grep -E "error|FAILED" "$OUT/build.log" | head -30; exit 1; }
step tests 100 build-gpu/tests/nt_cuda_tests --no-colors -tc="uploads*,index checks*,moe_dispatch*,tensors move*"
step tests 100 build-gpu/tests/nt_tests --no-colors -tc="DeepSeekMoE on CUDA*"
grep -E "ERROR|THREW|test cases|assertions|ERROR SUMMARY" "$OUT/tests.log" | head -20
NSAMOE="model=small model.attention=nsa model.mlp=moe model.dim=1024 model.heads=8 model.kv_heads=2 model.seq=4096 model.nsa.block=32 model.nsa.stride=16 model.nsa.select_block=64 model.nsa.n_select=16 model.nsa.window=512 model.moe.n_routed=64 model.moe.top_k=6 model.moe.n_shared=2 model.moe.expert_hidden=256 training.batch=2 training.warmup=10 training.eval_every=100 training.log_every=10"
for st in 0 1; do
  NT_UPLOAD_STAGING=$st step train 150 build-gpu/examples/train_lm $NSAMOE training.steps=60 training.profile_steps=3 training.out=/tmp/r$st
done
step train 150 build-gpu/examples/train_lm $NSAMOE model.moe.aux_free=true training.steps=30 training.out=/tmp/raf
for st in 0 1; do
  NT_UPLOAD_STAGING=$st step train 150 build-gpu/examples/train_lm training.steps=60 training.log_every=10 training.eval_every=100 training.profile_steps=3 training.out=/tmp/rd$st
done
grep -E "^==|rc=|^step .*tok/s|GPU profile|host:" "$OUT/train.log" | cut -c1-200 | head -60
grep -A12 "^host:" "$OUT/train.log"
echo "total $(($(date +%s) - T0))s"
