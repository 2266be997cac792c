#!/usr/bin/env bash
# The main job. Until the LM training program lands (nn/ and train/), this trains a tiny MLP on the CPU with the
# autograd and ops, printing the falling loss. Arguments go to the program: [steps] [hidden] [lr].
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
exec build/examples/tiny_mlp "$@"
