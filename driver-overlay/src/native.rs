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

// ---------------------------------------------------------------------------------------
// Native changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use driver_api::tree::{self, Entry, Kind};
use driver_api::{ArchiveError, Change, ChangeKind};

fn os(rel: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(rel))
}

fn join_rel(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn lstat_opt(path: &Path) -> Result<Option<std::fs::Metadata>, ArchiveError> {
    match std::fs::symlink_metadata(path) {
        Ok(md) => Ok(Some(md)),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
        {
            Ok(None)
        }
        Err(e) => Err(ArchiveError::tree("lstat", path, e)),
    }
}

/// The entry `rel` of a view, None when the view has no such entry (or only a socket).
fn entry_opt(view: &Path, rel: &[u8]) -> Result<Option<Entry>, ArchiveError> {
    let full = tree::path_in(view, rel);
    match lstat_opt(&full)? {
        Some(md) => Entry::from_metadata(&full, rel.to_vec(), &md),
        None => Ok(None),
    }
}

fn sorted_names(dir: &Path) -> Result<Vec<Vec<u8>>, ArchiveError> {
    let mut names = Vec::new();
    for de in std::fs::read_dir(dir).map_err(|e| ArchiveError::tree("readdir", dir, e))? {
        let de = de.map_err(|e| ArchiveError::tree("readdir", dir, e))?;
        names.push(de.file_name().as_bytes().to_vec());
    }
    names.sort();
    Ok(names)
}

/// What the native walk needs to know about one layer.
pub(crate) struct NativeInput<'a> {
    /// The layer's own directory (its overlay upper).
    pub diff: &'a Path,
    /// The ancestors' diff directories, nearest first: the parent's view is their merge.
    pub lowers: &'a [PathBuf],
    pub parent_view: &'a Path,
    pub child_view: &'a Path,
}

/// Lower files (ancestor index, inode) whose hardlink group may differ between the views.
type LowerInode = (usize, u64);

struct Walk<'a> {
    input: &'a NativeInput<'a>,
    out: BTreeMap<Vec<u8>, ChangeKind>,
    /// Paths present in both views whose comparison needs hardlink labels.
    pending: Vec<(Entry, Entry)>,
    touched: BTreeSet<LowerInode>,
    /// Files of `diff/` with more than one link in the child view.
    child_candidates: Vec<Vec<u8>>,
}

