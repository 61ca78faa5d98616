//! The conformance suite on the aufs-compat driver (aufs branches, FUSE union view). The
//! FUSE server binary is built first if missing (`factory_for_tests`).
gd_conformance::conformance_tests!(driver_aufs_compat::factory_for_tests());
