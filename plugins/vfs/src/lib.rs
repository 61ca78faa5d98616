//! The vfs driver as a plugin (`libgd_vfs.so`).
gd_plugin_sdk::export_plugin!(driver_vfs::factory());
