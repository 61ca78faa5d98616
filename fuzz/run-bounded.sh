#!/usr/bin/env bash
# run-bounded.sh - run every fuzz target for a bounded time (CI).
#
#   fuzz/run-bounded.sh [SECONDS-PER-TARGET]     (default 60)
#
# First the known inputs (seeds, fuzz/regressions/TARGET, fuzz/corpus/TARGET) through the
# ordinary tests on the stable toolchain. Then, when a nightly toolchain and cargo-fuzz are
# installed, `cargo +nightly fuzz run TARGET` (libFuzzer with coverage feedback and
# AddressSanitizer) for SECONDS-PER-TARGET each, seeded with the generated seeds and the
# regressions. Without nightly or cargo-fuzz, the same time goes to the stable tests'
# mutation loop instead (no coverage feedback: a weaker search, said so in the output).
#
# A crash fails the script; libFuzzer leaves the input in fuzz/artifacts/TARGET/crash-*.
# Fix the bug, then copy the input to fuzz/regressions/TARGET/ so that `cargo test` in fuzz/
# runs it from then on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs=${1:-60}
targets=(apply changeset)

echo "=== fuzz: known inputs and a short mutation loop (stable)"
GD_FUZZ_SECONDS=10 cargo test --release --quiet

for t in "${targets[@]}"; do
  cargo run --release --quiet --bin gen-seeds -- "$t" "corpus/$t"
done

if rustup toolchain list 2>/dev/null | grep -q '^nightly' && command -v cargo-fuzz >/dev/null; then
  for t in "${targets[@]}"; do
    echo "=== fuzz: cargo +nightly fuzz run $t for ${secs}s"
    # corpus/TARGET is where new inputs go; regressions/TARGET is read as more seeds.
    cargo +nightly fuzz run "$t" "corpus/$t" "regressions/$t" -- \
      -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1
  done
else
  echo "fuzz: no nightly toolchain or no cargo-fuzz: running the stable mutation loop of" \
       "changeset for ${secs}s instead (no coverage feedback, no sanitizer); apply's stable" \
       "test is a fixed set of mutations and ran above" >&2
  seed=$RANDOM
  echo "=== fuzz: stable mutation loop, changeset, ${secs}s, GD_FUZZ_SEED=$seed"
  GD_FUZZ_SECONDS=$secs GD_FUZZ_RUNS=1000000000 GD_FUZZ_SEED=$seed \
    cargo test --release --quiet --test changeset
fi
echo "=== fuzz: no crash"
