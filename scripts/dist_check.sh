#!/usr/bin/env bash
# Starts N local processes of build-gpu/examples/dist_check (one per GPU) with the variables torchrun would set.
#   bash scripts/dist_check.sh 2     # BUILD=build to use another build folder
set -uo pipefail
cd "$(dirname "$0")/.."
n=${1:-2}
bin=${BUILD:-build-gpu}/examples/dist_check
[ -x "$bin" ] || { echo "dist_check: $bin missing (build with CUDA and NCCL first)"; exit 1; }
port=$((20000 + RANDOM % 20000))
pids=()
for ((r = 0; r < n; r++)); do
  RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$bin" & pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
exit $rc
