//! Mounting and unmounting overlay views.
//!
//! Lower layers are passed one by one with the new mount API (`fsopen("overlay")` then
//! `fsconfig(FSCONFIG_SET_STRING, "lowerdir+", path)` per layer, kernel 6.8+), so the depth of a
//! chain is bounded only by the kernel's overlay stack limit, never by the one page that
//! `mount(2)` allows for its option string. Kernels without `lowerdir+` fall back to `mount(2)`
//! with the short `l/` links, which fit about 140 layers into a page.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::mount::{
    fsconfig_create, fsconfig_set_fd, fsconfig_set_string, fsmount, fsopen, move_mount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags,
};

/// The longest value `fsconfig(FSCONFIG_SET_STRING)` accepts (the kernel copies at most 256
/// bytes including the NUL).
const FSCONFIG_MAX_STRING: usize = 255;

/// Options every overlay mount of gd carries, and why:
///
/// * `redirect_dir=off`: with redirects, renaming a lower directory records the move in an
///   xattr instead of copying it up, so the upper directory no longer says what changed at its
///   own path. Docker's overlay2 turns native diff off when redirect_dir is on; gd instead
///   keeps it off, so that walking `diff/` stays exact.
/// * `metacopy=off`: with metacopy a chmod/chown copies up only the inode and the data stays
///   below; `diff/` would then hold files whose content is elsewhere.
pub(crate) const MOUNT_OPTIONS: &[(&str, &str)] = &[("redirect_dir", "off"), ("metacopy", "off")];

/// `index` differs by mount kind. A writable view gets `index=on`: without it, a copy-up breaks
/// a hardlink (writing `bin/sh` would leave `bin/sh-link` with the old data), and the view
/// would differ from what the same writes do on any other driver. The index keeps every alias
/// on the copied-up inode in the live view; before unmounting, gd links each alias into
/// `diff/` as well (see `link_up_aliases`), so that `diff/` alone, used as a lower layer
/// without an index, still shows the same tree. A view without an upper directory has
/// nothing to index: `index=off`.
pub(crate) const INDEX_WRITABLE: &str = "on";
pub(crate) const INDEX_READ_ONLY: &str = "off";

/// What to mount.
#[derive(Debug)]
pub(crate) struct OverlaySpec<'a> {
    /// Lower directories, topmost first.
    pub lowers: &'a [PathBuf],
    /// Upper and work directory, for a writable view.
    pub upper: Option<(&'a Path, &'a Path)>,
    pub target: &'a Path,
    /// Index hardlinks on copy-up (writable views only; see `INDEX_WRITABLE`).
    pub index: bool,
}

impl OverlaySpec<'_> {
    fn index(&self) -> &'static str {
        if self.index && self.upper.is_some() {
            INDEX_WRITABLE
        } else {
            INDEX_READ_ONLY
        }
    }
}

/// Why a mount failed, in terms the caller can turn into a clear sentence.
#[derive(Debug)]
pub(crate) enum MountError {
    /// The kernel refused the number of lower layers (`accepted` were accepted).
    TooDeep { accepted: usize, log: String },
    /// The option string of `mount(2)` would not fit into one page.
    OptionsTooLong { len: usize },
    Sys {
        op: &'static str,
        err: io::Error,
        log: String,
    },
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountError::TooDeep { accepted, log } => write!(
                f,
                "the kernel accepts at most {accepted} lower layers in one overlay mount{}",
                if log.is_empty() {
                    String::new()
                } else {
                    format!(" ({log})")
                }
            ),
            MountError::OptionsTooLong { len } => write!(
                f,
                "the mount options need {len} bytes, more than one page, and this kernel has no \
                 fsconfig lowerdir+ (Linux 6.8+)"
            ),
            MountError::Sys { op, err, log } => {
                write!(f, "{op}: {err}")?;
                if !log.is_empty() {
                    write!(f, " ({log})")?;
                }
                Ok(())
            }
        }
    }
}

