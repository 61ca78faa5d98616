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

# The tests run as root against real mounts and devices: they must leave the host as they
# found it. (A test once had `gd diff -o /dev/null` replace the null device with a file.)
[ -c /dev/null ] || { echo "FAIL: /dev/null is no longer a character device after the tests" >&2; exit 1; }

# Every fuzz target for a bounded time: cargo fuzz on nightly when it is installed, else a
# stable mutation loop (fuzz/run-bounded.sh says which). A crash fails CI and leaves its
# input in fuzz/artifacts/TARGET/; once fixed, it goes to fuzz/regressions/TARGET/.
bash fuzz/run-bounded.sh "${GD_FUZZ_SECONDS:-30}"

# This host's kernel has no device-mapper: the devmapper driver's tests, its conformance
# suite, the cross-driver test and its crash test run inside a user-mode-linux guest.
bash ci/devmapper-tests.sh
