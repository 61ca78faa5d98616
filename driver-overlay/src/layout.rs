//! The on-disk layout, in the style of Docker's overlay2:
//!
//! ```text
//! <home>/l/<LINK>            -> ../<key>/diff   short names, so deep chains fit in options
//! <home>/<key>/diff/         the layer's own files (the overlay upper directory)
//! <home>/<key>/work/         overlay's work directory (same filesystem as diff/)
//! <home>/<key>/merged/       mount point of the merged view
//! <home>/<key>/link          the layer's short link name (<LINK>)
//! <home>/<key>/lower         l/<LINK>:l/<LINK>:... of the ancestors, nearest first
//! ```
//!
//! Whiteouts in `diff/` are 0/0 character devices and opaque directories carry
//! `trusted.overlay.opaque=y`, as the kernel reads them.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use driver_api::{Error, Result};

/// Directory of the short links.
pub(crate) const LINK_DIR: &str = "l";
/// Length of a link name (Docker's overlay2 uses 26 base32 characters).
const LINK_LEN: usize = 26;

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub home: PathBuf,
}

impl Layout {
    pub fn layer_dir(&self, key: &str) -> PathBuf {
        self.home.join(key)
    }
    pub fn diff(&self, key: &str) -> PathBuf {
        self.home.join(key).join("diff")
    }
    pub fn work(&self, key: &str) -> PathBuf {
        self.home.join(key).join("work")
    }
    pub fn merged(&self, key: &str) -> PathBuf {
        self.home.join(key).join("merged")
    }
    pub fn link_file(&self, key: &str) -> PathBuf {
        self.home.join(key).join("link")
    }
    pub fn lower_file(&self, key: &str) -> PathBuf {
        self.home.join(key).join("lower")
    }
    pub fn links(&self) -> PathBuf {
        self.home.join(LINK_DIR)
    }

    /// The layer's short link name, if it has one.
    pub fn link_name(&self, key: &str) -> Option<String> {
        let name = std::fs::read_to_string(self.link_file(key)).ok()?;
        let name = name.trim();
        valid_link_name(name).then(|| name.to_string())
    }

    /// The path to pass to the kernel for `key`'s diff directory: its short link when that
    /// link is in place, else the diff directory itself.
    pub fn lower_path(&self, key: &str) -> PathBuf {
        if let Some(name) = self.link_name(key) {
            let link = self.links().join(&name);
            if std::fs::read_link(&link).is_ok_and(|t| t == link_target(key)) {
                return link;
            }
        }
        self.diff(key)
    }
}

/// What a short link points to (relative, so the store can be moved).
pub(crate) fn link_target(key: &str) -> PathBuf {
    Path::new("..").join(key).join("diff")
}

pub(crate) fn valid_link_name(name: &str) -> bool {
    name.len() == LINK_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// A fresh random link name: 26 characters of base32 (130 bits), like Docker's.
pub(crate) fn new_link_name() -> std::io::Result<String> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bytes = [0u8; LINK_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect())
}

/// Storage keys come from the store and have a fixed form (32 lowercase hex digits), which
/// also keeps them apart from the layout's own names (`l`) and the store's (`store`).
pub(crate) fn check_key(key: &str) -> Result<()> {
    if !driver_api::is_storage_key(key) {
        return Err(Error::driver(
            "overlay",
            format!("{key:?} is not a storage key (32 lowercase hex digits)"),
        ));
    }
    Ok(())
}

/// Display helper for raw names.
#[allow(dead_code)]
pub(crate) fn show(name: &std::ffi::OsStr) -> String {
    String::from_utf8_lossy(name.as_bytes()).into_owned()
}
