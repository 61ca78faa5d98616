//! The applier: streams a layer tar onto a directory, every path resolved beneath it.
//!
//! Security model: the tar is hostile. Every name is normalized (`..` above the root is an
//! error), every parent directory is opened with `openat2(RESOLVE_IN_ROOT)` (see `beneath`),
//! and the last component is created, replaced, chowned, chmodded, linked or deleted with
//! `*at` calls on that parent's fd that never follow a symlink. Content is streamed through one
//! buffer; the only state that grows with the archive is the set of paths written so far and
//! the directory times to set at the end.
//!
//! Semantics are docs/changeset.md §4. Choices that the spec leaves open:
//! - aufs whiteouts and opaque markers are written as empty regular files, mode 0444, owned
//!   by 0:0 (what aufs itself creates);
//! - a whiteout or an opaque marker whose directory exists neither in the target nor (for
//!   overlay/aufs) in a lower layer is a no-op: there is nothing for it to hide;
//! - entries under a `.wh..wh.*` directory other than `.wh..wh.plnk` are ignored, and a `.wh.`
//!   name used as a directory is an error.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, Stat, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use super::beneath::{
    self, file_type, join_rel, lstat_at, open_beneath, open_dir_beneath, split_last,
};
use super::reader::{Entry, EntryType, TarReader};
use super::{
    decompress, is_internal_xattr, show, AUFS_PLNK_DIR, OPAQUE_WHITEOUT, WHITEOUT_META_PREFIX,
    WHITEOUT_PREFIX,
};
use crate::error::ArchiveError;

/// How whiteouts and opaque markers of the tar are realised on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutFormat {
    /// The target is a flat view (vfs layer, mounted view): delete what whiteouts name, empty
    /// opaque directories of what the lower layers put there.
    #[default]
    Remove,
    /// The target is an overlayfs upper directory: whiteouts become 0/0 character devices,
    /// opaque markers the `trusted.overlay.opaque=y` xattr.
    Overlay,
    /// The target is an aufs branch: `.wh.NAME` and `.wh..wh..opq` are written as the empty
    /// files aufs expects (mode 0444, owner 0:0).
    Aufs,
}

#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    pub whiteouts: WhiteoutFormat,
    /// For `Overlay` and `Aufs`: the lower layers' directories, nearest first. Used to give an
    /// implied parent directory the metadata it has below, and to copy up the target of a
    /// hardlink that lives in a lower layer.
    pub lowers: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Tar entries processed.
    pub entries: u64,
}

/// Content is copied through a buffer of this size.
const COPY_BUF: usize = 1 << 20;
/// Runs of zeros this long (and aligned to it) are skipped, leaving a hole.
const SPARSE_BLOCK: usize = 4096;
/// Mode of the whiteout and opaque files of an aufs branch.
const AUFS_WHITEOUT_MODE: u32 = 0o444;
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Largest xattr list / value the kernel hands out (XATTR_LIST_MAX, XATTR_SIZE_MAX).
const XATTR_MAX: usize = 65536;

/// Apply a layer tar (plain, gzip or zstd, detected from the bytes) onto `root`.
pub fn apply_tar(
    root: &Path,
    tar: &mut dyn Read,
    opts: &ApplyOptions,
) -> Result<ApplyStats, ArchiveError> {
    let (_, stream) = decompress(tar).map_err(ArchiveError::Stream)?;
    // The reader bounds what it buffers: extension headers of one entry at most
    // `reader::HEADER_BUDGET` bytes, content never.
    let mut reader = TarReader::new(stream);
    let mut applier = Applier::new(root, opts)?;
    let result = (|| {
        while let Some(mut entry) = reader.next_entry()? {
            applier.apply_entry(&mut entry)?;
        }
        Ok(())
    })();
    applier.finish(result)
}

/// Metadata of an entry (or of a lower directory being reproduced).
#[derive(Debug, Clone)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: Timespec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

impl Meta {
    fn default_dir() -> Meta {
        Meta {
            uid: 0,
            gid: 0,
            mode: 0o755,
            mtime: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            xattrs: Vec::new(),
        }
    }
}

/// What an entry creates.
enum Kind {
    Dir,
    File,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Device(FileType, u32, u32),
    Fifo,
}

struct Applier {
    root_fd: OwnedFd,
    format: WhiteoutFormat,
    lowers: Vec<OwnedFd>,
    /// Normalized paths written by this tar, and all their ancestors: whiteouts and opaque
    /// markers never remove these.
    written: HashSet<Vec<u8>>,
    /// Directory mtimes, set at the very end (writing into a directory changes its mtime).
    dir_times: HashMap<Vec<u8>, Timespec>,
    /// Hidden directory (relative to the root) holding `.wh..wh.plnk/` entries.
    plnk_dir: Option<Vec<u8>>,
    buf: Vec<u8>,
    stats: ApplyStats,
    /// The directory the previous entry went into, still open: a tar lists a directory's
    /// entries together, so most entries skip resolving their parent again. Dropped whenever
    /// anything is removed or replaced, so it never names a directory that left the tree.
    parent_cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    /// aufs format: whether a `.wh.NAME` can exist in the layer, because it had entries
    /// before this apply or this apply made a whiteout. While it cannot, an entry is created
    /// without looking for its whiteout first: one failed lstat less per entry of a new layer
    /// (102,000 of them for a layer of 100,000 files).
    aufs_whiteouts_possible: bool,
}

fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw_os_error)
}

fn is_missing(e: &io::Error) -> bool {
    matches!(errno(e), Some(Errno::NOENT) | Some(Errno::NOTDIR))
}

fn with_prefix(prefix: &str, name: &[u8]) -> Vec<u8> {
    let mut out = prefix.as_bytes().to_vec();
    out.extend_from_slice(name);
    out
}

