#!/usr/bin/env bash
# The whole test suite: every driver this host can run, on real mounts, then the devmapper
# driver inside a Linux guest (this host's kernel has no device-mapper). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash ci/install-deps.sh

# Drivers that must run here: their tests fail rather than skip if the host lacks them.
export GD_REQUIRE_DRIVERS=${GD_REQUIRE_DRIVERS:-vfs,overlay,aufs,btrfs}

# Binaries the tests spawn (the aufs FUSE server, gd itself) are not built by nextest.
cargo build --workspace --bins --quiet
cargo nextest run --workspace --no-fail-fast

if [ -x ci/devmapper-tests.sh ]; then
  bash ci/devmapper-tests.sh
else
  echo "SKIPPED: devmapper guest tests (ci/devmapper-tests.sh not present yet)" >&2
fi
