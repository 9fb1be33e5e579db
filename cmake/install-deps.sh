#!/usr/bin/env bash
# Installs the Debian packages bitdistill needs when any is missing.
# Usage: cmake/install-deps.sh [extra-package ...]
set -euo pipefail

packages=(cmake g++ make libeigen3-dev libxsimd-dev xtl-dev doctest-dev libbenchmark-dev
          libomp-dev libsentencepiece-dev zlib1g-dev "$@")

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "bitdistill: installing missing Debian packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "bitdistill: these packages are missing and this user cannot install them." >&2
  echo "Run as root:  apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
