//! The canonical changeset writer. (Stub: interface fixed, implementation being written.)

use std::io::Write;
use std::path::Path;

use crate::error::ArchiveError;

/// Write the canonical changeset that turns the view at `parent` (None: an empty directory)
/// into the view at `child`. Returns the number of bytes written.
pub fn write_changeset(
    parent: Option<&Path>,
    child: &Path,
    out: &mut dyn Write,
) -> Result<u64, ArchiveError> {
    let _ = (parent, child, out);
    todo!("changeset writer")
}
