//! Link two libraries into `gd` from their static archives instead of loading their shared
//! objects at every start, when the system has the archives.
//!
//! A runtime starts `gd` once per command, and a short command (`gd mount` of a layer whose
//! view needs no mount) takes about 1.2 ms here, so loading costs show:
//! - libgcc_s.so (the unwinder) runs a constructor at load that asks the CPU its features
//!   with a series of `cpuid` instructions, and in a virtual machine each `cpuid` traps to
//!   the hypervisor: about 0.1 ms. libgcc_eh.a has the same unwinder without it.
//! - libzstd.so (linked through `zstd-sys` and pkg-config) costs about 0.05 ms to map and
//!   relocate; libzstd.a comes with the same libzstd-dev package.
//!
//! An archive named here comes first on the link line, so the linker resolves those symbols
//! from it and, linking `--as-needed`, drops the shared object. Where an archive is missing,
//! gd links as before.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
        || std::env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("gnu")
    {
        return;
    }
    for name in ["gcc_eh", "zstd"] {
        if let Some(archive) = archive(&format!("lib{name}.a")) {
            let dir = archive
                .parent()
                .expect("an absolute file path has a parent");
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-lib=static={name}");
        }
    }
}

/// Where the C compiler would find the archive `file`, if it has it.
fn archive(file: &str) -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(cc)
        .arg(format!("-print-file-name={file}"))
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // Without the archive the compiler prints the bare name back.
    (out.status.success() && path.is_absolute() && path.is_file()).then_some(path)
}
