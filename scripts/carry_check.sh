#!/usr/bin/env bash
# On the GPU machine, with build-bin/ carried (scripts/build_carry.sh built it here): the CUDA suite, the GPU cases of
# the CPU suite, bench_nsa once per setting given, and the CUDA suite's cases matching a filter under
# compute-sanitizer memcheck, and per --ncu kernel regex ncu's speed-of-light and memory sections (DRAM
# throughput, L2 hit rate) for the first matching launch of bench_nsa at 64k. Every step runs under its own timeout,
# so one call (600 s at most) still returns the steps before a hang (each step's limit is cut so that all end by
# 580 s); everything goes to $OUT/log.txt, each step closed by its exit status and seconds, then each step's SM clock
# (ncu's whole reports to $OUT/ncu.txt; the clock samples to $OUT/clocks.csv).
#   bash scripts/carry_check.sh [--mutant "NAME FILTER"]... [--bench "ENV=V ..."]... [--suite-env "ENV=V ..."]...
#                               [--memcheck FILTER] [--memcheck-env "ENV=V ..."] [--memcheck-bin nt_tests] [--bench-args "T=8192,65536 dense=0 fused_max_t=0 profile=1"]
#                               [--kernels "ENV=V ..."]... [--kernels-args "--only=attention --no-torch"]
#                               [--ncu KERNEL_REGEX]... [--ncu-env "ENV=V ..."]... [--no-gpu-cases]
# --mutant: right after the CUDA suite, build-bin's NAME (scripts/build_mutant.sh) on the cases matching FILTER,
# which must fail: the summary says "caught" or "NOT caught" per mutant. --kernels: bench_kernels (carried as
# build-bin/bench_kernels) once per setting, last.
# --no-gpu-cases: leaves out nt_tests' GPU cases (to save device time when only CUDA-suite code changed).
# --memcheck-env: the settings of the memcheck step (e.g. NT_TEST_ATTENTION_VERSIONS=13,14, docs/env.md);
# --memcheck-bin: the binary it checks (default nt_cuda_tests; nt_tests for the GPU cases of the CPU suite).
# --bench "": the default settings; --suite-env: the CUDA suite's NSA cases once more under those settings;
# each --ncu regex runs once per --ncu-env ("" = the default settings; none given: once, default).
# Example (docs/cuda.md): run with carry ["build-bin"] and the command
#   bash scripts/carry_check.sh --bench "" --bench "NT_NSA_SLC_KERNEL=7" --memcheck "*nsa_selected*"
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp}
L=$OUT/log.txt
benches=() suite_envs=() mutants=() kernels=() ncus=() ncu_envs=() memcheck="" memcheck_env="" memcheck_bin=nt_cuda_tests gpu_cases=1
bench_args="T=8192,65536 dense=0 fused_max_t=0 profile=1" kernels_args="--only=attention --no-torch"
while [ $# -gt 0 ]; do
  case "$1" in
    --bench) benches+=("$2"); shift 2 ;;
    --mutant) mutants+=("$2"); shift 2 ;;
    --kernels) kernels+=("$2"); shift 2 ;;
    --kernels-args) kernels_args=$2; shift 2 ;;
    --suite-env) suite_envs+=("$2"); shift 2 ;;
    --memcheck) memcheck=$2; shift 2 ;;
    --memcheck-env) memcheck_env=$2; shift 2 ;;
    --memcheck-bin) memcheck_bin=$2; shift 2 ;;
    --no-gpu-cases) gpu_cases=0; shift ;;
    --bench-args) bench_args=$2; shift 2 ;;
    --ncu) ncus+=("$2"); shift 2 ;;
    --ncu-env) ncu_envs+=("$2"); shift 2 ;;
    *) echo "carry_check.sh: unknown argument '$1' (expected --mutant, --bench, --suite-env, --memcheck," \
         "--memcheck-env, --memcheck-bin, --no-gpu-cases, --bench-args, --kernels, --kernels-args, --ncu or --ncu-env)"; exit 2 ;;
  esac
done
[ -x build-bin/nt_cuda_tests ] || [ -f build-bin/nt_cuda_tests.gz ] ||
  { echo "carry_check.sh: no build-bin/nt_cuda_tests: build with scripts/build_carry.sh and carry build-bin"; exit 2; }
