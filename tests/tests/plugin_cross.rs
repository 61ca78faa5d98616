//! The cross-driver test through the plugin boundary: the btrfs driver (which exists only as a
//! plugin) and a built-in driver loaded as a plugin give the built-in vfs driver's diff bytes
//! and manifest digests, layer by layer. (Apart from tests/tests/cross.rs, which also runs in
//! the device-mapper guest, where plugins are not built.)

#[test]
fn cross_driver_through_plugins_identical_bytes_and_digests() {
    use gd_conformance::{plugins, Harness};
    gd_conformance::cases::cross_driver_harnesses(vec![
        Box::new(|| Harness::new(driver_vfs::factory())),
        Box::new(plugins::btrfs_harness),
        Box::new(|| plugins::plugin_harness("gd-plugin-overlay", "gd_overlay")),
    ]);
}
