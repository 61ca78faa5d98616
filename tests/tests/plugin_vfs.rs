//! The conformance suite on the vfs driver built as a plugin and loaded through the C ABI.
gd_conformance::conformance_tests!(
    harness = || gd_conformance::plugins::plugin_harness("gd-plugin-vfs", "gd_vfs")
);
