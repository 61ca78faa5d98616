//! The conformance suite on the overlay driver (kernel overlayfs).
gd_conformance::conformance_tests!(driver_overlay::factory());
