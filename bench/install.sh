#!/usr/bin/env bash
# Installs the peers gd is measured against, and what the harness itself needs (Debian/Ubuntu,
# as root). Safe to run again: apt-get skips what is already installed.
set -euo pipefail
packages=(
    tar            # GNU tar: the physical reference for apply
    umoci          # umoci unpack
    containers-storage  # containers-storage import-layer / diff / changes / mount (overlay driver)
    docker.io      # dockerd with a private data root: docker load / commit / diff
    fuse-overlayfs # the FUSE overlay the aufs-compat view is compared with
    debootstrap    # builds the Debian minbase root of the realistic image
    python3        # the harness (bench/bench.py)
    fuse3          # fusermount3 for fuse-overlayfs and the aufs-compat view
    time           # /usr/bin/time, for cross-checking peak RSS by hand
    hyperfine      # not used by the harness; handy for one-off checks
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "bench/install.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d may forbid starting the docker service: the harness starts its own dockerd.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
