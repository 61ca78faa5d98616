//! Filesystem steps applied alike to a plain directory (the reference) and to a driver's
//! mounted view, so the two can be compared after every step (containerd's snapshotter
//! test technique).
//!
//! Every step ends by giving the paths it touched, and their parent directories, a time
//! derived from the step: otherwise "now" would differ between the two trees and the
//! manifests could never agree.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};

/// One change to a tree. Paths are relative to the tree's root.
#[derive(Debug, Clone)]
pub enum Step {
    Write {
        path: String,
        content: Vec<u8>,
        mode: u32,
    },
    Append {
        path: String,
        content: Vec<u8>,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    Fifo {
        path: String,
    },
    CharDev {
        path: String,
        major: u32,
        minor: u32,
    },
    Remove {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Xattr {
        path: String,
        name: String,
        value: Vec<u8>,
    },
    Rename {
        from: String,
        to: String,
    },
    /// Set an exact mtime (seconds, nanoseconds) on a path (without following a symlink).
    Touch {
        path: String,
        sec: i64,
        nsec: u32,
    },
}

impl Step {
    pub fn write(path: &str, content: &str) -> Step {
        Step::Write {
            path: path.into(),
            content: content.as_bytes().to_vec(),
            mode: 0o644,
        }
    }
    pub fn mkdir(path: &str) -> Step {
        Step::Mkdir {
            path: path.into(),
            mode: 0o755,
        }
    }
    pub fn remove(path: &str) -> Step {
        Step::Remove { path: path.into() }
    }

    /// The paths whose times this step changes (so the harness resets them).
    fn touched(&self) -> Vec<&str> {
        match self {
            Step::Rename { from, to } => vec![from, to],
            Step::Touch { .. } => vec![],
            Step::Write { path, .. }
            | Step::Append { path, .. }
            | Step::Mkdir { path, .. }
            | Step::Symlink { path, .. }
            | Step::Hardlink { path, .. }
            | Step::Fifo { path }
            | Step::CharDev { path, .. }
            | Step::Remove { path }
            | Step::Chmod { path, .. }
            | Step::Chown { path, .. }
            | Step::Xattr { path, .. } => vec![path],
        }
    }
}

fn p(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

fn set_time(path: &Path, sec: i64, nsec: u32) -> std::io::Result<()> {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(Into::into)
}

/// Apply `step` (the `index`-th of a scenario) to the tree at `root`.
pub fn apply_step(root: &Path, step: &Step, index: usize) -> std::io::Result<()> {
    match step {
        Step::Write {
            path,
            content,
            mode,
        } => {
            let f = p(root, path);
            let _ = fs::remove_file(&f);
            let mut file = fs::File::create(&f)?;
            file.write_all(content)?;
            fs::set_permissions(&f, fs::Permissions::from_mode(*mode))?;
        }
        Step::Append { path, content } => {
            let mut file = fs::OpenOptions::new().append(true).open(p(root, path))?;
            file.write_all(content)?;
        }
        Step::Mkdir { path, mode } => {
            fs::create_dir(p(root, path))?;
            fs::set_permissions(p(root, path), fs::Permissions::from_mode(*mode))?;
        }
        Step::Symlink { path, target } => symlink(target, p(root, path))?,
        Step::Hardlink { path, target } => fs::hard_link(p(root, target), p(root, path))?,
        Step::Fifo { path } => {
            rustix::fs::mknodat(
                CWD,
                &p(root, path),
                rustix::fs::FileType::Fifo,
                0o644.into(),
                0,
            )?;
        }
        Step::CharDev { path, major, minor } => {
            let dev = rustix::fs::makedev(*major, *minor);
            rustix::fs::mknodat(
                CWD,
                &p(root, path),
                rustix::fs::FileType::CharacterDevice,
                0o600.into(),
                dev,
            )?;
        }
        Step::Remove { path } => {
            let f = p(root, path);
            if fs::symlink_metadata(&f)?.is_dir() {
                fs::remove_dir_all(&f)?;
            } else {
                fs::remove_file(&f)?;
            }
        }
        Step::Chmod { path, mode } => {
            fs::set_permissions(p(root, path), fs::Permissions::from_mode(*mode))?
        }
        Step::Chown { path, uid, gid } => {
            std::os::unix::fs::lchown(p(root, path), Some(*uid), Some(*gid))?;
        }
        Step::Xattr { path, name, value } => {
            rustix::fs::lsetxattr(
                &p(root, path),
                name.as_str(),
                value,
                rustix::fs::XattrFlags::empty(),
            )?;
        }
        Step::Rename { from, to } => match fs::rename(p(root, from), p(root, to)) {
            // overlayfs without redirect_dir refuses to rename a directory of a lower layer;
            // programs fall back to copy and delete, as `mv` does.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                // rename(2) replaces an empty directory (a non-empty one fails everywhere):
                // so must the fallback, or the copy finds the target there.
                if fs::symlink_metadata(p(root, to)).is_ok_and(|m| m.is_dir()) {
                    fs::remove_dir(p(root, to))?;
                }
                driver_api::copy::copy_tree(&p(root, from), &p(root, to)).map_err(|e| e.source)?;
                fs::remove_dir_all(p(root, from))?;
            }
            r => r?,
        },
        Step::Touch { path, sec, nsec } => set_time(&p(root, path), *sec, *nsec)?,
    }
    // Deterministic times for what the step touched and for the directories it changed.
    let t = 1_600_000_000 + index as i64 * 1000;
    for rel in step.touched() {
        let f = p(root, rel);
        if fs::symlink_metadata(&f).is_ok() {
            set_time(&f, t, 123_456_789)?;
        }
        let parent = f.parent().expect("a step names a path below the root");
        if parent != root {
            set_time(parent, t, 987_654_321)?;
        }
    }
    Ok(())
}

/// Apply every step to `root`, in order, numbering them from `first`.
pub fn apply_steps(root: &Path, steps: &[Step], first: usize) {
    for (i, s) in steps.iter().enumerate() {
        apply_step(root, s, first + i)
            .unwrap_or_else(|e| panic!("step {s:?} on {}: {e}", root.display()));
    }
}

/// A relative path as an OsStr (test data is ASCII, but the helpers take bytes).
pub fn os(rel: &[u8]) -> &OsStr {
    OsStr::from_bytes(rel)
}
