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

use std::collections::HashMap;
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

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(op, path, e)
}

/// Copy the tree at `src` into the existing directory `dst`, keeping everything the kernel
/// and the views care about: types, devices (whiteouts), modes, owners, all xattrs (opaque
/// markers included), times with nanoseconds and hardlinks within the tree.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut links = HashMap::new();
    copy_dir_contents(src, dst, &mut links)?;
    copy_metadata(
        src,
        dst,
        &rustix::fs::lstat(src).map_err(|e| Error::io("lstat", src, e.into()))?,
    )
}

fn copy_dir_contents(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    use rustix::fs::FileType;
    for entry in std::fs::read_dir(src).map_err(io_err("read directory", src))? {
        let entry = entry.map_err(io_err("read directory", src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let st = rustix::fs::lstat(&from).map_err(|e| Error::io("lstat", &from, e.into()))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        let key = (st.st_dev as u64, st.st_ino as u64);
        if kind != FileType::Directory && st.st_nlink > 1 {
            if let Some(first) = links.get(&key) {
                std::fs::hard_link(first, &to).map_err(io_err("hardlink", &to))?;
                continue;
            }
            links.insert(key, to.clone());
        }
        match kind {
            FileType::Directory => {
                std::fs::create_dir(&to).map_err(io_err("mkdir", &to))?;
                copy_dir_contents(&from, &to, links)?;
            }
            FileType::RegularFile => {
                std::fs::copy(&from, &to).map_err(io_err("copy", &to))?;
            }
            FileType::Symlink => {
                let target = std::fs::read_link(&from).map_err(io_err("readlink", &from))?;
                std::os::unix::fs::symlink(&target, &to).map_err(io_err("symlink", &to))?;
            }
            FileType::CharacterDevice
            | FileType::BlockDevice
            | FileType::Fifo
            | FileType::Socket => {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &to,
                    kind,
                    rustix::fs::Mode::from_raw_mode(st.st_mode & 0o7777),
                    st.st_rdev,
                )
                .map_err(|e| Error::io("mknod", &to, e.into()))?;
            }
            FileType::Unknown => {
                return Err(Error::io(
                    "copy",
                    &from,
                    std::io::Error::other("unknown file type"),
                ))
            }
        }
        copy_metadata(&from, &to, &st)?;
    }
    Ok(())
}

/// Owner, then mode (so setuid survives the chown), xattrs, then times.
fn copy_metadata(from: &Path, to: &Path, st: &rustix::fs::Stat) -> Result<()> {
    use rustix::fs::{AtFlags, FileType, Timespec, Timestamps};
    let is_link = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
    rustix::fs::chownat(
        rustix::fs::CWD,
        to,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| Error::io("chown", to, e.into()))?;
    if !is_link {
        rustix::fs::chmod(to, rustix::fs::Mode::from_raw_mode(st.st_mode & 0o7777))
            .map_err(|e| Error::io("chmod", to, e.into()))?;
    }
    for (name, value) in list_xattrs(from)? {
        rustix::fs::lsetxattr(to, name.as_slice(), &value, rustix::fs::XattrFlags::empty())
            .map_err(|e| Error::io("setxattr", to, e.into()))?;
    }
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, to, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| Error::io("set times", to, e.into()))
}

/// Every extended attribute of `path` (not following a symlink), in name order.
pub(crate) fn list_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let err = |e: rustix::io::Errno| Error::io("list xattrs", path, e.into());
    let mut names = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::llistxattr_query(path).map_err(err)?;
                names.resize(need.max(names.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(err(e)),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if let Some(value) = get_xattr(path, name)? {
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// One extended attribute (not following a symlink); None if absent.
pub(crate) fn get_xattr(path: &Path, name: &[u8]) -> Result<Option<Vec<u8>>> {
    let err = |e: rustix::io::Errno| Error::io("get xattr", path, e.into());
    let mut value = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path, name, &mut value[..]) {
            Ok(n) => {
                value.truncate(n);
                return Ok(Some(value));
            }
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::lgetxattr_query(path, name).map_err(err)?;
                value.resize(need.max(value.len() * 2), 0);
            }
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(err(e)),
        }
    }
}

/// Display helper for raw names.
#[allow(dead_code)]
pub(crate) fn show(name: &std::ffi::OsStr) -> String {
    String::from_utf8_lossy(name.as_bytes()).into_owned()
}
