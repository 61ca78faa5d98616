//! The aufs-compat driver as a plugin (`libgd_aufs.so`). Its FUSE server, gd-aufs-server, is
//! found the way the built-in driver finds it (`$GD_AUFS_SERVER`, beside the executable, PATH).
gd_plugin_sdk::export_plugin!(driver_aufs_compat::factory());
