#!/usr/bin/env bash
# gd against GNU tar, umoci, containers-storage, fuse-overlayfs, kernel overlayfs and dockerd,
# on the same inputs in the same run. As root, from a clone:
#
#   bash bench/run.sh            # small and large sizes (about 30 minutes on 2 cores)
#   bash bench/run.sh --quick    # small sizes only (3 to 5 minutes)
#   bash bench/run.sh --only apply,diff --rounds 7
#
# Writes bench/results/latest.md and latest.json. Inputs (the debootstrap minbase root, the
# generated layers) are cached under $GD_BENCH_WORK (default /var/tmp/gd-bench); delete it to
# start over. Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) != 0 ]]; then
    echo "bench/run.sh: run as root (mounts, dockerd, device nodes in layers)" >&2
    exit 1
fi
bash bench/install.sh
if [[ -z ${GD_BIN:-} ]]; then
    # gd, and the FUSE server the aufs driver starts (found beside gd)
    cargo build --release -p gd-cli -p driver-aufs-compat --bins >&2
    target_dir=${CARGO_TARGET_DIR:-$PWD/target}
    export GD_BIN=$target_dir/release/gd
fi
exec python3 bench/bench.py "$@"
