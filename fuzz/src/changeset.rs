//! The `changeset` fuzz target: the input is a little program that builds a parent tree and
//! then changes a copy of it into a child tree (files, directories, symlinks, hardlinks,
//! fifos, modes, owners, times, xattrs, removals and type changes, with non-UTF-8 and
//! awkward names). Then, as docs/changeset.md promises:
//!
//! - the manifest of a view is a pure function of it: the same twice, and the same for a
//!   copy made with the shared tree copy;
//! - the changeset is a pure function of the two views: the same bytes twice;
//! - applying it onto a copy of the parent gives the child's manifest exactly;
//! - the changeset of a view against itself applies as a no-op.
//!
//! Any panic, or a broken promise, is a crash.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use driver_api::archive::{apply_tar, write_changeset, ApplyOptions, WhiteoutFormat};
use driver_api::manifest::write_manifest;

/// Names the program picks from: sort-order traps (`a`, `a.txt`, `a/b`), a space, a
/// non-UTF-8 byte, a dot name, UTF-8.
const NAMES: &[&[u8]] = &[
    b"a",
    b"b",
    b"a.txt",
    b"A",
    b"x y",
    b"\xfe\x01",
    b".hidden",
    "é".as_bytes(),
];

const LINK_TARGETS: &[&[u8]] = &[b"a", b"../b", b"/etc/passwd", b"a/a.txt", b"", b"\xff"];

/// Reads the program's bytes; zeros once they run out.
struct Program<'a> {
    data: &'a [u8],
}

impl Program<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn done(&self) -> bool {
        self.data.is_empty()
    }
    /// A path of one to three names below `root`.
    fn path(&mut self, root: &Path) -> PathBuf {
        let depth = 1 + (self.byte() % 3) as usize;
        let mut p = root.to_path_buf();
        for _ in 0..depth {
            p.push(OsStr::from_bytes(NAMES[self.byte() as usize % NAMES.len()]));
        }
        p
    }
}

/// Whether every ancestor of `p` below `root` is a real directory (no symlink on the way).
fn in_real_dirs(root: &Path, p: &Path) -> bool {
    p.ancestors()
        .skip(1)
        .take_while(|a| *a != root)
        .all(|a| fs::symlink_metadata(a).is_ok_and(|m| m.is_dir()))
}

fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => {
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Run one step of the program on the tree at `root`. Steps that make no sense here (a
/// parent that is a file, a link to nothing) just fail: the trees stay whatever they are.
fn step(prog: &mut Program, root: &Path) {
    let op = prog.byte() % 11;
    let p = prog.path(root);
    // Every ancestor a real directory, so that no step follows a symlink out of the tree
    // (this runs as root; a link to /etc/passwd is one of the targets).
    let mut dir = root.to_path_buf();
    let below: Vec<_> = p.strip_prefix(root).unwrap().components().collect();
    for c in &below[..below.len() - 1] {
        dir.push(c);
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            remove_any(&dir);
            if fs::create_dir(&dir).is_err() {
                return;
            }
        }
    }
    match op {
        0 => {
            let _ = fs::create_dir(&p);
        }
        1 | 2 => {
            // A file; the content's length and bytes from the program.
            let len = prog.byte() as usize * (1 + prog.byte() as usize % 4);
            let fill = prog.byte();
            let content: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
            // Only over a regular file (writing through a fifo would wait for a reader,
            // through a symlink would write outside the tree).
            if fs::symlink_metadata(&p).is_ok_and(|m| !m.is_file()) {
                remove_any(&p);
            }
            let _ = fs::write(&p, content);
        }
        3 => {
            remove_any(&p);
            let target = LINK_TARGETS[prog.byte() as usize % LINK_TARGETS.len()];
            let _ = symlink(OsStr::from_bytes(target), &p);
        }
        4 => {
            // A hardlink to another path, if that is a regular file.
            let other = prog.path(root);
            if in_real_dirs(root, &other) && fs::symlink_metadata(&other).is_ok_and(|m| m.is_file())
            {
                remove_any(&p);
                let _ = fs::hard_link(&other, &p);
            }
        }
        5 => remove_any(&p),
        6 => {
            let mode = u32::from(prog.byte()) | (u32::from(prog.byte() & 0x0f) << 8);
            // Directories stay traversable by us (root), other bits as asked.
            if fs::symlink_metadata(&p).is_ok_and(|m| !m.file_type().is_symlink()) {
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777));
            }
        }
        7 => {
            let secs = 1_500_000_000 + i64::from(prog.byte()) * 1_000_003;
            let nanos = i64::from(prog.byte()) * 3_906_250;
            let ts = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: secs,
                    tv_nsec: nanos as _,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: secs,
                    tv_nsec: nanos as _,
                },
            };
            let _ = rustix::fs::utimensat(
                rustix::fs::CWD,
                &p,
                &ts,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            );
        }
        8 => {
            let value: Vec<u8> = (0..prog.byte() % 8).map(|_| prog.byte()).collect();
            let name = ["user.a", "user.b", "user.\u{e9}"][prog.byte() as usize % 3];
            if fs::symlink_metadata(&p).is_ok_and(|m| !m.file_type().is_symlink()) {
                let _ = rustix::fs::setxattr(&p, name, &value, rustix::fs::XattrFlags::empty());
            }
        }
        9 => {
            remove_any(&p);
            let _ = rustix::fs::mknodat(
                rustix::fs::CWD,
                &p,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o644),
                0,
            );
        }
        _ => {
            let uid = u32::from(prog.byte() % 4) * 1000;
            let gid = u32::from(prog.byte() % 4) * 1000;
            let _ = rustix::fs::chownat(
                rustix::fs::CWD,
                &p,
                Some(rustix::process::Uid::from_raw(uid)),
                Some(rustix::process::Gid::from_raw(gid)),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            );
        }
    }
}

