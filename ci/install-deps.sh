#!/usr/bin/env bash
# Install the Debian packages and cargo tools gd needs to build and test. Idempotent.
set -euo pipefail
packages=(
  pkg-config libzstd-dev                    # zstd through the system library
  libdevmapper-dev libclang-dev             # the devicemapper crate (bindgen)
  fuse3 attr tar e2fsprogs xfsprogs btrfs-progs util-linux
  user-mode-linux busybox-static kmod dmsetup xz-utils   # the devmapper test guest
  fuse-overlayfs umoci                      # peers the tests and benchmarks compare with
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
