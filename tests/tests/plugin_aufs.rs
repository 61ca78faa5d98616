//! The conformance suite on the aufs-compat driver built as a plugin and loaded through the C
//! ABI. Its FUSE server binary is built first if missing (`factory_for_tests`).
gd_conformance::conformance_tests!(
    harness = || {
        driver_aufs_compat::factory_for_tests();
        gd_conformance::plugins::plugin_harness("gd-plugin-aufs", "gd_aufs")
    }
);
