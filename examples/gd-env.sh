# Sourced by the examples: use an installed `gd`, or install what gd needs and build it here.
# Sets GD (the command) and GD_ROOT (a fresh store root unless the caller set one).
if command -v gd >/dev/null; then GD=gd; else
  bash ci/install-deps.sh
  # gd, and the aufs driver's FUSE server beside it (`--driver aufs`).
  cargo build --release --quiet -p gd-cli -p driver-aufs-compat --bins
  GD=$PWD/target/release/gd
fi
export GD_ROOT=${GD_ROOT:-$(mktemp -d /var/tmp/gd-example.XXXXXX)}
