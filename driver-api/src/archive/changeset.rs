//! The canonical changeset writer (docs/changeset.md §3).
//!
//! Two steps, so that a driver's native diff can reuse the second: the ordered change list
//! (the generic comparer, or a backend's own knowledge), then [`write_changeset_from`], which
//! turns a change list and the child view into the canonical tar. The writer streams: it holds
//! the change list as a tree of names, never file content.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::beneath::join_rel;
use super::pax::{self, Header};
use super::WHITEOUT_PREFIX;
use crate::driver::{Change, ChangeKind};
use crate::error::ArchiveError;
use crate::tree::{self, Entry, Kind, RawChange};
use crate::view::{Located, MountedView, ViewSource};

/// Write the canonical changeset that turns the view at `parent` (None: an empty directory)
/// into the view at `child`. Returns the number of bytes written.
pub fn write_changeset(
    parent: Option<&Path>,
    child: &Path,
    out: &mut dyn Write,
) -> Result<u64, ArchiveError> {
    let changes = tree::raw_changes(parent, child)?;
    write_changeset_from_raw(child, &changes, out)
}

/// Write the canonical changeset for `changes` (as `tree::changes` lists them), reading
/// entries and content from `child_view`.
pub fn write_changeset_from(
    child_view: &Path,
    changes: &[Change],
    out: &mut dyn Write,
) -> Result<u64, ArchiveError> {
    write_changeset_from_source(&MountedView::new(child_view), changes, out)
}

/// Same as [`write_changeset_from`], the child view read through a [`ViewSource`] (a mounted
/// view, or a union read in place from its branches).
pub fn write_changeset_from_source(
    child_view: &dyn ViewSource,
    changes: &[Change],
    out: &mut dyn Write,
) -> Result<u64, ArchiveError> {
    let raw: Vec<RawChange> = changes.iter().map(RawChange::from_change).collect();
    write_raw(child_view, &raw, out)
}

/// The changes as a tree of names: what the tar's order is made of.
#[derive(Default)]
struct Node {
    /// Names of deleted children: their whiteouts come first.
    deleted: BTreeSet<Vec<u8>>,
    /// Added, modified and ancestor children, by name bytes.
    children: BTreeMap<Vec<u8>, Node>,
}

impl Node {
    fn insert(&mut self, path: &[u8], kind: ChangeKind) {
        let mut node = self;
        let mut parts = path
            .split(|&c| c == b'/')
            .filter(|p| !p.is_empty())
            .peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() && kind == ChangeKind::Delete {
                node.deleted.insert(part.to_vec());
                return;
            }
            node = node.children.entry(part.to_vec()).or_default();
        }
    }
}

/// Same as [`write_changeset_from`], paths as raw bytes relative to the root.
pub fn write_changeset_from_raw(
    child_view: &Path,
    changes: &[RawChange],
    out: &mut dyn Write,
) -> Result<u64, ArchiveError> {
    write_raw(&MountedView::new(child_view), changes, out)
}

fn write_raw(
    child_view: &dyn ViewSource,
    changes: &[RawChange],
    out: &mut dyn Write,
) -> Result<u64, ArchiveError> {
    let mut root = Node::default();
    for c in changes {
        // The list may come from a backend's own code: never let it name a path outside the view.
        let bad_part = |p: &[u8]| p.is_empty() || p == b"." || p == b"..";
        if c.path.is_empty() || c.path.split(|&b| b == b'/').any(bad_part) {
            return Err(ArchiveError::bad(
                super::show(&c.path),
                "change path must be relative, without empty, '.' or '..' components",
            ));
        }
        root.insert(&c.path, c.kind);
    }
    let mut w = Emitter {
        view: child_view,
        out: CountingWriter {
            inner: BufWriter::with_capacity(256 * 1024, out),
            count: 0,
        },
        labels: None,
        buf: Vec::new(),
    };
    w.dir(&[], &root)?;
    pax::write_end(&mut w.out).map_err(ArchiveError::Stream)?;
    w.out.inner.flush().map_err(ArchiveError::Stream)?;
    Ok(w.out.count)
}

struct CountingWriter<W: Write> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Emitter<'a, W: Write> {
    view: &'a dyn ViewSource,
    out: CountingWriter<W>,
    /// Hardlink labels of the child view, read the first time a changed file has links.
    labels: Option<HashMap<(u64, u64), Vec<u8>>>,
    buf: Vec<u8>,
}