impl Walk<'_> {
    /// A parent-view entry disappears or is replaced: hardlinked lower files it had (itself or
    /// beneath it) lose a name, so the other names' group may change.
    fn note_hidden(&mut self, pe: &Entry) -> Result<(), ArchiveError> {
        match pe.kind {
            Kind::File if pe.nlink > 1 => self.note_lower(&pe.path),
            Kind::Dir => {
                let mut stack = vec![pe.path.clone()];
                while let Some(dir) = stack.pop() {
                    let full = tree::path_in(self.input.parent_view, &dir);
                    for name in sorted_names(&full)? {
                        let rel = join_rel(&dir, &name);
                        let Some(md) = lstat_opt(&tree::path_in(self.input.parent_view, &rel))?
                        else {
                            continue;
                        };
                        if md.is_dir() {
                            stack.push(rel);
                        } else if md.is_file() && md.nlink() > 1 {
                            self.note_lower(&rel);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn note_lower(&mut self, rel: &[u8]) {
        if let Some((i, md)) = lookup_lowers(self.input.lowers, os(rel)) {
            if md.is_file() && md.nlink() > 1 {
                self.touched.insert((i, md.ino()));
            }
        }
    }

    fn delete(&mut self, pe: &Entry) -> Result<(), ArchiveError> {
        self.out.insert(pe.path.clone(), ChangeKind::Delete);
        self.note_hidden(pe)
    }

    fn walk_diff(&mut self) -> Result<(), ArchiveError> {
        let inp = self.input;
        // Directories of diff/ and whether they merge with the lower layers: not when they,
        // or a directory above them, are opaque (a directory made inside an opaque one is
        // not marked, but nothing below shows through it either).
        let mut stack: Vec<(Vec<u8>, bool)> = vec![(Vec::new(), true)];
        while let Some((dir, merges_above)) = stack.pop() {
            let ddir = tree::path_in(inp.diff, &dir);
            let merges = merges_above && (dir.is_empty() || !is_opaque(&ddir));
            let names = sorted_names(&ddir)?;
            for name in &names {
                let rel = join_rel(&dir, name);
                let dpath = tree::path_in(inp.diff, &rel);
                let Some(dmd) = lstat_opt(&dpath)? else {
                    continue;
                };
                if is_whiteout(&dmd) {
                    if let Some(pe) = entry_opt(inp.parent_view, &rel)? {
                        self.delete(&pe)?;
                    }
                    continue;
                }
                let ce = entry_opt(inp.child_view, &rel)?;
                let pe = entry_opt(inp.parent_view, &rel)?;
                if let Some(ce) = &ce {
                    if ce.kind == Kind::File && ce.nlink > 1 {
                        self.child_candidates.push(rel.clone());
                    }
                }
                match (pe, ce) {
                    (None, None) => {}
                    (Some(pe), None) => self.delete(&pe)?,
                    (None, Some(_)) => {
                        self.out.insert(rel.clone(), ChangeKind::Add);
                    }
                    (Some(pe), Some(ce)) => {
                        if pe.kind == Kind::Dir && ce.kind == Kind::Dir {
                            if !pe.same_except_content(&ce) {
                                self.out.insert(rel.clone(), ChangeKind::Modify);
                            }
                        } else if pe.kind == Kind::Dir || ce.kind == Kind::Dir {
                            // A type change: the parent's subtree goes, or the child's is new.
                            self.out.insert(rel.clone(), ChangeKind::Modify);
                            self.note_hidden(&pe)?;
                        } else {
                            if pe.kind == Kind::File && pe.nlink > 1 {
                                self.note_lower(&rel);
                            }
                            self.pending.push((pe, ce));
                        }
                    }
                }
                if dmd.is_dir() {
                    stack.push((rel, merges));
                }
            }
            if !merges {
                // Nothing of the lower layers shows through: the parent's children that the
                // child view lacks are deleted.
                let pdir = tree::path_in(inp.parent_view, &dir);
                if lstat_opt(&pdir)?.is_some_and(|m| m.is_dir()) {
                    for name in sorted_names(&pdir)? {
                        let rel = join_rel(&dir, &name);
                        if lstat_opt(&tree::path_in(inp.child_view, &rel))?.is_some() {
                            continue;
                        }
                        if let Some(pe) = entry_opt(inp.parent_view, &rel)? {
                            self.delete(&pe)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The first path in view order of each group of paths with more than one member.
fn labels(groups: HashMap<(u64, u64), Vec<Vec<u8>>>) -> HashMap<Vec<u8>, Vec<u8>> {
    let mut out = HashMap::new();
    for (_, members) in groups {
        if members.len() < 2 {
            continue;
        }
        let first = members
            .iter()
            .min_by(|a, b| tree::view_cmp(a, b))
            .expect("non-empty")
            .clone();
        for m in members {
            out.insert(m, first.clone());
        }
    }
    out
}

/// The changes between the parent's view and the layer's view, found by walking only the
/// layer's `diff/`: equal to `tree::changes(parent_view, child_view)`.
pub(crate) fn native_changes(input: &NativeInput<'_>) -> Result<Vec<Change>, ArchiveError> {
    let mut w = Walk {
        input,
        out: BTreeMap::new(),
        pending: Vec::new(),
        touched: BTreeSet::new(),
        child_candidates: Vec::new(),
    };
    w.walk_diff()?;

    // Hardlink groups. A group can only differ where a hardlinked lower file lost or changed
    // a name (`touched`), or among the files of diff/ itself. Each touched lower inode's
    // names are found by scanning that one ancestor layer.
    let mut names_in_layer: HashMap<usize, HashMap<u64, Vec<Vec<u8>>>> = HashMap::new();
    let mut parent_groups: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut aliases: BTreeSet<Vec<u8>> = BTreeSet::new();
    for &(i, ino) in &w.touched {
        let by_ino = match names_in_layer.entry(i) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(hardlinked_files(&input.lowers[i])?)
            }
        };
        for rel in by_ino.get(&ino).into_iter().flatten() {
            let visible = lookup_lowers(input.lowers, os(rel))
                .is_some_and(|(j, md)| j == i && md.ino() == ino);
            if visible {
                let md = std::fs::symlink_metadata(tree::path_in(input.parent_view, rel)).map_err(
                    |e| ArchiveError::tree("lstat", tree::path_in(input.parent_view, rel), e),
                )?;
                parent_groups
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(rel.clone());
                aliases.insert(rel.clone());
            }
        }
    }
    let mut child_groups: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut child_members: BTreeSet<Vec<u8>> = BTreeSet::new();
    for rel in w.child_candidates.iter().chain(aliases.iter()) {
        if !child_members.insert(rel.clone()) {
            continue;
        }
        if let Some(md) = lstat_opt(&tree::path_in(input.child_view, rel))? {
            if md.is_file() && md.nlink() > 1 {
                child_groups
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(rel.clone());
            }
        }
    }
    let parent_labels = labels(parent_groups);
    let child_labels = labels(child_groups);

    for (mut pe, mut ce) in std::mem::take(&mut w.pending) {
        if pe.kind == Kind::File {
            pe.hardlink = parent_labels.get(&pe.path).cloned();
        }
        if ce.kind == Kind::File {
            ce.hardlink = child_labels.get(&ce.path).cloned();
        }
        let modified = !pe.same_except_content(&ce)
            || (ce.kind == Kind::File
                && !tree::same_content(
                    &tree::path_in(input.parent_view, &pe.path),
                    &tree::path_in(input.child_view, &ce.path),
                )?);
        if modified {
            w.out.insert(ce.path.clone(), ChangeKind::Modify);
        }
    }
    // Names of touched lower files that diff/ does not cover: the same file in both views,
    // so only its group can have changed.
    for rel in &aliases {
        if w.out.contains_key(rel) || lstat_opt(&tree::path_in(input.diff, rel))?.is_some() {
            continue;
        }
        if lstat_opt(&tree::path_in(input.child_view, rel))?.is_none() {
            continue;
        }
        if parent_labels.get(rel) != child_labels.get(rel) {
            w.out.insert(rel.clone(), ChangeKind::Modify);
        }
    }

    let mut list: Vec<(Vec<u8>, ChangeKind)> = w.out.into_iter().collect();
    list.sort_by(|a, b| tree::view_cmp(&a.0, &b.0));
    Ok(list
        .into_iter()
        .map(|(path, kind)| tree::RawChange { path, kind }.to_change())
        .collect())
}

/// Every regular file with more than one link in one layer's directory, by inode.
fn hardlinked_files(root: &Path) -> Result<HashMap<u64, Vec<Vec<u8>>>, ArchiveError> {
    let mut out: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    let mut stack = vec![Vec::new()];
    while let Some(dir) = stack.pop() {
        for name in sorted_names(&tree::path_in(root, &dir))? {
            let rel = join_rel(&dir, &name);
            let full = tree::path_in(root, &rel);
            let md = std::fs::symlink_metadata(&full)
                .map_err(|e| ArchiveError::tree("lstat", &full, e))?;
            if md.is_dir() {
                stack.push(rel);
            } else if md.is_file() && md.nlink() > 1 {
                out.entry(md.ino()).or_default().push(rel);
            }
        }
    }
    Ok(out)
}
