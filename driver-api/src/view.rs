//! How the diff code reads a view: a mounted directory, or a union of branches read in place.
//!
//! A diff needs the parent's view and the layer's view. Mounting them costs little for the
//! kernel's overlay but a FUSE server each for aufs-compat, which was most of an aufs diff's
//! time. A union's view is a pure function of its branches, so the same entries can be read
//! from the branches directly ([`BranchUnion`]), with the rules the mounted view follows (the
//! [`BranchFormat`]). The diff code reads through [`ViewSource`], so it gives the same change
//! list and the same tar bytes either way; the conformance suite compares them.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{self, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::archive::beneath::{join_rel, split_last};
use crate::branch::BranchFormat;
use crate::error::ArchiveError;
use crate::tree::{self, Entry};

/// Where a view's entry is stored: the file whose metadata, content, link target and xattrs
/// are the entry's.
pub struct Located {
    pub path: PathBuf,
    pub md: Metadata,
}

/// Read access to a merged view, by raw path relative to its root (`b""` is the root).
pub trait ViewSource {
    /// The entry at `rel`, None when the view has no such entry.
    fn locate(&self, rel: &[u8]) -> Result<Option<Located>, ArchiveError>;

    /// The names in the directory `dir` of the view, sorted by bytes.
    fn list(&self, dir: &[u8]) -> Result<Vec<Vec<u8>>, ArchiveError>;

    /// For every inode with more than one path in the view, the first path in view order.
    fn hardlink_labels(&self) -> Result<HashMap<(u64, u64), Vec<u8>>, ArchiveError>;

    /// The directory the view is mounted on, if it is a mounted view.
    fn mounted_root(&self) -> Option<&Path> {
        None
    }

    /// The path that messages name for `rel`.
    fn display(&self, rel: &[u8]) -> PathBuf;

    /// The entry at `rel` as the comparer sees it (None: absent, or a socket).
    fn entry(&self, rel: &[u8]) -> Result<Option<Entry>, ArchiveError> {
        match self.locate(rel)? {
            Some(l) => Entry::from_metadata(&l.path, rel.to_vec(), &l.md),
            None => Ok(None),
        }
    }
}

/// `lstat`, with "no such entry" (also a path through a non-directory) as None.
pub(crate) fn lstat_opt(path: &Path) -> Result<Option<Metadata>, ArchiveError> {
    match fs::symlink_metadata(path) {
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

/// The names in a directory, sorted by bytes.
pub(crate) fn sorted_names(dir: &Path) -> Result<Vec<Vec<u8>>, ArchiveError> {
    use std::os::unix::ffi::OsStrExt;
    let mut names = Vec::new();
    for de in fs::read_dir(dir).map_err(|e| ArchiveError::tree("readdir", dir, e))? {
        let de = de.map_err(|e| ArchiveError::tree("readdir", dir, e))?;
        names.push(de.file_name().as_bytes().to_vec());
    }
    names.sort();
    Ok(names)
}

/// A view mounted on a directory (or a plain directory: vfs's layers).
pub struct MountedView<'a> {
    root: &'a Path,
}

impl<'a> MountedView<'a> {
    pub fn new(root: &'a Path) -> Self {
        MountedView { root }
    }
}

impl ViewSource for MountedView<'_> {
    fn locate(&self, rel: &[u8]) -> Result<Option<Located>, ArchiveError> {
        let path = tree::path_in(self.root, rel);
        Ok(lstat_opt(&path)?.map(|md| Located { path, md }))
    }

    fn list(&self, dir: &[u8]) -> Result<Vec<Vec<u8>>, ArchiveError> {
        sorted_names(&tree::path_in(self.root, dir))
    }

    fn hardlink_labels(&self) -> Result<HashMap<(u64, u64), Vec<u8>>, ArchiveError> {
        tree::hardlink_labels(self.root)
    }

    fn mounted_root(&self) -> Option<&Path> {
        Some(self.root)
    }

    fn display(&self, rel: &[u8]) -> PathBuf {
        tree::path_in(self.root, rel)
    }
}

