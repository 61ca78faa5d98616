//! Path resolution beneath a root directory (openat2 with RESOLVE_IN_ROOT).
//!
//! Everything that touches a layer root from an untrusted name goes through here: a relative
//! path is resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so `..` and
//! symlinks (absolute or relative, from the tar or already on disk) can never leave the root;
//! the last component is then handled with `*at` calls on the parent's fd that never follow it.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};

/// Longest relative path the applier accepts (the kernel's PATH_MAX, terminating NUL included).
pub const PATH_MAX: usize = 4096;

/// Why a tar name cannot be turned into a path beneath the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// A `..` climbs above the root.
    Escapes,
    /// The name holds a NUL byte.
    Nul,
    /// Longer than PATH_MAX.
    TooLong,
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameError::Escapes => "path climbs above the layer root with `..`",
            NameError::Nul => "path contains a NUL byte",
            NameError::TooLong => "path is longer than PATH_MAX",
        })
    }
}

/// Normalize a tar name: leading `/` and `./`, empty and `.` components are dropped, `..`
/// removes the previous component (lexically) and is an error when there is none. The result
/// is `/`-joined components without a trailing `/`; empty means the root itself.
pub fn normalize(name: &[u8]) -> Result<Vec<u8>, NameError> {
    if name.contains(&0) {
        return Err(NameError::Nul);
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for comp in name.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err(NameError::Escapes);
                }
            }
            c => parts.push(c),
        }
    }
    let out = parts.join(&b'/');
    if out.len() >= PATH_MAX {
        return Err(NameError::TooLong);
    }
    Ok(out)
}

/// `name` in the directory `parent` (a normalized relative path, empty for the root).
pub fn join_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        out.extend_from_slice(parent);
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

/// Split a normalized, non-empty path into (parent, last component).
pub fn split_last(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&b""[..], rel),
    }
}

/// Open a directory to serve as a root for the resolutions below.
pub fn open_root(root: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Open `rel` (normalized, may be empty for the root itself) beneath `root_fd`, symlinks
/// resolved as if `root_fd` were `/`. `oflags` decides whether the last component is followed
/// (add `NOFOLLOW` to refuse a final symlink, or `PATH | NOFOLLOW` to get the symlink itself).
pub fn open_beneath(root_fd: BorrowedFd<'_>, rel: &[u8], oflags: OFlags) -> io::Result<OwnedFd> {
    let path: &[u8] = if rel.is_empty() { b"." } else { rel };
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    // openat2 reports EAGAIN when a concurrent rename could have let `..` escape; retrying is
    // what the man page asks for. Anything else is the answer.
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            root_fd,
            path,
            oflags | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        ) {
            Err(rustix::io::Errno::AGAIN) if tries < 32 => tries += 1,
            other => return Ok(other?),
        }
    }
}

/// Open the directory `rel` beneath `root_fd` (its final component may be a symlink, which is
/// followed inside the root like every other one).
pub fn open_dir_beneath(root_fd: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    open_beneath(root_fd, rel, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// `lstat` of `name` in `dir_fd`, `None` when it does not exist.
pub fn lstat_at(dir_fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The type of a stat result.
pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Remove `name` in `dir_fd` and, when it is a directory, everything beneath it. Symlinks are
/// removed, never followed; directories are opened with `O_NOFOLLOW` relative to their parent's
/// fd, so nothing outside `dir_fd` can be reached. A missing `name` is not an error.
///
/// Iterative (a tar can build a tree 2000 levels deep; recursion would overflow a thread's
/// stack). One fd is held per level being emptied.
pub fn remove_all_beneath(dir_fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let Some(top) = unlink_or_open_dir(dir_fd, name)? else {
        return Ok(());
    };
    struct Level {
        fd: OwnedFd,
        name: Vec<u8>,
        pending: Vec<Vec<u8>>,
    }
    let pending = list_dir(top.as_fd())?;
    let mut stack = vec![Level {
        fd: top,
        name: name.to_vec(),
        pending,
    }];
    while let Some(level) = stack.last_mut() {
        if let Some(child) = level.pending.pop() {
            if let Some(sub) = unlink_or_open_dir(level.fd.as_fd(), &child)? {
                let pending = list_dir(sub.as_fd())?;
                stack.push(Level {
                    fd: sub,
                    name: child,
                    pending,
                });
            }
            continue;
        }
        let done = stack.pop().expect("non-empty");
        drop(done.fd);
        let parent = stack.last().map_or(dir_fd, |l| l.fd.as_fd());
        match rustix::fs::unlinkat(parent, &done.name[..], AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Unlink `name` if it is not a directory (`None`), else open it (never through a symlink).
fn unlink_or_open_dir(dir_fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<OwnedFd>> {
    match rustix::fs::unlinkat(dir_fd, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => return Ok(None),
        // EISDIR is Linux's answer for a directory; some filesystems say EPERM.
        Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    match rustix::fs::openat(
        dir_fd,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Remove every entry of the directory `dir_fd` (recursively), keeping the directory itself.
pub fn empty_dir(dir_fd: BorrowedFd<'_>) -> io::Result<()> {
    for name in list_dir(dir_fd)? {
        remove_all_beneath(dir_fd, &name)?;
    }
    Ok(())
}

/// The names in a directory, `.` and `..` excluded. Collected first so that the directory
/// stream is not read while entries are being removed.
pub fn list_dir(dir_fd: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut dir = Dir::read_from(dir_fd)?;
    let mut names = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name: &CStr = entry.file_name();
        let bytes = name.to_bytes();
        if bytes != b"." && bytes != b".." {
            names.push(bytes.to_vec());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_rules() {
        assert_eq!(normalize(b"./a/b/").unwrap(), b"a/b");
        assert_eq!(normalize(b"/a//./b").unwrap(), b"a/b");
        assert_eq!(normalize(b"a/../b").unwrap(), b"b");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert_eq!(normalize(b"/").unwrap(), b"");
        assert_eq!(normalize(b"..").unwrap_err(), NameError::Escapes);
        assert_eq!(normalize(b"a/../../x").unwrap_err(), NameError::Escapes);
        assert_eq!(normalize(b"a\0b").unwrap_err(), NameError::Nul);
        assert_eq!(
            normalize(&vec![b'a'; 5000]).unwrap_err(),
            NameError::TooLong
        );
    }

    #[test]
    fn split() {
        assert_eq!(split_last(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_last(b"c"), (&b""[..], &b"c"[..]));
    }
}
