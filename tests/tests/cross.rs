//! Every driver that can run on this host gives identical diff bytes and manifest digests.
//! (Driver crates add their factory here as they land.)

#[test]
fn cross_driver_identical_bytes_and_digests() {
    gd_conformance::cases::cross_driver(vec![
        driver_vfs::factory(),
        driver_devmapper::factory(),
        driver_overlay::factory(),
        driver_aufs_compat::factory_for_tests(),
    ]);
}

/// The same through the plugin boundary: the btrfs driver (which exists only as a plugin) and a
/// built-in driver loaded as a plugin give the built-in vfs driver's bytes and digests.
#[test]
fn cross_driver_through_plugins_identical_bytes_and_digests() {
    use gd_conformance::{plugins, Harness};
    gd_conformance::cases::cross_driver_harnesses(vec![
        Box::new(|| Harness::new(driver_vfs::factory())),
        Box::new(plugins::btrfs_harness),
        Box::new(|| plugins::plugin_harness("gd-plugin-overlay", "gd_overlay")),
    ]);
}
