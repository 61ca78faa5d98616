//! Shared by the applier's integration tests: a raw tar writer (so hostile archives can say
//! anything) and a manifest of a directory tree (to prove nothing outside the root changed).
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One tar entry as 512-byte ustar blocks, optionally preceded by a PAX header.
#[derive(Clone, Debug)]
pub struct Raw {
    pub name: Vec<u8>,
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub size: Option<u64>,
    pub linkname: Vec<u8>,
    pub major: u32,
    pub minor: u32,
    pub pax: Vec<(Vec<u8>, Vec<u8>)>,
    pub data: Vec<u8>,
}

impl Raw {
    pub fn new(name: impl AsRef<[u8]>, typeflag: u8) -> Raw {
        Raw {
            name: name.as_ref().to_vec(),
            typeflag,
            mode: if typeflag == b'5' { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            size: None,
            linkname: Vec::new(),
            major: 0,
            minor: 0,
            pax: Vec::new(),
            data: Vec::new(),
        }
    }
    pub fn file(name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Raw {
        let mut r = Raw::new(name, b'0');
        r.data = data.as_ref().to_vec();
        r
    }
    pub fn dir(name: impl AsRef<[u8]>) -> Raw {
        Raw::new(name, b'5')
    }
    pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Raw {
        let mut r = Raw::new(name, b'2');
        r.mode = 0o777;
        r.linkname = target.as_ref().to_vec();
        r
    }
    pub fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Raw {
        let mut r = Raw::new(name, b'1');
        r.linkname = target.as_ref().to_vec();
        r
    }
    pub fn mode(mut self, mode: u32) -> Raw {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Raw {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, mtime: u64) -> Raw {
        self.mtime = mtime;
        self
    }
    pub fn dev(mut self, major: u32, minor: u32) -> Raw {
        self.major = major;
        self.minor = minor;
        self
    }
    pub fn pax(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Raw {
        self.pax
            .push((key.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }
    /// Lie about the content size in the header.
    pub fn claimed_size(mut self, size: u64) -> Raw {
        self.size = Some(size);
        self
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    let b = s.as_bytes();
    if b.len() == field.len() {
        field.copy_from_slice(b);
    } else {
        // Too big for octal: GNU base-256.
        field.fill(0);
        field[0] = 0x80;
        let bytes = v.to_be_bytes();
        let n = field.len().min(8);
        let len = field.len();
        field[len - n..].copy_from_slice(&bytes[8 - n..]);
    }
}

/// A raw 512-byte ustar header; `name`/`linkname` are truncated to 100 bytes.
#[allow(clippy::too_many_arguments)]
pub fn header(
    name: &[u8],
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    linkname: &[u8],
    major: u32,
    minor: u32,
) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], uid);
    octal(&mut h[116..124], gid);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = typeflag;
    let l = linkname.len().min(100);
    h[157..157 + l].copy_from_slice(&linkname[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], major as u64);
    octal(&mut h[337..345], minor as u64);
    set_checksum(&mut h);
    h
}

pub fn set_checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{:06o}\0 ", sum);
    h[148..156].copy_from_slice(s.as_bytes());
}

pub fn pax_records(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3; // space, '=', newline
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

fn pad(out: &mut Vec<u8>) {
    while out.len() % 512 != 0 {
        out.push(0);
    }
}

/// Serialize entries; the archive ends with two zero blocks.
pub fn tar(entries: &[Raw]) -> Vec<u8> {
    let mut out = tar_no_end(entries);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

pub fn tar_no_end(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if !e.pax.is_empty() {
            let recs = pax_records(&e.pax);
            let mut pname = b"PaxHeader/".to_vec();
            pname.extend_from_slice(&e.name[..e.name.len().min(89)]);
            out.extend_from_slice(&header(
                &pname,
                b'x',
                0o644,
                0,
                0,
                recs.len() as u64,
                0,
                b"",
                0,
                0,
            ));
            out.extend_from_slice(&recs);
            pad(&mut out);
        }
        let size = e.size.unwrap_or(e.data.len() as u64);
        out.extend_from_slice(&header(
            &e.name,
            e.typeflag,
            e.mode,
            e.uid,
            e.gid,
            size,
            e.mtime,
            &e.linkname,
            e.major,
            e.minor,
        ));
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    out
}

fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut list = vec![0u8; 65536];
    let n = match rustix::fs::llistxattr(path, &mut list[..]) {
        Ok(n) => n,
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; 65536];
        let cname = std::ffi::CString::new(name).unwrap();
        if let Ok(len) = rustix::fs::lgetxattr(path, cname.as_c_str(), &mut v[..]) {
            out.push((name.to_vec(), v[..len].to_vec()));
        }
    }
    out.sort();
    out
}

/// One line per entry beneath `dir` (view order), every field of docs/changeset.md §1 plus
/// all xattrs (internal ones included: the applier must not set them by accident).
/// Paths listed in `skip` (relative) are left out with their subtrees.
pub fn manifest(dir: &Path, skip: &[&str]) -> String {
    let mut out = String::new();
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    walk(dir, dir, skip, &mut out, &mut links);
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    skip: &[&str],
    out: &mut String,
    links: &mut HashMap<(u64, u64), String>,
) {
    let mut names: Vec<_> = match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name()).collect(),
        Err(e) => {
            out.push_str(&format!("unreadable {}: {e}\n", dir.display()));
            return;
        }
    };
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let path = dir.join(&name);
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if skip.contains(&rel.as_str()) {
            continue;
        }
        let md = fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        let mut line = format!(
            "{rel} mode={:o} uid={} gid={} mtime={}.{:09}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.mtime(),
            md.mtime_nsec()
        );
        if ft.is_file() {
            let content = fs::read(&path).unwrap();
            line += &format!(
                " size={} sha={}",
                md.len(),
                hex::encode(Sha256::digest(&content))
            );
            if md.nlink() > 1 {
                let first = links.entry((md.dev(), md.ino())).or_insert(rel.clone());
                line += &format!(" link={first}");
            }
        } else if ft.is_symlink() {
            line += &format!(" -> {:?}", fs::read_link(&path).unwrap());
        } else if !ft.is_dir() {
            line += &format!(" rdev={}", md.rdev());
        }
        for (k, v) in xattrs(&path) {
            line += &format!(" x:{}={}", String::from_utf8_lossy(&k), hex::encode(v));
        }
        out.push_str(&line);
        out.push('\n');
        if ft.is_dir() {
            walk(root, &path, skip, out, links);
        }
    }
}

