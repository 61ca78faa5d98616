//! Attaching a file to a free loop device (for the loop-backed thin pool).
//!
//! The loop device is attached with autoclear: it detaches by itself when its last user (the
//! thin pool, once its table is loaded) lets go, so tearing the pool down needs no loop
//! bookkeeping and a crash leaves no loop device behind.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use driver_api::{Error, Result};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64` of <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of <linux/loop.h>.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device. Keep it (its open file) until the pool table that uses it is
/// loaded; after that dropping it lets autoclear detach the loop when the pool goes away.
pub struct LoopDevice {
    pub path: PathBuf,
    _dev: File,
}

pub fn attach(backing: &Path) -> Result<LoopDevice> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(backing)
        .map_err(|e| Error::io("open", backing, e))?;
    let ctl =
        File::open("/dev/loop-control").map_err(|e| Error::io("open", "/dev/loop-control", e))?;
    // Another process may take the free device between GET_FREE and CONFIGURE: retry.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(Error::io(
                "find a free loop device",
                "/dev/loop-control",
                std::io::Error::last_os_error(),
            ));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let mut config = LoopConfig {
            fd: file.as_raw_fd() as u32,
            block_size: 0,
            // SAFETY: all-zero is a valid loop_info64 (plain integers and byte arrays).
            info: unsafe { std::mem::zeroed() },
            reserved: [0; 8],
        };
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        let name = backing.as_os_str().as_encoded_bytes();
        let len = name.len().min(LO_NAME_SIZE - 1);
        config.info.lo_file_name[..len].copy_from_slice(&name[..len]);
        // SAFETY: LOOP_CONFIGURE reads one loop_config, which lives across the call.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, &config) };
        if rc == 0 {
            return Ok(LoopDevice { path, _dev: dev });
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(Error::io("attach a loop device to", backing, err));
        }
    }
    Err(Error::driver(
        crate::DRIVER,
        format!(
            "no free loop device for {} after 16 tries",
            backing.display()
        ),
    ))
}
