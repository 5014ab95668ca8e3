#!/usr/bin/env bash
# Check firstmile's Prometheus files with promtool: the scrape config, the alert rules,
# and alerts_test.yml (each alert firing on series built for it). Installs Debian's
# prometheus package (which ships promtool) if promtool is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "deploy/prometheus/check.sh: $*" >&2; exit 1; }

if ! command -v promtool >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "promtool is missing and apt-get is not available to install it"
  echo "Installing Debian's prometheus package (for promtool) ..."
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null || die "apt-get install prometheus failed"
fi
cd "$here"
promtool check config prometheus.yml
promtool check rules alerts.yml
promtool test rules alerts_test.yml