/// Drain the messages the kernel left in the filesystem context (`e ovl: ...` lines).
fn context_log(fs_fd: &OwnedFd) -> String {
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = rustix::io::read(fs_fd, &mut buf) {
        if n == 0 {
            break;
        }
        lines.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        if lines.len() > 16 {
            break;
        }
    }
    lines.join("; ")
}

fn sys(op: &'static str, err: rustix::io::Errno, fs_fd: Option<&OwnedFd>) -> MountError {
    MountError::Sys {
        op,
        err: err.into(),
        log: fs_fd.map(context_log).unwrap_or_default(),
    }
}

/// Pass one directory to the filesystem context under `key`: as a string when it fits, else
/// as an `O_PATH` descriptor (kernel 6.13+ takes layers by descriptor).
fn set_dir(fs_fd: &OwnedFd, key: &str, dir: &Path) -> rustix::io::Result<()> {
    if dir.as_os_str().len() <= FSCONFIG_MAX_STRING {
        fsconfig_set_string(fs_fd, key, dir)
    } else {
        let fd = rustix::fs::open(
            dir,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        fsconfig_set_fd(fs_fd, key, fd.as_fd())
    }
}

/// Whether this kernel's overlay takes `lowerdir+` through fsconfig (probed once per call
/// site by the caller; cheap: no mount is made).
pub(crate) fn has_lowerdir_add(any_dir: &Path) -> bool {
    let Ok(fs_fd) = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) else {
        return false;
    };
    fsconfig_set_string(&fs_fd, "lowerdir+", any_dir).is_ok()
}

/// How many lower layers the kernel accepts in one overlay (its `OVL_MAX_STACK`), measured by
/// adding the same directory until fsconfig refuses. No mount is made. None if the new mount
/// API is not available.
pub(crate) fn measure_max_lowers(any_dir: &Path) -> Option<usize> {
    let fs_fd = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).ok()?;
    for n in 0..8192 {
        if fsconfig_set_string(&fs_fd, "lowerdir+", any_dir).is_err() {
            return if n == 0 { None } else { Some(n) };
        }
    }
    None
}

/// Mount an overlay as described by `spec`. `short_lowers` gives the same lower directories
/// by shorter names (the `l/` links); it is asked only on kernels without `lowerdir+`, where
/// every lower must fit into `mount(2)`'s one page of options. With `lowerdir+` each path is
/// passed alone, and resolving the links would cost two file reads per layer for nothing.
pub(crate) fn mount_overlay(
    spec: &OverlaySpec<'_>,
    short_lowers: impl Fn() -> Vec<PathBuf>,
) -> Result<(), MountError> {
    let legacy = || {
        let short = short_lowers();
        mount_legacy(&OverlaySpec {
            lowers: &short,
            ..*spec
        })
    };
    let fs_fd = match fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOSYS) => return legacy(),
        Err(e) => return Err(sys("fsopen overlay", e, None)),
    };
    for (i, lower) in spec.lowers.iter().enumerate() {
        if let Err(e) = set_dir(&fs_fd, "lowerdir+", lower) {
            let log = context_log(&fs_fd);
            if i == 0 && e == rustix::io::Errno::INVAL && log.contains("Unknown parameter") {
                // A kernel older than 6.8: no lowerdir+.
                return legacy();
            }
            if e == rustix::io::Errno::INVAL && log.contains("too many lower") {
                return Err(MountError::TooDeep { accepted: i, log });
            }
            return Err(MountError::Sys {
                op: "fsconfig lowerdir+",
                err: e.into(),
                log: format!("{}: {log}", lower.display()),
            });
        }
    }
    if let Some((upper, work)) = spec.upper {
        set_dir(&fs_fd, "upperdir", upper)
            .map_err(|e| sys("fsconfig upperdir", e, Some(&fs_fd)))?;
        set_dir(&fs_fd, "workdir", work).map_err(|e| sys("fsconfig workdir", e, Some(&fs_fd)))?;
    }
    for (key, value) in MOUNT_OPTIONS {
        fsconfig_set_string(&fs_fd, *key, *value)
            .map_err(|e| sys("fsconfig option", e, Some(&fs_fd)))?;
    }
    fsconfig_set_string(&fs_fd, "index", spec.index())
        .map_err(|e| sys("fsconfig option", e, Some(&fs_fd)))?;
    fsconfig_create(&fs_fd).map_err(|e| sys("fsconfig create overlay", e, Some(&fs_fd)))?;
    let attrs = if spec.upper.is_some() {
        MountAttrFlags::empty()
    } else {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    };
    let mnt_fd = fsmount(&fs_fd, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| sys("fsmount overlay", e, Some(&fs_fd)))?;
    move_mount(
        &mnt_fd,
        "",
        rustix::fs::CWD,
        spec.target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| sys("move_mount", e, None))
}