fn is_overlay_whiteout(st: &Stat) -> bool {
    file_type(st) == FileType::CharacterDevice && st.st_rdev == 0
}

fn stat_mtime(st: &Stat) -> Timespec {
    Timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec as _,
    }
}

fn timestamps(t: Timespec) -> Timestamps {
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn is_zero(block: &[u8]) -> bool {
    let (head, body, tail) = unsafe {
        // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets aligned middle.
        block.align_to::<u64>()
    };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

fn proc_fd_path(fd: BorrowedFd<'_>, name: Option<&[u8]>) -> Vec<u8> {
    let mut p = format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes();
    if let Some(name) = name {
        p.push(b'/');
        p.extend_from_slice(name);
    }
    p
}

/// Non-internal xattrs of an open file or directory, sorted by name.
fn read_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<(CString, Vec<u8>)>> {
    let mut list = vec![0u8; XATTR_MAX];
    let n = match rustix::fs::flistxattr(fd, &mut list[..]) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    let mut value = vec![0u8; XATTR_MAX];
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if is_internal_xattr(name) {
            continue;
        }
        let cname = CString::new(name).expect("split on NUL");
        match rustix::fs::fgetxattr(fd, cname.as_c_str(), &mut value[..]) {
            Ok(len) => out.push((cname, value[..len].to_vec())),
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    out.sort();
    Ok(out)
}

fn set_xattrs_fd(fd: BorrowedFd<'_>, xattrs: &[(CString, Vec<u8>)]) -> io::Result<()> {
    for (name, value) in xattrs {
        rustix::fs::fsetxattr(fd, name.as_c_str(), value, XattrFlags::empty())?;
    }
    Ok(())
}

/// Set xattrs on `name` in `parent_fd` without following it (symlinks, devices, fifos):
/// `lsetxattr` on `/proc/self/fd/<parent>/<name>` reaches the parent through its fd and does
/// not follow the last component. Linux refuses `user.*` on anything but files and
/// directories (EPERM); such an attribute cannot exist in any view, so it is dropped.
fn set_xattrs_nofollow(
    parent_fd: BorrowedFd<'_>,
    name: &[u8],
    xattrs: &[(CString, Vec<u8>)],
) -> io::Result<()> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let path = proc_fd_path(parent_fd, Some(name));
    for (xname, value) in xattrs {
        match rustix::fs::lsetxattr(&path[..], xname.as_c_str(), value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(Errno::PERM) if xname.as_bytes().starts_with(b"user.") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// chmod `name` in `parent_fd` without following a symlink: open it with O_PATH|O_NOFOLLOW and
/// chmod through its `/proc/self/fd` link, which names that very inode.
fn chmod_nofollow(parent_fd: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    let fd = rustix::fs::openat(
        parent_fd,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if file_type(&rustix::fs::fstat(&fd)?) == FileType::Symlink {
        return Ok(());
    }
    rustix::fs::chmodat(
        rustix::fs::CWD,
        &proc_fd_path(fd.as_fd(), None)[..],
        Mode::from_raw_mode(mode),
        AtFlags::empty(),
    )?;
    Ok(())
}

fn chown_nofollow(parent_fd: BorrowedFd<'_>, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    rustix::fs::chownat(
        parent_fd,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// Owner, then mode (chown clears setuid), then xattrs on an open file or directory.
fn set_meta_fd(fd: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
    set_xattrs_fd(fd, &meta.xattrs)
}

/// Create an empty regular file (replacing a non-directory) with the given mode, owned by 0:0.
fn create_marker_file(parent_fd: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    match lstat_at(parent_fd, name)? {
        Some(st) if file_type(&st) == FileType::Directory => {
            beneath::remove_all_beneath(parent_fd, name)?
        }
        Some(_) => rustix::fs::unlinkat(parent_fd, name, AtFlags::empty())?,
        None => {}
    }
    let fd = rustix::fs::openat(
        parent_fd,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    rustix::fs::fchown(&fd, Some(Uid::ROOT), Some(Gid::ROOT))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(())
}

impl Applier {
    fn new(root: &Path, opts: &ApplyOptions) -> Result<Applier, ArchiveError> {
        let root_fd =
            beneath::open_root(root).map_err(|e| ArchiveError::tree("open layer root", root, e))?;
        let mut lowers = Vec::new();
        if opts.whiteouts != WhiteoutFormat::Remove {
            for lower in &opts.lowers {
                lowers.push(
                    beneath::open_root(lower)
                        .map_err(|e| ArchiveError::tree("open lower layer", lower, e))?,
                );
            }
        }
        let aufs_whiteouts_possible = opts.whiteouts == WhiteoutFormat::Aufs
            && !beneath::list_dir(root_fd.as_fd())
                .map_err(|e| ArchiveError::tree("list layer root", root, e))?
                .is_empty();
        Ok(Applier {
            root_fd,
            format: opts.whiteouts,
            lowers,
            written: HashSet::new(),
            dir_times: HashMap::new(),
            plnk_dir: None,
            buf: Vec::new(),
            stats: ApplyStats::default(),
            parent_cache: None,
            aufs_whiteouts_possible,
        })
    }

    fn root(&self) -> BorrowedFd<'_> {
        self.root_fd.as_fd()
    }

    fn finish(self, result: Result<(), ArchiveError>) -> Result<ApplyStats, ArchiveError> {
        // The plnk directory goes whether or not the apply succeeded: it is never part of a
        // view.
        let cleanup = match &self.plnk_dir {
            Some(dir) => beneath::remove_all_beneath(self.root(), dir)
                .map_err(|e| ArchiveError::entry_io(show(dir), e)),
            None => Ok(()),
        };
        result?;
        cleanup?;
        for (rel, mtime) in &self.dir_times {
            if rel.is_empty() {
                continue;
            }
            let (parent, name) = split_last(rel);
            let parent_fd = match open_dir_beneath(self.root(), parent) {
                Ok(fd) => fd,
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(ArchiveError::entry_io(show(rel), e)),
            };
            match lstat_at(parent_fd.as_fd(), name) {
                Ok(Some(st)) if file_type(&st) == FileType::Directory => {}
                Ok(_) => continue,
                Err(e) => return Err(ArchiveError::entry_io(show(rel), e)),
            }
            rustix::fs::utimensat(
                &parent_fd,
                name,
                &timestamps(*mtime),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| ArchiveError::entry_io(show(rel), e.into()))?;
        }
        Ok(self.stats)
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut Entry<'_, R>) -> Result<(), ArchiveError> {
        self.stats.entries += 1;
        let raw_name = entry.header.path.clone();
        let shown = show(&raw_name);
        // Whatever content the entry still has (a directory with a size, an ignored entry) is
        // skipped by the reader's next `next_entry()`.
        self.apply_entry_inner(entry, &raw_name, &shown)
    }

    fn apply_entry_inner<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        raw_name: &[u8],
        shown: &str,
    ) -> Result<(), ArchiveError> {
        let bad = |reason: String| ArchiveError::bad(shown, reason);
        let etype = entry.header.entry_type;
        let rel = beneath::normalize(raw_name).map_err(|e| bad(e.to_string()))?;
        if rel.is_empty() {
            return Ok(()); // the root itself: its metadata is not part of a layer
        }
        let mut kind = match etype {
            EntryType::Directory => Kind::Dir,
            EntryType::Regular => {
                // Old (v7) tars mark directories with a trailing slash only.
                if raw_name.ends_with(b"/") {
                    Kind::Dir
                } else {
                    Kind::File
                }
            }
            EntryType::Symlink | EntryType::Hardlink => {
                let target = entry.header.link_name.clone();
                if target.is_empty() {
                    return Err(bad("link entry without a link name".into()));
                }
                if target.contains(&0) {
                    return Err(bad("link name contains a NUL byte".into()));
                }
                if etype == EntryType::Symlink {
                    Kind::Symlink(target)
                } else {
                    Kind::Hardlink(target)
                }
            }
            EntryType::Char | EntryType::Block => {
                let (Some(major), Some(minor)) = (entry.header.dev_major, entry.header.dev_minor)
                else {
                    return Err(bad("device entry in a header without device numbers".into()));
                };
                let ft = if etype == EntryType::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                Kind::Device(ft, major, minor)
            }
            EntryType::Fifo => Kind::Fifo,
            EntryType::Other(flag) => {
                return Err(bad(format!(
                    "unsupported entry type {:?}",
                    char::from(flag)
                )))
            }
        };

        let comps: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
        let (parent, last) = split_last(&rel);

        // aufs hardlink targets: kept aside, used only as link targets.
        if comps[0] == AUFS_PLNK_DIR.as_bytes() {
            if comps.len() == 1 {
                return Ok(());
            }
            if matches!(kind, Kind::Dir) {
                return Ok(()); // created on demand as a parent
            }
            self.parent_cache = None;
            let plnk = self.plnk_dir(shown)?;
            let mapped = join_rel(&plnk, &rel[AUFS_PLNK_DIR.len() + 1..]);
            if let Kind::Hardlink(target) = &kind {
                kind = Kind::Hardlink(self.map_link_target(target, shown)?);
            }
            return self.apply_plain(entry, &mapped, kind, shown, false);
        }
        for comp in &comps[..comps.len() - 1] {
            if comp.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
                return Ok(()); // inside aufs metadata (.wh..wh.orph/ and the like)
            }
            if comp.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                return Err(bad("a whiteout name is used as a directory".into()));
            }
        }
        if last == OPAQUE_WHITEOUT.as_bytes() {
            return self.opaque(parent, shown);
        }
        if last.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            return Ok(());
        }
        if let Some(name) = last.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if name.is_empty() || name == b"." || name == b".." {
                return Err(bad(format!("whiteout of {:?} is not allowed", show(name))));
            }
            return self.whiteout(parent, name, shown);
        }
        if let Kind::Hardlink(target) = &kind {
            kind = Kind::Hardlink(self.map_link_target(target, shown)?);
        }
        self.apply_plain(entry, &rel, kind, shown, true)
    }

    /// Normalize a hardlink's target; one into `.wh..wh.plnk/` points into our hidden dir.
    fn map_link_target(&mut self, target: &[u8], shown: &str) -> Result<Vec<u8>, ArchiveError> {
        let rel = beneath::normalize(target)
            .map_err(|e| ArchiveError::bad(shown, format!("hardlink target: {e}")))?;
        if rel.is_empty() {
            return Err(ArchiveError::bad(shown, "hardlink to the layer root"));
        }
        let plnk = AUFS_PLNK_DIR.as_bytes();
        if rel.starts_with(plnk) && rel.get(plnk.len()) == Some(&b'/') {
            let dir = self.plnk_dir(shown)?;
            return Ok(join_rel(&dir, &rel[plnk.len() + 1..]));
        }
        Ok(rel)
    }

    fn plnk_dir(&mut self, shown: &str) -> Result<Vec<u8>, ArchiveError> {
        if let Some(dir) = &self.plnk_dir {
            return Ok(dir.clone());
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(".gd-plnk.{}.{}", std::process::id(), nanos).into_bytes();
        rustix::fs::mkdirat(self.root(), &name[..], Mode::from_raw_mode(0o700))
            .map_err(|e| ArchiveError::entry_io(shown, e.into()))?;
        self.written.insert(name.clone());
        self.plnk_dir = Some(name.clone());
        Ok(name)
    }

    fn entry_meta<R: Read>(entry: &Entry<'_, R>, shown: &str) -> Result<Meta, ArchiveError> {
        let bad = |reason: String| ArchiveError::bad(shown, reason);
        let h = &entry.header;
        let mode = h.mode & 0o7777;
        let id = |v: u64, what: &str| -> Result<u32, ArchiveError> {
            u32::try_from(v)
                .ok()
                .filter(|&v| v != u32::MAX)
                .ok_or_else(|| bad(format!("{what} {v} is out of range")))
        };
        let uid = id(h.uid, "uid")?;
        let gid = id(h.gid, "gid")?;
        let mtime = Timespec {
            tv_sec: h.mtime_sec,
            tv_nsec: h.mtime_nsec as _,
        };
        let mut xattrs = Vec::new();
        for (name, value) in &h.xattrs {
            if is_internal_xattr(name) {
                continue; // the backends' own; a tar never sets them
            }
            let cname = CString::new(name.clone())
                .ok()
                .filter(|n| !n.as_bytes().is_empty())
                .ok_or_else(|| bad(format!("bad xattr name {:?}", show(name))))?;
            xattrs.push((cname, value.clone()));
        }
        Ok(Meta {
            uid,
            gid,
            mode,
            mtime,
            xattrs,
        })
    }

    /// Create (or merge) a real entry at `rel`.
    fn apply_plain<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        rel: &[u8],
        kind: Kind,
        shown: &str,
        mark_written: bool,
    ) -> Result<(), ArchiveError> {
        let io_err = |e: io::Error| ArchiveError::entry_io(shown, e);
        let meta = Self::entry_meta(entry, shown)?;
        let (parent, name) = split_last(rel);
        let parent_fd = self.parent_dir(parent, shown)?;
        let pfd = parent_fd.as_fd();
        if self.format == WhiteoutFormat::Aufs && self.aufs_whiteouts_possible {
            // An entry and its whiteout cannot share a branch: the whiteout would hide it.
            let wh = with_prefix(WHITEOUT_PREFIX, name);
            if lstat_at(pfd, &wh).map_err(io_err)?.is_some() {
                self.parent_cache = None;
                beneath::remove_all_beneath(pfd, &wh).map_err(io_err)?;
                if matches!(kind, Kind::Dir) {
                    // The lower directory was deleted and this one created: hide it.
                    self.make_dir(pfd, name, rel, &meta, true, shown)?;
                    return self.mark(rel, mark_written);
                }
            }
        }
        match kind {
            Kind::Dir => self.make_dir(pfd, name, rel, &meta, false, shown)?,
            Kind::File => self.make_file(entry, pfd, name, rel, &meta, shown)?,
            Kind::Symlink(target) => {
                self.clear_slot(pfd, name, rel).map_err(io_err)?;
                rustix::fs::symlinkat(&target[..], pfd, name).map_err(|e| io_err(e.into()))?;
                self.finish_special(pfd, name, &meta).map_err(io_err)?;
            }
            Kind::Device(ft, major, minor) => {
                self.clear_slot(pfd, name, rel).map_err(io_err)?;
                rustix::fs::mknodat(
                    pfd,
                    name,
                    ft,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|e| io_err(e.into()))?;
                self.finish_special(pfd, name, &meta).map_err(io_err)?;
            }
            Kind::Fifo => {
                self.clear_slot(pfd, name, rel).map_err(io_err)?;
                rustix::fs::mknodat(pfd, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(|e| io_err(e.into()))?;
                self.finish_special(pfd, name, &meta).map_err(io_err)?;
            }
            Kind::Hardlink(target) => self.make_hardlink(pfd, name, rel, &target, shown)?,
        }
        self.mark(rel, mark_written)
    }

    fn mark(&mut self, rel: &[u8], mark_written: bool) -> Result<(), ArchiveError> {
        if !mark_written {
            return Ok(());
        }
        let mut end = rel.len();
        loop {
            if !self.written.insert(rel[..end].to_vec()) {
                break; // its ancestors are in already
            }
            match rel[..end].iter().rposition(|&b| b == b'/') {
                Some(i) => end = i,
                None => break,
            }
        }
        Ok(())
    }

    /// Make room for a non-directory at `name`: whatever is there goes (a directory with all
    /// its contents). Never opens the old entry, so its other hardlinks keep their content.
    fn clear_slot(&mut self, parent_fd: BorrowedFd<'_>, name: &[u8], rel: &[u8]) -> io::Result<()> {
        self.dir_times.remove(rel);
        let existing = lstat_at(parent_fd, name)?;
        if existing.is_some() {
            self.parent_cache = None;
        }
        match existing {
            None => Ok(()),
            Some(st) if file_type(&st) == FileType::Directory => {
                beneath::remove_all_beneath(parent_fd, name)
            }
            Some(_) => Ok(rustix::fs::unlinkat(parent_fd, name, AtFlags::empty())?),
        }
    }

    /// chown, chmod, xattrs and mtime of a just-created symlink, device or fifo.
    fn finish_special(
        &self,
        parent_fd: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
    ) -> io::Result<()> {
        chown_nofollow(parent_fd, name, meta.uid, meta.gid)?;
        chmod_nofollow(parent_fd, name, meta.mode)?;
        set_xattrs_nofollow(parent_fd, name, &meta.xattrs)?;
        rustix::fs::utimensat(
            parent_fd,
            name,
            &timestamps(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    fn make_dir(
        &mut self,
        parent_fd: BorrowedFd<'_>,
        name: &[u8],
        rel: &[u8],
        meta: &Meta,
        force_opaque: bool,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        let io_err = |e: io::Error| ArchiveError::entry_io(shown, e);
        let mut opaque = force_opaque;
        let existing = lstat_at(parent_fd, name).map_err(io_err)?;
        let fresh = match &existing {
            Some(st) if file_type(st) == FileType::Directory => false,
            Some(st) => {
                // A directory over an overlay whiteout is a deleted-and-recreated directory:
                // nothing of the lower one may show through.
                opaque |= self.format == WhiteoutFormat::Overlay && is_overlay_whiteout(st);
                self.parent_cache = None;
                rustix::fs::unlinkat(parent_fd, name, AtFlags::empty())
                    .map_err(|e| io_err(e.into()))?;
                true
            }
            None => true,
        };
        if fresh {
            rustix::fs::mkdirat(parent_fd, name, Mode::from_raw_mode(0o700))
                .map_err(|e| io_err(e.into()))?;
        }
        let fd = rustix::fs::openat(
            parent_fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(e.into()))?;
        if !fresh {
            // Merging: the entry's xattrs are the directory's whole set.
            for (xname, _) in read_xattrs(fd.as_fd()).map_err(io_err)? {
                if !meta.xattrs.iter().any(|(n, _)| *n == xname) {
                    rustix::fs::fremovexattr(&fd, xname.as_c_str())
                        .map_err(|e| io_err(e.into()))?;
                }
            }
        }
        set_meta_fd(fd.as_fd(), meta).map_err(io_err)?;
        if opaque {
            self.mark_opaque(fd.as_fd()).map_err(io_err)?;
        }
        self.dir_times.insert(rel.to_vec(), meta.mtime);
        Ok(())
    }

    fn mark_opaque(&self, dir_fd: BorrowedFd<'_>) -> io::Result<()> {
        match self.format {
            WhiteoutFormat::Remove => Ok(()),
            WhiteoutFormat::Overlay => Ok(rustix::fs::fsetxattr(
                dir_fd,
                OVERLAY_OPAQUE_XATTR,
                b"y",
                XattrFlags::empty(),
            )?),
            WhiteoutFormat::Aufs => {
                create_marker_file(dir_fd, OPAQUE_WHITEOUT.as_bytes(), AUFS_WHITEOUT_MODE)
            }
        }
    }

    fn make_file<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        parent_fd: BorrowedFd<'_>,
        name: &[u8],
        rel: &[u8],
        meta: &Meta,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        let io_err = |e: io::Error| ArchiveError::entry_io(shown, e);
        // Create first (most entries are new, as in GNU tar); make room only when the name is
        // taken. O_EXCL|O_NOFOLLOW: never opens what is there.
        let create = || {
            rustix::fs::openat(
                parent_fd,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        };
        self.dir_times.remove(rel);
        let fd = match create() {
            Err(Errno::EXIST) => {
                self.clear_slot(parent_fd, name, rel).map_err(io_err)?;
                create()
            }
            other => other,
        }
        .map_err(|e| io_err(e.into()))?;
        let file = File::from(fd);
        let expected = entry.header.size;
        let written = if entry.header.sparse {
            self.write_sparse(entry, &file).map_err(io_err)?
        } else {
            self.write_content(entry, &file).map_err(io_err)?
        };
        if written != expected {
            return Err(ArchiveError::bad(
                shown,
                format!("truncated: {written} of {expected} content bytes"),
            ));
        }
        self.stats.bytes += written;
        set_meta_fd(file.as_fd(), meta).map_err(io_err)?;
        rustix::fs::futimens(&file, &timestamps(meta.mtime)).map_err(|e| io_err(e.into()))?;
        Ok(())
    }

    /// A sparse entry: its holes are skipped (never read as zeros, which for a hostile map of
    /// exabytes would never end), its data regions written at their offsets.
    fn write_sparse<R: Read>(&mut self, entry: &mut Entry<'_, R>, file: &File) -> io::Result<u64> {
        let mut pos = 0u64;
        loop {
            pos += entry.skip_hole();
            let run = entry.data_ahead();
            if run == 0 {
                break;
            }
            pos += self.write_content_at(&mut entry.take(run), file, pos)?;
        }
        if pos > 0 {
            file.set_len(pos)?;
        }
        Ok(pos)
    }

    /// Stream `src` into `file`, leaving holes where whole aligned blocks are zero.
    fn write_content(&mut self, src: &mut dyn Read, file: &File) -> io::Result<u64> {
        self.write_content_at(src, file, 0)
    }

    /// Stream `src` into `file` from offset `start` (holes as in [`Self::write_content`]).
    /// Returns the bytes read from `src`.
    fn write_content_at(&mut self, src: &mut dyn Read, file: &File, start: u64) -> io::Result<u64> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(COPY_BUF, 0);
        let result = (|| {
            let mut pos = start;
            let mut ends_in_hole = false;
            loop {
                let mut filled = 0;
                while filled < buf.len() {
                    match src.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                let data = &buf[..filled];
                let mut off = 0;
                while off < filled {
                    let end = (off + SPARSE_BLOCK).min(filled);
                    if is_zero(&data[off..end]) {
                        off = end;
                        ends_in_hole = true;
                        continue;
                    }
                    let mut run_end = end;
                    while run_end < filled {
                        let next = (run_end + SPARSE_BLOCK).min(filled);
                        if is_zero(&data[run_end..next]) {
                            break;
                        }
                        run_end = next;
                    }
                    file.write_all_at(&data[off..run_end], pos + off as u64)?;
                    ends_in_hole = false;
                    off = run_end;
                }
                pos += filled as u64;
                if filled < buf.len() {
                    break;
                }
            }
            if ends_in_hole {
                file.set_len(pos)?;
            }
            Ok(pos - start)
        })();
        self.buf = buf;
        result
    }

    fn make_hardlink(
        &mut self,
        parent_fd: BorrowedFd<'_>,
        name: &[u8],
        rel: &[u8],
        target: &[u8],
        shown: &str,
    ) -> Result<(), ArchiveError> {
        let io_err = |e: io::Error| ArchiveError::entry_io(shown, e);
        let (tparent, tname) = split_last(target);
        let mut found = self.lookup(tparent, tname).map_err(io_err)?;
        if let Some((_, st)) = &found {
            if self.format == WhiteoutFormat::Overlay && is_overlay_whiteout(st) {
                return Err(ArchiveError::bad(
                    shown,
                    format!("hardlink target {:?} is whited out", show(target)),
                ));
            }
        }
        if found.is_none()
            && self.format != WhiteoutFormat::Remove
            && self.copy_up(target, shown)?
        {
            found = self.lookup(tparent, tname).map_err(io_err)?;
        }
        let Some((tparent_fd, tst)) = found else {
            return Err(ArchiveError::bad(
                shown,
                format!("hardlink target {:?} does not exist", show(target)),
            ));
        };
        if file_type(&tst) == FileType::Directory {
            return Err(ArchiveError::bad(
                shown,
                format!("hardlink target {:?} is a directory", show(target)),
            ));
        }
        if let Some(st) = lstat_at(parent_fd, name).map_err(io_err)? {
            if st.st_dev == tst.st_dev && st.st_ino == tst.st_ino {
                return Ok(()); // already that file
            }
        }
        self.clear_slot(parent_fd, name, rel).map_err(io_err)?;
        // No AT_SYMLINK_FOLLOW: a target that is a symlink is linked itself, never followed.
        rustix::fs::linkat(&tparent_fd, tname, parent_fd, name, AtFlags::empty())
            .map_err(|e| io_err(e.into()))?;
        Ok(())
    }

    /// The parent fd and lstat of `parent/name` beneath the root, if it exists.
    fn lookup(&self, parent: &[u8], name: &[u8]) -> io::Result<Option<(OwnedFd, Stat)>> {
        let fd = match open_dir_beneath(self.root(), parent) {
            Ok(fd) => fd,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(lstat_at(fd.as_fd(), name)?.map(|st| (fd, st)))
    }

    /// Open directory `rel` beneath the root, creating what is missing one component at a time
    /// (each prefix resolved beneath the root again, so a symlink created by an earlier entry
    /// is followed inside the root, never outside).
    fn ensure_dir(&mut self, rel: &[u8], shown: &str) -> Result<OwnedFd, ArchiveError> {
        let io_err = |e: io::Error| ArchiveError::entry_io(shown, e);
        match open_dir_beneath(self.root(), rel) {
            Ok(fd) => {
                self.keep_time(rel, fd.as_fd()).map_err(io_err)?;
                return Ok(fd);
            }
            // ENOTDIR too: a whiteout in the way is replaced below; anything else is refused
            // there with a clear message.
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(io_err(e)),
        }
        self.parent_cache = None; // what is in the way may be removed below
        let mut fd = open_dir_beneath(self.root(), b"").map_err(io_err)?;
        let mut prefix: Vec<u8> = Vec::new();
        for comp in rel.split(|&b| b == b'/') {
            self.keep_time(&prefix, fd.as_fd()).map_err(io_err)?;
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(comp);
            match open_dir_beneath(self.root(), &prefix) {
                Ok(sub) => {
                    fd = sub;
                    continue;
                }
                Err(e) if is_missing(&e) => {}
                Err(e) => return Err(io_err(e)),
            }
            // A whiteout in the way means the lower directory was deleted: the new one is
            // opaque and owes nothing to the lower one.
            let mut over_whiteout = false;
            match lstat_at(fd.as_fd(), comp).map_err(io_err)? {
                None => {}
                Some(st) if self.format == WhiteoutFormat::Overlay && is_overlay_whiteout(&st) => {
                    rustix::fs::unlinkat(&fd, comp, AtFlags::empty())
                        .map_err(|e| io_err(e.into()))?;
                    over_whiteout = true;
                }
                Some(st) => {
                    let what = if file_type(&st) == FileType::Symlink {
                        "a symlink to a directory that does not exist"
                    } else {
                        "not a directory"
                    };
                    return Err(ArchiveError::bad(
                        shown,
                        format!("parent {:?} is {what}", show(&prefix)),
                    ));
                }
            }
            if self.format == WhiteoutFormat::Aufs && self.aufs_whiteouts_possible {
                let wh = with_prefix(WHITEOUT_PREFIX, comp);
                if lstat_at(fd.as_fd(), &wh).map_err(io_err)?.is_some() {
                    beneath::remove_all_beneath(fd.as_fd(), &wh).map_err(io_err)?;
                    over_whiteout = true;
                }
            }
            rustix::fs::mkdirat(&fd, comp, Mode::from_raw_mode(0o700))
                .map_err(|e| io_err(e.into()))?;
            let sub = rustix::fs::openat(
                &fd,
                comp,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(e.into()))?;
            let meta = if over_whiteout {
                self.mark_opaque(sub.as_fd()).map_err(io_err)?;
                None
            } else {
                self.lower_dir_meta(&prefix).map_err(io_err)?
            };
            match meta {
                Some(meta) => {
                    set_meta_fd(sub.as_fd(), &meta).map_err(io_err)?;
                    self.dir_times.insert(prefix.clone(), meta.mtime);
                }
                None => {
                    set_meta_fd(sub.as_fd(), &Meta::default_dir()).map_err(io_err)?;
                    self.dir_times.remove(&prefix);
                }
            }
            fd = sub;
        }
        Ok(fd)
    }

    /// `ensure_dir` for the parent of a plain entry, through `parent_cache`.
    fn parent_dir(&mut self, rel: &[u8], shown: &str) -> Result<Rc<OwnedFd>, ArchiveError> {
        if let Some(fd) = self.cached_dir(rel) {
            return Ok(fd);
        }
        let fd = Rc::new(self.ensure_dir(rel, shown)?);
        self.parent_cache = Some((rel.to_vec(), fd.clone()));
        Ok(fd)
    }

    /// An existing directory that this tar changes without naming it keeps its mtime: the
    /// tar says nothing about it, and an overlay upper dir would show the lower's time too.
    fn keep_time(&mut self, rel: &[u8], dir_fd: BorrowedFd<'_>) -> io::Result<()> {
        if rel.is_empty() || self.dir_times.contains_key(rel) {
            return Ok(());
        }
        let st = rustix::fs::fstat(dir_fd)?;
        self.dir_times.insert(rel.to_vec(), stat_mtime(&st));
        Ok(())
    }

    /// Where `rel` is visible in the lower layers (nearest first): the lower's index and its
    /// lstat. `None` when no lower has it or a nearer lower hides it.
    fn lower_lookup(&self, rel: &[u8]) -> io::Result<Option<(usize, Stat)>> {
        // First the cheap question (one openat2 per lower), then whether anything nearer
        // (the root itself, where `rel` is missing, and the nearer lowers) hides it.
        let mut found = None;
        for (i, lower) in self.lowers.iter().enumerate() {
            match open_beneath(lower.as_fd(), rel, OFlags::PATH | OFlags::NOFOLLOW) {
                Ok(fd) => {
                    found = Some((i, rustix::fs::fstat(&fd)?));
                    break;
                }
                Err(e) if is_missing(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let Some((i, st)) = found else {
            return Ok(None);
        };
        if is_overlay_whiteout(&st) || self.hidden_by_lower(self.root(), rel)? {
            return Ok(None);
        }
        for nearer in &self.lowers[..i] {
            if self.hidden_by_lower(nearer.as_fd(), rel)? {
                return Ok(None);
            }
        }
        Ok(Some((i, st)))
    }

    /// Does this lower (which lacks `rel`) hide `rel` of the layers below it: a whiteout of
    /// `rel` or of an ancestor, a non-directory ancestor, or an opaque ancestor directory?
    fn hidden_by_lower(&self, lower: BorrowedFd<'_>, rel: &[u8]) -> io::Result<bool> {
        // Walked one directory fd at a time, never through a symlink: in a union, a symlink
        // ancestor in a nearer layer is a non-directory and hides what is below.
        let mut dir = open_dir_beneath(lower, b"")?;
        // The lowers are in the format this apply writes: an overlay layer marks deletions
        // with 0/0 devices (a non-directory, found below) and the opaque xattr, an aufs branch
        // with `.wh.` files. Asking each only its own questions halves the lookups.
        let aufs_markers = self.format != WhiteoutFormat::Overlay;
        let overlay_markers = self.format != WhiteoutFormat::Aufs;
        for comp in rel.split(|&b| b == b'/') {
            if aufs_markers
                && (lstat_at(dir.as_fd(), &with_prefix(WHITEOUT_PREFIX, comp))?.is_some()
                    || lstat_at(dir.as_fd(), OPAQUE_WHITEOUT.as_bytes())?.is_some())
            {
                return Ok(true);
            }
            let mut value = [0u8; 8];
            if overlay_markers {
                if let Ok(n) = rustix::fs::fgetxattr(&dir, OVERLAY_OPAQUE_XATTR, &mut value[..]) {
                    if &value[..n] == b"y" {
                        return Ok(true);
                    }
                }
            }
            match lstat_at(dir.as_fd(), comp)? {
                Some(st) if file_type(&st) == FileType::Directory => {}
                Some(_) => return Ok(true),
                None => return Ok(false),
            }
            dir = rustix::fs::openat(
                &dir,
                comp,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
        }
        Ok(false)
    }

    /// The metadata a directory `rel` has in the lowers, for an implied parent.
    fn lower_dir_meta(&self, rel: &[u8]) -> io::Result<Option<Meta>> {
        if self.format == WhiteoutFormat::Remove {
            return Ok(None);
        }
        let Some((i, st)) = self.lower_lookup(rel)? else {
            return Ok(None);
        };
        if file_type(&st) != FileType::Directory {
            return Ok(None);
        }
        let fd = open_beneath(
            self.lowers[i].as_fd(),
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        )?;
        let st = rustix::fs::fstat(&fd)?;
        Ok(Some(Meta {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            mtime: stat_mtime(&st),
            xattrs: read_xattrs(fd.as_fd())?,
        }))
    }

    /// Copy a regular file of a lower layer up into the root (content, owner, mode, xattrs,
    /// times) so that a hardlink can point at it. False when no lower has it.
    fn copy_up(&mut self, rel: &[u8], shown: &str) -> Result<bool, ArchiveError> {
        let io_err = |e: io::Error| ArchiveError::entry_io(shown, e);
        let Some((i, st)) = self.lower_lookup(rel).map_err(io_err)? else {
            return Ok(false);
        };
        if file_type(&st) != FileType::RegularFile {
            return Err(ArchiveError::bad(
                shown,
                format!(
                    "hardlink target {:?} in a lower layer is not a regular file",
                    show(rel)
                ),
            ));
        }
        let src = open_beneath(
            self.lowers[i].as_fd(),
            rel,
            OFlags::RDONLY | OFlags::NOFOLLOW,
        )
        .map_err(io_err)?;
        let st = rustix::fs::fstat(&src).map_err(|e| io_err(e.into()))?;
        let meta = Meta {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            mtime: stat_mtime(&st),
            xattrs: read_xattrs(src.as_fd()).map_err(io_err)?,
        };
        let (parent, name) = split_last(rel);
        let parent_fd = self.ensure_dir(parent, shown)?;
        self.clear_slot(parent_fd.as_fd(), name, rel)
            .map_err(io_err)?;
        let dst = rustix::fs::openat(
            &parent_fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io_err(e.into()))?;
        let dst = File::from(dst);
        let mut src = File::from(src);
        self.write_content(&mut src, &dst).map_err(io_err)?;
        set_meta_fd(dst.as_fd(), &meta).map_err(io_err)?;
        rustix::fs::futimens(&dst, &timestamps(meta.mtime)).map_err(|e| io_err(e.into()))?;
        Ok(true)
    }

    /// Directory for a whiteout or opaque marker in `parent`: `None` when it exists nowhere
    /// (nothing to hide), created as an implied directory when only a lower has it.
    /// Through `parent_cache`, so that a run of deletions in one directory opens it once.
    fn marker_parent(
        &mut self,
        parent: &[u8],
        shown: &str,
    ) -> Result<Option<Rc<OwnedFd>>, ArchiveError> {
        if let Some(fd) = self.cached_dir(parent) {
            return Ok(Some(fd));
        }
        let fd = match open_dir_beneath(self.root(), parent) {
            Ok(fd) => {
                self.keep_time(parent, fd.as_fd())
                    .map_err(|e| ArchiveError::entry_io(shown, e))?;
                fd
            }
            Err(e) if is_missing(&e) => {
                if self.format == WhiteoutFormat::Remove {
                    return Ok(None);
                }
                match self.lower_lookup(parent) {
                    Ok(Some((_, st))) if file_type(&st) == FileType::Directory => {
                        self.ensure_dir(parent, shown)?
                    }
                    Ok(_) => return Ok(None),
                    Err(e) => return Err(ArchiveError::entry_io(shown, e)),
                }
            }
            Err(e) => return Err(ArchiveError::entry_io(shown, e)),
        };
        let fd = Rc::new(fd);
        self.parent_cache = Some((parent.to_vec(), fd.clone()));
        Ok(Some(fd))
    }

    /// The cached directory, if it is `rel`.
    fn cached_dir(&self, rel: &[u8]) -> Option<Rc<OwnedFd>> {
        match &self.parent_cache {
            Some((cached, fd)) if cached[..] == *rel => Some(fd.clone()),
            _ => None,
        }
    }

    /// Drop the cached directory if it is `rel` or beneath it (about to be removed).
    fn forget_cached_beneath(&mut self, rel: &[u8]) {
        if let Some((cached, _)) = &self.parent_cache {
            if cached.starts_with(rel) && (cached.len() == rel.len() || cached[rel.len()] == b'/') {
                self.parent_cache = None;
            }
        }
    }

    fn whiteout(&mut self, parent: &[u8], name: &[u8], shown: &str) -> Result<(), ArchiveError> {
        let io_err = |e: io::Error| ArchiveError::entry_io(shown, e);
        let target = join_rel(parent, name);
        if self.written.contains(&target) {
            return Ok(()); // deletes only what the lower layers had
        }
        self.forget_cached_beneath(&target);
        let Some(parent_fd) = self.marker_parent(parent, shown)? else {
            return Ok(());
        };
        let pfd = parent_fd.as_fd();
        self.dir_times.remove(&target);
        beneath::remove_all_beneath(pfd, name).map_err(io_err)?;
        match self.format {
            WhiteoutFormat::Remove => {}
            WhiteoutFormat::Overlay => {
                rustix::fs::mknodat(
                    pfd,
                    name,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|e| io_err(e.into()))?;
                chown_nofollow(pfd, name, 0, 0).map_err(io_err)?;
            }
            WhiteoutFormat::Aufs => {
                self.aufs_whiteouts_possible = true;
                create_marker_file(pfd, &with_prefix(WHITEOUT_PREFIX, name), AUFS_WHITEOUT_MODE)
                    .map_err(io_err)?;
            }
        }
        Ok(())
    }

    fn opaque(&mut self, dir: &[u8], shown: &str) -> Result<(), ArchiveError> {
        let io_err = |e: io::Error| ArchiveError::entry_io(shown, e);
        let Some(dir_fd) = self.marker_parent(dir, shown)? else {
            return Ok(());
        };
        // What the prune removes may be cached.
        self.parent_cache = None;
        // The marker applies first wherever it stands: what this tar wrote stays, everything
        // else under the directory goes.
        self.prune(dir_fd.as_fd(), dir).map_err(io_err)?;
        self.mark_opaque(dir_fd.as_fd()).map_err(io_err)
    }

    /// Remove everything beneath `dir_fd` that this tar did not write (iteratively: the
    /// written tree may be as deep as a path can be).
    fn prune(&mut self, dir_fd: BorrowedFd<'_>, dir_rel: &[u8]) -> io::Result<()> {
        struct Level {
            fd: Option<OwnedFd>,
            rel: Vec<u8>,
            pending: Vec<Vec<u8>>,
        }
        let mut stack = vec![Level {
            fd: None,
            rel: dir_rel.to_vec(),
            pending: beneath::list_dir(dir_fd)?,
        }];
        while let Some(level) = stack.last_mut() {
            let Some(name) = level.pending.pop() else {
                stack.pop();
                continue;
            };
            let fd = level.fd.as_ref().map_or(dir_fd, |f| f.as_fd());
            if self.format == WhiteoutFormat::Aufs && name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                continue; // the branch's own whiteouts, made by this apply
            }
            let child = join_rel(&level.rel, &name);
            if !self.written.contains(&child) {
                beneath::remove_all_beneath(fd, &name)?;
                continue;
            }
            let Some(st) = lstat_at(fd, &name)? else {
                continue;
            };
            if file_type(&st) != FileType::Directory {
                continue;
            }
            let sub = rustix::fs::openat(
                fd,
                &name[..],
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let pending = beneath::list_dir(sub.as_fd())?;
            stack.push(Level {
                fd: Some(sub),
                rel: child,
                pending,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks() {
        assert!(is_zero(&[0u8; 4096]));
        let mut b = [0u8; 4096];
        b[4095] = 1;
        assert!(!is_zero(&b));
    }
}
