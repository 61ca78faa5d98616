//! Copying a tree so that its manifest is unchanged: types, modes (setuid and friends),
//! owners, xattrs, nanosecond times, hardlinks, devices, fifos and sparse files. File data is
//! shared with reflinks (`FICLONE`) where the filesystem has them, else copied in the kernel
//! with `copy_file_range`, hole by hole.
//!
//! Both trees belong to the store (a layer and its new copy), so plain paths are used; no
//! symlink is ever followed (lstat, `AT_SYMLINK_NOFOLLOW`, `O_NOFOLLOW`).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, Timespec, Timestamps, CWD};

use crate::archive::is_internal_xattr;

/// An error of the copy, naming the path that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct CopyError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CopyError + 'a {
    move |source| CopyError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl From<CopyError> for crate::Error {
    fn from(e: CopyError) -> Self {
        crate::Error::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

/// How a tree is copied.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions {
    /// Keep the backends' own xattrs (`trusted.overlay.opaque` of an overlay upper directory):
    /// a backend cloning its own storage wants them; copying a view never does.
    pub keep_internal_xattrs: bool,
    /// `dst` already exists (an empty directory): copy into it instead of creating it.
    pub into_existing: bool,
}

/// Copy the tree at `src` to `dst` (which must not exist yet). Hardlinks within `src` stay
/// hardlinks within `dst`.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), CopyError> {
    copy_tree_with(src, dst, CopyOptions::default())
}

/// Copy a tree, in this process (a killed copy leaves nothing running that still writes).
pub fn copy_tree_with(src: &Path, dst: &Path, opts: CopyOptions) -> Result<(), CopyError> {
    let mut cx = Copier {
        links: HashMap::new(),
        opts,
    };
    let md = fs::symlink_metadata(src).map_err(err("reading", src))?;
    if !opts.into_existing {
        fs::create_dir(dst).map_err(err("creating", dst))?;
    }
    cx.copy_dir_contents(src, dst)?;
    copy_metadata_with(src, dst, &md, opts)
}

struct Copier {
    /// First copy of each multiply-linked inode, to link the others to.
    links: HashMap<(u64, u64), PathBuf>,
    opts: CopyOptions,
}

impl Copier {
    fn copy_dir_contents(&mut self, src: &Path, dst: &Path) -> Result<(), CopyError> {
        for ent in fs::read_dir(src).map_err(err("listing", src))? {
            let ent = ent.map_err(err("listing", src))?;
            self.copy_entry(&ent.path(), &dst.join(ent.file_name()))?;
        }
        Ok(())
    }

    /// Copy one entry (a directory with everything below it). `dst` must not exist.
    fn copy_entry(&mut self, src: &Path, dst: &Path) -> Result<(), CopyError> {
        use std::os::unix::fs::FileTypeExt;
        let md = fs::symlink_metadata(src).map_err(err("reading", src))?;
        let ft = md.file_type();
        if !ft.is_dir() && md.nlink() > 1 {
            // Any non-directory can be hardlinked (overlay even links whiteout devices).
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                return fs::hard_link(first, dst).map_err(err("linking", dst));
            }
            self.links.insert((md.dev(), md.ino()), dst.to_path_buf());
        }
        if ft.is_dir() {
            fs::create_dir(dst).map_err(err("creating", dst))?;
            self.copy_dir_contents(src, dst)?;
        } else if ft.is_file() {
            copy_file_data(src, dst, &md)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(src).map_err(err("reading link", src))?;
            std::os::unix::fs::symlink(&target, dst).map_err(err("creating", dst))?;
        } else {
            let kind = if ft.is_char_device() {
                rustix::fs::FileType::CharacterDevice
            } else if ft.is_block_device() {
                rustix::fs::FileType::BlockDevice
            } else if ft.is_fifo() {
                rustix::fs::FileType::Fifo
            } else {
                rustix::fs::FileType::Socket
            };
            rustix::fs::mknodat(CWD, dst, kind, Mode::from_raw_mode(0o600), md.rdev()).map_err(
                |e| CopyError {
                    op: "creating",
                    path: dst.into(),
                    source: e.into(),
                },
            )?;
        }
        copy_metadata_with(src, dst, &md, self.opts)
    }
}

