//! Helpers shared by the changeset, manifest and proptest tests: building real trees with
//! exact metadata, producing diffs, reading tars back with the tar crate.
#![allow(dead_code)]

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};

pub fn p(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

/// Set the mtime (and atime) of `path` without following a symlink.
pub fn set_mtime(path: &Path, sec: i64, nsec: u32) {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn lchown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

pub fn file(root: &Path, rel: &str, content: &[u8], mode: u32, mtime: i64) -> PathBuf {
    let path = p(root, rel);
    fs::write(&path, content).unwrap();
    chmod(&path, mode);
    set_mtime(&path, mtime, 0);
    path
}

pub fn dir(root: &Path, rel: &str, mode: u32, mtime: i64) -> PathBuf {
    let path = p(root, rel);
    if !path.is_dir() {
        fs::create_dir(&path).unwrap();
    }
    chmod(&path, mode);
    set_mtime(&path, mtime, 0);
    path
}

pub fn link(root: &Path, rel: &str, target: &str, mtime: i64) -> PathBuf {
    let path = p(root, rel);
    symlink(target, &path).unwrap();
    set_mtime(&path, mtime, 0);
    path
}

pub fn setxattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("lsetxattr {name} on {}: {e}", path.display()));
}

/// Directory times change whenever an entry is added; set them after building.
pub fn set_root_times(root: &Path, sec: i64) {
    set_mtime(root, sec, 0);
}

pub fn diff(parent: Option<&Path>, child: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let n = driver_api::archive::write_changeset(parent, child, &mut out).unwrap();
    assert_eq!(n as usize, out.len(), "returned byte count");
    out
}

pub fn manifest(root: &Path) -> String {
    let mut out = Vec::new();
    driver_api::manifest::write_manifest(root, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

pub fn changes(parent: Option<&Path>, child: &Path) -> Vec<String> {
    driver_api::tree::changes(parent, child)
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect()
}

/// What the tar crate reads back from one entry.
#[derive(Debug, Clone)]
pub struct TarEntry {
    pub path: Vec<u8>,
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: u64,
    pub link: Option<Vec<u8>>,
    /// PAX records of the entry, in the order written.
    pub pax: Vec<(String, Vec<u8>)>,
    pub content: Vec<u8>,
    /// The raw ustar block.
    pub block: Vec<u8>,
}

impl TarEntry {
    pub fn path_str(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
    pub fn pax_keys(&self) -> Vec<String> {
        self.pax.iter().map(|(k, _)| k.clone()).collect()
    }
    pub fn pax_get(&self, key: &str) -> Option<&[u8]> {
        self.pax
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

/// A raw ustar block and the PAX records that preceded it.
pub type RawEntry = (Vec<u8>, Vec<(String, Vec<u8>)>);

/// Our own minimal reader of the raw blocks: (ustar block, PAX records) of every entry that is
/// not an `x` header, in order. Records are parsed by their length, as POSIX says.
pub fn raw_entries(bytes: &[u8]) -> Vec<RawEntry> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut pending: Vec<(String, Vec<u8>)> = Vec::new();
    while pos + 512 <= bytes.len() {
        let block = &bytes[pos..pos + 512];
        if block.iter().all(|&b| b == 0) {
            break;
        }
        let size_field = std::str::from_utf8(&block[124..135]).unwrap();
        let size = u64::from_str_radix(size_field, 8).unwrap() as usize;
        let data = &bytes[pos + 512..pos + 512 + size];
        let typeflag = block[156];
        if typeflag == b'x' {
            let mut d = data;
            while !d.is_empty() {
                let sp = d.iter().position(|&c| c == b' ').unwrap();
                let len: usize = std::str::from_utf8(&d[..sp]).unwrap().parse().unwrap();
                let rec = &d[sp + 1..len];
                assert_eq!(rec.last(), Some(&b'\n'), "record ends with a newline");
                let eq = rec.iter().position(|&c| c == b'=').unwrap();
                pending.push((
                    String::from_utf8(rec[..eq].to_vec()).unwrap(),
                    rec[eq + 1..rec.len() - 1].to_vec(),
                ));
                d = &d[len..];
            }
        } else {
            out.push((block.to_vec(), std::mem::take(&mut pending)));
        }
        let content = if matches!(typeflag, b'0' | b'x') {
            size
        } else {
            0
        };
        pos += 512 + content.div_ceil(512) * 512;
    }
    // The end: exactly two zero blocks, nothing after them.
    assert_eq!(bytes.len(), pos + 1024, "archive ends with two zero blocks");
    assert!(bytes[pos..].iter().all(|&b| b == 0));
    out
}

pub fn read_tar(bytes: &[u8]) -> Vec<TarEntry> {
    use std::io::Read;
    let raw = raw_entries(bytes);
    let mut ar = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for (i, e) in ar.entries().unwrap().enumerate() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let path = e.path_bytes().into_owned();
        let link = e.link_name_bytes().map(|l| l.into_owned());
        let mut content = Vec::new();
        e.read_to_end(&mut content).unwrap();
        let (block, pax) = raw[i].clone();
        out.push(TarEntry {
            path,
            typeflag: h.entry_type().as_byte(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            size: h.size().unwrap(),
            mtime: h.mtime().unwrap(),
            link,
            pax,
            content,
            block,
        });
    }
    assert_eq!(out.len(), raw.len());
    out
}

pub fn paths(entries: &[TarEntry]) -> Vec<String> {
    entries.iter().map(|e| e.path_str()).collect()
}

pub fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "command failed: {cmd}");
}

pub fn cp_a(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(src.as_os_str())
        .arg(dst.as_os_str())
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", src.display(), dst.display());
}

pub fn osstr(b: &[u8]) -> &std::ffi::OsStr {
    std::ffi::OsStr::from_bytes(b)
}

/// Whether `apply_tar` is implemented yet (it is a `todo!()` until its commit lands).
pub fn applier_available() -> bool {
    let dir = tempfile::tempdir().unwrap();
    let empty = [0u8; 1024];
    let res = std::panic::catch_unwind(|| {
        let mut r: &[u8] = &empty;
        let _ = driver_api::archive::apply_tar(
            dir.path(),
            &mut r,
            &driver_api::archive::ApplyOptions::default(),
        );
    });
    res.is_ok()
}
