//! aufs's branch format for the shared branch walk (`driver_api::branch`), so that a diff
//! reads only the layer's own branch.
//!
//! `.wh.NAME` hides NAME of the branches below; a directory holding `.wh..wh..opq` hides
//! everything below it, and so does a directory with a whiteout of its own name beside it in
//! the same branch (what a crash between the two steps of an opaque mkdir leaves: the union
//! view treats it so, see `union::resolve_child`). `.wh..wh.*` names (aufs's `.wh..wh.aufs`,
//! `.wh..wh.orph/`, `.wh..wh.plnk/`, the server's `.wh..wh.gdtmp.*`) are never content.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use driver_api::archive::{OPAQUE_WHITEOUT, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX};
use driver_api::branch::BranchFormat;

pub(crate) struct AufsFormat;

fn lexists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn whiteout_of(name: &[u8]) -> Vec<u8> {
    let mut w = WHITEOUT_PREFIX.as_bytes().to_vec();
    w.extend_from_slice(name);
    w
}

impl BranchFormat for AufsFormat {
    fn whiteout_target<'a>(&self, name: &'a [u8], _md: &Metadata) -> Option<&'a [u8]> {
        if name.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            return None;
        }
        name.strip_prefix(WHITEOUT_PREFIX.as_bytes())
            .filter(|t| !t.is_empty())
    }

    fn is_opaque(&self, dir: &Path) -> bool {
        if lexists(&dir.join(OPAQUE_WHITEOUT)) {
            return true;
        }
        match (dir.parent(), dir.file_name()) {
            (Some(parent), Some(name)) => {
                lexists(&parent.join(OsStr::from_bytes(&whiteout_of(name.as_bytes()))))
            }
            _ => false,
        }
    }

    fn root_is_opaque(&self, root: &Path) -> bool {
        lexists(&root.join(OPAQUE_WHITEOUT))
    }

    fn is_reserved(&self, name: &[u8]) -> bool {
        name.starts_with(WHITEOUT_PREFIX.as_bytes())
    }

    fn whiteout_beside(&self, dir: &Path, name: &[u8]) -> bool {
        lexists(&dir.join(OsStr::from_bytes(&whiteout_of(name))))
    }
}