fn manifest(root: &Path) -> String {
    let mut out = Vec::new();
    write_manifest(root, &mut out).expect("a view gd built itself has a manifest");
    String::from_utf8(out).expect("manifests are text")
}

fn changeset(parent: &Path, child: &Path) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    // A refusal (a `.wh.` name, which these names never make) is allowed; a panic is not.
    write_changeset(Some(parent), child, &mut out).ok()?;
    Some(out)
}

/// Run one input. The first byte says how many steps build the parent; the rest build the
/// child from a copy of it.
pub fn changeset_one(data: &[u8]) {
    let Some((&split, program)) = data.split_first() else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let parent = base.path().join("parent");
    let child = base.path().join("child");
    fs::create_dir(&parent).unwrap();
    let mut prog = Program { data: program };
    for _ in 0..split % 24 {
        if prog.done() {
            break;
        }
        step(&mut prog, &parent);
    }
    driver_api::copy::copy_tree(&parent, &child).unwrap();
    assert_eq!(
        manifest(&parent),
        manifest(&child),
        "a copy of a view is the same view"
    );
    for _ in 0..64 {
        if prog.done() {
            break;
        }
        step(&mut prog, &child);
    }

    let want = manifest(&child);
    assert_eq!(want, manifest(&child), "the manifest is a pure function");
    let Some(tar) = changeset(&parent, &child) else {
        return;
    };
    assert!(
        changeset(&parent, &child).as_deref() == Some(&tar[..]),
        "the changeset is a pure function of the two views"
    );
    let applied = base.path().join("applied");
    driver_api::copy::copy_tree(&parent, &applied).unwrap();
    let opts = ApplyOptions {
        whiteouts: WhiteoutFormat::Remove,
        lowers: Vec::new(),
    };
    apply_tar(&applied, &mut &tar[..], &opts).expect("gd's own changeset applies");
    assert_eq!(
        manifest(&applied),
        want,
        "parent + changeset(parent, child) is the child"
    );
    let same = changeset(&child, &child).expect("a view against itself");
    let before = manifest(&applied);
    apply_tar(&applied, &mut &same[..], &opts).expect("an empty changeset applies");
    assert_eq!(
        manifest(&applied),
        before,
        "an empty changeset changes nothing"
    );
}

/// Seeds: programs that touch every step kind, from the project's own fixture shapes (the
/// crash test's base/delta, the conformance suite's type changes and hardlinks).
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // One step of each kind on a fresh path, parent empty.
    for op in 0..11u8 {
        out.push(vec![0, op, 0, 0, 3, 7, 1, 2, 3, 4, 5]);
    }
    // A parent with files and dirs, a child that changes each kind over it.
    let mut p = vec![6];
    for (op, a, b) in [
        (0, 0, 0),
        (1, 1, 1),
        (1, 1, 2),
        (0, 1, 4),
        (1, 2, 4),
        (3, 0, 3),
    ] {
        p.extend_from_slice(&[op, 1, a, b, 9, 2, 5]);
    }
    for op in 0..11u8 {
        p.extend_from_slice(&[op, 1, op % 8, 0, 40, 1, 200]);
    }
    out.push(p);
    // Type changes in both directions and hardlinks across directories.
    out.push(vec![
        4, 0, 1, 0, 1, 1, 1, 20, 3, 1, 2, 0, 2, 9, 4, 1, 2, 2, 0, 2, 5, 1, 0, 0, 1, 0, 0, 9, 0, 1,
        2, 4, 1, 1, 0, 1, 1, 3, 0, 2, 6, 1, 0, 0xff, 0x0f, 8, 1, 1, 3, 1, 2, 3, 2,
    ]);
    // Many small steps from a fixed pseudo-random program.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for len in [64usize, 256, 1024] {
        let mut v = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(x as u8);
        }
        out.push(v);
    }
    out
}