/// The union of branches (topmost first) read in place, as the mounted union shows it: the
/// topmost branch that has a path gives its entry, directories merge with the branches below
/// until one is opaque, whiteouts hide the branches below, the format's reserved names never
/// show. Inode identity is the branch file's (dev, ino), which is what the union gives its
/// hardlinks too.
pub struct BranchUnion<'a> {
    format: &'a dyn BranchFormat,
    branches: Cow<'a, [PathBuf]>,
    /// The branches merged at each directory resolved so far, so that locating the entries of
    /// one directory resolves the directory once.
    merged: Mutex<HashMap<Vec<u8>, Vec<usize>>>,
}

/// One path resolved in a union.
struct Resolved {
    /// The branch that gives the entry.
    top: usize,
    md: Metadata,
    /// For a directory, the branches merged there, topmost first.
    dirs: Vec<usize>,
}

impl<'a> BranchUnion<'a> {
    pub fn new(format: &'a dyn BranchFormat, branches: impl Into<Cow<'a, [PathBuf]>>) -> Self {
        BranchUnion {
            format,
            branches: branches.into(),
            merged: Mutex::new(HashMap::new()),
        }
    }

    /// Which branch gives `rel` in the union, and its metadata there.
    pub(crate) fn resolve(&self, rel: &[u8]) -> Result<Option<(usize, Metadata)>, ArchiveError> {
        if rel.is_empty() {
            return Ok(lstat_opt(&self.branches[0])?.map(|md| (0, md)));
        }
        let (parent, name) = split_last(rel);
        let Some(open) = self.dirs_of(parent)? else {
            return Ok(None);
        };
        Ok(self.step(&open, parent, name)?.map(|r| (r.top, r.md)))
    }

    /// The branches merged at the root: all of them down to the first opaque one.
    fn root_dirs(&self) -> Vec<usize> {
        let n = self.branches.len();
        let end = (0..n)
            .position(|i| self.format.root_is_opaque(&self.branches[i]))
            .map_or(n, |i| i + 1);
        (0..end).collect()
    }

