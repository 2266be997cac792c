#!/bin/bash
# Builds a mutant test binary for a mutation check on the GPU machine: applies one sed expression to one source file,
# builds the target in build-dev (scripts/build_carry.sh's configuration), strips and gzips it into
# build-bin/NAME.gz (~5 MB: carry_check.sh unzips it there), then puts the source back byte for byte and rebuilds
# the target, so build-dev holds the real binary again. Fails if the expression changes nothing.
#   bash scripts/build_mutant.sh FILE SED_EXPRESSION NAME [TARGET (default tests/nt_tests)]
# Example: bash scripts/build_mutant.sh cuda/nsa_select_sm90.cu 's/if (off.zero)/if (false)/' nt_tests_nozero
# then on the device: ./build-gpu/nt_tests_nozero -tc="*NSA selection*" must fail.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n '2,8p' "$0"; exit 2; }
file=$1 expr=$2 name=$3 target=${4:-tests/nt_tests}
[ -f build-dev/build.ninja ] || { echo "build_mutant.sh: no build-dev: run scripts/build_carry.sh first"; exit 2; }
orig=$(mktemp)
cp -p "$file" "$orig"
# Debian 12's meson records no header dependencies for CUDA objects (scripts/build_carry.sh): an edited header
# rebuilds nothing unless every CUDA source is touched too.
touch_users() { touch "$file"; case "$file" in *.cuh | *.h) touch cuda/*.cu ;; esac; }
restore() { cp "$orig" "$file" && touch_users && rm -f "$orig"; }
trap restore EXIT
sed -i "$expr" "$file"
if cmp -s "$file" "$orig"; then echo "build_mutant.sh: '$expr' changes nothing in $file"; exit 2; fi
diff "$orig" "$file" || true
touch_users
ninja -C build-dev "$target"
mkdir -p build-bin
strip -o "build-bin/$name" "build-dev/$target"
gzip -9f "build-bin/$name"
restore
trap - EXIT
ninja -C build-dev "$target" >/dev/null
echo "build-bin/$name.gz: $(du -h "build-bin/$name.gz" | cut -f1); $file restored and $target rebuilt"
