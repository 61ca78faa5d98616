//! Small filesystem helpers the store and the backends share: durable atomic writes, file
//! locks, and process identities that survive pid reuse.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Write `bytes` to `path` so that a reader (or a crash) sees either the old file or the new
/// one, never a mix: write a temporary file, fsync it, rename it over, fsync the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tmp_name(path);
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// A file named by the user to receive a command's output (`gd diff -o FILE`, `gd image
/// export -o FILE`).
///
/// A regular file, new or existing, is written as a temporary sibling that is synced and
/// renamed into place by [`OutputFile::commit`], so a failed or interrupted run leaves the old
/// file (or none) rather than half an archive; dropping an uncommitted output removes the
/// temporary file. Anything else the path names (a character device such as `/dev/null`, a
/// fifo, a socket) is written in place: renaming over it would replace the device node with a
/// regular file for every other program on the machine. A symlink is followed, so the file it
/// points to is replaced and the link stays.
#[derive(Debug)]
pub struct OutputFile {
    file: File,
    /// The temporary file and the path it is renamed to on commit; None when writing in place.
    pending: Option<(PathBuf, PathBuf)>,
}

impl OutputFile {
    pub fn create(path: &Path) -> io::Result<OutputFile> {
        let target = match fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "is a directory, not a file to write to",
                ))
            }
            Ok(m) if !m.is_file() => {
                let file = OpenOptions::new().write(true).open(path)?;
                return Ok(OutputFile {
                    file,
                    pending: None,
                });
            }
            // An existing file (maybe behind symlinks): replace the file, keep the links.
            Ok(_) => fs::canonicalize(path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_path_buf(),
            Err(e) => return Err(e),
        };
        let tmp = tmp_name(&target);
        // 0666 less the umask, as for any new file; an existing file keeps its mode.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&tmp)?;
        let out = OutputFile {
            file,
            pending: Some((tmp, target.clone())),
        };
        if let Ok(old) = fs::metadata(&target) {
            out.file.set_permissions(old.permissions())?;
        }
        Ok(out)
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Make the output visible: sync the temporary file and rename it over the target. For an
    /// output written in place there is nothing to do.
    pub fn commit(mut self) -> io::Result<()> {
        let Some((tmp, target)) = self.pending.take() else {
            return Ok(());
        };
        let res = self
            .file
            .sync_all()
            .and_then(|()| fs::rename(&tmp, &target))
            .and_then(|()| sync_dir(target.parent().unwrap_or(Path::new("."))));
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if let Some((tmp, _)) = self.pending.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Remove `path` durably (the directory entry's removal reaches the disk before we return).
pub fn durable_remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    // The parent of a bare file name is "": the current directory.
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// A temporary sibling name for `path`; names ending in `.tmp-*` are swept at start-up.
fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{}", std::process::id(), unique()));
    path.with_file_name(name)
}

/// A number unique within this process (for temporary names).
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// 32 random lowercase hex digits, from the kernel's random source.
pub fn random_hex32() -> String {
    let mut buf = [0u8; 16];
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => continue,
            // getrandom cannot fail on a supported kernel once initialised; fall back to
            // something unique rather than panic.
            Err(_) => {
                let fallback = format!("{:016x}{:016x}", std::process::id() as u64, unique());
                return fallback;
            }
        }
    }
    hex::encode(buf)
}

/// Whether a lock is shared (readers) or exclusive (one writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// An flock(2) held on a lock file until dropped.
///
/// A lock file may be unlinked by the holder of its exclusive lock (when the thing it guards is
/// removed). A waiter that then gets the lock on the unlinked inode would guard nothing, so
/// after locking we check that the path still names the inode we locked, and retry if not.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
}

impl LockGuard {
    pub fn acquire(path: &Path, mode: LockMode) -> io::Result<LockGuard> {
        Self::acquire_checked(path, mode, true)
    }

    /// Like [`LockGuard::acquire`], for a lock file that is never unlinked (the store's own
    /// lock): the inode locked is always the one the path names, so there is nothing to check.
    pub fn acquire_never_unlinked(path: &Path, mode: LockMode) -> io::Result<LockGuard> {
        Self::acquire_checked(path, mode, false)
    }

