//! Reading a layer's view from its `diff/` and its ancestors' `diff/` directories, the way
//! the kernel resolves an overlay lookup (with redirect_dir and metacopy off).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

pub(crate) fn is_whiteout(md: &std::fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

pub(crate) fn is_opaque(dir: &Path) -> bool {
    let mut v = [0u8; 2];
    matches!(rustix::fs::lgetxattr(dir, OPAQUE_XATTR, &mut v[..]), Ok(1) if v[0] == b'y')
}

/// Which layer of `layers` (topmost first) provides `rel` in their merged view, and its
/// metadata there; None when the view has no such path.
pub(crate) fn lookup_lowers(layers: &[PathBuf], rel: &Path) -> Option<(usize, std::fs::Metadata)> {
    // The layers still merged at the current directory level.
    let mut open: Vec<usize> = (0..layers.len()).collect();
    let comps: Vec<_> = rel.components().collect();
    let mut prefix = PathBuf::new();
    for (n, comp) in comps.iter().enumerate() {
        prefix.push(comp);
        let last = n + 1 == comps.len();
        let mut found: Option<(usize, std::fs::Metadata)> = None;
        let mut next_open = Vec::new();
        for &i in &open {
            let path = layers[i].join(&prefix);
            let Ok(md) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            match &found {
                None => {
                    if is_whiteout(&md) {
                        return None;
                    }
                    let dir = md.is_dir();
                    found = Some((i, md));
                    if !dir {
                        break;
                    }
                    next_open.push(i);
                    if is_opaque(&path) {
                        break;
                    }
                }
                Some(_) => {
                    // Below the topmost directory: merged while it is a directory too.
                    if !md.is_dir() {
                        break;
                    }
                    next_open.push(i);
                    if is_opaque(&path) {
                        break;
                    }
                }
            }
        }
        let (i, md) = found?;
        if last {
            return Some((i, md));
        }
        if !md.is_dir() {
            return None;
        }
        open = next_open;
    }
    None
}
