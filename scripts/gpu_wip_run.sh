#!/usr/bin/env bash
# One device call for branch wip/rotary-cache (written in the fifteenth session, never run; delete when merged):
#   run(command="bash scripts/gpu_wip_run.sh", carry=[".deps", "data"])
# Checks, in order: (1) the CUDA suite: flash_attention also runs "version 8" (version 7 with the experimental
# TMA-reduce dQ, NT_ATTENTION_BWD_DQ=tma) and new shapes (T = 40 at D = 128; 140 packed sequences, 2 heads per
# backward block; a window of INT_MAX); attn_bwd_ws stores dS^T between its dV and dK issues; nsa_selected runs
# version 6; AdamW's device clip (clip_grad_norm_async) and one-launch step against the CPU;
# (2) the GPU cases of the CPU suite (new: "Rotary tables built on the host apply on CUDA");
# (3) bench_nsa 8k and 64k: default (with dense and a profile), NT_NSA_SLC_KERNEL=6 (the experimental
# warp-specialized selected forward, nsa_slc_fwd_ws), NT_ATTENTION_BWD_DQ=tma (64k);
# (4) NSA + MoE and dense train_lm profiles: uploads per 3 steps were 642 and 84 before the rotary tables stayed on
# the device (expected: far fewer; dense about 12); AdamW is now one launch and the clip reads nothing back;
# (5) the dQ A/B on bench_kernels attention, default then NT_ATTENTION_BWD_DQ=tma;
# (6) with NCU=1: Nsight Compute on one attn_bwd_ws launch and on the selected-branch and selection kernels at 16k.
# ~7 min in all (Nsight Compute only with NCU=1); the steps that matter come first and their logs survive a kill.
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
step tests 60 build-gpu/tests/nt_tests --no-colors -tc="*CUDA*,*GPU*,*cuda*,*offload*,pin_memory*,NSA selection on tensor cores*"
grep -E "ERROR|THREW|test cases|assertions|logged: forward kernel" "$OUT/tests.log" | head -30
step nsa 100 build-gpu/examples/bench_nsa T=8192,65536 fused_max_t=0 profile=1
NT_NSA_SLC_KERNEL=6 step nsa 60 build-gpu/examples/bench_nsa T=8192,65536 fused_max_t=0 dense=0
NT_ATTENTION_BWD_DQ=tma step nsa 60 build-gpu/examples/bench_nsa T=65536 fused_max_t=0 dense=0
grep -E "^==|rc=|NSA|dense|branch|attn_|nsa_" "$OUT/nsa.log" | cut -c1-160 | head -60
NSAMOE="model=small model.attention=nsa model.mlp=moe model.dim=1024 model.heads=8 model.kv_heads=2 model.seq=4096 model.nsa.block=32 model.nsa.stride=16 model.nsa.select_block=64 model.nsa.n_select=16 model.nsa.window=512 model.moe.n_routed=64 model.moe.top_k=6 model.moe.n_shared=2 model.moe.expert_hidden=256 training.batch=2 training.warmup=10 training.eval_every=100 training.log_every=10"
step train 70 build-gpu/examples/train_lm $NSAMOE training.steps=40 training.profile_steps=3 training.out=/tmp/r1
step train 30 build-gpu/examples/train_lm training.steps=60 training.log_every=10 training.eval_every=100 training.profile_steps=3 training.out=/tmp/rd1
NT_ADAMW_PER_TENSOR=1 step train 30 build-gpu/examples/train_lm training.steps=60 training.log_every=10 training.eval_every=100 training.profile_steps=3 training.out=/tmp/rd2
grep -E "^==|rc=|^step .*tok/s|GPU profile|host:|copy host to device|adamw" "$OUT/train.log" | cut -c1-200 | head -30
for dq in red tma; do NT_ATTENTION_BWD_DQ=$dq step bench 60 build-gpu/examples/bench_kernels --only=attention; done
grep -E "^==|^fwd" "$OUT/bench.log"
[ "${NCU:-0}" = 1 ] || { echo "total $(($(date +%s) - T0))s (NCU=1 adds Nsight Compute)"; exit 0; }
step ncu 120 ncu --clock-control none --kernel-name-base mangled -k regex:attn_bwd_ws -c 1 --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis build-gpu/examples/bench_kernels --no-torch --only=attention
grep -vE "^==PROF==|^\s*$" "$OUT/ncu.log" | tail -70
step ncu_nsa 150 ncu --clock-control none --kernel-name-base mangled -k "regex:nsa_slc_fwd|nsa_slc_walk|nsa_select_tc" -c 3 --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis build-gpu/examples/bench_nsa T=16384 fused_max_t=0
grep -vE "^==PROF==|^\s*$" "$OUT/ncu_nsa.log" | grep -E "nsa_|Throughput|Hit Rate|Stall|Eligible|Occupancy|Registers|Duration" | head -80
echo "total $(($(date +%s) - T0))s"
