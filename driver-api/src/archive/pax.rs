//! The canonical PAX/ustar header writer (docs/changeset.md §3). Every byte of a header is
//! decided here, so that the same entry always gives the same bytes.

use std::io::{self, Write};

use crate::tree::Mtime;

pub const BLOCK: usize = 512;

pub const TYPE_FILE: u8 = b'0';
pub const TYPE_HARDLINK: u8 = b'1';
pub const TYPE_SYMLINK: u8 = b'2';
pub const TYPE_CHAR: u8 = b'3';
pub const TYPE_BLOCK: u8 = b'4';
pub const TYPE_DIR: u8 = b'5';
pub const TYPE_FIFO: u8 = b'6';
pub const TYPE_PAX: u8 = b'x';

/// Largest value of a 7-digit octal field, plus one.
const LIMIT_7: u64 = 1 << 21;
/// Largest value of an 11-digit octal field, plus one.
const LIMIT_11: u64 = 1 << 33;

/// What a canonical entry header says. `name` is the full entry name (a directory's ends
/// with `/`); the writer decides what goes in the ustar block and what in PAX records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub name: Vec<u8>,
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: Mtime,
    pub linkname: Vec<u8>,
    /// `(major, minor)` for devices.
    pub device: Option<(u32, u32)>,
    /// Sorted by name; written as `SCHILY.xattr.NAME` records.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Header {
    /// Why this header cannot be written, if it cannot.
    pub fn unrepresentable(&self) -> Option<&'static str> {
        if let Some((maj, min)) = self.device {
            if maj as u64 >= LIMIT_7 || min as u64 >= LIMIT_7 {
                return Some("device number does not fit a ustar header");
            }
        }
        if self.name.contains(&0) || self.linkname.contains(&0) {
            return Some("name contains a NUL byte");
        }
        if self.xattrs.iter().any(|(n, _)| n.contains(&b'=')) {
            // A PAX key ends at the first `=`: such a name would read back as another one.
            return Some("extended attribute name contains '='");
        }
        None
    }

    /// The PAX records this header needs, sorted by key bytes.
    pub fn records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut recs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if self.name.len() > 100 {
            recs.push((b"path".to_vec(), self.name.clone()));
        }
        if self.linkname.len() > 100 {
            recs.push((b"linkpath".to_vec(), self.linkname.clone()));
        }
        if self.uid >= LIMIT_7 {
            recs.push((b"uid".to_vec(), self.uid.to_string().into_bytes()));
        }
        if self.gid >= LIMIT_7 {
            recs.push((b"gid".to_vec(), self.gid.to_string().into_bytes()));
        }
        if self.size >= LIMIT_11 {
            recs.push((b"size".to_vec(), self.size.to_string().into_bytes()));
        }
        if self.mtime.nsec != 0 || !mtime_fits(self.mtime) {
            recs.push((b"mtime".to_vec(), self.mtime.to_string().into_bytes()));
        }
        for (name, value) in &self.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name);
            recs.push((key, value.clone()));
        }
        recs.sort_by(|a, b| a.0.cmp(&b.0));
        recs
    }

    /// Write the optional `x` header with its records, then the ustar block. Returns the
    /// number of bytes written (a multiple of 512). Content is the caller's to write.
    pub fn write(&self, out: &mut dyn Write) -> io::Result<u64> {
        let mut written = 0u64;
        let recs = self.records();
        if !recs.is_empty() {
            let mut data = Vec::new();
            for (k, v) in &recs {
                data.extend_from_slice(&record(k, v));
            }
            let base = self.name.strip_suffix(b"/").unwrap_or(&self.name);
            let mut xname = b"PaxHeader/".to_vec();
            xname.extend_from_slice(&base[..base.len().min(89)]);
            let xblock = ustar_block(
                &xname,
                TYPE_PAX,
                0o644,
                0,
                0,
                data.len() as u64,
                0,
                b"",
                None,
            );
            out.write_all(&xblock)?;
            out.write_all(&data)?;
            let pad = padding(data.len() as u64);
            out.write_all(&[0u8; BLOCK][..pad])?;
            written += (BLOCK + data.len() + pad) as u64;
        }
        let field = |v: u64, limit: u64| if v >= limit { 0 } else { v };
        let mtime = if mtime_fits(self.mtime) {
            self.mtime.sec as u64
        } else {
            0
        };
        let block = ustar_block(
            &self.name[..self.name.len().min(100)],
            self.typeflag,
            self.mode & 0o7777,
            field(self.uid, LIMIT_7),
            field(self.gid, LIMIT_7),
            field(self.size, LIMIT_11),
            mtime,
            &self.linkname[..self.linkname.len().min(100)],
            self.device,
        );
        out.write_all(&block)?;
        Ok(written + BLOCK as u64)
    }
}

fn mtime_fits(m: Mtime) -> bool {
    m.sec >= 0 && (m.sec as u64) < LIMIT_11
}

/// Zero bytes that pad `len` bytes of content to a whole block.
pub fn padding(len: u64) -> usize {
    ((BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64) as usize
}

/// The end of an archive: two zero blocks, nothing else.
pub fn write_end(out: &mut dyn Write) -> io::Result<u64> {
    out.write_all(&[0u8; 2 * BLOCK])?;
    Ok(2 * BLOCK as u64)
}

/// One PAX record `LEN KEY=VALUE\n`, where LEN counts the whole record including itself.
pub fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = 1 + key.len() + 1 + value.len() + 1; // ' ' KEY '=' VALUE '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(len.to_string().as_bytes());
    r.push(b' ');
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    debug_assert_eq!(r.len(), len);
    r
}

/// `value` as `digits` octal digits followed by NUL, into `field` (digits + 1 bytes).
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{:0width$o}", value, width = digits);
    debug_assert_eq!(s.len(), digits, "value checked against the field's limit");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

#[allow(clippy::too_many_arguments)]
fn ustar_block(
    name: &[u8],
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    linkname: &[u8],
    device: Option<(u32, u32)>,
) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name);
    octal(&mut b[100..108], mode as u64);
    octal(&mut b[108..116], uid);
    octal(&mut b[116..124], gid);
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], mtime);
    b[156] = typeflag;
    b[157..157 + linkname.len()].copy_from_slice(linkname);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    // uname (265..297) and gname (297..329) stay empty.
    let (maj, min) = device.unwrap_or((0, 0));
    octal(&mut b[329..337], maj as u64);
    octal(&mut b[337..345], min as u64);
    // prefix (345..500) is never used.
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| x as u32).sum();
    let s = format!("{:06o}", sum);
    b[148..154].copy_from_slice(s.as_bytes());
    b[154] = 0;
    b[155] = b' ';
    b
}
