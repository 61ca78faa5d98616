#!/bin/bash
# devmapper-tests.sh - build the devmapper test binaries on the host and run them inside a
# user-mode-linux guest that has device-mapper thin provisioning (ci/guest/run-in-guest.sh).
#
#   ci/devmapper-tests.sh [TEST-FILTER...]
#
# Runs driver-devmapper's own tests and, once it exists, the conformance suite for devmapper
# (tests/tests/devmapper.rs). Prints each test binary's summary; exits non-zero if any test
# fails, any binary fails to build, or the guest does not report.
# Host packages (Debian 12): user-mode-linux busybox-static kmod dmsetup e2fsprogs xfsprogs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD

# Build with the same package set as the workspace test run (`cargo nextest run --workspace`),
# so cargo reuses those artifacts instead of rebuilding the dependency graph with other
# features; then pick the executables that exercise devmapper.
json=$(cargo test --workspace --no-run --message-format=json) ||
  { echo "devmapper-tests: cargo test --workspace --no-run failed" >&2; exit 1; }
mapfile -t bins < <(printf '%s\n' "$json" | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable")
    if not exe or m.get("reason") != "compiler-artifact":
        continue
    pkg, name = m["package_id"], m["target"]["name"]
    if "driver-devmapper" in pkg or ("gd-conformance" in pkg and name in ("devmapper", "cross")):
        print(exe)
    elif "gd-cli" in pkg and name == "crash":
        print(exe + "\tdevmapper")   # only its devmapper case: the host runs the others
')
[ ${#bins[@]} -gt 0 ] || { echo "devmapper-tests: no test binaries were built" >&2; exit 1; }

# The guest's script: run every binary, keep going after a failure, report per binary.
# Under target/: the guest sees the host root, but its /tmp is its own.
mkdir -p target/guest
job=$(mktemp "$REPO/target/guest/devmapper-tests.XXXXXX.sh")
trap 'rm -f "$job"' EXIT
{
  # The suite's temporary roots (/var/tmp) need user.* xattrs, which this guest kernel's
  # tmpfs lacks: give it an ext4 on a sparse file in guest RAM (discard returns freed space).
  echo 'set -e; truncate -s 16G /tmp/scratch.img; mkfs.ext4 -q -E nodiscard /tmp/scratch.img'
  echo 'mount -o loop,discard /tmp/scratch.img /var/tmp; chmod 1777 /var/tmp; set +e'
  echo 'status=0'
  for line in "${bins[@]}"; do
    b=${line%%$'\t'*}; filter=; [ "$b" != "$line" ] && filter=${line#*$'\t'}
    printf 'echo "=== %s"\n' "${b#"$REPO"/}"
    printf '%q --test-threads=1 --color never' "$b"
    if [ $# -gt 0 ]; then printf ' %q' "$@"; elif [ -n "$filter" ]; then printf ' %q' "$filter"; fi
    echo ' || status=1'
  done
  echo 'exit $status'
} > "$job"
chmod +x "$job"

out=$(mktemp "${TMPDIR:-/tmp}/gd-devmapper-tests.XXXXXX.log")
trap 'rm -f "$job" "$out"' EXIT
set +e
GUEST_MEM=${GUEST_MEM:-3G} ci/guest/run-in-guest.sh -C "$REPO" -e RUST_BACKTRACE=1 \
  -e GD_REQUIRE_DRIVERS=devmapper -e GD_CRASH_RANDOM_KILLS=8 -- /bin/sh "$job" | tee "$out"
rc=${PIPESTATUS[0]}
set -e
echo "=== devmapper test summary (inside the guest)"
grep -a -e '^=== target' -e '^test result:' "$out" || true
if grep -aq '^SKIPPED' "$out"; then
  echo "devmapper-tests: a test skipped inside the guest" >&2; rc=${rc/#0/1}
fi
if [ "$rc" -ne 0 ]; then echo "devmapper-tests: FAILED (exit $rc)" >&2; fi
exit "$rc"
