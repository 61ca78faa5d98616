//! Layer tars: reading and applying them (`apply`), writing the canonical changeset
//! (`changeset`), the PAX header writer (`pax`) and path resolution beneath a root (`beneath`).
//! The rules of the canonical form are in docs/changeset.md.

pub mod apply;
pub mod beneath;
pub mod changeset;
pub mod pax;
pub mod reader;

use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;

pub use apply::{apply_tar, ApplyOptions, ApplyStats, WhiteoutFormat};
pub use changeset::write_changeset;

/// Prefix of a whiteout entry: `.wh.NAME` deletes NAME of the lower layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Names starting with this are aufs metadata (`.wh..wh.aufs`, `.wh..wh.orph/`, `.wh..wh.plnk/`).
pub const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
/// Marks its directory opaque: nothing of the lower layers shows through it.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// aufs keeps the targets of hardlinks here; tars from aufs stores may carry it.
pub const AUFS_PLNK_DIR: &str = ".wh..wh.plnk";

/// Extended attributes that belong to the backends themselves. A tar can never set them, the
/// manifest never shows them and a changeset never carries them.
pub fn is_internal_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name.starts_with(b"trusted.aufs")
        || name.starts_with(b"security.selinux")
}

/// Compression detected from the first bytes of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a stream that starts with `head` (its magic number).
    pub fn of(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Peek at the stream and wrap it in the right decompressor.
pub fn decompress<'a, R: Read + 'a>(r: R) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut br = BufReader::with_capacity(256 * 1024, r);
    let kind = Compression::of(br.fill_buf()?);
    let out: Box<dyn Read + 'a> = match kind {
        Compression::None => Box::new(br),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(br)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(br)?),
    };
    Ok((kind, out))
}

/// A relative path inside a layer, as raw bytes (file names need not be UTF-8).
pub type RelPath = Vec<u8>;

/// Display a relative path for error messages.
pub fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

pub(crate) fn join(root: &std::path::Path, rel: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(std::ffi::OsStr::from_bytes(rel))
    }
}
