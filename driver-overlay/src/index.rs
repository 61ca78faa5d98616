//! Overlay's inode index (`work/index/`, the mount option `index=on`). When a lower
//! non-directory with several names is copied up, the kernel keeps the copy in the index
//! under the hex of the lower inode's file handle, and every name of that inode in the view
//! shows the copy, also the names not yet in `diff/`. Reading which lower inodes the index
//! holds is how `diff/` is made to say what the view shows (see `link_up_aliases`), whatever
//! the copied-up names are now (a rename leaves no name to match by).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A lower inode the index has a copy of.
pub(crate) struct Origin {
    pub ino: u64,
    /// A path of the lower inode as the kernel names the decoded handle, when it knows one:
    /// says which lower branch to look in.
    pub path: Option<PathBuf>,
}

/// The lower inodes that the index directory `index` holds copies of. `lower_fs` is a
/// directory on the lower layers' filesystem, against which the handles are decoded.
pub(crate) fn origins(index: &Path, lower_fs: &Path) -> io::Result<Vec<Origin>> {
    let entries = match std::fs::read_dir(index) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut mount_fd: Option<std::fs::File> = None;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let md = entry.metadata()?;
        // Directories are indexed only with nfs_export; a 0/0 device is a whiteout index
        // entry (every name of that lower inode was deleted): neither has names to link up.
        if md.is_dir() || (md.file_type().is_char_device() && md.rdev() == 0 && md.nlink() == 1) {
            continue;
        }
        let Some(handle) = LowerHandle::from_index_name(entry.file_name().as_bytes()) else {
            continue;
        };
        let fs = match &mount_fd {
            Some(f) => f,
            None => mount_fd.insert(std::fs::File::open(lower_fs)?),
        };
        let fd = handle.open(fs)?;
        let ino = rustix::fs::fstat(&fd)?.st_ino;
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .ok()
            .filter(|p| p.is_absolute());
        out.push(Origin { ino, path });
    }
    Ok(out)
}

/// A lower file handle as overlay stores it (`struct ovl_fb`): version 0, magic 0xfb, total
/// length, flags, the handle type, the filesystem's uuid, then the handle itself.
struct LowerHandle {
    kind: i32,
    bytes: Vec<u8>,
}

impl LowerHandle {
    const HEADER: usize = 5 + 16;
    /// The handle is of an upper inode (only with nfs_export), not a lower one.
    const FLAG_PATH_UPPER: u8 = 1 << 2;

    fn from_index_name(name: &[u8]) -> Option<LowerHandle> {
        if name.len() % 2 != 0 {
            return None;
        }
        let raw: Vec<u8> = name
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
            .collect::<Option<_>>()?;
        let ok = raw.len() > Self::HEADER
            && raw[0] == 0
            && raw[1] == 0xfb
            && raw[2] as usize == raw.len()
            && raw[3] & Self::FLAG_PATH_UPPER == 0;
        ok.then(|| LowerHandle {
            kind: i32::from(raw[4]),
            bytes: raw[Self::HEADER..].to_vec(),
        })
    }

    /// Open the inode the handle names, as an O_PATH descriptor (needs CAP_DAC_READ_SEARCH).
    fn open(&self, mount_fd: &std::fs::File) -> io::Result<OwnedFd> {
        // `struct file_handle`: u32 handle_bytes, i32 handle_type, then the bytes; kept in u32
        // words so the header is aligned.
        let header = std::mem::size_of::<libc::file_handle>();
        let mut buf = vec![0u32; (header + self.bytes.len()).div_ceil(4)];
        buf[0] = self.bytes.len() as u32;
        buf[1] = self.kind as u32;
        // SAFETY: `buf` holds `header + bytes.len()` bytes or more.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.bytes.as_ptr(),
                buf.as_mut_ptr().cast::<u8>().add(header),
                self.bytes.len(),
            );
        }
        // SAFETY: `buf` is a complete `struct file_handle` whose handle_bytes matches its
        // length; the kernel only reads it. The returned descriptor is new and owned here.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount_fd.as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::file_handle>(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

#[cfg(test)]
mod tests {
    use super::LowerHandle;

    #[test]
    fn an_index_name_is_a_lower_handle() {
        // As seen on ext4: no uuid, handle type 1 (inode 0x009aa3e3, generation).
        let h = LowerHandle::from_index_name(
            b"00fb1d000100000000000000000000000000000000e3a39a00af674d2b",
        )
        .unwrap();
        assert_eq!(h.kind, 1);
        assert_eq!(h.bytes, [0xe3, 0xa3, 0x9a, 0x00, 0xaf, 0x67, 0x4d, 0x2b]);
        // Wrong length, wrong magic, an upper handle, not hex.
        assert!(LowerHandle::from_index_name(b"00fb1e0001").is_none());
        assert!(LowerHandle::from_index_name(
            b"00fa1d000100000000000000000000000000000000e3a39a00af674d2b"
        )
        .is_none());
        assert!(LowerHandle::from_index_name(
            b"00fb1d040100000000000000000000000000000000e3a39a00af674d2b"
        )
        .is_none());
        assert!(LowerHandle::from_index_name(b"zz").is_none());
    }
}
