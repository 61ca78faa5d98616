//! Changes of a union layer found from its own branch (overlay's upper `diff/`, an aufs branch
//! `diff/<key>`), without comparing the two whole views.
//!
//! A union backend's view of a layer is its branch over its ancestors' branches, so every
//! difference between the parent's view and the layer's view comes from something in the
//! branch: an entry (added, modified, or only copied up), a whiteout, an opaque directory.
//! [`changes_from_branch`] walks only the branch, reads the two views where it needs to
//! (metadata, content, the children an opaque directory hides), and gives exactly what
//! `tree::changes(parent_view, child_view)` gives. The views may be mounted, or read in place
//! from the branches (`view::BranchUnion`). The on-disk formats differ only in how
//! whiteouts and opaque directories are written: a [`BranchFormat`] says that.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::archive::beneath::join_rel;
use crate::driver::{Change, ChangeKind};
use crate::error::ArchiveError;
use crate::tree::{self, Entry, Kind};
use crate::view::{lstat_opt, sorted_names, BranchUnion, ViewSource};

/// How a union format marks whiteouts and opaque directories in a branch.
pub trait BranchFormat {
    /// The name that the branch entry `name` (with lstat `md`) whites out, if it is a
    /// whiteout: overlay's 0/0 character device hides its own name, aufs's `.wh.NAME` hides
    /// `NAME`.
    fn whiteout_target<'a>(&self, name: &'a [u8], md: &Metadata) -> Option<&'a [u8]>;

    /// Whether the branch directory at `dir` hides what the branches below have at its path.
    fn is_opaque(&self, dir: &Path) -> bool;

    /// Whether a branch root hides the branches below it entirely.
    fn root_is_opaque(&self, _root: &Path) -> bool {
        false
    }

    /// Names that are never part of a view (markers, the format's own metadata).
    fn is_reserved(&self, _name: &[u8]) -> bool {
        false
    }

    /// Whether the branch directory `dir` holds a whiteout for `name` stored under another
    /// name (aufs's `.wh.NAME`), looked at when `name` itself is absent there. Formats whose
    /// whiteout takes the hidden name's place answer false.
    fn whiteout_beside(&self, _dir: &Path, _name: &[u8]) -> bool {
        false
    }
}

/// What the branch walk needs to know about one layer.
pub struct BranchInput<'a> {
    /// The layer's own branch.
    pub branch: &'a Path,
    /// The ancestors' branches, nearest first: the parent's view is their union.
    pub lowers: &'a [PathBuf],
    pub parent_view: &'a dyn ViewSource,
    pub child_view: &'a dyn ViewSource,
}

/// Which branch of `layers` (topmost first) provides `rel` in their union, and its metadata
/// there; None when the union has no such path (or a branch cannot be read).
pub fn lookup_lowers(
    format: &dyn BranchFormat,
    layers: &[PathBuf],
    rel: &Path,
) -> Option<(usize, Metadata)> {
    BranchUnion::new(format, layers)
        .resolve(rel.as_os_str().as_bytes())
        .ok()
        .flatten()
}

/// A path in both views, not a directory in either: compared once the hardlink labels are
/// known, content read where each view keeps it.
struct Pending {
    parent: Entry,
    parent_path: PathBuf,
    child: Entry,
    child_path: PathBuf,
}

/// The entry `rel` of a view and where its content is (None: absent, or a socket).
fn entry_at(view: &dyn ViewSource, rel: &[u8]) -> Result<Option<(Entry, PathBuf)>, ArchiveError> {
    let Some(l) = view.locate(rel)? else {
        return Ok(None);
    };
    Ok(Entry::from_metadata(&l.path, rel.to_vec(), &l.md)?.map(|e| (e, l.path)))
}

/// Lower files (ancestor index, inode) whose hardlink group may differ between the views.
type LowerInode = (usize, u64);

struct Walk<'a> {
    format: &'a dyn BranchFormat,
    input: &'a BranchInput<'a>,
    /// The ancestors' branches as one union: where a lower file comes from.
    lowers: BranchUnion<'a>,
    out: BTreeMap<Vec<u8>, ChangeKind>,
    /// Paths present in both views whose comparison needs hardlink labels.
    pending: Vec<Pending>,
    touched: BTreeSet<LowerInode>,
    /// Files of the branch with more than one link in the child view.
    child_candidates: Vec<Vec<u8>>,
}

