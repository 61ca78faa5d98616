//! The FUSE server of the aufs backend: see `driver_aufs_compat::server`.

fn main() {
    std::process::exit(driver_aufs_compat::server::main());
}
