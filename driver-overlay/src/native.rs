//! Overlay's branch format for the shared branch walk (`driver_api::branch`): whiteouts are
//! 0/0 character devices, opaque directories carry `trusted.overlay.opaque=y` (redirect_dir
//! and metacopy are off, so nothing else changes how a lookup resolves).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use driver_api::branch::{self, BranchFormat, BranchInput};
use driver_api::{ArchiveError, Change};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

pub(crate) struct OverlayFormat;

impl BranchFormat for OverlayFormat {
    fn whiteout_target<'a>(&self, name: &'a [u8], md: &std::fs::Metadata) -> Option<&'a [u8]> {
        (md.file_type().is_char_device() && md.rdev() == 0).then_some(name)
    }

    fn is_opaque(&self, dir: &Path) -> bool {
        let mut v = [0u8; 2];
        matches!(rustix::fs::lgetxattr(dir, OPAQUE_XATTR, &mut v[..]), Ok(1) if v[0] == b'y')
    }
}

/// Which layer of `layers` (topmost first) provides `rel` in their merged view, and its
/// metadata there; None when the view has no such path.
pub(crate) fn lookup_lowers(layers: &[PathBuf], rel: &Path) -> Option<(usize, std::fs::Metadata)> {
    branch::lookup_lowers(&OverlayFormat, layers, rel)
}

/// The changes between the parent's view and the layer's view, found by walking only the
/// layer's `diff/`: equal to `tree::changes(parent_view, child_view)`.
pub(crate) fn native_changes(input: &BranchInput<'_>) -> Result<Vec<Change>, ArchiveError> {
    branch::changes_from_branch(&OverlayFormat, input)
}
