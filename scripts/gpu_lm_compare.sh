#!/usr/bin/env bash
# On the GPU machine: train_lm's throughput and MFU next to the same model in PyTorch (scripts/bench_torch_lm.py),
# in one run. Needs build-gpu/ (bash scripts/gpu_check.sh builds it) and data/brown/bpe8192 (carry "data").
#   bash scripts/gpu_lm_compare.sh [model=gpt2_small] [batch=8] [steps=60] [extra train_lm overrides ...]
set -uo pipefail
cd "$(dirname "$0")/.."
model=gpt2_small batch=8 steps=60 extra=()
for a in "$@"; do
  case "$a" in model=*) model=${a#model=} ;; batch=*) batch=${a#batch=} ;; steps=*) steps=${a#steps=} ;; *) extra+=("$a") ;; esac
done
OUT=${OUT:-/tmp}
[ -x build-gpu/examples/train_lm ] || { echo "build-gpu/examples/train_lm missing: run scripts/gpu_check.sh first"; exit 1; }
build-gpu/examples/train_lm "model=$model" data=brown_bpe training.precision=bf16 "training.batch=$batch" \
  "training.steps=$steps" training.warmup=10 training.log_every=10 training.eval_every=100000 training.eval_batches=2 \
  "training.out=$OUT/lm_$model" "${extra[@]}" 2>&1 | tee "$OUT/train_lm_$model.log"
cfg=$(build-gpu/examples/train_lm "model=$model" --print-config)
get() { echo "$cfg" | awk -v k="  $1:" 'index($0, k) == 1 {print $2; exit}'; }
vocab=$(awk -F: '/"vocab"/ {gsub(/[ ,]/, "", $2); print $2}' data/brown/bpe8192/meta.json)
python3 scripts/bench_torch_lm.py --dim "$(get dim)" --layers "$(get layers)" --heads "$(get heads)" \
  --kv-heads "$(get kv_heads)" --seq "$(get seq)" --batch "$batch" --vocab "$vocab" 2>&1 | tee -a "$OUT/train_lm_$model.log"
python3 scripts/bench_torch_lm.py --dim "$(get dim)" --layers "$(get layers)" --heads "$(get heads)" \
  --kv-heads "$(get kv_heads)" --seq "$(get seq)" --batch "$batch" --vocab "$vocab" --compile 2>&1 | tail -1 | tee -a "$OUT/train_lm_$model.log"