# Binaries may come gzipped (NAME.gz, e.g. mutants from scripts/build_mutant.sh: the carry is 64 MiB in all).
mkdir -p build-gpu && cp build-bin/* build-gpu/ && cd build-gpu
for f in *.gz; do [ -e "$f" ] && gunzip -f "$f" && chmod +x "${f%.gz}"; done
# The SM clock, power draw, temperature and the reasons the clock is held down, about every 0.1 s of the call, into
# $OUT/clocks.csv (GPU 0), summed up per step at the end of the log (each step's start and end time are kept, and
# the rows between them counted, after the sampler has stopped). Why: on the H100 a forward timed last of the
# T8192 row of bench_kernels took 1.19-1.25 ms, timed first 1.03-1.08 (2026-12-07); the samples showed the
# benchmarks running at the 700 W power cap (reason 0x4), the SM clock down from 1980 MHz to ~1450-1700.
# Reasons (a bit mask): 0x1 idle, 0x2 application clocks setting, 0x4 software power cap, 0x8 hardware slowdown,
# 0x10 sync boost, 0x20 software thermal, 0x40 hardware thermal, 0x80 power brake.
CLK=$OUT/clocks.csv
now() { date +'%Y/%m/%d %H:%M:%S.%3N'; }  # fixed width: the rows compare as strings
clock_query=clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$clock_query --format=csv,noheader >/dev/null 2>&1 ||
  clock_query=clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active
# One nvidia-smi per sample, stamped here: no trust in its own timestamp's layout or in its output buffering.
export -f now && export clock_query
timeout 620 bash -c 'while :; do echo "$(now), $(nvidia-smi -i 0 --query-gpu=$clock_query --format=csv,noheader,nounits)"
  sleep 0.05; done' >"$CLK" 2>/dev/null &
sampler=$!
trap 'kill $sampler 2>/dev/null' EXIT
step_names=() step_starts=() step_ends=()
clock_summary() {  # clock_summary START END: the clock rows sampled between the two times, summed up
  awk -F', *' -v a="$1" -v b="$2" 'NF == 5 && $2 ~ /^[0-9]+$/ && length($5) == 18 && $1 >= a && $1 <= b' "$CLK" >"$OUT/clk_step"
  local n
  n=$(wc -l <"$OUT/clk_step")
  if [ "$n" -eq 0 ]; then echo "no samples"; return; fi
  local mhz
  mhz=$(cut -d, -f2 "$OUT/clk_step" | sort -n | awk '{ c[NR] = $1 } END { printf "min %d median %d max %d", c[1], c[int((NR + 1) / 2)], c[NR] }')
  awk -F', *' -v n="$n" -v mhz="$mhz" '{ if ($3 + 0 > p) p = $3 + 0; if ($4 + 0 > t) t = $4 + 0; r[$5]++ }
    END { s = ""; for (k in r) s = s " " k " x" r[k]
      printf "%d samples, SM MHz %s, power max %.0f W, temperature max %d C, reasons%s", n, mhz, p, t, s }' "$OUT/clk_step"
  rm -f "$OUT/clk_step"
}
step() {  # step SECONDS "ENV=V ..." command...: one step, timed, into the log; capped so the call ends by 580 s
  local limit=$1 envs=$2 s=$SECONDS
  shift 2
  [ "$limit" -gt $((580 - SECONDS)) ] && limit=$((580 - SECONDS))
  if [ "$limit" -le 0 ]; then echo "=== ${envs:+$envs }$*: skipped, no time left ===" >>"$L"; return 124; fi
  echo "=== ${envs:+$envs }$* ===" >>"$L"
  step_names+=("${envs:+$envs }$*") step_starts+=("$(now)")
  env $envs timeout "$limit" "$@" >>"$L" 2>&1
  local rc=$?
  step_ends+=("$(now)")
  echo "=== rc $rc in $((SECONDS - s)) s ===" >>"$L"
  return $rc
}
{ nvidia-smi -L; nvidia-smi --query-gpu=driver_version,clocks.max.sm,power.limit --format=csv,noheader; } >"$L" 2>&1
step 150 "" ./nt_cuda_tests --no-colors
for m in "${mutants[@]}"; do
  name=${m%% *} filter=${m#* }
  if [ ! -x "./$name" ]; then echo "=== mutant $name: missing (carry build-bin/$name.gz) ===" >>"$L"
  elif step 60 "" "./$name" --no-colors -tc="$filter"; then echo "=== mutant $name: NOT caught by $filter ===" >>"$L"
  else echo "=== mutant $name: caught by $filter ===" >>"$L"; fi
done
for e in "${suite_envs[@]}"; do step 60 "$e" ./nt_cuda_tests --no-colors -tc="*nsa*"; done
[ "$gpu_cases" = 1 ] && step 90 "" ./nt_tests --no-colors -tc="*tensor cores*,*on CUDA*,*GPU*,*NSA selection*,*one autograd node*"
for e in "${benches[@]}"; do step 120 "$e" ./bench_nsa $bench_args; done
[ -n "$memcheck" ] && step 150 "$memcheck_env" compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 "./$memcheck_bin" --no-colors -tc="$memcheck"
[ ${#ncu_envs[@]} -eq 0 ] && ncu_envs=("")
for k in "${ncus[@]}"; do for e in "${ncu_envs[@]}"; do  # profile=0: ncu and the bench's CUPTI profiler exclude each other
  step 150 "$e" ncu --kill on --clock-control none --target-processes application-only \
    --kernel-name-base mangled --kernel-name "regex:$k" --launch-count 1 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --log-file "$OUT/ncu_last.txt" ./bench_nsa T=65536 dense=0 fused_max_t=0
  grep -E "^  [A-Za-z_].*\(|Duration|DRAM Throughput|L2 Hit Rate|Memory Throughput|Compute \(SM\)" "$OUT/ncu_last.txt" >>"$L"
  cat "$OUT/ncu_last.txt" >>"$OUT/ncu.txt" && rm -f "$OUT/ncu_last.txt"
done; done
for e in "${kernels[@]}"; do step 60 "$e" ./bench_kernels $kernels_args; done
kill $sampler 2>/dev/null
wait $sampler 2>/dev/null
echo "=== clocks.csv: $(wc -l <"$CLK") rows, $(head -1 "$CLK" | cut -d, -f1) to $(tail -1 "$CLK" | cut -d, -f1) ===" >>"$L"
for i in "${!step_names[@]}"; do
  echo "=== clocks of ${step_names[$i]}: $(clock_summary "${step_starts[$i]}" "${step_ends[$i]}") ===" >>"$L"
done
echo "=== done ===" >>"$L"
grep -E "^===|test cases|ERROR SUMMARY" "$L"
