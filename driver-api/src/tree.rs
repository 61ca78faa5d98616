//! Views and the tree comparer (docs/changeset.md §1 and §2).
//!
//! A view is read into a list of [`Entry`] in view order by [`read_view`]. The manifest and the
//! comparer both use that one model, so they can never disagree about what "changed" means.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::archive::{is_internal_xattr, join};
use crate::driver::{Change, ChangeKind};
use crate::error::ArchiveError;
use crate::view::sorted_names;

/// The type of an entry (§1). Sockets are not part of a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Char,
    Block,
    Fifo,
}

impl Kind {
    /// The manifest's type letter.
    pub fn letter(self) -> char {
        match self {
            Kind::Dir => 'd',
            Kind::File => 'f',
            Kind::Symlink => 'l',
            Kind::Char => 'c',
            Kind::Block => 'b',
            Kind::Fifo => 'p',
        }
    }

    /// The kind of a file type, None for sockets (skipped everywhere).
    pub fn of(ft: fs::FileType) -> Option<Kind> {
        Some(if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            return None;
        })
    }
}

/// Extended attributes as (name, value) pairs, sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// A modification time: seconds (floored, as `stat` gives them) and nanoseconds `0..1e9`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mtime {
    pub sec: i64,
    pub nsec: u32,
}

impl std::fmt::Display for Mtime {
    /// The exact decimal value with 9 fraction digits: `(-2, 500000000)` is `-1.500000000`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sec < 0 && self.nsec > 0 {
            // -2 s + 0.5 s = -1.5 s: the integer part is one closer to zero.
            let whole = -(self.sec + 1);
            write!(f, "-{}.{:09}", whole, 1_000_000_000 - self.nsec)
        } else {
            write!(f, "{}.{:09}", self.sec, self.nsec)
        }
    }
}

/// One entry of a view, with every field of §1 except the content digest (which is read only
/// when needed: the manifest hashes it, the comparer compares bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the view's root, `/`-separated, raw bytes.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// The `07777` bits; `0777` for symlinks.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Content length of a file, target length of a symlink, 0 otherwise.
    pub size: u64,
    pub mtime: Mtime,
    /// Sorted by name bytes, internal attributes removed.
    pub xattrs: Xattrs,
    pub link_target: Option<Vec<u8>>,
    /// `(major, minor)` of a device.
    pub rdev: Option<(u32, u32)>,
    /// First path (view order) of this file's inode, when the inode has several paths in the view.
    pub hardlink: Option<Vec<u8>>,
    /// Not part of the view: used to group hardlinks and to skip comparing a file with itself.
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
}

impl Entry {
    /// Read the entry `rel` beneath `root` without following a symlink. None for a socket.
    pub fn read(root: &Path, rel: &[u8]) -> Result<Option<Entry>, ArchiveError> {
        let full = join(root, rel);
        let md = fs::symlink_metadata(&full).map_err(|e| ArchiveError::tree("lstat", &full, e))?;
        Entry::from_metadata(&full, rel.to_vec(), &md)
    }

    /// Build the entry from an `lstat` result; reads the link target and the xattrs.
    pub fn from_metadata(
        full: &Path,
        rel: Vec<u8>,
        md: &Metadata,
    ) -> Result<Option<Entry>, ArchiveError> {
        let Some(kind) = Kind::of(md.file_type()) else {
            return Ok(None);
        };
        let link_target = if kind == Kind::Symlink {
            let t = fs::read_link(full).map_err(|e| ArchiveError::tree("readlink", full, e))?;
            Some(t.into_os_string().into_vec())
        } else {
            None
        };
        let size = match kind {
            Kind::File => md.size(),
            Kind::Symlink => link_target.as_ref().map_or(0, |t| t.len() as u64),
            _ => 0,
        };
        let rdev = match kind {
            Kind::Char | Kind::Block => {
                Some((rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())))
            }
            _ => None,
        };
        Ok(Some(Entry {
            path: rel,
            kind,
            mode: if kind == Kind::Symlink {
                0o777
            } else {
                md.mode() & 0o7777
            },
            uid: md.uid(),
            gid: md.gid(),
            size,
            mtime: mtime_of(md),
            xattrs: read_xattrs(full)?,
            link_target,
            rdev,
            hardlink: None,
            dev: md.dev(),
            ino: md.ino(),
            nlink: md.nlink(),
        }))
    }

    /// Whether every field of §1 except the content is equal.
    pub fn same_except_content(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
            && self.size == other.size
            && self.mtime == other.mtime
            && self.xattrs == other.xattrs
            && self.link_target == other.link_target
            && self.rdev == other.rdev
            && self.hardlink == other.hardlink
    }

    /// The last component of the path.
    pub fn name(&self) -> &[u8] {
        base_name(&self.path)
    }
}

