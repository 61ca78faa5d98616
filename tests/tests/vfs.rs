//! The conformance suite on the vfs driver.
gd_conformance::conformance_tests!(driver_vfs::factory());