/// Copy a regular file's bytes, sharing extents where possible and keeping holes.
fn copy_file_data(src: &Path, dst: &Path, md: &fs::Metadata) -> Result<(), CopyError> {
    let from = File::open(src).map_err(err("opening", src))?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)
        .map_err(err("creating", dst))?;
    if rustix::fs::ioctl_ficlone(&to, &from).is_ok() {
        return Ok(());
    }
    let size = md.len();
    let mut pos: u64 = 0;
    while pos < size {
        // Next data segment (holes are skipped, so sparse files stay sparse).
        let start = match rustix::fs::seek(&from, rustix::fs::SeekFrom::Data(pos)) {
            Ok(p) => p,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => pos, // no SEEK_DATA: copy everything
        };
        let end = rustix::fs::seek(&from, rustix::fs::SeekFrom::Hole(start))
            .unwrap_or(size)
            .min(size);
        let mut off_in = start;
        let mut off_out = start;
        while off_in < end {
            let want = (end - off_in).min(1 << 30) as usize;
            let n = rustix::fs::copy_file_range(
                &from,
                Some(&mut off_in),
                &to,
                Some(&mut off_out),
                want,
            )
            .map_err(|e| CopyError {
                op: "copying",
                path: src.into(),
                source: e.into(),
            })?;
            if n == 0 {
                break;
            }
        }
        pos = end;
    }
    to.set_len(size).map_err(err("sizing", dst))?;
    Ok(())
}

/// Owner, then mode (chown clears setuid), xattrs, then times, all without following links.
pub fn copy_metadata(src: &Path, dst: &Path, md: &fs::Metadata) -> Result<(), CopyError> {
    copy_metadata_with(src, dst, md, CopyOptions::default())
}

fn copy_metadata_with(
    src: &Path,
    dst: &Path,
    md: &fs::Metadata,
    opts: CopyOptions,
) -> Result<(), CopyError> {
    let io = |op: &'static str| {
        move |e: rustix::io::Errno| CopyError {
            op,
            path: dst.into(),
            source: e.into(),
        }
    };
    rustix::fs::chownat(
        CWD,
        dst,
        Some(rustix::fs::Uid::from_raw(md.uid())),
        Some(rustix::fs::Gid::from_raw(md.gid())),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io("changing the owner of"))?;
    if !md.file_type().is_symlink() {
        rustix::fs::chmodat(
            CWD,
            dst,
            Mode::from_raw_mode(md.mode() & 0o7777),
            AtFlags::empty(),
        )
        .map_err(io("changing the mode of"))?;
    }
    for (name, value) in list_xattrs(src)? {
        if !opts.keep_internal_xattrs && is_internal_xattr(name.as_bytes()) {
            continue;
        }
        rustix::fs::lsetxattr(
            dst,
            name.as_c_str(),
            &value,
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(|e| CopyError {
            op: "setting an xattr on",
            path: dst.into(),
            source: e.into(),
        })?;
    }
    set_times_of(dst, md).map_err(io("setting the times of"))
}

/// Give `path` (not following a symlink) the access and modification times in `md`.
pub fn set_times_of(path: &Path, md: &fs::Metadata) -> rustix::io::Result<()> {
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(CWD, path, &ts, AtFlags::SYMLINK_NOFOLLOW)
}

/// Every extended attribute of `path` (not following a symlink), internal ones included.
pub fn list_xattrs(path: &Path) -> Result<Vec<(std::ffi::CString, Vec<u8>)>, CopyError> {
    let e = |e: rustix::io::Errno| CopyError {
        op: "reading the xattrs of",
        path: path.into(),
        source: e.into(),
    };
    let mut names = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::llistxattr(path, &mut [0u8; 0][..]).map_err(e)?;
                names.resize(need.max(names.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(x) => return Err(e(x)),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let cname = std::ffi::CString::new(name).expect("split at NUL");
        let mut value = vec![0u8; 256];
        let len = loop {
            match rustix::fs::lgetxattr(path, cname.as_c_str(), &mut value[..]) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => {
                    let need = rustix::fs::lgetxattr(path, cname.as_c_str(), &mut [0u8; 0][..])
                        .map_err(e)?;
                    value.resize(need.max(value.len() * 2), 0);
                }
                Err(rustix::io::Errno::NODATA) => break usize::MAX,
                Err(x) => return Err(e(x)),
            }
        };
        if len != usize::MAX {
            value.truncate(len);
            out.push((cname, value));
        }
    }
    Ok(out)
}
