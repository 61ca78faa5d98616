//! The conformance suite on the devmapper driver. This kernel may lack device-mapper: then
//! every case prints SKIPPED; `ci/devmapper-tests.sh` runs this suite inside a guest kernel
//! that has it, with GD_REQUIRE_DRIVERS=devmapper so nothing is skipped there.
gd_conformance::conformance_tests!(driver_devmapper::factory());