/// A scratch area: `base/root` is what the tar is applied to, `base/outside` a sentinel tree
/// that must never change; `/etc/passwd` is watched too.
pub struct Arena {
    pub base: tempfile::TempDir,
    pub root: PathBuf,
    pub outside: PathBuf,
    before: String,
    passwd: Vec<u8>,
}

impl Arena {
    pub fn new() -> Arena {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        let outside = base.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir_all(outside.join("dir/sub")).unwrap();
        fs::write(outside.join("victim"), b"do not touch").unwrap();
        fs::write(outside.join("dir/sub/deep"), b"deep").unwrap();
        fs::write(outside.join("x"), b"x").unwrap();
        fs::write(base.path().join("x"), b"x next to root").unwrap();
        std::os::unix::fs::symlink("victim", outside.join("link")).unwrap();
        let before = manifest(base.path(), &["root"]);
        let passwd = fs::read("/etc/passwd").unwrap();
        Arena {
            base,
            root,
            outside,
            before,
            passwd,
        }
    }

    /// Panics when anything next to the root (or /etc/passwd) changed.
    pub fn check_outside(&self) {
        let after = manifest(self.base.path(), &["root"]);
        assert_eq!(self.before, after, "something outside the root changed");
        assert_eq!(
            self.passwd,
            fs::read("/etc/passwd").unwrap(),
            "/etc/passwd changed"
        );
        assert!(!Path::new("/etc/x").exists(), "/etc/x was created");
    }
}

pub fn osstr(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}