pub(crate) fn mtime_of(md: &Metadata) -> Mtime {
    Mtime {
        sec: md.mtime(),
        nsec: md.mtime_nsec() as u32,
    }
}

pub(crate) fn base_name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&c| c == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// The extended attributes of `path` (not following a symlink), internal ones removed, sorted.
pub fn read_xattrs(path: &Path) -> Result<Xattrs, ArchiveError> {
    let mut names = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::llistxattr(path, &mut [0u8; 0][..])
                    .map_err(|e| ArchiveError::tree("llistxattr", path, e.into()))?;
                names.resize(need.max(names.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(ArchiveError::tree("llistxattr", path, e.into())),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&c| c == 0).filter(|n| !n.is_empty()) {
        if is_internal_xattr(name) {
            continue;
        }
        let mut value = vec![0u8; 256];
        let got = loop {
            match rustix::fs::lgetxattr(path, name, &mut value[..]) {
                Ok(n) => break Some(n),
                Err(rustix::io::Errno::RANGE) => {
                    let need = rustix::fs::lgetxattr(path, name, &mut [0u8; 0][..])
                        .map_err(|e| ArchiveError::tree("lgetxattr", path, e.into()))?;
                    value.resize(need.max(value.len() * 2), 0);
                }
                // Removed between the listing and now.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(ArchiveError::tree("lgetxattr", path, e.into())),
            }
        };
        if let Some(n) = got {
            value.truncate(n);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// Compare two relative paths in view order: component by component, a directory before its
/// descendants (`a` < `a/b` < `a.txt`).
pub fn view_cmp(a: &[u8], b: &[u8]) -> Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

/// Whether `path` lies strictly beneath `dir`.
pub fn is_beneath(path: &[u8], dir: &[u8]) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

/// Walk the view at `root` in view order, calling `f(rel, full, lstat)` for every entry
/// (sockets included: the callee skips them). Directories are entered after `f` saw them.
fn walk(
    root: &Path,
    mut f: impl FnMut(&[u8], &Path, &Metadata) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    // Explicit stack: a deep tree must not overflow the thread's stack.
    let mut stack: Vec<(Vec<u8>, std::vec::IntoIter<Vec<u8>>)> =
        vec![(Vec::new(), sorted_names(root)?.into_iter())];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.1.next() else {
            stack.pop();
            continue;
        };
        let mut rel = top.0.clone();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(&name);
        let full = join(root, &rel);
        let md = fs::symlink_metadata(&full).map_err(|e| ArchiveError::tree("lstat", &full, e))?;
        f(&rel, &full, &md)?;
        if md.is_dir() {
            let names = sorted_names(&full)?;
            stack.push((rel, names.into_iter()));
        }
    }
    Ok(())
}

/// Hardlink groups of files with more than one path: (dev, ino) -> paths in view order.
#[derive(Default)]
struct Groups {
    by_inode: HashMap<(u64, u64), Vec<usize>>,
}

impl Groups {
    fn note(&mut self, md: &Metadata, index: usize) {
        if md.is_file() && md.nlink() > 1 {
            self.by_inode
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(index);
        }
    }
}

/// Read the whole view at `root` in view order, hardlink groups resolved.
pub fn read_view(root: &Path) -> Result<Vec<Entry>, ArchiveError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut groups = Groups::default();
    walk(root, |rel, full, md| {
        if let Some(e) = Entry::from_metadata(full, rel.to_vec(), md)? {
            groups.note(md, entries.len());
            entries.push(e);
        }
        Ok(())
    })?;
    for members in groups.by_inode.values().filter(|m| m.len() > 1) {
        let first = entries[members[0]].path.clone();
        for &i in members {
            entries[i].hardlink = Some(first.clone());
        }
    }
    Ok(entries)
}

/// Hardlink labels of the view at `root`: for every inode with more than one path, the first
/// path in view order. Only `lstat`s (no xattrs, no content): what the changeset writer needs.
pub fn hardlink_labels(root: &Path) -> Result<HashMap<(u64, u64), Vec<u8>>, ArchiveError> {
    let mut seen: HashMap<(u64, u64), (Vec<u8>, bool)> = HashMap::new();
    walk(root, |rel, _full, md| {
        if md.is_file() && md.nlink() > 1 {
            seen.entry((md.dev(), md.ino()))
                .and_modify(|(_, several)| *several = true)
                .or_insert_with(|| (rel.to_vec(), false));
        }
        Ok(())
    })?;
    Ok(seen
        .into_iter()
        .filter(|(_, (_, several))| *several)
        .map(|(k, (first, _))| (k, first))
        .collect())
}

/// Whether two files have the same bytes (compared in large blocks, not hashed).
pub fn same_content(a: &Path, b: &Path) -> Result<bool, ArchiveError> {
    const BLOCK: usize = 1 << 20;
    thread_local! {
        // One pair of blocks per thread, reused: the comparer calls this once per file of
        // equal metadata, and allocating 2 MiB each time (brk up, fault the pages in, brk
        // down) cost more than reading the files.
        static BLOCKS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
            std::cell::RefCell::new((vec![0u8; BLOCK], vec![0u8; BLOCK]));
    }
    let mut fa = open_nofollow(a)?;
    let mut fb = open_nofollow(b)?;
    BLOCKS.with_borrow_mut(|(ba, bb)| loop {
        let na = read_full(&mut fa, ba).map_err(|e| ArchiveError::tree("read", a, e))?;
        let nb = read_full(&mut fb, bb).map_err(|e| ArchiveError::tree("read", b, e))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na < BLOCK {
            return Ok(true);
        }
    })
}

/// Open a regular file for reading, refusing to follow a symlink put there meanwhile.
pub(crate) fn open_nofollow(path: &Path) -> Result<File, ArchiveError> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| ArchiveError::tree("open", path, e))
}

