#!/usr/bin/env bash
# One device call for branch wip/copy-vec (written 2026-12-06, thirteenth session; delete when merged):
#   run(command="bash scripts/gpu_wip_run.sh", carry=[".deps", "data"])
# Verifies and measures: contiguous f32 <-> bf16 casts with 16-byte accesses (also the attention backward's f32
# accumulators), same-dtype copies in 4/8/16-byte chunks of a contiguous innermost dim (permutes, broadcasts), the
# selection kernel's fold without divisions by d; Nsight Systems on an NSA + MoE training run (host stalls). At most 8
# files come back from $OUT (7 here). Merge what passes and is faster.
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
step tests 120 build-gpu/tests/nt_tests --no-colors -tc="*CUDA*,*GPU*,*cuda*,NSA selection on tensor cores*"
step tests 100 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 build-gpu/tests/nt_cuda_tests \
  --no-colors -tc="tensors move*"
grep -E "ERROR|THREW|test cases|assertions|ERROR SUMMARY" "$OUT/tests.log" | head -20
step bench 120 build-gpu/examples/bench_kernels --only=memory
grep -vE "^\s*$" "$OUT/bench.log" | head -30
step nsa 100 build-gpu/examples/bench_nsa T=65536 fused_max_t=0 profile=1
grep -E "== |NSA|branch  |dense|%  " "$OUT/nsa.log" | head -30
step train 150 build-gpu/examples/train_lm model=small model.attention=nsa model.mlp=moe model.dim=1024 model.heads=8 \
  model.kv_heads=2 model.seq=4096 model.nsa.block=32 model.nsa.stride=16 model.nsa.select_block=64 \
  model.nsa.n_select=16 model.nsa.window=512 model.moe.n_routed=64 model.moe.top_k=6 model.moe.n_shared=2 \
  model.moe.expert_hidden=256 training.steps=60 training.batch=2 training.warmup=10 training.eval_every=20 \
  training.log_every=10 training.profile_steps=3 training.out=/tmp/run_nsa_moe
grep -E "^step|profile|%  " "$OUT/train.log" | head -40
# Where the host stalls the GPU in training (~69% busy under CUPTI, 2026-12-06): CUDA API time by call (syncs,
# uploads from pageable memory) over 20 steps, if Nsight Systems is installed.
if command -v nsys >/dev/null; then
  step nsys 150 nsys profile -o /tmp/train_nsys --force-overwrite true --trace cuda --sample none --cpuctxsw none \
    build-gpu/examples/train_lm model=small model.attention=nsa model.mlp=moe model.dim=1024 model.heads=8 \
    model.kv_heads=2 model.seq=4096 model.nsa.block=32 model.nsa.stride=16 model.nsa.select_block=64 \
    model.nsa.n_select=16 model.nsa.window=512 model.moe.n_routed=64 model.moe.top_k=6 model.moe.n_shared=2 \
    model.moe.expert_hidden=256 training.steps=20 training.batch=2 training.eval_every=100 training.out=/tmp/run_nsys
  nsys stats --report cuda_api_sum --report cuda_gpu_mem_time_sum --report cuda_gpu_mem_size_sum \
    /tmp/train_nsys.nsys-rep >>"$OUT/nsys.log" 2>&1
  head -60 "$OUT/nsys.log"
else
  echo "nsys not installed" | tee "$OUT/nsys.log"
fi
# Mutations (the copy test must fail): chunked copies without the stride division; the cast reading element 0.
cp cuda/copy.cu /tmp/copy.keep
sed -i 's|  for (int d = 0; d + 1 < l.nd; ++d) l.stride\[d\] /= r;|  (void)0;|' cuda/copy.cu
step mutation 150 ninja -C build-gpu -j16
step mutation 60 build-gpu/tests/nt_cuda_tests --no-colors -tc="tensors move*"
cp /tmp/copy.keep cuda/copy.cu
sed -i 's|r.v\[k\] = convert<D, S>(a.v\[k\]);|r.v[k] = convert<D, S>(a.v[0]);|' cuda/copy.cu
step mutation 150 ninja -C build-gpu -j16
step mutation 60 build-gpu/tests/nt_cuda_tests --no-colors -tc="tensors move*"
cp /tmp/copy.keep cuda/copy.cu
# The selection's fold with the weights reversed (overlap o weighs as min(l, l') - o): the selection test must fail.
cp cuda/nsa_select.cu /tmp/select.keep
sed -i 's|if (ov > 0) acc += colsum\[p \* kKeys + cc\] \* weight\[ov\];|if (ov > 0) acc += colsum[p * kKeys + cc] * weight[min(a.l, a.lp) - ov];|' cuda/nsa_select.cu
grep -c "weight\[min(a.l, a.lp) - ov\]" cuda/nsa_select.cu | tee -a "$OUT/mutation.log"
step mutation 150 ninja -C build-gpu -j16
step mutation 60 build-gpu/tests/nt_tests --no-colors -tc="NSA selection on tensor cores*"
cp /tmp/select.keep cuda/nsa_select.cu
grep -E "== |rc=|test cases|assertions" "$OUT/mutation.log"
echo "total $(($(date +%s) - T0))s"
