//! The overlay driver as a plugin (`libgd_overlay.so`).
gd_plugin_sdk::export_plugin!(driver_overlay::factory());
