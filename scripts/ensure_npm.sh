#!/usr/bin/env bash
# Installs npm from Debian/Ubuntu packages when it is missing (the data sets come from the npm registry).
set -euo pipefail
command -v npm >/dev/null && exit 0
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd=sudo
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq npm >/dev/null
