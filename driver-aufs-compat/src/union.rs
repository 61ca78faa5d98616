//! The union view of an aufs branch stack, served through FUSE.
//!
//! Branch 0 is the layer's own `diff/<key>` (writable unless the view is read-only), the
//! others its ancestors' diff directories, nearest first. A name is looked up branch by branch
//! from the top; `.wh.NAME` in a branch hides NAME of the branches below it, a directory
//! holding `.wh..wh..opq` hides everything below it, and `.wh.*` names are never shown.
//!
//! Inodes are numbered by the server and never reused while it runs; a node remembers where
//! it was found (`Loc`) so that reads do not search the stack again. Every change of the
//! namespace (creation, removal, rename, copy-up) runs under the write half of `ns`, lookups
//! and listings under its read half: the view only changes through this server, so what a
//! node remembers stays true. Data goes straight to the branch file (no write-back cache).
//!
//! Directories hold no state per open: a readdir offset is a hash of the next name
//! (`cookie`), so the server declines to open directories where the kernel allows it and the
//! kernel serves repeated walks of the view from its own cache.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use driver_api::archive::beneath::{join_rel, split_last};
use driver_api::archive::{
    is_internal_xattr, OPAQUE_WHITEOUT, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX,
};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::sys::{self, Stamp};

/// How long the kernel may trust names and attributes. Only this server changes the view, and
/// the kernel invalidates what a change through the mount affects, so this can be long.
const TTL: Duration = Duration::from_secs(3600);
/// Listings kept at most, and their entries at most: reads abandoned before their end leave
/// theirs behind. A listing larger than the limit is still kept alone, as long as it is read.
const LISTINGS_KEPT: usize = 256;
const LISTED_ENTRIES_KEPT: usize = 1 << 20;

/// The listings kept between reads of a directory (`UnionFs::dir_listing`).
#[derive(Default)]
struct Listings {
    by_dir: HashMap<u64, Arc<Vec<DirEntry>>>,
    entries: usize,
}

impl Listings {
    fn get(&self, ino: u64) -> Option<Arc<Vec<DirEntry>>> {
        self.by_dir.get(&ino).cloned()
    }

    /// Keep `list` for `ino` (or the listing another reader kept first), dropping the others
    /// when there are too many.
    fn keep(&mut self, ino: u64, list: Arc<Vec<DirEntry>>) -> Arc<Vec<DirEntry>> {
        if let Some(kept) = self.by_dir.get(&ino) {
            return kept.clone();
        }
        if self.by_dir.len() >= LISTINGS_KEPT || self.entries + list.len() > LISTED_ENTRIES_KEPT {
            self.clear();
        }
        self.entries += list.len();
        self.by_dir.insert(ino, list.clone());
        list
    }

    /// Drop `ino`'s listing if it is still `list`.
    fn forget(&mut self, ino: u64, list: &Arc<Vec<DirEntry>>) {
        if self.by_dir.get(&ino).is_some_and(|l| Arc::ptr_eq(l, list)) {
            self.by_dir.remove(&ino);
            self.entries -= list.len();
        }
    }

    fn clear(&mut self) {
        self.by_dir.clear();
        self.entries = 0;
    }
}

/// Temporary names in a branch start with the aufs metadata prefix so that nothing (view,
/// diff, applier) ever takes them for content, even when a crash leaves one behind.
const TMP_PREFIX: &str = ".wh..wh.gdtmp.";

/// Paths of one branch by inode number.
type PathsByInode = HashMap<u64, Vec<Vec<u8>>>;

/// Where a node's content lives.
#[derive(Debug, Clone)]
enum Loc {
    /// Not a directory: the branch holding it.
    File(usize),
    /// A directory: the branches whose directory at this path makes up the merged one, top
    /// first (the list stops at an opaque one).
    Dir(Vec<usize>),
}

impl Loc {
    fn top(&self) -> Option<usize> {
        match self {
            Loc::File(b) => Some(*b),
            Loc::Dir(d) => d.first().copied(),
        }
    }
}

#[derive(Debug)]
struct Node {
    /// (parent inode, name) of each path of the node; more than one for hardlinks.
    links: Vec<(u64, OsString)>,
    loc: Loc,
    /// (st_dev, st_ino) of the branch file, to give hardlinked paths one inode.
    backing: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Table {
    nodes: HashMap<u64, Node>,
    entries: HashMap<(u64, OsString), u64>,
    by_backing: HashMap<(u64, u64), u64>,
    next_ino: u64,
}

impl Table {
    /// The view path of `ino` (empty for the root).
    fn path(&self, ino: u64) -> Option<Vec<u8>> {
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        while cur != 1 {
            let node = self.nodes.get(&cur)?;
            let (parent, name) = node.links.first()?;
            parts.push(name);
            cur = *parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        let mut out = Vec::new();
        for (i, p) in parts.iter().rev().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(p.as_bytes());
        }
        Some(out)
    }

    fn unlink_entry(&mut self, parent: u64, name: &OsStr) {
        if let Some(ino) = self.entries.remove(&(parent, name.to_os_string())) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.links.retain(|(p, n)| !(*p == parent && n == name));
            }
        }
    }
}

/// What a lookup found.
struct Found {
    loc: Loc,
    meta: Metadata,
}

struct DirEntry {
    name: OsString,
    kind: FileType,
    /// The topmost branch holding the name (where a non-directory lives).
    branch: usize,
    /// The entry's readdir offset: reading on from it gives the entries after this one.
    cookie: u64,
}

/// Readdir offsets of a merged listing. The server keeps no per-open state for a directory
/// (the kernel does not even open it, see `opendir`), so an offset must say where to go on
/// by itself, whatever changed in the directory since. As ext4 does, entries are listed in
/// the order of a hash of their name and the hash is the offset: reading on from an offset
/// gives every entry whose hash is above it, so a name added or removed between two reads
/// makes no other entry show twice or go missing.
mod cookie {
    use std::hash::{BuildHasher, RandomState};

    use super::DirEntry;

    /// Offsets 1 and 2 are those of "." and ".."; names start above.
    pub const FIRST: u64 = 3;

    /// Sort `entries` into readdir order and give each its offset, hashing names with `key`
    /// (one per server: a name's offset must not change while the view is mounted, and an
    /// image must not be able to choose names that collide). Names whose hashes collide get
    /// consecutive offsets, so offsets are unique within a listing.
    pub fn assign(entries: &mut [DirEntry], key: &RandomState) {
        for e in entries.iter_mut() {
            // 30 bits: offsets must fit a 32-bit program's `long` (glibc's readdir fails
            // with EOVERFLOW otherwise), collisions and all; ext4 gives such programs 31-bit
            // hashes, but a FUSE server cannot tell who reads.
            e.cookie = FIRST + (key.hash_one(&e.name) >> 34);
        }
        entries.sort_unstable_by(|a, b| a.cookie.cmp(&b.cookie).then_with(|| a.name.cmp(&b.name)));
        make_unique(entries);
    }