/// Read until `buf` is full or the file ends.
pub(crate) fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A change with its path as raw bytes relative to the root (`a/b`), for names that are not
/// UTF-8. [`Change`] carries the same with a leading `/` as a (lossy) string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawChange {
    pub path: Vec<u8>,
    pub kind: ChangeKind,
}

impl RawChange {
    pub fn to_change(&self) -> Change {
        let mut path = String::with_capacity(self.path.len() + 1);
        path.push('/');
        path.push_str(&String::from_utf8_lossy(&self.path));
        Change {
            path,
            kind: self.kind,
        }
    }

    pub fn from_change(c: &Change) -> RawChange {
        RawChange {
            path: c.path.trim_start_matches('/').as_bytes().to_vec(),
            kind: c.kind,
        }
    }
}

/// The compared views: the child's entries and, in view order, each change with the index of
/// the child's entry (None for a deletion).
struct Comparison {
    child: Vec<Entry>,
    changes: Vec<(RawChange, Option<usize>)>,
}

fn compare(parent: Option<&Path>, child: &Path) -> Result<Comparison, ArchiveError> {
    // The whole parent view is read, deleted subtrees included: a hardlink group's first path
    // may lie in a subtree that is gone in the child, and it decides the labels of the rest.
    // The two views are independent, so they are read side by side (the walk is all syscalls:
    // a second core halves it).
    let (p, c) = std::thread::scope(|s| {
        let p = parent.map(|root| s.spawn(move || read_view(root)));
        let c = read_view(child);
        let p = match p {
            Some(h) => h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            None => Ok(Vec::new()),
        };
        (p, c)
    });
    let (p, c) = (p?, c?);
    // Files whose metadata is equal but whose inodes differ: their bytes decide, and are
    // compared after the walk, in parallel. Until then each has a `Modify` slot in `changes`.
    let mut undecided: Vec<(usize, usize, usize)> = Vec::new();
    let mut changes = Vec::new();
    let (mut i, mut j) = (0, 0);
    let skip_beneath = |i: &mut usize, dir: &[u8]| {
        while *i < p.len() && is_beneath(&p[*i].path, dir) {
            *i += 1;
        }
    };
    while i < p.len() || j < c.len() {
        let ord = match (p.get(i), c.get(j)) {
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(pe), Some(ce)) => view_cmp(&pe.path, &ce.path),
            (None, None) => unreachable!(),
        };
        match ord {
            Ordering::Less => {
                // Only in the parent: deleted, and the deletion covers its descendants.
                let path = p[i].path.clone();
                i += 1;
                skip_beneath(&mut i, &path);
                changes.push((
                    RawChange {
                        path,
                        kind: ChangeKind::Delete,
                    },
                    None,
                ));
            }
            Ordering::Greater => {
                // Only in the child: added (its descendants are child-only too).
                changes.push((
                    RawChange {
                        path: c[j].path.clone(),
                        kind: ChangeKind::Add,
                    },
                    Some(j),
                ));
                j += 1;
            }
            Ordering::Equal => {
                let (pe, ce) = (&p[i], &c[j]);
                let modified = if !pe.same_except_content(ce) {
                    true
                } else if ce.kind == Kind::File && (pe.dev, pe.ino) != (ce.dev, ce.ino) {
                    undecided.push((changes.len(), i, j));
                    true
                } else {
                    false
                };
                if modified {
                    changes.push((
                        RawChange {
                            path: ce.path.clone(),
                            kind: ChangeKind::Modify,
                        },
                        Some(j),
                    ));
                }
                let was_dir_now_not = pe.kind == Kind::Dir && ce.kind != Kind::Dir;
                let path = pe.path.clone();
                i += 1;
                j += 1;
                if was_dir_now_not {
                    // Replacing the directory removes everything in it: nothing to list.
                    skip_beneath(&mut i, &path);
                }
            }
        }
    }
    if let Some(parent) = parent {
        let same = same_contents(parent, &p, child, &c, &undecided)?;
        let mut keep = vec![true; changes.len()];
        for (&(slot, _, _), same) in undecided.iter().zip(same) {
            keep[slot] = !same;
        }
        let mut k = keep.into_iter();
        changes.retain(|_| k.next().unwrap_or(true));
    }
    Ok(Comparison { child: c, changes })
}

