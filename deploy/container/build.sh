#!/usr/bin/env bash
# Build the firstmile image without a Docker engine, from Debian's packages only: a base
# made by mmdebstrap (through apt, with this machine's apt sources), imported into podman,
# then deploy/container/Dockerfile built on it with buildah's chroot isolation (no OCI
# runtime needed), and a smoke run of the image's `firstmile` as its non-root user.
# Installs podman, buildah and mmdebstrap with apt-get if they are missing.
# Usage: bash deploy/container/build.sh [TAG]   (default localhost/firstmile:dev)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tag=${1:-localhost/firstmile:dev}
base=localhost/firstmile-base:bookworm
die() { echo "deploy/container/build.sh: $*" >&2; exit 1; }

missing=()
for tool in podman buildah mmdebstrap; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "${missing[*]} missing and apt-get is not available"
  echo "Installing ${missing[*]} ..." >&2
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    podman buildah mmdebstrap uidmap fuse-overlayfs >/dev/null || die "apt-get install failed"
fi

if ! podman image exists "$base"; then
  sources=""
  for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
    if [ -f "$file" ]; then sources=$file; break; fi
  done
  [ -n "$sources" ] || die "no apt sources on this machine for mmdebstrap"
  work=$(mktemp -d)
  echo "Making a Debian bookworm base with Python 3.11 (mmdebstrap) ..." >&2
  mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates,passwd \
    bookworm "$work/base.tar" "$sources" || die "mmdebstrap failed"
  podman import --quiet "$work/base.tar" "$base" >/dev/null || die "podman import failed"
  rm -rf "$work"
fi

# pip in the build trusts what this machine's pip trusts (a proxy's CA, say).
trust=()
[ -f /etc/ssl/certs/ca-certificates.crt ] && \
  trust=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
echo "Building $tag ..." >&2
podman build --quiet --isolation=chroot --network=host "${trust[@]}" --build-arg "BASE=$base" \
  -f "$root/deploy/container/Dockerfile" -t "$tag" "$root" >/dev/null || die "podman build failed"

echo "Smoke run: firstmile as the image's user ..." >&2
container=$(buildah from "$tag")
trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
buildah run --isolation=chroot "$container" -- id -un
buildah run --isolation=chroot "$container" -- firstmile --help | head -3
buildah run --isolation=chroot "$container" -- firstmile run --users 200 --days 3 --no-progress \
  --out /tmp/smoke | grep -E "events in|users" | head -3
echo "built $tag"
