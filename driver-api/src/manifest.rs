//! The manifest: a canonical listing of a directory tree. (Stub: being written.)

use std::io::Write;
use std::path::Path;

use crate::error::ArchiveError;

/// Write the manifest of `root` (one line per entry) to `out`; returns the sha256 digest
/// (`sha256:HEX`) of the whole listing.
pub fn write_manifest(root: &Path, out: &mut dyn Write) -> Result<String, ArchiveError> {
    let _ = (root, out);
    todo!("manifest")
}

/// Only the digest.
pub fn manifest_digest(root: &Path) -> Result<String, ArchiveError> {
    write_manifest(root, &mut std::io::sink())
}