/// For each `(_, i, j)` of `pairs`: whether the parent's entry `i` and the child's entry `j`
/// have the same bytes. Spread over the machine's cores: each pair is two opens and reads.
fn same_contents(
    parent: &Path,
    p: &[Entry],
    child: &Path,
    c: &[Entry],
    pairs: &[(usize, usize, usize)],
) -> Result<Vec<bool>, ArchiveError> {
    let check = |&(_, i, j): &(usize, usize, usize)| {
        same_content(&join(parent, &p[i].path), &join(child, &c[j].path))
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads < 2 || pairs.len() < 64 {
        return pairs.iter().map(check).collect();
    }
    let chunk = pairs.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(check).collect::<Result<Vec<_>, _>>()))
            .collect();
        let mut out = Vec::with_capacity(pairs.len());
        for h in handles {
            out.extend(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))?);
        }
        Ok(out)
    })
}

/// The changes that turn the view at `parent` (None: empty) into the view at `child`, in view
/// order, paths relative and raw.
pub fn raw_changes(parent: Option<&Path>, child: &Path) -> Result<Vec<RawChange>, ArchiveError> {
    Ok(compare(parent, child)?
        .changes
        .into_iter()
        .map(|(c, _)| c)
        .collect())
}

/// The changes that turn the view at `parent` (None: empty) into the view at `child`.
pub fn changes(parent: Option<&Path>, child: &Path) -> Result<Vec<Change>, ArchiveError> {
    Ok(compare(parent, child)?
        .changes
        .iter()
        .map(|(c, _)| c.to_change())
        .collect())
}

/// Bytes of regular-file content added or modified (hardlinked content counted once).
pub fn diff_size(parent: Option<&Path>, child: &Path) -> Result<u64, ArchiveError> {
    let cmp = compare(parent, child)?;
    Ok(size_of_changes(
        cmp.changes
            .iter()
            .filter_map(|(_, idx)| idx.map(|i| &cmp.child[i])),
    ))
}

/// Sum of the sizes of the regular files among `entries`, each inode once.
fn size_of_changes<'a>(entries: impl Iterator<Item = &'a Entry>) -> u64 {
    let mut seen = HashSet::new();
    entries
        .filter(|e| e.kind == Kind::File && seen.insert((e.dev, e.ino)))
        .map(|e| e.size)
        .sum()
}

/// `root` joined with a relative raw path (re-exported for the tests and the writer).
pub fn path_in(root: &Path, rel: &[u8]) -> PathBuf {
    join(root, rel)
}