    /// Bump the offsets of sorted entries whose hashes collide, in place.
    fn make_unique(entries: &mut [DirEntry]) {
        for i in 1..entries.len() {
            if entries[i].cookie <= entries[i - 1].cookie {
                entries[i].cookie = entries[i - 1].cookie + 1;
            }
        }
    }

    /// Where reading from `offset` starts, counting "." as 0, ".." as 1 and `entries[k]` as
    /// k + 2.
    pub fn resume(entries: &[DirEntry], offset: u64) -> usize {
        match offset {
            0..FIRST => offset as usize,
            _ => 2 + entries.partition_point(|e| e.cookie <= offset),
        }
    }

    /// The offset to read on from, after the entry at `position` (as counted by `resume`).
    pub fn after(entries: &[DirEntry], position: usize) -> u64 {
        match position {
            0 | 1 => position as u64 + 1,
            _ => entries[position - 2].cookie,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use fuser::FileType;

        fn entries(names: &[&str], key: &RandomState) -> Vec<DirEntry> {
            let mut v: Vec<DirEntry> = names
                .iter()
                .map(|n| DirEntry {
                    name: n.into(),
                    kind: FileType::RegularFile,
                    branch: 0,
                    cookie: 0,
                })
                .collect();
            assign(&mut v, key);
            v
        }

        #[test]
        fn reading_on_from_each_offset_gives_the_next_entry() {
            let names: Vec<String> = (0..500).map(|i| format!("f{i}")).collect();
            let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
            let list = entries(&refs, &RandomState::new());
            assert!(list.windows(2).all(|w| w[0].cookie < w[1].cookie));
            assert!(list[0].cookie >= FIRST && list.last().unwrap().cookie < i32::MAX as u64);
            assert_eq!(resume(&list, 0), 0);
            for pos in 0..list.len() + 2 {
                assert_eq!(resume(&list, after(&list, pos)), pos + 1);
            }
        }

        #[test]
        fn an_offset_survives_names_added_and_removed() {
            let key = RandomState::new();
            let before = entries(&["a", "b", "c", "d", "e", "f", "g"], &key);
            let mid = 2 + before.len() / 2;
            let offset = after(&before, mid);
            let read: Vec<_> = before[..mid - 1].iter().map(|e| e.name.clone()).collect();
            // Remove a name already read and one not yet read; add two.
            let gone = [read[0].clone(), before[mid].name.clone()];
            let mut names: Vec<String> = before
                .iter()
                .filter(|e| !gone.contains(&e.name))
                .map(|e| e.name.to_string_lossy().into_owned())
                .collect();
            names.extend(["x".into(), "y".into()]);
            let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
            let after_change = entries(&refs, &key);
            let rest: Vec<_> = after_change[resume(&after_change, offset) - 2..]
                .iter()
                .map(|e| e.name.clone())
                .collect();
            for e in &before {
                let n = &e.name;
                if gone.contains(n) {
                    continue;
                }
                let times = read.iter().chain(&rest).filter(|r| *r == n).count();
                assert_eq!(times, 1, "{n:?}");
            }
        }

        #[test]
        fn colliding_hashes_get_distinct_offsets() {
            let mut list = entries(&["a", "b", "c"], &RandomState::new());
            for e in &mut list {
                e.cookie = 7;
            }
            make_unique(&mut list);
            let cookies: Vec<u64> = list.iter().map(|e| e.cookie).collect();
            assert_eq!(cookies, [7, 8, 9]);
            assert_eq!(resume(&list, 7), 3);
        }
    }
}

pub struct UnionFs {
    branches: Vec<PathBuf>,
    writable: bool,
    ns: RwLock<()>,
    table: Mutex<Table>,
    files: Mutex<HashMap<u64, Arc<File>>>,
    /// Merged listings being read, by directory inode: made at a directory's first read,
    /// dropped when a read reaches its end, and all dropped by any change to the namespace
    /// (`ns_change`) or to where a name lives (a copy-up).
    listings: Mutex<Listings>,
    /// The key of readdir offsets (`cookie`).
    cookie_key: std::hash::RandomState,
    /// The kernel lets the server refuse to open directories (FUSE_NO_OPENDIR_SUPPORT,
    /// Linux 5.1): then it sends no opendir or releasedir at all and caches each listing
    /// across opens by itself.
    no_opendir: bool,
    /// Per lower branch: inode number -> paths, for files with several links.
    hardlink_index: Mutex<HashMap<usize, PathsByInode>>,
    next_fh: AtomicU64,
    tmp_counter: AtomicU64,
}

type Res<T> = Result<T, Errno>;

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn is_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

fn whiteout_name(name: &[u8]) -> Vec<u8> {
    let mut w = WHITEOUT_PREFIX.as_bytes().to_vec();
    w.extend_from_slice(name);
    w
}

fn file_type(meta: &Metadata) -> FileType {
    FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile)
}

/// Whether `path` exists. Used for whiteouts and markers: a name too long to carry the
/// `.wh.` prefix (over NAME_MAX - 4 bytes) cannot have a whiteout, so ENAMETOOLONG is "no"
/// (an error there hid every long-named directory and lower file from the view).
fn lexists(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if is_missing(&e) || e.raw_os_error() == Some(libc::ENAMETOOLONG) => Ok(false),
        Err(e) => Err(e),
    }
}

fn stamp_of(t: Option<TimeOrNow>) -> Stamp {
    match t {
        None => Stamp::Omit,
        Some(TimeOrNow::Now) => Stamp::Now,
        Some(TimeOrNow::SpecificTime(t)) => sys::stamp_of(t),
    }
}

