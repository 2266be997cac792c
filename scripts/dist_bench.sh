#!/usr/bin/env bash
# Weak scaling of examples/train_lm over the GPUs of one host: the same per-GPU batch on 1, 2, ... GPUs (one
# process per GPU, torchrun's variables, NCCL, dist::ShardedAdamW), tokens/s and the allocator's peak memory.
#   bash scripts/dist_bench.sh [gpus=1,2] [model=gpt2_small] [batch=8] [steps=40] [training.KEY=VALUE ...]
# Other key=value arguments go to train_lm on several GPUs (e.g. training.fully_shard=true); the 1-GPU baseline
# runs without training.fully_shard / training.overlap_comm (one rank has nothing to shard).
# Needs build-gpu/ (scripts/gpu_check.sh) and data/brown/bpe8192 (scripts/prepare_bpe.sh). Logs go to $OUT (or /tmp).
set -uo pipefail
cd "$(dirname "$0")/.."
gpus=1,2 model=gpt2_small batch=8 steps=40 extra=() extra1=()
for a in "$@"; do
  case "$a" in
    gpus=*) gpus=${a#gpus=} ;; model=*) model=${a#model=} ;; batch=*) batch=${a#batch=} ;; steps=*) steps=${a#steps=} ;;
    training.fully_shard=*|training.overlap_comm=*) extra+=("$a") ;;
    *=*) extra+=("$a") extra1+=("$a") ;;
    *) echo "dist_bench: unknown argument '$a'"; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp}
bin=build-gpu/examples/train_lm
[ -x "$bin" ] || { echo "dist_bench: $bin missing: run scripts/gpu_check.sh first"; exit 1; }
args=("model=$model" data=brown_bpe training.precision=bf16 "training.batch=$batch" "training.steps=$steps"
      training.warmup=5 training.log_every=10 training.eval_every=100000 training.eval_batches=1)
printf "%-6s %12s %14s %11s %14s %18s\n" GPUs "tokens/s" "per GPU" efficiency "peak/GPU" "between steps/GPU"
base=""
for n in ${gpus//,/ }; do
  log="$OUT/dist_bench_$n.log"
  if [ "$n" = 1 ]; then
    "$bin" "${args[@]}" "${extra1[@]}" "training.out=$OUT/dist_bench_1" >"$log" 2>&1
  else
    port=$((20000 + RANDOM % 20000)) pids=()
    for ((r = 0; r < n; r++)); do
      RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
        "$bin" "${args[@]}" "${extra[@]}" "training.out=$OUT/dist_bench_$n" >"$log.$r" 2>&1 & pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    cp "$log.0" "$log"
  fi
  tps=$(grep -o "[0-9]* tok/s" "$log" | tail -1 | awk '{print $1}')
  mem=$(grep -o "peak GPU memory (allocator, this rank): [0-9.]* GiB" "$log" | awk '{print $(NF-1)}')
  held=$(grep -o "held between steps (allocator, this rank): [0-9.]* GiB" "$log" | awk '{print $(NF-1)}')
  [ -n "$tps" ] || { echo "dist_bench: no tokens/s from $n GPU(s), see $log"; tail -5 "$log"; continue; }
  [ -n "$base" ] || base=$tps
  awk -v n="$n" -v t="$tps" -v b="$base" -v m="${mem:-?}" -v h="${held:-?}" \
    'BEGIN { printf "%-6s %12s %14.0f %10.1f%% %10s GiB %14s GiB\n", n, t, t / n, 100 * t / (n * b), m, h }'
done
