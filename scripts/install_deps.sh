#!/usr/bin/env bash
# Installs the build and test dependencies from Debian/Ubuntu packages when any is missing (needs root or sudo).
set -euo pipefail
pkgs=(meson ninja-build g++ pkg-config libfmt-dev doctest-dev libopenblas-dev libyaml-cpp-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
