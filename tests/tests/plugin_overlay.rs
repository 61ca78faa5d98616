//! The conformance suite on the overlay driver built as a plugin and loaded through the C ABI.
gd_conformance::conformance_tests!(
    harness = || gd_conformance::plugins::plugin_harness("gd-plugin-overlay", "gd_overlay")
);
