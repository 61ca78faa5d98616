//! Small wrappers over the three btrfs ioctls the driver needs (from linux/btrfs.h). Neither
//! libc nor rustix defines them, so the argument structs are declared here, byte for byte.

use std::ffi::c_char;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

const BTRFS_IOCTL_MAGIC: u64 = 0x94;
const BTRFS_PATH_NAME_MAX: usize = 4087;
const BTRFS_SUBVOL_NAME_MAX: usize = 4039;

/// struct btrfs_ioctl_vol_args (4096 bytes).
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [c_char; BTRFS_PATH_NAME_MAX + 1],
}

/// struct btrfs_ioctl_vol_args_v2 (4096 bytes); the unions are flattened to their
/// largest member, which is what we fill.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [c_char; BTRFS_SUBVOL_NAME_MAX + 1],
}

const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);

/// _IOW(BTRFS_IOCTL_MAGIC, nr, 4096-byte struct)
const fn iow(nr: u64) -> u64 {
    (1 << 30) | (4096 << 16) | (BTRFS_IOCTL_MAGIC << 8) | nr
}
const BTRFS_IOC_SUBVOL_CREATE: u64 = iow(14);
const BTRFS_IOC_SNAP_DESTROY: u64 = iow(15);
const BTRFS_IOC_SNAP_CREATE_V2: u64 = iow(23);

fn open_dir(p: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn fill_name(dst: &mut [c_char], name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() >= dst.len() || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid subvolume name"),
        ));
    }
    for (d, s) in dst.iter_mut().zip(name.bytes()) {
        *d = s as c_char;
    }
    Ok(())
}

/// Issue `request` on `fd` with `arg`.
///
/// # Safety
/// `arg` must be the struct the kernel expects for `request`.
unsafe fn ioctl<T>(fd: &OwnedFd, request: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: the caller matches the struct to the request; the struct outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Create an empty subvolume `name` in directory `dir`.
pub fn create_subvolume(dir: &Path, name: &str) -> io::Result<()> {
    let dirfd = open_dir(dir)?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; BTRFS_PATH_NAME_MAX + 1],
    };
    fill_name(&mut args.name, name)?;
    // SAFETY: VolArgs is struct btrfs_ioctl_vol_args.
    unsafe { ioctl(&dirfd, BTRFS_IOC_SUBVOL_CREATE, &mut args) }
}

/// Make `dir/name` a writable snapshot of the subvolume at `src`.
pub fn snapshot(src: &Path, dir: &Path, name: &str) -> io::Result<()> {
    let srcfd = open_dir(src)?;
    let dirfd = open_dir(dir)?;
    let mut args = VolArgsV2 {
        fd: srcfd.as_raw_fd() as i64,
        transid: 0,
        flags: 0,
        unused: [0; 4],
        name: [0; BTRFS_SUBVOL_NAME_MAX + 1],
    };
    fill_name(&mut args.name, name)?;
    // SAFETY: VolArgsV2 is struct btrfs_ioctl_vol_args_v2; `srcfd` stays open for the call.
    unsafe { ioctl(&dirfd, BTRFS_IOC_SNAP_CREATE_V2, &mut args) }
}

/// Delete the subvolume `dir/name` (with everything in it).
pub fn destroy_subvolume(dir: &Path, name: &str) -> io::Result<()> {
    let dirfd = open_dir(dir)?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; BTRFS_PATH_NAME_MAX + 1],
    };
    fill_name(&mut args.name, name)?;
    // SAFETY: VolArgs is struct btrfs_ioctl_vol_args.
    unsafe { ioctl(&dirfd, BTRFS_IOC_SNAP_DESTROY, &mut args) }
}