impl Walk<'_> {
    /// A parent-view entry disappears or is replaced: hardlinked lower files it had (itself or
    /// beneath it) lose a name, so the other names' group may change.
    fn note_hidden(&mut self, pe: &Entry) -> Result<(), ArchiveError> {
        match pe.kind {
            Kind::File if pe.nlink > 1 => self.note_lower(&pe.path)?,
            Kind::Dir => {
                let mut stack = vec![pe.path.clone()];
                while let Some(dir) = stack.pop() {
                    for name in self.input.parent_view.list(&dir)? {
                        let rel = join_rel(&dir, &name);
                        let Some(md) = self.input.parent_view.locate(&rel)?.map(|l| l.md) else {
                            continue;
                        };
                        if md.is_dir() {
                            stack.push(rel);
                        } else if md.is_file() && md.nlink() > 1 {
                            self.note_lower(&rel)?;
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn note_lower(&mut self, rel: &[u8]) -> Result<(), ArchiveError> {
        if let Some((i, md)) = self.lowers.resolve(rel)? {
            if md.is_file() && md.nlink() > 1 {
                self.touched.insert((i, md.ino()));
            }
        }
        Ok(())
    }

    fn delete(&mut self, pe: &Entry) -> Result<(), ArchiveError> {
        self.out.insert(pe.path.clone(), ChangeKind::Delete);
        self.note_hidden(pe)
    }

    fn walk_branch(&mut self) -> Result<(), ArchiveError> {
        let inp = self.input;
        let fmt = self.format;
        // Directories of the branch and whether they merge with the lower branches: not when
        // they, or a directory above them, are opaque (a directory made inside an opaque one
        // need not be marked, but nothing below shows through it either).
        let root_merges = !fmt.root_is_opaque(inp.branch);
        let mut stack: Vec<(Vec<u8>, bool)> = vec![(Vec::new(), root_merges)];
        while let Some((dir, merges_above)) = stack.pop() {
            let bdir = tree::path_in(inp.branch, &dir);
            let merges = merges_above && (dir.is_empty() || !fmt.is_opaque(&bdir));
            let names = sorted_names(&bdir)?;
            for name in &names {
                let bpath = tree::path_in(inp.branch, &join_rel(&dir, name));
                let Some(bmd) = lstat_opt(&bpath)? else {
                    continue;
                };
                if let Some(target) = fmt.whiteout_target(name, &bmd) {
                    // A whiteout beside an entry of the same name in the branch hides only
                    // the lower branches (that entry is walked on its own).
                    if target != name.as_slice()
                        && lstat_opt(&tree::path_in(&bdir, target))?.is_some()
                    {
                        continue;
                    }
                    let rel = join_rel(&dir, target);
                    if let Some(pe) = inp.parent_view.entry(&rel)? {
                        if inp.child_view.locate(&rel)?.is_none() {
                            self.delete(&pe)?;
                        }
                    }
                    continue;
                }
                if fmt.is_reserved(name) {
                    continue;
                }
                let rel = join_rel(&dir, name);
                let ce = entry_at(inp.child_view, &rel)?;
                let pe = entry_at(inp.parent_view, &rel)?;
                if let Some((ce, _)) = &ce {
                    if ce.kind == Kind::File && ce.nlink > 1 {
                        self.child_candidates.push(rel.clone());
                    }
                }
                match (pe, ce) {
                    (None, None) => {}
                    (Some((pe, _)), None) => self.delete(&pe)?,
                    (None, Some(_)) => {
                        self.out.insert(rel.clone(), ChangeKind::Add);
                    }
                    (Some((pe, parent_path)), Some((ce, child_path))) => {
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
                                self.note_lower(&rel)?;
                            }
                            self.pending.push(Pending {
                                parent: pe,
                                parent_path,
                                child: ce,
                                child_path,
                            });
                        }
                    }
                }
                if bmd.is_dir() {
                    stack.push((rel, merges));
                }
            }
            if !merges {
                // Nothing of the lower branches shows through: the parent's children that the
                // child view lacks are deleted.
                if inp.parent_view.locate(&dir)?.is_some_and(|l| l.md.is_dir()) {
                    for name in inp.parent_view.list(&dir)? {
                        let rel = join_rel(&dir, &name);
                        if inp.child_view.locate(&rel)?.is_some() {
                            continue;
                        }
                        if let Some(pe) = inp.parent_view.entry(&rel)? {
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
/// layer's branch: equal to `tree::changes(parent_view, child_view)`.
pub fn changes_from_branch(
    format: &dyn BranchFormat,
    input: &BranchInput<'_>,
) -> Result<Vec<Change>, ArchiveError> {
    let mut w = Walk {
        format,
        input,
        lowers: BranchUnion::new(format, input.lowers),
        out: BTreeMap::new(),
        pending: Vec::new(),
        touched: BTreeSet::new(),
        child_candidates: Vec::new(),
    };
    w.walk_branch()?;

    // Hardlink groups. A group can only differ where a hardlinked lower file lost or changed
    // a name (`touched`), or among the files of the branch itself. Each touched lower inode's
    // names are found by scanning that one ancestor branch.
    let mut names_in_layer: HashMap<usize, HashMap<u64, Vec<Vec<u8>>>> = HashMap::new();
    let mut parent_groups: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut aliases: BTreeSet<Vec<u8>> = BTreeSet::new();
    for &(i, ino) in &w.touched {
        let by_ino = match names_in_layer.entry(i) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(hardlinked_files(format, &input.lowers[i])?)
            }
        };
        for rel in by_ino.get(&ino).into_iter().flatten() {
            let visible = w
                .lowers
                .resolve(rel)?
                .is_some_and(|(j, md)| j == i && md.ino() == ino);
            if visible {
                let md = match input.parent_view.locate(rel)? {
                    Some(l) => l.md,
                    None => {
                        let full = input.parent_view.display(rel);
                        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
                        return Err(ArchiveError::tree("lstat", &full, gone));
                    }
                };
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
        if let Some(md) = input.child_view.locate(rel)?.map(|l| l.md) {
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

    for p in std::mem::take(&mut w.pending) {
        let (mut pe, mut ce) = (p.parent, p.child);
        if pe.kind == Kind::File {
            pe.hardlink = parent_labels.get(&pe.path).cloned();
        }
        if ce.kind == Kind::File {
            ce.hardlink = child_labels.get(&ce.path).cloned();
        }
        let modified = !pe.same_except_content(&ce)
            || (ce.kind == Kind::File && !tree::same_content(&p.parent_path, &p.child_path)?);
        if modified {
            w.out.insert(ce.path.clone(), ChangeKind::Modify);
        }
    }
    // Names of touched lower files that the branch does not cover: the same file in both
    // views, so only its group can have changed.
    for rel in &aliases {
        if w.out.contains_key(rel) || lstat_opt(&tree::path_in(input.branch, rel))?.is_some() {
            continue;
        }
        if input.child_view.locate(rel)?.is_none() {
            continue;
        }
        if parent_labels.get(rel) != child_labels.get(rel) {
            w.out.insert(rel.clone(), ChangeKind::Modify);
        }
    }

    // A deletion covers everything beneath it, as in the comparer.
    let mut list: Vec<(Vec<u8>, ChangeKind)> = w.out.into_iter().collect();
    list.sort_by(|a, b| tree::view_cmp(&a.0, &b.0));
    let mut kept: Vec<(Vec<u8>, ChangeKind)> = Vec::with_capacity(list.len());
    let mut gone: Option<Vec<u8>> = None;
    for (path, kind) in list {
        if gone.as_ref().is_some_and(|g| tree::is_beneath(&path, g)) {
            continue;
        }
        gone = (kind == ChangeKind::Delete).then(|| path.clone());
        kept.push((path, kind));
    }
    Ok(kept
        .into_iter()
        .map(|(path, kind)| tree::RawChange { path, kind }.to_change())
        .collect())
}

/// Every regular file with more than one link in one branch, by inode.
fn hardlinked_files(
    format: &dyn BranchFormat,
    root: &Path,
) -> Result<HashMap<u64, Vec<Vec<u8>>>, ArchiveError> {
    let mut out: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    let mut stack = vec![Vec::new()];
    while let Some(dir) = stack.pop() {
        for name in sorted_names(&tree::path_in(root, &dir))? {
            if format.is_reserved(&name) {
                continue;
            }
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