/// `mount(2)` with one option string; for kernels without `lowerdir+`.
fn mount_legacy(spec: &OverlaySpec<'_>) -> Result<(), MountError> {
    let mut data = b"lowerdir=".to_vec();
    for (i, lower) in spec.lowers.iter().enumerate() {
        if i > 0 {
            data.push(b':');
        }
        data.extend_from_slice(lower.as_os_str().as_bytes());
    }
    if let Some((upper, work)) = spec.upper {
        data.extend_from_slice(b",upperdir=");
        data.extend_from_slice(upper.as_os_str().as_bytes());
        data.extend_from_slice(b",workdir=");
        data.extend_from_slice(work.as_os_str().as_bytes());
    }
    for (key, value) in MOUNT_OPTIONS {
        data.extend_from_slice(format!(",{key}={value}").as_bytes());
    }
    data.extend_from_slice(format!(",index={}", spec.index()).as_bytes());
    // mount(2) copies at most one page of options (4 KiB on the architectures gd runs on).
    let page = 4096;
    if data.len() >= page {
        return Err(MountError::OptionsTooLong { len: data.len() });
    }
    let flags = if spec.upper.is_some() {
        rustix::mount::MountFlags::empty()
    } else {
        rustix::mount::MountFlags::RDONLY
    };
    let data = std::ffi::CString::new(data).expect("paths hold no NUL");
    rustix::mount::mount("overlay", spec.target, "overlay", flags, data.as_c_str()).map_err(|e| {
        MountError::Sys {
            op: "mount overlay",
            err: e.into(),
            log: String::new(),
        }
    })
}

/// Whether something is mounted on `dir` (its device differs from its parent's).
pub(crate) fn is_mount_point(dir: &Path) -> bool {
    let Some(parent) = dir.parent() else {
        return false;
    };
    match (rustix::fs::lstat(dir), rustix::fs::lstat(parent)) {
        (Ok(a), Ok(b)) => a.st_dev != b.st_dev,
        // A mount whose filesystem is gone answers with an error: count it as mounted so
        // that unmount clears it.
        (Err(e), Ok(_)) => e != rustix::io::Errno::NOENT && e != rustix::io::Errno::NOTDIR,
        _ => false,
    }
}

/// Unmount everything stacked on `dir`. A busy mount is retried briefly, then detached
/// (the kernel frees it once the last user leaves), as Docker does.
pub(crate) fn unmount_all(dir: &Path) -> io::Result<()> {
    let mut attempts = 0;
    while is_mount_point(dir) {
        match rustix::mount::unmount(dir, UnmountFlags::NOFOLLOW) {
            Ok(()) => {}
            Err(rustix::io::Errno::BUSY) if attempts < 20 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            Err(rustix::io::Errno::BUSY) => {
                rustix::mount::unmount(dir, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)?;
            }
            Err(rustix::io::Errno::INVAL) => break, // not a mount point after all
            Err(e) => return Err(e.into()),
        }
        attempts += 1;
        if attempts > 64 {
            return Err(io::Error::other("mount point keeps being mounted"));
        }
    }
    Ok(())
}

/// Mount points listed in /proc/self/mountinfo at or beneath `root`.
pub(crate) fn mounts_under(root: &Path) -> Vec<PathBuf> {
    driver_api::fsutil::mounts_under(root)
}