/// Copy owner, mode, xattrs and times of `meta` (read from `src`) onto `dst`.
fn copy_metadata(src: &Path, meta: &Metadata, dst: &Path) -> io::Result<()> {
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    let is_link = meta.file_type().is_symlink();
    if !is_link {
        // After chown: chown clears setuid/setgid.
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    copy_xattrs(src, dst)?;
    sys::lutimens(
        dst,
        Stamp::At(meta.atime(), meta.atime_nsec()),
        Stamp::At(meta.mtime(), meta.mtime_nsec()),
    )
}

fn copy_xattrs(src: &Path, dst: &Path) -> io::Result<()> {
    let names = match sys::llistxattr(src) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names {
        if is_internal_xattr(&name) {
            continue;
        }
        let value = match sys::lgetxattr(src, &name) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        sys::lsetxattr(dst, &name, &value, 0)?;
    }
    Ok(())
}

impl UnionFs {
    pub fn new(branches: Vec<PathBuf>, writable: bool) -> Self {
        let mut table = Table {
            next_ino: 2,
            ..Default::default()
        };
        let root_dirs = Self::root_dirs(&branches);
        table.nodes.insert(
            1,
            Node {
                links: Vec::new(),
                loc: Loc::Dir(root_dirs),
                backing: None,
            },
        );
        UnionFs {
            branches,
            writable,
            ns: RwLock::new(()),
            table: Mutex::new(table),
            files: Mutex::new(HashMap::new()),
            listings: Mutex::new(Listings::default()),
            cookie_key: std::hash::RandomState::new(),
            no_opendir: false,
            hardlink_index: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            tmp_counter: AtomicU64::new(0),
        }
    }

    fn root_dirs(branches: &[PathBuf]) -> Vec<usize> {
        let mut dirs = Vec::new();
        for (i, b) in branches.iter().enumerate() {
            dirs.push(i);
            if b.join(OPAQUE_WHITEOUT).symlink_metadata().is_ok() {
                break;
            }
        }
        dirs
    }

    fn bpath(&self, branch: usize, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.branches[branch].clone()
        } else {
            self.branches[branch].join(OsStr::from_bytes(rel))
        }
    }

    fn tmp_name(&self) -> Vec<u8> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        format!("{TMP_PREFIX}{}.{n}", std::process::id()).into_bytes()
    }

    fn check_writable(&self) -> Res<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Errno::EROFS)
        }
    }

    /// The path and location of a node.
    fn node_info(&self, ino: u64) -> Res<(Vec<u8>, Loc)> {
        let t = self.table.lock().unwrap();
        let node = t.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let loc = node.loc.clone();
        let path = t.path(ino).ok_or(Errno::ENOENT)?;
        Ok((path, loc))
    }

    fn dir_info(&self, ino: u64) -> Res<(Vec<u8>, Vec<usize>)> {
        match self.node_info(ino)? {
            (p, Loc::Dir(d)) => Ok((p, d)),
            _ => Err(Errno::ENOTDIR),
        }
    }

    /// Look `name` up in the directory made of `parent_dirs` at `parent_path`.
    fn resolve_child(
        &self,
        parent_dirs: &[usize],
        parent_path: &[u8],
        name: &[u8],
    ) -> io::Result<Option<Found>> {
        let child = join_rel(parent_path, name);
        let wh = join_rel(parent_path, &whiteout_name(name));
        for (idx, &b) in parent_dirs.iter().enumerate() {
            match fs::symlink_metadata(self.bpath(b, &child)) {
                Ok(meta) => {
                    if !meta.is_dir() {
                        return Ok(Some(Found {
                            loc: Loc::File(b),
                            meta,
                        }));
                    }
                    let mut dirs = vec![b];
                    // A whiteout beside the directory in its own branch (a crash between the
                    // steps of an opaque mkdir) makes it opaque too.
                    let opaque = |br: usize| -> io::Result<bool> {
                        lexists(&self.bpath(br, &join_rel(&child, OPAQUE_WHITEOUT.as_bytes())))
                    };
                    if !lexists(&self.bpath(b, &wh))? && !opaque(b)? {
                        // A whiteout hides the branches below its own: a lower branch's
                        // directory merges in even with a whiteout beside it (which makes it
                        // opaque, as for the top one above).
                        for &lb in &parent_dirs[idx + 1..] {
                            match fs::symlink_metadata(self.bpath(lb, &child)) {
                                Ok(m) if m.is_dir() => {
                                    dirs.push(lb);
                                    if opaque(lb)? || lexists(&self.bpath(lb, &wh))? {
                                        break;
                                    }
                                }
                                Ok(_) => break,
                                Err(e) if is_missing(&e) => {
                                    if lexists(&self.bpath(lb, &wh))? {
                                        break;
                                    }
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    return Ok(Some(Found {
                        loc: Loc::Dir(dirs),
                        meta,
                    }));
                }
                Err(e) if is_missing(&e) => {
                    if lexists(&self.bpath(b, &wh))? {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Whether a branch below the top has `name` visible in the directory (what a removal
    /// must hide with a whiteout).
    fn lower_has(
        &self,
        parent_dirs: &[usize],
        parent_path: &[u8],
        name: &[u8],
    ) -> io::Result<bool> {
        let lowers: Vec<usize> = parent_dirs.iter().copied().filter(|&b| b != 0).collect();
        Ok(self.resolve_child(&lowers, parent_path, name)?.is_some())
    }

    /// Give the node for (parent, name) the location just found; create it if new.
    fn intern(&self, parent: u64, name: &OsStr, found: &Found) -> u64 {
        let mut t = self.table.lock().unwrap();
        let key = (parent, name.to_os_string());
        let backing = (found.meta.dev(), found.meta.ino());
        if let Some(&ino) = t.entries.get(&key) {
            let node = t.nodes.get_mut(&ino).unwrap();
            node.loc = found.loc.clone();
            if !found.meta.is_dir() {
                node.backing = Some(backing);
                t.by_backing.insert(backing, ino);
            }
            return ino;
        }
        if !found.meta.is_dir() && found.meta.nlink() > 1 {
            if let Some(&ino) = t.by_backing.get(&backing) {
                if let Some(node) = t.nodes.get_mut(&ino) {
                    if node.backing == Some(backing) {
                        node.links.push(key.clone());
                        node.loc = found.loc.clone();
                        t.entries.insert(key, ino);
                        return ino;
                    }
                }
            }
        }
        let ino = t.next_ino;
        t.next_ino += 1;
        let is_dir = found.meta.is_dir();
        t.nodes.insert(
            ino,
            Node {
                links: vec![key.clone()],
                loc: found.loc.clone(),
                backing: (!is_dir).then_some(backing),
            },
        );
        if !is_dir {
            t.by_backing.insert(backing, ino);
        }
        t.entries.insert(key, ino);
        ino
    }

    fn attr(&self, ino: u64, meta: &Metadata, loc: &Loc) -> FileAttr {
        let nlink = match loc {
            Loc::Dir(d) if d.len() > 1 => 1,
            _ => meta.nlink() as u32,
        };
        FileAttr {
            ino: INodeNo(ino),
            size: meta.size(),
            blocks: meta.blocks(),
            atime: sys::systime(meta.atime(), meta.atime_nsec()),
            mtime: sys::systime(meta.mtime(), meta.mtime_nsec()),
            ctime: sys::systime(meta.ctime(), meta.ctime_nsec()),
            crtime: SystemTime::UNIX_EPOCH,
            kind: file_type(meta),
            perm: (meta.mode() & 0o7777) as u16,
            nlink,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: meta.blksize() as u32,
            flags: 0,
        }
    }

    /// Look up and intern; returns the inode and its attributes.
    fn do_lookup(&self, parent: u64, name: &OsStr) -> Res<(u64, FileAttr)> {
        if name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Err(Errno::ENOENT);
        }
        let (ppath, pdirs) = self.dir_info(parent)?;
        let found = self
            .resolve_child(&pdirs, &ppath, name.as_bytes())
            .map_err(errno)?
            .ok_or(Errno::ENOENT)?;
        let ino = self.intern(parent, name, &found);
        Ok((ino, self.attr(ino, &found.meta, &found.loc)))
    }

    /// Look up a name the listing found: a non-directory lives in the branch the listing saw
    /// it in, so one lstat does (directories need the merge of the full lookup).
    fn lookup_listed(&self, parent: u64, ent: &DirEntry) -> Res<(u64, FileAttr)> {
        if ent.kind == FileType::Directory {
            return self.do_lookup(parent, &ent.name);
        }
        let (ppath, _) = self.dir_info(parent)?;
        let child = join_rel(&ppath, ent.name.as_bytes());
        match fs::symlink_metadata(self.bpath(ent.branch, &child)) {
            Ok(meta) if !meta.is_dir() => {
                let found = Found {
                    loc: Loc::File(ent.branch),
                    meta,
                };
                let ino = self.intern(parent, &ent.name, &found);
                Ok((ino, self.attr(ino, &found.meta, &found.loc)))
            }
            _ => self.do_lookup(parent, &ent.name),
        }
    }

    fn stat_node(&self, ino: u64) -> Res<FileAttr> {
        let (path, loc) = self.node_info(ino)?;
        let b = loc.top().ok_or(Errno::EIO)?;
        let meta = fs::symlink_metadata(self.bpath(b, &path)).map_err(errno)?;
        Ok(self.attr(ino, &meta, &loc))
    }

    /// Save the times of a directory in the top branch so that the temporary entries of a
    /// copy-up do not show as a change of the directory.
    fn with_dir_times_kept<T>(
        &self,
        dir: &Path,
        f: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let meta = fs::symlink_metadata(dir)?;
        let out = f()?;
        sys::lutimens(
            dir,
            Stamp::At(meta.atime(), meta.atime_nsec()),
            Stamp::At(meta.mtime(), meta.mtime_nsec()),
        )?;
        Ok(out)
    }

    /// Make sure directory `ino` exists in the top branch (copying it up with its metadata).
    /// Caller holds the namespace write lock.
    fn copy_up_dir(&self, ino: u64) -> io::Result<()> {
        let (path, loc) = self
            .node_info(ino)
            .map_err(|_| io::Error::from_raw_os_error(libc::ENOENT))?;
        let dirs = match loc {
            Loc::Dir(d) => d,
            _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        };
        if dirs.first() == Some(&0) {
            return Ok(());
        }
        let parent = {
            let t = self.table.lock().unwrap();
            t.nodes[&ino].links[0].0
        };
        self.copy_up_dir(parent)?;
        let src = self.bpath(dirs[0], &path);
        let meta = fs::symlink_metadata(&src)?;
        let (ppath, name) = split_last(&path);
        let top_parent = self.bpath(0, ppath);
        let tmp = top_parent.join(sys::os(&self.tmp_name()));
        self.with_dir_times_kept(&top_parent, || {
            fs::create_dir(&tmp)?;
            copy_metadata(&src, &meta, &tmp)?;
            fs::rename(&tmp, top_parent.join(sys::os(name)))
        })?;
        self.forget_listings();
        let mut t = self.table.lock().unwrap();
        if let Some(node) = t.nodes.get_mut(&ino) {
            let mut d = vec![0];
            d.extend(dirs);
            node.loc = Loc::Dir(d);
        }
        Ok(())
    }

    /// Make sure non-directory `ino` is in the top branch: its content, owner, mode, xattrs
    /// and times copied into a temporary file renamed into place, so that a crash never
    /// leaves a half-copied file in the view. Caller holds the namespace write lock.
    fn copy_up(&self, ino: u64) -> io::Result<()> {
        let (path, loc, links) = {
            let t = self.table.lock().unwrap();
            let node = t
                .nodes
                .get(&ino)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            let path = t
                .path(ino)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            (path, node.loc.clone(), node.links.clone())
        };
        let b = match loc {
            Loc::File(0) => return Ok(()),
            Loc::File(b) => b,
            Loc::Dir(_) => return self.copy_up_dir(ino),
        };
        let parent = links[0].0;
        self.copy_up_dir(parent)?;
        let src = self.bpath(b, &path);
        let meta = fs::symlink_metadata(&src)?;
        let (ppath, name) = split_last(&path);
        let top_parent = self.bpath(0, ppath);
        let tmp = top_parent.join(sys::os(&self.tmp_name()));
        let dst = top_parent.join(sys::os(name));
        self.with_dir_times_kept(&top_parent, || {
            let ft = meta.file_type();
            let made = (|| {
                if ft.is_file() {
                    let mut from = File::open(&src)?;
                    let mut to = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    io::copy(&mut from, &mut to)?;
                    to.sync_data()?;
                } else if ft.is_symlink() {
                    std::os::unix::fs::symlink(fs::read_link(&src)?, &tmp)?;
                } else {
                    sys::mknod(&tmp, meta.mode(), meta.rdev())?;
                }
                copy_metadata(&src, &meta, &tmp)
            })();
            if let Err(e) = made {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            fs::rename(&tmp, &dst)
        })?;
        self.forget_listings();
        // The other paths of a hardlinked entry (a file, a symlink, a device or fifo) follow it
        // up, as links to the copy, so that the view keeps one inode (aufs keeps
        // "pseudo-links" for this).
        if meta.nlink() > 1 {
            let mut others: Vec<Vec<u8>> = Vec::new();
            {
                let t = self.table.lock().unwrap();
                for (lp, lname) in links.iter().skip(1) {
                    if let Some(p) = t.path(*lp) {
                        others.push(join_rel(&p, lname.as_bytes()));
                    }
                }
            }
            others.extend(self.hardlinks_in_branch(b, meta.ino())?);
            others.sort();
            others.dedup();
            for other in others.into_iter().filter(|o| *o != path) {
                let Ok((oparent, ofound)) = self.lookup_path(&other) else {
                    continue;
                };
                let same = matches!(ofound.loc, Loc::File(ob) if ob == b)
                    && ofound.meta.ino() == meta.ino()
                    && ofound.meta.dev() == meta.dev();
                if !same {
                    continue;
                }
                self.copy_up_dir(oparent)?;
                let target = self.bpath(0, &other);
                if !lexists(&target)? {
                    let dir = target.parent().unwrap().to_path_buf();
                    self.with_dir_times_kept(&dir, || fs::hard_link(&dst, &target))?;
                }
                let (_, oname) = split_last(&other);
                let key = (oparent, OsStr::from_bytes(oname).to_os_string());
                let mut t = self.table.lock().unwrap();
                if t.entries.get(&key) != Some(&ino) {
                    if let Some(old) = t.entries.insert(key.clone(), ino) {
                        if let Some(n) = t.nodes.get_mut(&old) {
                            n.links.retain(|l| *l != key);
                        }
                    }
                    if let Some(n) = t.nodes.get_mut(&ino) {
                        n.links.push(key);
                    }
                }
            }
        }
        let new_meta = fs::symlink_metadata(&dst)?;
        let mut t = self.table.lock().unwrap();
        if let Some(node) = t.nodes.get_mut(&ino) {
            node.loc = Loc::File(0);
            node.backing = Some((new_meta.dev(), new_meta.ino()));
        }
        t.by_backing.insert((new_meta.dev(), new_meta.ino()), ino);
        Ok(())
    }

    /// Paths of branch `b` whose inode is `ino` (non-directories with several links only). The
    /// branch is walked once and the answer kept: a lower branch never changes while mounted.
    fn hardlinks_in_branch(&self, b: usize, ino: u64) -> io::Result<Vec<Vec<u8>>> {
        let mut idx = self.hardlink_index.lock().unwrap();
        if let std::collections::hash_map::Entry::Vacant(slot) = idx.entry(b) {
            let mut map: PathsByInode = HashMap::new();
            let mut stack = vec![Vec::new()];
            while let Some(dir) = stack.pop() {
                let rd = match fs::read_dir(self.bpath(b, &dir)) {
                    Ok(rd) => rd,
                    Err(e) if is_missing(&e) => continue,
                    Err(e) => return Err(e),
                };
                for ent in rd {
                    let ent = ent?;
                    let name = ent.file_name();
                    if name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
                        continue;
                    }
                    let rel = join_rel(&dir, name.as_bytes());
                    let ft = ent.file_type()?;
                    if ft.is_dir() {
                        stack.push(rel);
                    } else {
                        let m = ent.metadata()?;
                        if m.nlink() > 1 {
                            map.entry(m.ino()).or_default().push(rel);
                        }
                    }
                }
            }
            slot.insert(map);
        }
        Ok(idx[&b].get(&ino).cloned().unwrap_or_default())
    }

    /// Look a whole view path up from the root, interning every component; returns the
    /// parent's inode and what was found.
    fn lookup_path(&self, path: &[u8]) -> Res<(u64, Found)> {
        let mut parent = 1;
        let comps: Vec<&[u8]> = path
            .split(|&c| c == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        for (i, comp) in comps.iter().enumerate() {
            let (ppath, pdirs) = self.dir_info(parent)?;
            if comp.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                return Err(Errno::ENOENT);
            }
            let found = self
                .resolve_child(&pdirs, &ppath, comp)
                .map_err(errno)?
                .ok_or(Errno::ENOENT)?;
            if i + 1 == comps.len() {
                return Ok((parent, found));
            }
            parent = self.intern(parent, OsStr::from_bytes(comp), &found);
        }
        Err(Errno::ENOENT)
    }

    /// Owner for a new entry: the caller, with the group of a setgid parent directory.
    fn new_owner(&self, req: &Request, parent_top: &Path) -> (u32, u32) {
        match fs::symlink_metadata(parent_top) {
            Ok(m) if m.mode() & libc::S_ISGID != 0 => (req.uid(), m.gid()),
            _ => (req.uid(), req.gid()),
        }
    }

    /// Prepare creating `name` in `parent`: checks, copy-up of the parent. Returns the parent
    /// path, its branches, and whether the top branch holds a whiteout for the name.
    fn prepare_create(&self, parent: u64, name: &OsStr) -> Res<(Vec<u8>, Vec<usize>, bool)> {
        self.check_writable()?;
        if name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Err(Errno::EPERM);
        }
        let (ppath, pdirs) = self.dir_info(parent)?;
        if self
            .resolve_child(&pdirs, &ppath, name.as_bytes())
            .map_err(errno)?
            .is_some()
        {
            return Err(Errno::EEXIST);
        }
        self.copy_up_dir(parent).map_err(errno)?;
        let (ppath, pdirs) = self.dir_info(parent)?;
        let wh = self.bpath(0, &join_rel(&ppath, &whiteout_name(name.as_bytes())));
        let has_wh = lexists(&wh).map_err(errno)?;
        Ok((ppath, pdirs, has_wh))
    }

    /// After creating `name` in the top branch: drop the whiteout that hid a lower one, then
    /// look the new entry up.
    fn finish_create(
        &self,
        parent: u64,
        name: &OsStr,
        ppath: &[u8],
        pdirs: &[usize],
        had_wh: bool,
    ) -> Res<(u64, FileAttr)> {
        if had_wh {
            let wh = self.bpath(0, &join_rel(ppath, &whiteout_name(name.as_bytes())));
            fs::remove_file(wh).map_err(errno)?;
        }
        let found = self
            .resolve_child(pdirs, ppath, name.as_bytes())
            .map_err(errno)?
            .ok_or(Errno::EIO)?;
        let ino = self.intern(parent, name, &found);
        Ok((ino, self.attr(ino, &found.meta, &found.loc)))
    }

    fn set_owner_mode(path: &Path, uid: u32, gid: u32, mode: Option<u32>) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
        if let Some(mode) = mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        Ok(())
    }

    /// Put a whiteout for `name` in the top branch's copy of the directory.
    fn make_whiteout(&self, ppath: &[u8], name: &[u8]) -> io::Result<()> {
        let wh = self.bpath(0, &join_rel(ppath, &whiteout_name(name)));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&wh)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The merged listing of a directory: upper names shadow lower ones, whiteouts hide lower
    /// names, aufs metadata never shows.
    fn list_dir(&self, path: &[u8], dirs: &[usize]) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        let mut seen: HashSet<OsString> = HashSet::new();
        let mut hidden: HashSet<Vec<u8>> = HashSet::new();
        for &b in dirs {
            let mut whiteouts = Vec::new();
            let rd = match fs::read_dir(self.bpath(b, path)) {
                Ok(rd) => rd,
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(e),
            };
            for ent in rd {
                let ent = ent?;
                let name = ent.file_name();
                let nb = name.as_bytes();
                if nb.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                    if !nb.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
                        whiteouts.push(nb[WHITEOUT_PREFIX.len()..].to_vec());
                    }
                    continue;
                }
                if seen.contains(&name) || hidden.contains(nb) {
                    continue;
                }
                let kind = match ent.file_type() {
                    Ok(ft) => FileType::from_std(ft).unwrap_or(FileType::RegularFile),
                    Err(_) => FileType::RegularFile,
                };
                seen.insert(name.clone());
                out.push(DirEntry {
                    name,
                    kind,
                    branch: b,
                    cookie: 0,
                });
            }
            hidden.extend(whiteouts);
        }
        cookie::assign(&mut out, &self.cookie_key);
        Ok(out)
    }

    /// The merged listing of directory `ino`, made at its first read and kept until a read
    /// reaches its end, so that reading a large directory in many calls lists it once.
    /// Called under `ns`; a listing made under it is never stale (see `ns_change`).
    fn dir_listing(&self, ino: u64) -> Res<Arc<Vec<DirEntry>>> {
        if let Some(list) = self.listings.lock().unwrap().get(ino) {
            return Ok(list);
        }
        let (path, dirs) = self.dir_info(ino)?;
        let list = Arc::new(self.list_dir(&path, &dirs).map_err(errno)?);
        Ok(self.listings.lock().unwrap().keep(ino, list))
    }

    /// The inode of directory `ino`'s parent (the root is its own).
    fn parent_ino(&self, ino: u64) -> u64 {
        let t = self.table.lock().unwrap();
        t.nodes
            .get(&ino)
            .and_then(|n| n.links.first().map(|l| l.0))
            .unwrap_or(1)
    }

    /// A read that starts past the last entry ends the listing's reading (the kernel reads
    /// until it gets nothing): it need not be kept any longer.
    fn end_of_listing(&self, ino: u64, pos: usize, list: &Arc<Vec<DirEntry>>) {
        if pos >= list.len() + 2 {
            self.listings.lock().unwrap().forget(ino, list);
        }
    }

    /// Take `ns` to change the namespace. Every kept listing may now be wrong: drop them
    /// all. Nothing lists a directory while this is held.
    fn ns_change(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        let guard = self.ns.write().unwrap();
        self.forget_listings();
        guard
    }

    /// Take `ns` to change a node in place: its content or metadata, and where it lives (a
    /// copy-up, which drops the kept listings itself). The names stay as they are.
    fn node_change(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.ns.write().unwrap()
    }

    /// Drop every kept listing: a copy-up moved names to the top branch, which their
    /// `DirEntry::branch` records. Called under the `ns` write lock.
    fn forget_listings(&self) {
        self.listings.lock().unwrap().clear();
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn file(&self, fh: FileHandle) -> Res<Arc<File>> {
        self.files
            .lock()
            .unwrap()
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn open_flags(flags: i32) -> i32 {
        (flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_DIRECT))
            | libc::O_CLOEXEC
    }

    fn open_backing(path: &Path, flags: i32, mode: Option<u32>) -> io::Result<File> {
        let acc = flags & libc::O_ACCMODE;
        let mut o = OpenOptions::new();
        o.read(acc == libc::O_RDONLY || acc == libc::O_RDWR);
        o.write(acc == libc::O_WRONLY || acc == libc::O_RDWR);
        let mut custom = Self::open_flags(flags) & !libc::O_ACCMODE;
        if let Some(mode) = mode {
            o.mode(mode);
            custom |= libc::O_CREAT | libc::O_EXCL;
        }
        o.custom_flags(custom);
        o.open(path)
    }

    fn do_setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Res<FileAttr> {
        self.check_writable()?;
        let _ns = self.node_change();
        self.copy_up(ino).map_err(errno)?;
        let (path, _) = self.node_info(ino)?;
        let p = self.bpath(0, &path);
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&p, uid, gid).map_err(errno)?;
        }
        if let Some(mode) = mode {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777)).map_err(errno)?;
        }
        if let Some(size) = size {
            match fh.and_then(|fh| self.file(fh).ok()) {
                Some(f) => f.set_len(size).map_err(errno)?,
                None => OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(size))
                    .map_err(errno)?,
            }
        }
        if atime.is_some() || mtime.is_some() {
            sys::lutimens(&p, stamp_of(atime), stamp_of(mtime)).map_err(errno)?;
        }
        self.stat_node(ino)
    }

    fn do_unlink(&self, parent: u64, name: &OsStr, want_dir: bool) -> Res<()> {
        self.check_writable()?;
        let _ns = self.ns_change();
        let (ppath, pdirs) = self.dir_info(parent)?;
        if name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Err(Errno::ENOENT);
        }
        let found = self
            .resolve_child(&pdirs, &ppath, name.as_bytes())
            .map_err(errno)?
            .ok_or(Errno::ENOENT)?;
        let child = join_rel(&ppath, name.as_bytes());
        match (&found.loc, want_dir) {
            (Loc::Dir(_), false) => return Err(Errno::EISDIR),
            (Loc::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        if let Loc::Dir(dirs) = &found.loc {
            if !self.list_dir(&child, dirs).map_err(errno)?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
        }
        let lower = self
            .lower_has(&pdirs, &ppath, name.as_bytes())
            .map_err(errno)?;
        if lower {
            // Whiteout first: if the server dies before the removal, the entry still wins.
            self.copy_up_dir(parent).map_err(errno)?;
            self.make_whiteout(&ppath, name.as_bytes()).map_err(errno)?;
        }
        if found.loc.top() == Some(0) {
            let p = self.bpath(0, &child);
            if want_dir {
                // The top copy may hold whiteouts and markers: move it out of the way in one
                // step, then delete it.
                let tmp = self.bpath(0, &join_rel(&ppath, &self.tmp_name()));
                fs::rename(&p, &tmp).map_err(errno)?;
                fs::remove_dir_all(&tmp).map_err(errno)?;
            } else {
                fs::remove_file(&p).map_err(errno)?;
            }
        }
        self.table.lock().unwrap().unlink_entry(parent, name);
        Ok(())
    }

    fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Res<()> {
        self.check_writable()?;
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        for n in [name, newname] {
            if n.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
                return Err(Errno::EPERM);
            }
        }
        let _ns = self.ns_change();
        let (ppath, pdirs) = self.dir_info(parent)?;
        let (nppath, npdirs) = self.dir_info(newparent)?;
        let src = self
            .resolve_child(&pdirs, &ppath, name.as_bytes())
            .map_err(errno)?
            .ok_or(Errno::ENOENT)?;
        let dst = self
            .resolve_child(&npdirs, &nppath, newname.as_bytes())
            .map_err(errno)?;
        let src_ino = self.intern(parent, name, &src);
        if let Some(dst) = &dst {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            let dst_ino = self.intern(newparent, newname, dst);
            if dst_ino == src_ino {
                return Ok(());
            }
            match (&src.loc, &dst.loc) {
                (Loc::Dir(_), Loc::File(_)) => return Err(Errno::ENOTDIR),
                (Loc::File(_), Loc::Dir(_)) => return Err(Errno::EISDIR),
                (Loc::Dir(_), Loc::Dir(dd)) => {
                    let dpath = join_rel(&nppath, newname.as_bytes());
                    if !self.list_dir(&dpath, dd).map_err(errno)?.is_empty() {
                        return Err(Errno::ENOTEMPTY);
                    }
                }
                _ => {}
            }
        }
        let src_is_dir = matches!(src.loc, Loc::Dir(_));
        if let Loc::Dir(d) = &src.loc {
            // Like aufs without dirren: a directory with lower content cannot move in one
            // step; callers (mv) fall back to copy and delete.
            if d.as_slice() != [0] {
                return Err(Errno::EXDEV);
            }
        }
        // Moving a directory into a place where a lower branch has a directory: make it
        // opaque so the lower one does not merge in.
        let new_path = join_rel(&nppath, newname.as_bytes());
        self.copy_up(src_ino).map_err(errno)?;
        self.copy_up_dir(newparent).map_err(errno)?;
        let (ppath, pdirs) = self.dir_info(parent)?;
        let (nppath, npdirs) = self.dir_info(newparent)?;
        let old_path = join_rel(&ppath, name.as_bytes());
        if src_is_dir {
            let lower_dir = npdirs.iter().filter(|&&b| b != 0).any(|&b| {
                fs::symlink_metadata(self.bpath(b, &new_path))
                    .map(|m| m.is_dir())
                    .unwrap_or(false)
            });
            if lower_dir {
                let marker = self.bpath(0, &join_rel(&old_path, OPAQUE_WHITEOUT.as_bytes()));
                if !lexists(&marker).map_err(errno)? {
                    File::create(&marker).map_err(errno)?;
                }
            }
        }
        if self
            .lower_has(&pdirs, &ppath, name.as_bytes())
            .map_err(errno)?
        {
            self.make_whiteout(&ppath, name.as_bytes()).map_err(errno)?;
        }
        let to = self.bpath(0, &new_path);
        if let Some(Found {
            loc: Loc::Dir(dd), ..
        }) = &dst
        {
            if dd.first() == Some(&0) {
                // The target's top copy may hold whiteouts: clear it first.
                if self
                    .lower_has(&npdirs, &nppath, newname.as_bytes())
                    .map_err(errno)?
                {
                    self.make_whiteout(&nppath, newname.as_bytes())
                        .map_err(errno)?;
                }
                let tmp = self.bpath(0, &join_rel(&nppath, &self.tmp_name()));
                fs::rename(&to, &tmp).map_err(errno)?;
                fs::remove_dir_all(&tmp).map_err(errno)?;
            }
        }
        fs::rename(self.bpath(0, &old_path), &to).map_err(errno)?;
        let wh = self.bpath(0, &join_rel(&nppath, &whiteout_name(newname.as_bytes())));
        if lexists(&wh).map_err(errno)? {
            fs::remove_file(&wh).map_err(errno)?;
        }
        let mut t = self.table.lock().unwrap();
        t.unlink_entry(newparent, newname);
        t.entries.remove(&(parent, name.to_os_string()));
        t.entries
            .insert((newparent, newname.to_os_string()), src_ino);
        if let Some(node) = t.nodes.get_mut(&src_ino) {
            for l in node.links.iter_mut() {
                if l.0 == parent && l.1 == name {
                    *l = (newparent, newname.to_os_string());
                }
            }
        }
        Ok(())
    }
}

fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

impl Filesystem for UnionFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        use fuser::InitFlags;
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_DIO,
        ] {
            let _ = config.add_capabilities(flag);
        }
        self.no_opendir = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _ns = self.ns.read().unwrap();
        match self.do_lookup(parent.0, name) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            // Node id 0: the kernel keeps the negative entry for TTL (a creation through the
            // mount replaces it).
            Err(e) if e == Errno::ENOENT => reply.entry(&TTL, &negative_attr(), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(fh) = fh {
            if let Ok(f) = self.file(fh) {
                let loc = self.node_info(ino.0).map(|x| x.1).unwrap_or(Loc::File(0));
                match f.metadata() {
                    Ok(meta) => return reply.attr(&TTL, &self.attr(ino.0, &meta, &loc)),
                    Err(e) => return reply.error(errno(e)),
                }
            }
        }
        let _ns = self.ns.read().unwrap();
        match self.stat_node(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino.0, mode, uid, gid, size, atime, mtime, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _ns = self.ns.read().unwrap();
        let res = self.node_info(ino.0).and_then(|(path, loc)| {
            let b = loc.top().ok_or(Errno::EIO)?;
            fs::read_link(self.bpath(b, &path)).map_err(errno)
        });
        match res {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let res = (|| {
            let _ns = self.ns_change();
            let (ppath, pdirs, had_wh) = self.prepare_create(parent.0, name)?;
            let p = self.bpath(0, &join_rel(&ppath, name.as_bytes()));
            let perm = mode & 0o7777 & !umask;
            sys::mknod(&p, (mode & libc::S_IFMT) | perm, rdev as u64).map_err(errno)?;
            let (uid, gid) = self.new_owner(req, &self.bpath(0, &ppath));
            Self::set_owner_mode(&p, uid, gid, Some(perm)).map_err(errno)?;
            self.finish_create(parent.0, name, &ppath, &pdirs, had_wh)
        })();
        match res {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let res = (|| {
            let _ns = self.ns_change();
            let (ppath, pdirs, had_wh) = self.prepare_create(parent.0, name)?;
            let top_parent = self.bpath(0, &ppath);
            let p = top_parent.join(name);
            let (uid, gid) = self.new_owner(req, &top_parent);
            let perm = mode & 0o7777 & !umask;
            if had_wh {
                // A lower branch has this name: the new directory is opaque. Built aside and
                // renamed in, so it never shows the lower content.
                let tmp = top_parent.join(sys::os(&self.tmp_name()));
                fs::DirBuilder::new()
                    .mode(perm)
                    .create(&tmp)
                    .map_err(errno)?;
                File::create(tmp.join(OPAQUE_WHITEOUT)).map_err(errno)?;
                Self::set_owner_mode(&tmp, uid, gid, Some(perm)).map_err(errno)?;
                fs::rename(&tmp, &p).map_err(errno)?;
            } else {
                fs::DirBuilder::new().mode(perm).create(&p).map_err(errno)?;
                Self::set_owner_mode(&p, uid, gid, Some(perm)).map_err(errno)?;
            }
            self.finish_create(parent.0, name, &ppath, &pdirs, had_wh)
        })();
        match res {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_unlink(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_unlink(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let res = (|| {
            let _ns = self.ns_change();
            let (ppath, pdirs, had_wh) = self.prepare_create(parent.0, link_name)?;
            let p = self.bpath(0, &join_rel(&ppath, link_name.as_bytes()));
            std::os::unix::fs::symlink(target, &p).map_err(errno)?;
            let (uid, gid) = self.new_owner(req, &self.bpath(0, &ppath));
            Self::set_owner_mode(&p, uid, gid, None).map_err(errno)?;
            self.finish_create(parent.0, link_name, &ppath, &pdirs, had_wh)
        })();
        match res {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.do_rename(parent.0, name, newparent.0, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let res = (|| {
            let _ns = self.ns_change();
            let (ppath, pdirs, had_wh) = self.prepare_create(newparent.0, newname)?;
            if matches!(self.node_info(ino.0)?.1, Loc::Dir(_)) {
                return Err(Errno::EPERM);
            }
            self.copy_up(ino.0).map_err(errno)?;
            let (src, _) = self.node_info(ino.0)?;
            let dst = self.bpath(0, &join_rel(&ppath, newname.as_bytes()));
            fs::hard_link(self.bpath(0, &src), &dst).map_err(errno)?;
            if had_wh {
                fs::remove_file(
                    self.bpath(0, &join_rel(&ppath, &whiteout_name(newname.as_bytes()))),
                )
                .map_err(errno)?;
            }
            let meta = fs::symlink_metadata(&dst).map_err(errno)?;
            let mut t = self.table.lock().unwrap();
            let key = (newparent.0, newname.to_os_string());
            t.entries.insert(key.clone(), ino.0);
            if let Some(node) = t.nodes.get_mut(&ino.0) {
                node.links.push(key);
            }
            drop(t);
            let _ = pdirs;
            Ok(self.attr(ino.0, &meta, &Loc::File(0)))
        })();
        match res {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let flags = flags.0;
        let writing = (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let res = (|| {
            let path = if writing {
                self.check_writable()?;
                let _ns = self.node_change();
                self.copy_up(ino.0).map_err(errno)?;
                self.bpath(0, &self.node_info(ino.0)?.0)
            } else {
                let _ns = self.ns.read().unwrap();
                let (path, loc) = self.node_info(ino.0)?;
                self.bpath(loc.top().ok_or(Errno::EIO)?, &path)
            };
            let f = Self::open_backing(&path, flags, None).map_err(errno)?;
            let fh = self.new_fh();
            self.files.lock().unwrap().insert(fh, Arc::new(f));
            Ok(fh)
        })();
        match res {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let res = (|| {
            let _ns = self.ns_change();
            let (ppath, pdirs, had_wh) = self.prepare_create(parent.0, name)?;
            let p = self.bpath(0, &join_rel(&ppath, name.as_bytes()));
            let perm = mode & 0o7777 & !umask;
            let f = Self::open_backing(&p, flags, Some(perm)).map_err(errno)?;
            let (uid, gid) = self.new_owner(req, &self.bpath(0, &ppath));
            Self::set_owner_mode(&p, uid, gid, Some(perm)).map_err(errno)?;
            let (ino, attr) = self.finish_create(parent.0, name, &ppath, &pdirs, had_wh)?;
            let fh = self.new_fh();
            self.files.lock().unwrap().insert(fh, Arc::new(f));
            Ok((ino, attr, fh))
        })();
        match res {
            Ok((_, attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        // One buffer per serving thread: the kernel asks for up to max_read bytes even for a
        // small file, and zeroing a fresh buffer each time costs more than the read.
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            let buf = &mut buf[..size as usize];
            let mut done = 0;
            while done < buf.len() {
                match f.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return reply.error(errno(e)),
                }
            }
            reply.data(&buf[..done]);
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        match f.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes go straight to the branch: nothing to flush. ENOSYS tells the kernel to stop
        // sending FLUSH on every close (one round trip less per file).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let res = self.file(fh).and_then(|f| {
            if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            }
            .map_err(errno)
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // A directory holds no per-open state here (readdir offsets stand on their own, see
        // `cookie`), so where the kernel allows it the server declines to open directories
        // at all: then no opendir or releasedir crosses to the server and the kernel keeps
        // each listing cached across opens. Two round trips per directory were most of the
        // time of a `find` over a warm view.
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        let is_dir = {
            let t = self.table.lock().unwrap();
            t.nodes.get(&ino.0).map(|n| matches!(n.loc, Loc::Dir(_)))
        };
        match is_dir {
            // The same as the kernel does without opendir: the listing stays cached across
            // opens, and the kernel drops it when the directory changes.
            Some(true) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Some(false) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _ns = self.ns.read().unwrap();
        let list = match self.dir_listing(ino.0) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let parent_ino = self.parent_ino(ino.0);
        let mut pos = cookie::resume(&list, offset);
        self.end_of_listing(ino.0, pos, &list);
        while pos < list.len() + 2 {
            let next = cookie::after(&list, pos);
            let full = match pos {
                0 => reply.add(ino, next, FileType::Directory, "."),
                1 => reply.add(INodeNo(parent_ino), next, FileType::Directory, ".."),
                _ => {
                    let ent = &list[pos - 2];
                    let known = self
                        .table
                        .lock()
                        .unwrap()
                        .entries
                        .get(&(ino.0, ent.name.clone()))
                        .copied();
                    let child = match known {
                        Some(c) => c,
                        None => match self.do_lookup(ino.0, &ent.name) {
                            Ok((c, _)) => c,
                            Err(_) => {
                                pos += 1;
                                continue;
                            }
                        },
                    };
                    reply.add(INodeNo(child), next, ent.kind, &ent.name)
                }
            };
            if full {
                break;
            }
            pos += 1;
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _ns = self.ns.read().unwrap();
        let list = match self.dir_listing(ino.0) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let mut pos = cookie::resume(&list, offset);
        self.end_of_listing(ino.0, pos, &list);
        while pos < list.len() + 2 {
            let next = cookie::after(&list, pos);
            let full = match pos {
                0 | 1 => {
                    // The kernel makes no dentries for these and uses only their inode
                    // numbers, as readdir's.
                    let attr = match self.stat_node(ino.0) {
                        Ok(a) => a,
                        Err(e) => return reply.error(e),
                    };
                    let (name, of) = match pos {
                        0 => (".", ino),
                        _ => ("..", INodeNo(self.parent_ino(ino.0))),
                    };
                    reply.add(of, next, name, &Duration::ZERO, &attr, Generation(0))
                }
                _ => {
                    let ent = &list[pos - 2];
                    match self.lookup_listed(ino.0, ent) {
                        Ok((child, attr)) => {
                            reply.add(INodeNo(child), next, &ent.name, &TTL, &attr, Generation(0))
                        }
                        Err(_) => {
                            pos += 1;
                            continue;
                        }
                    }
                }
            };
            if full {
                break;
            }
            pos += 1;
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let res = self.node_info(ino.0).and_then(|(path, loc)| {
            let b = loc.top().ok_or(Errno::EIO)?;
            File::open(self.bpath(b, &path))
                .and_then(|f| f.sync_all())
                .map_err(errno)
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match sys::statvfs(&self.branches[0]) {
            Ok(st) => reply.statfs(
                st.f_blocks as u64,
                st.f_bfree as u64,
                st.f_bavail as u64,
                st.f_files as u64,
                st.f_ffree as u64,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let res = (|| {
            self.check_writable()?;
            if is_internal_xattr(name.as_bytes()) {
                return Err(Errno::EPERM);
            }
            let _ns = self.node_change();
            self.copy_up(ino.0).map_err(errno)?;
            let (path, _) = self.node_info(ino.0)?;
            sys::lsetxattr(&self.bpath(0, &path), name.as_bytes(), value, flags).map_err(errno)
        })();
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let res = (|| {
            if is_internal_xattr(name.as_bytes()) {
                return Err(Errno::ENODATA);
            }
            let _ns = self.ns.read().unwrap();
            let (path, loc) = self.node_info(ino.0)?;
            let b = loc.top().ok_or(Errno::EIO)?;
            sys::lgetxattr(&self.bpath(b, &path), name.as_bytes()).map_err(errno)
        })();
        match res {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let res = (|| {
            let _ns = self.ns.read().unwrap();
            let (path, loc) = self.node_info(ino.0)?;
            let b = loc.top().ok_or(Errno::EIO)?;
            let names = sys::llistxattr(&self.bpath(b, &path)).map_err(errno)?;
            let mut out = Vec::new();
            for n in names.iter().filter(|n| !is_internal_xattr(n)) {
                out.extend_from_slice(n);
                out.push(0);
            }
            Ok(out)
        })();
        match res {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let res = (|| {
            self.check_writable()?;
            if is_internal_xattr(name.as_bytes()) {
                return Err(Errno::ENODATA);
            }
            let _ns = self.node_change();
            // Nothing to copy up for a name that is not there.
            let (path, loc) = self.node_info(ino.0)?;
            let b = loc.top().ok_or(Errno::EIO)?;
            sys::lgetxattr(&self.bpath(b, &path), name.as_bytes()).map_err(errno)?;
            self.copy_up(ino.0).map_err(errno)?;
            let (path, _) = self.node_info(ino.0)?;
            sys::lremovexattr(&self.bpath(0, &path), name.as_bytes()).map_err(errno)
        })();
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let res = self
            .file(fh)
            .and_then(|f| sys::fallocate(f.as_fd(), mode, offset, length).map_err(errno));
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
