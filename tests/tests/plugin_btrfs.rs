//! The conformance suite on the btrfs driver, which exists only as a plugin, on a fresh
//! loop-mounted btrfs per case.
gd_conformance::conformance_tests!(harness = gd_conformance::plugins::btrfs_harness);