    fn acquire_checked(
        path: &Path,
        mode: LockMode,
        may_be_unlinked: bool,
    ) -> io::Result<LockGuard> {
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)?;
            let op = match mode {
                LockMode::Shared => FlockOperation::LockShared,
                LockMode::Exclusive => FlockOperation::LockExclusive,
            };
            loop {
                match flock(&file, op) {
                    Ok(()) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            if !may_be_unlinked {
                return Ok(LockGuard {
                    file,
                    path: path.to_path_buf(),
                });
            }
            let held = file.metadata()?;
            match fs::metadata(path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(LockGuard {
                        file,
                        path: path.to_path_buf(),
                    })
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Unlink the lock file while still holding it (only with an exclusive lock).
    pub fn unlink(&self) -> io::Result<()> {
        fs::remove_file(&self.path)
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// A process, identified by pid and start time so that a reused pid is not mistaken for the
/// process that wrote a record before it died.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    pub start: u64,
}

impl ProcessId {
    pub fn current() -> ProcessId {
        let pid = std::process::id();
        ProcessId {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// Whether this process is still running.
    pub fn is_alive(&self) -> bool {
        match start_time(self.pid) {
            Some(start) => start == self.start,
            None => false,
        }
    }
}

/// The start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat).
fn start_time(pid: u32) -> Option<u64> {
    let stat = read_proc_file(Path::new(&format!("/proc/{pid}/stat")), 1024).ok()?;
    let stat = std::str::from_utf8(&stat).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    // `rest` starts at field 3; field 22 is the 20th from here.
    let state = rest.split(' ').next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    rest.split(' ').nth(19)?.parse().ok()
}

/// The whole of a /proc file, read into room for `expected` bytes (grown if it is longer).
/// /proc files report size 0, so `fs::read` would start at 32 bytes and double: a dozen reads
/// for a mount table, six for a stat line. With room enough it takes one read, and a second
/// to see the end.
pub fn read_proc_file(path: &Path, expected: usize) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; expected.max(1)];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match io::Read::read(&mut f, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// One line of /proc/self/mountinfo: where something is mounted, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub target: PathBuf,
    pub fstype: String,
    /// The per-mount options (`rw,nosuid,relatime`).
    pub options: String,
}

/// The mounts of this process's namespace, from /proc/self/mountinfo, paths unescaped.
pub fn mounts() -> Vec<MountEntry> {
    let Ok(text) = read_proc_file(Path::new("/proc/self/mountinfo"), 64 * 1024) else {
        return Vec::new();
    };
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let target = fields.get(4)?;
            // Optional fields end with "-"; the filesystem type follows it.
            let sep = fields.iter().position(|f| *f == b"-")?;
            let fstype = String::from_utf8_lossy(fields.get(sep + 1)?).into_owned();
            let options = String::from_utf8_lossy(fields.get(5)?).into_owned();
            use std::os::unix::ffi::OsStringExt;
            let target = PathBuf::from(std::ffi::OsString::from_vec(unescape_octal(target)));
            Some(MountEntry {
                target,
                fstype,
                options,
            })
        })
        .collect()
}

/// Mount points at or beneath `root`.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .map(|m| m.target)
        .filter(|t| t.starts_with(root))
        .collect()
}

/// Whether something is mounted at `path`, without asking a FUSE server there (a dead one's
/// mount answers ENOTCONN, a hung one never): the mount id of `path` differs from its
/// parent's, both read with `AT_STATX_DONT_SYNC`, which FUSE answers from the kernel's cache.
/// Comparing devices is not enough (a bind mount of the same filesystem keeps its parent's).
/// Reading /proc/self/mountinfo costs a dozen reads and grows with the number of mounts; it is
/// the fallback where statx has no mount id (before Linux 5.8).
pub fn is_mount_point(path: &Path) -> bool {
    match (path.parent(), mount_id(path)) {
        (Some(parent), Ok(Some(id))) => match mount_id(parent) {
            Ok(Some(parent_id)) => return id != parent_id,
            Ok(None) | Err(_) => {}
        },
        // Gone or not reachable: nothing is mounted on a path that does not exist, and a
        // mount whose server died answers ENOTCONN on its root.
        (_, Err(e)) if e.raw_os_error() == Some(libc::ENOENT) => return false,
        (_, Err(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => return true,
        _ => {}
    }
    // The path as given, or with its parent resolved (not the path itself: that would ask a
    // dead server).
    let canon = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => fs::canonicalize(parent).ok().map(|p| p.join(name)),
        _ => None,
    };
    mounts()
        .iter()
        .any(|m| m.target == path || canon.as_ref() == Some(&m.target))
}

/// The id of the mount `path` (not following a final symlink) is on, from the kernel's cached
/// attributes only (`AT_STATX_DONT_SYNC`: a FUSE mount's root is answered without a request
/// to its server). None when this kernel's statx has no mount ids.
pub fn mount_id(path: &Path) -> io::Result<Option<u64>> {
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    let st = statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_DONT_SYNC,
        StatxFlags::MNT_ID,
    )?;
    Ok((st.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(st.stx_mnt_id))
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (field[i + 1] - b'0') * 64 + (field[i + 2] - b'0') * 8 + (field[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_a_fake_one_is_not() {
        let me = ProcessId::current();
        assert!(me.is_alive());
        assert!(!ProcessId {
            pid: me.pid,
            start: me.start + 1
        }
        .is_alive());
        assert!(!ProcessId {
            pid: u32::MAX - 1,
            start: 0
        }
        .is_alive());
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn octal_unescape() {
        assert_eq!(unescape_octal(br"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape_octal(br"/tail\04"), br"/tail\04");
    }

    #[test]
    fn lock_survives_unlink_race() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let g = LockGuard::acquire(&p, LockMode::Exclusive).unwrap();
        g.unlink().unwrap();
        drop(g);
        let g2 = LockGuard::acquire(&p, LockMode::Shared).unwrap();
        assert!(p.exists());
        drop(g2);
    }
}
