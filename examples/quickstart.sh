#!/usr/bin/env bash
# A whole container image without a daemon: build a tiny OCI image locally (umoci and the
# machine's busybox; nothing is downloaded), import it, and get its union view. The two
# commands a new user needs are the `gd image import` and `gd image mount` below.
# Run as root from the repository:  bash examples/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

. examples/gd-env.sh
work=$(mktemp -d)
trap '$GD image umount tiny 2>/dev/null || true; $GD umount box 2>/dev/null || true; rm -rf "$work"' EXIT

# The example image: an OCI layout holding busybox and an /etc/motd, in one layer.
umoci init --layout "$work/tiny"
umoci new --image "$work/tiny:latest"
umoci unpack --image "$work/tiny:latest" "$work/bundle" >/dev/null
rootfs=$work/bundle/rootfs
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp"
cp /bin/busybox "$rootfs/bin/"
for a in sh ls cat echo; do ln -s busybox "$rootfs/bin/$a"; done
echo "hello from a gd image" > "$rootfs/etc/motd"
umoci repack --image "$work/tiny:latest" "$work/bundle"
umoci config --image "$work/tiny:latest" --config.cmd /bin/sh

set -x
# 1. Import: every digest is checked while streaming; layers are stored by chain id.
$GD image import "$work/tiny"
# 2. Mount: the image's merged view, ready to scan or inspect.
view=$($GD image mount tiny)
cat "$view/etc/motd"
$GD image umount tiny

# Run something in it through a read-write container layer, and keep the result as an image.
merged=$($GD image mount tiny --rw box)
chroot "$merged" /bin/sh -c 'echo changed > /etc/motd; ls /bin'
$GD umount box
$GD commit box --tag tiny:changed
$GD image ls
$GD image flatten tiny:changed | tar -tvf - | head
# Export is readable by `docker load` and OCI tools; the original layer comes out byte-identical.
$GD image export tiny tiny:changed -o "$work/tiny.tar"
tar -tvf "$work/tiny.tar"
