#!/usr/bin/env bash
# gd's main job on a small example, without any daemon: store a root filesystem as a layer,
# get its union view, change it through a read-write layer, and see the canonical changeset.
# Run as root from the repository:  bash examples/layers.sh
set -euo pipefail
cd "$(dirname "$0")/.."

. examples/gd-env.sh
work=$(mktemp -d)
trap '$GD umount container 2>/dev/null || true; rm -rf "$work"' EXIT

# A tiny root filesystem: busybox and a few files, packed as an image layer would be.
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
cp /bin/busybox "$work/rootfs/bin/"
for a in sh ls cat echo; do ln -s busybox "$work/rootfs/bin/$a"; done
echo "root:x:0:0:root:/root:/bin/sh" > "$work/rootfs/etc/passwd"
echo "quickstart" > "$work/rootfs/etc/hostname"
tar --numeric-owner -C "$work/rootfs" -czf "$work/base.tar.gz" .

set -x
$GD drivers
$GD create base
$GD apply base "$work/base.tar.gz"
$GD create --parent base --rw container
merged=$($GD mount container)
echo "hello from gd" > "$merged/etc/motd"
rm "$merged/etc/hostname"
chroot "$merged" /bin/sh -c 'ls /bin /etc; cat /etc/motd'
$GD umount container
$GD ls
$GD changes container
$GD diff container | tar -tvf -
$GD manifest container --digest