    /// The entry `name` of the directory `dir`, which merges the branches `open`.
    fn step(
        &self,
        open: &[usize],
        dir: &[u8],
        name: &[u8],
    ) -> Result<Option<Resolved>, ArchiveError> {
        if self.format.is_reserved(name) {
            return Ok(None);
        }
        let rel = join_rel(dir, name);
        let mut found: Option<Resolved> = None;
        for &i in open {
            let path = tree::path_in(&self.branches[i], &rel);
            let Some(md) = lstat_opt(&path)? else {
                if self
                    .format
                    .whiteout_beside(&tree::path_in(&self.branches[i], dir), name)
                {
                    // Hidden from this branch down: what a branch above gave, or nothing.
                    break;
                }
                continue;
            };
            match &mut found {
                None => {
                    if self.format.whiteout_target(name, &md) == Some(name) {
                        return Ok(None);
                    }
                    let is_dir = md.is_dir();
                    found = Some(Resolved {
                        top: i,
                        md,
                        dirs: if is_dir { vec![i] } else { Vec::new() },
                    });
                    if !is_dir || self.format.is_opaque(&path) {
                        break;
                    }
                }
                Some(r) => {
                    // Below the topmost directory: merged while it is a directory too.
                    if !md.is_dir() {
                        break;
                    }
                    r.dirs.push(i);
                    if self.format.is_opaque(&path) {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }

    /// The branches merged at directory `dir`; None when the view has no directory there.
    fn dirs_of(&self, dir: &[u8]) -> Result<Option<Vec<usize>>, ArchiveError> {
        if dir.is_empty() {
            return Ok(Some(self.root_dirs()));
        }
        if let Some(d) = self.merged.lock().unwrap().get(dir) {
            return Ok(Some(d.clone()));
        }
        let (parent, name) = split_last(dir);
        let Some(open) = self.dirs_of(parent)? else {
            return Ok(None);
        };
        let dirs = match self.step(&open, parent, name)? {
            Some(r) if r.md.is_dir() => r.dirs,
            _ => return Ok(None),
        };
        self.merged
            .lock()
            .unwrap()
            .insert(dir.to_vec(), dirs.clone());
        Ok(Some(dirs))
    }

    /// The merged listing of directory `dir` made of `dirs`: upper names shadow lower ones,
    /// whiteouts hide the names of the branches below their own.
    fn list_merged(&self, dir: &[u8], dirs: &[usize]) -> Result<Vec<Vec<u8>>, ArchiveError> {
        use std::os::unix::ffi::OsStrExt;
        let mut out = Vec::new();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut hidden: HashSet<Vec<u8>> = HashSet::new();
        for &b in dirs {
            let bdir = tree::path_in(&self.branches[b], dir);
            let rd = match fs::read_dir(&bdir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ArchiveError::tree("readdir", &bdir, e)),
            };
            let mut whiteouts = Vec::new();
            for de in rd {
                let de = de.map_err(|e| ArchiveError::tree("readdir", &bdir, e))?;
                let name = de.file_name().as_bytes().to_vec();
                let reserved = self.format.is_reserved(&name);
                // Only a reserved name or a device can be a whiteout: stat nothing else.
                let maybe_whiteout = reserved
                    || de
                        .file_type()
                        .map_or(true, |t| t.is_char_device() || t.is_block_device());
                if maybe_whiteout {
                    let path = bdir.join(de.file_name());
                    if let Some(md) = lstat_opt(&path)? {
                        if let Some(t) = self.format.whiteout_target(&name, &md) {
                            whiteouts.push(t.to_vec());
                            if t == name.as_slice() {
                                continue;
                            }
                        }
                    }
                }
                if reserved || hidden.contains(&name) || seen.contains(&name) {
                    continue;
                }
                seen.insert(name.clone());
                out.push(name);
            }
            hidden.extend(whiteouts);
        }
        out.sort();
        Ok(out)
    }
}

/// A directory of the union being walked: its path, the branches merged there, the names
/// left to visit.
struct WalkFrame {
    dir: Vec<u8>,
    dirs: Vec<usize>,
    names: std::vec::IntoIter<Vec<u8>>,
}

impl ViewSource for BranchUnion<'_> {
    fn locate(&self, rel: &[u8]) -> Result<Option<Located>, ArchiveError> {
        Ok(self.resolve(rel)?.map(|(top, md)| Located {
            path: tree::path_in(&self.branches[top], rel),
            md,
        }))
    }

    fn list(&self, dir: &[u8]) -> Result<Vec<Vec<u8>>, ArchiveError> {
        match self.dirs_of(dir)? {
            Some(dirs) => self.list_merged(dir, &dirs),
            None => Err(ArchiveError::tree(
                "readdir",
                self.display(dir),
                std::io::Error::from_raw_os_error(rustix::io::Errno::NOTDIR.raw_os_error()),
            )),
        }
    }

    fn hardlink_labels(&self) -> Result<HashMap<(u64, u64), Vec<u8>>, ArchiveError> {
        // The walk of `tree::hardlink_labels`, over the union: depth first, names in order,
        // so the first path seen of an inode is its first in view order.
        let mut seen: HashMap<(u64, u64), (Vec<u8>, bool)> = HashMap::new();
        let root = self.root_dirs();
        let names = self.list_merged(b"", &root)?.into_iter();
        let mut stack = vec![WalkFrame {
            dir: Vec::new(),
            dirs: root,
            names,
        }];
        while let Some(top) = stack.last_mut() {
            let Some(name) = top.names.next() else {
                stack.pop();
                continue;
            };
            let Some(r) = self.step(&top.dirs, &top.dir, &name)? else {
                continue;
            };
            let rel = join_rel(&top.dir, &name);
            if r.md.is_file() && r.md.nlink() > 1 {
                seen.entry((r.md.dev(), r.md.ino()))
                    .and_modify(|(_, several)| *several = true)
                    .or_insert_with(|| (rel.clone(), false));
            }
            if r.md.is_dir() {
                let names = self.list_merged(&rel, &r.dirs)?.into_iter();
                stack.push(WalkFrame {
                    dir: rel,
                    dirs: r.dirs,
                    names,
                });
            }
        }
        Ok(seen
            .into_iter()
            .filter(|(_, (_, several))| *several)
            .map(|(k, (first, _))| (k, first))
            .collect())
    }

    fn display(&self, rel: &[u8]) -> PathBuf {
        match self.locate(rel) {
            Ok(Some(l)) => l.path,
            _ => tree::path_in(&self.branches[0], rel),
        }
    }
}
