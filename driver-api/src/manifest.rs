//! The manifest: a canonical listing of a view (docs/changeset.md §1, "Manifest lines").
//! Two trees have the same manifest exactly when they are the same view.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::archive::join;
use crate::error::ArchiveError;
use crate::tree::{self, Entry, Kind};

/// One line of the manifest, every field already in its text form (paths escaped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Four octal digits.
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// `SECONDS.NNNNNNNNN`.
    pub mtime: String,
    /// `sha256:HEX` for regular files.
    pub content: Option<String>,
    pub link_target: Option<String>,
    /// `MAJOR,MINOR`.
    pub device: Option<String>,
    pub hardlink: Option<String>,
    /// `(escaped name, hex value)`, sorted by name bytes.
    pub xattrs: Vec<(String, String)>,
}

impl ManifestEntry {
    fn from_entry(root: &Path, e: &Entry) -> Result<ManifestEntry, ArchiveError> {
        let content = if e.kind == Kind::File {
            Some(format!("sha256:{}", hash_file(&join(root, &e.path))?))
        } else {
            None
        };
        Ok(ManifestEntry {
            path: escape(&e.path),
            kind: e.kind.letter().to_string(),
            mode: format!("{:04o}", e.mode),
            uid: e.uid,
            gid: e.gid,
            size: e.size,
            mtime: e.mtime.to_string(),
            content,
            link_target: e.link_target.as_deref().map(escape),
            device: e.rdev.map(|(maj, min)| format!("{maj},{min}")),
            hardlink: e.hardlink.as_deref().map(escape),
            xattrs: e
                .xattrs
                .iter()
                .map(|(n, v)| (escape(n), hex::encode(v)))
                .collect(),
        })
    }

    /// The text line (without its `\n`): tab-separated fields, `-` for an absent one.
    pub fn line(&self) -> String {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".to_string());
        let xattrs = if self.xattrs.is_empty() {
            "-".to_string()
        } else {
            self.xattrs
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        [
            self.path.clone(),
            self.kind.clone(),
            self.mode.clone(),
            self.uid.to_string(),
            self.gid.to_string(),
            self.size.to_string(),
            self.mtime.clone(),
            opt(&self.content),
            opt(&self.link_target),
            opt(&self.device),
            opt(&self.hardlink),
            xattrs,
        ]
        .join("\t")
    }
}

/// Escape bytes that would make a line ambiguous or unprintable as `%XX`: controls, space,
/// non-ASCII, `\`, `%`, `,` and `=`.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if !(0x21..=0x7e).contains(&b) || matches!(b, b'\\' | b'%' | b',' | b'=') {
            s.push_str(&format!("%{b:02X}"));
        } else {
            s.push(b as char);
        }
    }
    s
}

/// sha256 (hex) of a regular file's content, read without following a symlink.
fn hash_file(path: &Path) -> Result<String, ArchiveError> {
    let mut f = tree::open_nofollow(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n =
            tree::read_full(&mut f, &mut buf).map_err(|e| ArchiveError::tree("read", path, e))?;
        h.update(&buf[..n]);
        if n < buf.len() {
            break;
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Every entry of the view at `root`, in view order.
pub fn manifest_entries(root: &Path) -> Result<Vec<ManifestEntry>, ArchiveError> {
    tree::read_view(root)?
        .iter()
        .map(|e| ManifestEntry::from_entry(root, e))
        .collect()
}

fn write_with(
    root: &Path,
    out: &mut dyn Write,
    mut emit: impl FnMut(&ManifestEntry, &mut dyn Write) -> std::io::Result<()>,
) -> Result<String, ArchiveError> {
    let mut digest = Sha256::new();
    for e in tree::read_view(root)? {
        let m = ManifestEntry::from_entry(root, &e)?;
        let mut line = m.line();
        line.push('\n');
        digest.update(line.as_bytes());
        emit(&m, out).map_err(ArchiveError::Stream)?;
    }
    Ok(format!("sha256:{}", hex::encode(digest.finalize())))
}

/// Write the manifest of `root` (one line per entry) to `out`; returns the sha256 digest
/// (`sha256:HEX`) of the whole listing.
pub fn write_manifest(root: &Path, out: &mut dyn Write) -> Result<String, ArchiveError> {
    write_with(root, out, |m, out| writeln!(out, "{}", m.line()))
}

/// Write the manifest of `root` as JSON lines (one object per entry, no header); returns the
/// same digest as [`write_manifest`] (of the text lines).
pub fn write_manifest_json(root: &Path, out: &mut dyn Write) -> Result<String, ArchiveError> {
    write_with(root, out, |m, out| {
        serde_json::to_writer(&mut *out, m)?;
        out.write_all(b"\n")
    })
}

/// Only the digest.
pub fn manifest_digest(root: &Path) -> Result<String, ArchiveError> {
    write_manifest(root, &mut std::io::sink())
}
