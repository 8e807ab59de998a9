#!/usr/bin/env bash
# Debian packages the demo and the tests need. Installs them when missing and we are root;
# otherwise stops with the exact command to run.
set -euo pipefail
missing=()
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || missing+=(dataset-fashion-mnist)
command -v adb >/dev/null 2>&1 || missing+=(adb)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" </dev/null
else
  echo "error: missing Debian packages: ${missing[*]}" >&2
  echo "run:   sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
