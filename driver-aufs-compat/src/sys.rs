//! The few syscalls std does not offer (xattrs, mknod, utimensat, renameat2, statvfs), each a
//! thin wrapper taking a `Path` and returning `io::Result`.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cname(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// The value of xattr `name` of `path` (not following a final symlink).
pub fn lgetxattr(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let p = cpath(path)?;
    let n = cname(name)?;
    loop {
        // SAFETY: both strings are NUL-terminated; a null buffer of size 0 asks for the size.
        let size =
            cvt_size(unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` is writable for `buf.len()` bytes.
        match cvt_size(unsafe {
            libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            // The value grew between the two calls: ask again.
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The names of the xattrs of `path`, each without its NUL.
pub fn llistxattr(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let p = cpath(path)?;
    loop {
        // SAFETY: a null buffer of size 0 asks for the size.
        let size = cvt_size(unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) })?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` is writable for `buf.len()` bytes.
        match cvt_size(unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
        {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf
                    .split(|&b| b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| n.to_vec())
                    .collect());
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn lsetxattr(path: &Path, name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
    let p = cpath(path)?;
    let n = cname(name)?;
    // SAFETY: strings NUL-terminated, `value` readable for its length.
    cvt(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

pub fn lremovexattr(path: &Path, name: &[u8]) -> io::Result<()> {
    let p = cpath(path)?;
    let n = cname(name)?;
    // SAFETY: both strings are NUL-terminated.
    cvt(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })
}

pub fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: NUL-terminated path; mode and device are plain integers.
    cvt(unsafe { libc::mknod(p.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) })
}

/// A timestamp for `utimens`: a time, "now", or "leave as is".
#[derive(Debug, Clone, Copy)]
pub enum Stamp {
    At(i64, i64),
    Now,
    Omit,
}

impl Stamp {
    fn timespec(self) -> libc::timespec {
        match self {
            Stamp::At(sec, nsec) => libc::timespec {
                tv_sec: sec as libc::time_t,
                tv_nsec: nsec as _,
            },
            Stamp::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            Stamp::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        }
    }
}

/// Set atime and mtime of `path` with nanoseconds, not following a final symlink.
pub fn lutimens(path: &Path, atime: Stamp, mtime: Stamp) -> io::Result<()> {
    let p = cpath(path)?;
    let times = [atime.timespec(), mtime.timespec()];
    // SAFETY: NUL-terminated path, array of two timespecs as utimensat wants.
    cvt(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let p = cpath(path)?;
    // SAFETY: statvfs fills the zeroed struct we pass.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        cvt(libc::statvfs(p.as_ptr(), &mut st))?;
        Ok(st)
    }
}

pub fn fallocate(
    fd: std::os::fd::BorrowedFd<'_>,
    mode: i32,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fd is open for the duration of the call.
    cvt(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
}

/// Set the process umask (the server creates files with exactly the modes it is asked for).
pub fn set_umask(mask: u32) {
    // SAFETY: umask cannot fail.
    unsafe {
        libc::umask(mask as libc::mode_t);
    }
}

pub fn systime(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec as u32)
    }
}

pub fn stamp_of(t: SystemTime) -> Stamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Stamp::At(d.as_secs() as i64, d.subsec_nanos() as i64),
        Err(e) => {
            // Before the epoch: floor the seconds, keep a positive nanosecond part.
            let d = e.duration();
            let mut sec = -(d.as_secs() as i64);
            let mut nsec = -(d.subsec_nanos() as i64);
            if nsec < 0 {
                sec -= 1;
                nsec += 1_000_000_000;
            }
            Stamp::At(sec, nsec)
        }
    }
}

pub fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe_cloexec() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds that we then own.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both were just created and are owned here only.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Wait up to `timeout` for `fd` to be readable (or closed at the other end).
pub fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one pollfd, valid for the call.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        -1 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// Make `cmd`'s child see `fd` as descriptor `target` (open across exec). Runs between fork
/// and exec, so it may only make async-signal-safe calls (dup2, fcntl).
pub fn pass_fd(cmd: &mut std::process::Command, fd: std::os::fd::RawFd, target: libc::c_int) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls dup2/fcntl, which are async-signal-safe, on descriptors
    // that stay open in the parent until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if fd == target {
                // dup2 onto itself keeps close-on-exec: clear it by hand.
                cvt(libc::fcntl(fd, libc::F_SETFD, 0))
            } else {
                cvt(libc::dup2(fd, target))
            }
        });
    }
}

/// A handle on process `pid` that becomes readable when it exits (a pidfd), so that waiting
/// for a server to end is one blocking poll, not a sleep loop that oversleeps its exit.
/// None when the process is gone already; an error when the kernel has no pidfds (before
/// 5.3): the caller falls back to polling.
pub fn exit_watch(pid: i32) -> io::Result<Option<std::os::fd::OwnedFd>> {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return Ok(None);
    };
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::SRCH) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
