//! The applier: streams a layer tar onto a directory, every path resolved beneath it.
//! (Stub: the interface is fixed; the implementation is being written.)

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::ArchiveError;

/// How whiteouts and opaque markers of the tar are realised on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutFormat {
    /// The target is a flat view (vfs layer, mounted view): delete what whiteouts name, empty
    /// opaque directories of what the lower layers put there.
    #[default]
    Remove,
    /// The target is an overlayfs upper directory: whiteouts become 0/0 character devices,
    /// opaque markers the `trusted.overlay.opaque=y` xattr.
    Overlay,
    /// The target is an aufs branch: `.wh.NAME` and `.wh..wh..opq` are written as the empty
    /// files aufs expects.
    Aufs,
}

#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    pub whiteouts: WhiteoutFormat,
    /// For `Overlay` and `Aufs`: the lower layers' directories, nearest first. Used to give an
    /// implied parent directory the metadata it has below, and to copy up the target of a
    /// hardlink that lives in a lower layer.
    pub lowers: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Tar entries processed.
    pub entries: u64,
}

/// Apply a layer tar (plain, gzip or zstd, detected from the bytes) onto `root`.
pub fn apply_tar(
    root: &Path,
    tar: &mut dyn Read,
    opts: &ApplyOptions,
) -> Result<ApplyStats, ArchiveError> {
    let _ = (root, tar, opts);
    todo!("applier")
}
