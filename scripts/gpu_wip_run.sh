#!/usr/bin/env bash
# One device call for branch wip/table-cache (written 2026-12-06, fourteenth session; delete when merged):
#   run(command="bash scripts/gpu_wip_run.sh", carry=[".deps", "data"])
# Verifies the per-layout table cache (ops/device_tables.h) on the GPU and measures it against NT_TABLE_CACHE=0 in
# the same run (NSA + MoE LM at the paper's NSA configuration; the dense default). ~5 min. Also the compression's
# block gather with a gather backward (nsa_block_rows, nsa/compress.cpp; its GPU test "CompressionMLP on CUDA"):
# in the profiles, scatter_add_kernel<float, long> (~2.9 ms a step before) should be gone.
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
NSAMOE="model=small model.attention=nsa model.mlp=moe model.dim=1024 model.heads=8 model.kv_heads=2 model.seq=4096 model.nsa.block=32 model.nsa.stride=16 model.nsa.select_block=64 model.nsa.n_select=16 model.nsa.window=512 model.moe.n_routed=64 model.moe.top_k=6 model.moe.n_shared=2 model.moe.expert_hidden=256 training.batch=2 training.warmup=10 training.eval_every=100 training.log_every=10"
for tc in 0 1; do
  NT_TABLE_CACHE=$tc step train 150 build-gpu/examples/train_lm $NSAMOE training.steps=60 training.profile_steps=3 training.out=/tmp/r$tc
  NT_TABLE_CACHE=$tc step train 100 build-gpu/examples/train_lm training.steps=60 training.log_every=10 training.eval_every=100 training.profile_steps=3 training.out=/tmp/rd$tc
done
grep -E "^==|rc=|^step .*tok/s|GPU profile|host:" "$OUT/train.log" | cut -c1-200 | head -60
grep -A12 "^host:" "$OUT/train.log"
echo "total $(($(date +%s) - T0))s"
