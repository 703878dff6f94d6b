#!/usr/bin/env bash
# Installs llmq's build dependencies from Debian/Ubuntu packages (only the missing ones).
# Needs root (or sudo) the first time; a no-op when everything is present.
set -euo pipefail
# gnuplot-nox draws the plots of `llmq report` (optional: without it the report keeps the
# gnuplot scripts and data); four small packages without recommends.
packages=(cmake ninja-build g++ pkg-config libeigen3-dev libsentencepiece-dev libcli11-dev
          nlohmann-json3-dev libgtest-dev libpcre2-dev gnuplot-nox)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
