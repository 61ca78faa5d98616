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