impl<W: Write> Emitter<'_, W> {
    /// The contents of directory `dir` (its own entry already written).
    fn dir(&mut self, dir: &[u8], node: &Node) -> Result<(), ArchiveError> {
        for name in &node.deleted {
            let path = join_rel(dir, name);
            if name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                return Err(self.unrepresentable(
                    &path,
                    "its deletion would need a whiteout for a whiteout name",
                ));
            }
            let mut wh = dir.to_vec();
            if !wh.is_empty() {
                wh.push(b'/');
            }
            wh.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
            wh.extend_from_slice(name);
            let h = Header {
                name: wh,
                typeflag: pax::TYPE_FILE,
                ..Header::default()
            };
            self.header(&path, &h)?;
        }
        for (name, child) in &node.children {
            let path = join_rel(dir, name);
            self.entry(&path, child)?;
        }
        Ok(())
    }

    fn unrepresentable(&self, rel: &[u8], reason: &'static str) -> ArchiveError {
        ArchiveError::Unrepresentable {
            path: self.view.display(rel),
            reason,
        }
    }

    fn header(&mut self, rel: &[u8], h: &Header) -> Result<(), ArchiveError> {
        if let Some(reason) = h.unrepresentable() {
            return Err(self.unrepresentable(rel, reason));
        }
        h.write(&mut self.out).map_err(ArchiveError::Stream)?;
        Ok(())
    }

    fn entry(&mut self, rel: &[u8], node: &Node) -> Result<(), ArchiveError> {
        if tree::base_name(rel).starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Err(self.unrepresentable(rel, "its name would read back as a whiteout"));
        }
        let Some(Located { path: full, md }) = self.view.locate(rel)? else {
            let gone = io::Error::from(io::ErrorKind::NotFound);
            return Err(ArchiveError::tree("lstat", self.view.display(rel), gone));
        };
        let Some(e) = Entry::from_metadata(&full, rel.to_vec(), &md)? else {
            return Err(self.unrepresentable(rel, "a socket cannot be carried by a tar"));
        };
        let has_inside = !node.children.is_empty() || !node.deleted.is_empty();
        if has_inside && e.kind != Kind::Dir {
            return Err(ArchiveError::tree(
                "diff",
                &full,
                io::Error::other(
                    "the change list has entries beneath a path that is not a directory",
                ),
            ));
        }
        let mut h = Header {
            name: rel.to_vec(),
            mode: e.mode,
            uid: e.uid as u64,
            gid: e.gid as u64,
            mtime: e.mtime,
            xattrs: e.xattrs.clone(),
            ..Header::default()
        };
        match e.kind {
            Kind::Dir => {
                h.typeflag = pax::TYPE_DIR;
                h.name.push(b'/');
                self.header(rel, &h)?;
                return self.dir(rel, node);
            }
            Kind::Symlink => {
                h.typeflag = pax::TYPE_SYMLINK;
                h.linkname = e.link_target.clone().unwrap_or_default();
            }
            Kind::Char | Kind::Block => {
                h.typeflag = if e.kind == Kind::Char {
                    pax::TYPE_CHAR
                } else {
                    pax::TYPE_BLOCK
                };
                h.device = e.rdev;
            }
            Kind::Fifo => h.typeflag = pax::TYPE_FIFO,
            Kind::File => {
                if let Some(first) = self.label(&e)? {
                    if first != rel {
                        let link = Header {
                            name: rel.to_vec(),
                            typeflag: pax::TYPE_HARDLINK,
                            mode: e.mode,
                            uid: e.uid as u64,
                            gid: e.gid as u64,
                            linkname: first,
                            ..Header::default()
                        };
                        return self.header(rel, &link);
                    }
                }
                h.typeflag = pax::TYPE_FILE;
                h.size = e.size;
                self.header(rel, &h)?;
                return self.content(&full, e.size);
            }
        }
        self.header(rel, &h)
    }

    /// The first path of the file's hardlink group in the child view, if it has one.
    fn label(&mut self, e: &Entry) -> Result<Option<Vec<u8>>, ArchiveError> {
        if e.nlink <= 1 {
            return Ok(None);
        }
        if self.labels.is_none() {
            self.labels = Some(self.view.hardlink_labels()?);
        }
        Ok(self.labels.as_ref().unwrap().get(&(e.dev, e.ino)).cloned())
    }

    /// Stream exactly `size` bytes of the file, then the padding. A file that changes size
    /// while it is read would make a corrupt tar: that is an error.
    fn content(&mut self, full: &Path, size: u64) -> Result<(), ArchiveError> {
        let mut f = tree::open_nofollow(full)?;
        let md = f
            .metadata()
            .map_err(|e| ArchiveError::tree("fstat", full, e))?;
        if !md.is_file() || md.size() != size {
            return Err(ArchiveError::tree(
                "read",
                full,
                io::Error::other("the file changed while the changeset was written"),
            ));
        }
        if self.buf.is_empty() {
            self.buf = vec![0u8; 1 << 20];
        }
        let mut left = size;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = tree::read_full(&mut f, &mut self.buf[..want])
                .map_err(|e| ArchiveError::tree("read", full, e))?;
            if n == 0 {
                return Err(ArchiveError::tree(
                    "read",
                    full,
                    io::Error::other("the file shrank while the changeset was written"),
                ));
            }
            self.out
                .write_all(&self.buf[..n])
                .map_err(ArchiveError::Stream)?;
            left -= n as u64;
        }
        let mut extra = [0u8; 1];
        if f.read(&mut extra)
            .map_err(|e| ArchiveError::tree("read", full, e))?
            != 0
        {
            return Err(ArchiveError::tree(
                "read",
                full,
                io::Error::other("the file grew while the changeset was written"),
            ));
        }
        let pad = pax::padding(size);
        self.out
            .write_all(&[0u8; pax::BLOCK][..pad])
            .map_err(ArchiveError::Stream)?;
        Ok(())
    }
}
