#!/usr/bin/env bash
# Print the path of Debian's headless-capable chromium, installing the package if it is
# missing (the report page's test renders the page in it).
set -euo pipefail
die() { echo "tests/chromium.sh: $*" >&2; exit 1; }
if ! command -v chromium >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "chromium is missing and apt-get is not available to install it"
  echo "Installing Debian's chromium package ..." >&2
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    chromium >/dev/null || die "apt-get install chromium failed"
fi
command -v chromium
