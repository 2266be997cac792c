#!/usr/bin/env bash
# Device run for wip/deferred-checks (delete when merged): the final state's CUDA suite and one mutation.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/cuda/bin:$PATH
OUT=${OUT:-/tmp}
T0=$(date +%s)
step() { local log=$1 lim=$2; shift 2; local s=$(date +%s); echo "== $* (t=$((s - T0))s)" | tee -a "$OUT/$log.log"
  timeout "$lim" "$@" >>"$OUT/$log.log" 2>&1; local rc=$?; echo "   rc=$rc in $(($(date +%s) - s))s" | tee -a "$OUT/$log.log"; return $rc; }
[ -f build-gpu/build.ninja ] || step build 60 meson setup build-gpu -Dcuda=enabled -Dfmt_include=.deps/include
step build 240 ninja -C build-gpu -j16 tests/nt_cuda_tests || { grep -E "error|FAILED" "$OUT/build.log" | head -30; exit 1; }
step tests 100 build-gpu/tests/nt_cuda_tests --no-colors
grep -E "ERROR|THREW|test cases|assertions" "$OUT/tests.log" | head -10
# Mutation: raised flags ignored (the index-check test and the ops' error cases must fail).
sed -i 's|if (failed.empty() \&\& !message.empty() \&\& reinterpret_cast|if (false \&\& failed.empty() \&\& !message.empty() \&\& reinterpret_cast|' cuda/deferred_checks.cpp
grep -c "if (false" cuda/deferred_checks.cpp
step mutation 100 ninja -C build-gpu -j16 tests/nt_cuda_tests
step mutation 60 build-gpu/tests/nt_cuda_tests --no-colors -tc="index checks*,moe_dispatch*,softmax, log_softmax*,embedding*"
grep -E "test cases|assertions" "$OUT/mutation.log"
echo "total $(($(date +%s) - T0))s"
