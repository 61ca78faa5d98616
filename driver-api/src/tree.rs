//! The tree comparer. (Stub: interface fixed, implementation being written.)

use std::path::Path;

use crate::driver::Change;
use crate::error::ArchiveError;

/// The changes that turn the view at `parent` (None: empty) into the view at `child`.
pub fn changes(parent: Option<&Path>, child: &Path) -> Result<Vec<Change>, ArchiveError> {
    let _ = (parent, child);
    todo!("comparer")
}

/// Bytes of regular-file content added or modified (hardlinked content counted once).
pub fn diff_size(parent: Option<&Path>, child: &Path) -> Result<u64, ArchiveError> {
    let _ = (parent, child);
    todo!("diff_size")
}
