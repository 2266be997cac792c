#!/usr/bin/env bash
# Tokenizes the Brown corpus with a BPE of 8192 tokens trained on its train split (examples/prepare_data, about 2 s):
# data/brown/bpe8192/{train,val}.bin + .docs (document starts), tokenizer.txt, meta.json. Runs after
# scripts/prepare_data.sh (the documents) and scripts/build.sh (the program); does nothing when meta.json exists.
# Extra arguments go to prepare_data (e.g. vocab=16384, which writes data/brown/bpe16384).
set -euo pipefail
cd "$(dirname "$0")/.."
vocab=8192
for a in "$@"; do case "$a" in vocab=*) vocab=${a#vocab=} ;; esac; done
[ -f "data/brown/bpe$vocab/meta.json" ] && exit 0
bash scripts/prepare_data.sh
[ -x build/examples/prepare_data ] || { echo "prepare_bpe: build/examples/prepare_data is missing (run scripts/build.sh first)"; exit 1; }
build/examples/prepare_data src=data/brown progress=0 "$@"
