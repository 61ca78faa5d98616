//! The union view through real FUSE mounts: branches written in aufs format by hand, the view
//! checked through the mount, and what writes through the mount leave in `diff/<key>`.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{fixture, write, Fixture};
use driver_api::{Access, LayerKind, LayerRef};

fn layer(key: &str, ancestors: &[&str]) -> LayerRef {
    LayerRef {
        id: format!("id-{key}"),
        key: key.into(),
        ancestors: ancestors.iter().map(|s| s.to_string()).collect(),
        kind: LayerKind::Rw,
    }
}

fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut ents: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Base and middle layers in aufs format, and a child on top.
fn stack(f: &Fixture) -> (LayerRef, LayerRef, LayerRef) {
    let base = layer("base", &[]);
    let mid = layer("mid", &["base"]);
    let top = layer("top", &["mid", "base"]);
    for l in [&base, &mid, &top] {
        f.backend.create(l).unwrap();
    }
    let b = f.diff("base");
    write(&b.join("etc/passwd"), "root\n");
    write(&b.join("etc/hosts"), "localhost\n");
    write(&b.join("gone/f"), "g\n");
    write(&b.join("opq/low"), "low\n");
    write(&b.join("keep/a"), "a\n");
    fs::hard_link(b.join("keep/a"), b.join("keep/a-link")).unwrap();
    let m = f.diff("mid");
    write(&m.join("etc/.wh.hosts"), "");
    write(&m.join("etc/mid"), "mid\n");
    write(&m.join(".wh.gone"), "");
    write(&m.join("opq/.wh..wh..opq"), "");
    write(&m.join("opq/new"), "new\n");
    // Debris of an old Docker aufs store: never part of the view.
    write(&m.join(".wh..wh.aufs"), "");
    fs::create_dir_all(m.join(".wh..wh.orph")).unwrap();
    fs::create_dir_all(m.join(".wh..wh.plnk")).unwrap();
    (base, mid, top)
}

#[test]
fn lookup_readdir_whiteouts_and_opaque_dirs() {
    let Some(mut f) = fixture() else { return };
    let (_base, mid, _top) = stack(&f);
    let view = f.mount(&mid, Access::ReadOnly);
    assert_eq!(
        listing(&view),
        [
            "etc",
            "etc/mid",
            "etc/passwd",
            "keep",
            "keep/a",
            "keep/a-link",
            "opq",
            "opq/new"
        ]
    );
    assert_eq!(
        fs::read_to_string(view.join("etc/passwd")).unwrap(),
        "root\n"
    );
    assert!(fs::symlink_metadata(view.join("etc/hosts")).is_err());
    assert!(fs::symlink_metadata(view.join(".wh.gone")).is_err());
    assert!(fs::symlink_metadata(view.join("opq/low")).is_err());
    // Hardlinks of a lower layer: one inode, two links.
    let a = fs::metadata(view.join("keep/a")).unwrap();
    let l = fs::metadata(view.join("keep/a-link")).unwrap();
    assert_eq!(a.ino(), l.ino());
    assert_eq!(a.nlink(), 2);
    // Stable inode numbers.
    assert_eq!(
        fs::metadata(view.join("etc/passwd")).unwrap().ino(),
        fs::metadata(view.join("etc/passwd")).unwrap().ino()
    );
    // Read-only view.
    let err = fs::write(view.join("etc/new"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
}

#[test]
fn writes_land_in_the_top_branch_in_aufs_format() {
    let Some(mut f) = fixture() else { return };
    let (base, _mid, top) = stack(&f);
    let b = f.diff("base");
    fs::set_permissions(b.join("etc/passwd"), fs::Permissions::from_mode(0o640)).unwrap();
    Command::new("setfattr")
        .args(["-n", "user.color", "-v", "blue"])
        .arg(b.join("etc/passwd"))
        .status()
        .unwrap();
    Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06.123456789"])
        .arg(b.join("etc/passwd"))
        .status()
        .unwrap();
    let view = f.mount(&top, Access::ReadWrite);
    let d = f.diff("top");

    // Copy-up on chmod keeps content, owner, xattrs, times.
    fs::set_permissions(view.join("etc/passwd"), fs::Permissions::from_mode(0o600)).unwrap();
    let up = fs::symlink_metadata(d.join("etc/passwd")).unwrap();
    assert_eq!(up.mode() & 0o7777, 0o600);
    assert_eq!(up.mtime(), 981173106);
    assert_eq!(up.mtime_nsec(), 123456789);
    assert_eq!(fs::read_to_string(d.join("etc/passwd")).unwrap(), "root\n");
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", "user.color"])
        .arg(view.join("etc/passwd"))
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"blue");
    // The lower branch is untouched.
    assert_eq!(
        fs::symlink_metadata(b.join("etc/passwd")).unwrap().mode() & 0o7777,
        0o640
    );

    // Append through the view.
    use std::io::Write;
    fs::OpenOptions::new()
        .append(true)
        .open(view.join("keep/a"))
        .unwrap()
        .write_all(b"b\n")
        .unwrap();
    assert_eq!(fs::read_to_string(view.join("keep/a")).unwrap(), "a\nb\n");
    assert_eq!(fs::read_to_string(d.join("keep/a")).unwrap(), "a\nb\n");

    // Deleting a lower file makes a whiteout; a top-only file leaves nothing.
    fs::remove_file(view.join("etc/mid")).unwrap();
    assert!(d.join("etc/.wh.mid").exists());
    fs::write(view.join("etc/fresh"), "f").unwrap();
    fs::remove_file(view.join("etc/fresh")).unwrap();
    assert!(!d.join("etc/.wh.fresh").exists());
    assert!(!d.join("etc/fresh").exists());

    // rmdir + mkdir makes the directory opaque.
    fs::remove_dir_all(view.join("opq")).unwrap();
    assert!(d.join(".wh.opq").exists());
    fs::create_dir(view.join("opq")).unwrap();
    assert!(!d.join(".wh.opq").exists());
    assert!(d.join("opq/.wh..wh..opq").exists());
    assert_eq!(listing(&view.join("opq")), Vec::<String>::new());

    // Rename a lower file: whiteout at the old name, file at the new one.
    fs::rename(view.join("etc/passwd"), view.join("etc/passwd.old")).unwrap();
    assert!(d.join("etc/.wh.passwd").exists());
    assert_eq!(
        fs::read_to_string(view.join("etc/passwd.old")).unwrap(),
        "root\n"
    );
    assert!(fs::symlink_metadata(view.join("etc/passwd")).is_err());

    // Hardlink through the view.
    fs::write(view.join("h1"), "hl").unwrap();
    fs::hard_link(view.join("h1"), view.join("h2")).unwrap();
    let h1 = fs::metadata(view.join("h1")).unwrap();
    let h2 = fs::metadata(view.join("h2")).unwrap();
    assert_eq!((h1.ino(), h1.nlink()), (h2.ino(), 2));
    assert_eq!(
        fs::metadata(d.join("h1")).unwrap().ino(),
        fs::metadata(d.join("h2")).unwrap().ino()
    );

    // Symlinks, fifos, devices.
    std::os::unix::fs::symlink("etc/passwd.old", view.join("sl")).unwrap();
    assert_eq!(
        fs::read_link(view.join("sl")).unwrap(),
        Path::new("etc/passwd.old")
    );
    assert!(Command::new("mkfifo")
        .arg(view.join("fifo"))
        .status()
        .unwrap()
        .success());
    assert!(Command::new("mknod")
        .arg(view.join("null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap()
        .success());
    assert_eq!(
        fs::symlink_metadata(d.join("null")).unwrap().rdev(),
        fs::metadata("/dev/null").unwrap().rdev()
    );

    // xattrs: set, list, remove; internal ones hidden and refused.
    let set = |name: &str, val: &str| {
        Command::new("setfattr")
            .args(["-n", name, "-v", val])
            .arg(view.join("h1"))
            .status()
            .unwrap()
            .success()
    };
    assert!(set("user.a", "1"));
    assert!(set("trusted.t", "2"));
    assert!(!set("trusted.overlay.opaque", "y"));
    Command::new("setfattr")
        .args(["-n", "trusted.aufs.x", "-v", "1"])
        .arg(d.join("h1"))
        .status()
        .unwrap();
    let out = Command::new("getfattr")
        .args(["-d", "-m", "-", "--absolute-names"])
        .arg(view.join("h1"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("user.a") && text.contains("trusted.t") && !text.contains("trusted.aufs"),
        "{text}"
    );
    assert!(Command::new("setfattr")
        .args(["-x", "user.a"])
        .arg(view.join("h1"))
        .status()
        .unwrap()
        .success());

    // utimens with nanoseconds; truncate.
    assert!(Command::new("touch")
        .args(["-h", "-d", "1999-12-31 23:59:59.987654321"])
        .arg(view.join("sl"))
        .status()
        .unwrap()
        .success());
    let m = fs::symlink_metadata(d.join("sl")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (946684799, 987654321));
    fs::OpenOptions::new()
        .write(true)
        .open(view.join("h1"))
        .unwrap()
        .set_len(1)
        .unwrap();
    assert_eq!(fs::read_to_string(view.join("h2")).unwrap(), "h");

    // Names that aufs uses are refused.
    assert!(fs::write(view.join(".wh.x"), "").is_err());

    // Nothing of the lower branch changed.
    assert_eq!(listing(&f.diff("base")), listing(&f.diff("base")));
    let _ = base;
    f.unmount(&top);
    // A new mount sees the same view.
    let view = f.mount(&top, Access::ReadOnly);
    assert_eq!(fs::read_to_string(view.join("h2")).unwrap(), "h");
    assert!(fs::symlink_metadata(view.join("etc/mid")).is_err());
    assert_eq!(listing(&view.join("opq")), Vec::<String>::new());
}

#[test]
fn killed_server_leaves_no_stale_mount_and_no_damage() {
    let Some(mut f) = fixture() else { return };
    let (_base, _mid, top) = stack(&f);
    let view = f.mount(&top, Access::ReadWrite);
    fs::write(view.join("etc/written"), "data").unwrap();
    let pid: i32 = f.backend.metadata(&top).unwrap()["ServerPid"]
        .parse()
        .unwrap();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!f.backend.is_mounted(&top));
    let view = f.mount(&top, Access::ReadWrite);
    assert!(f.backend.is_mounted(&top));
    assert_eq!(
        fs::read_to_string(view.join("etc/written")).unwrap(),
        "data"
    );
    assert_eq!(
        fs::read_to_string(view.join("etc/passwd")).unwrap(),
        "root\n"
    );
    f.unmount(&top);
    assert!(!f.backend.is_mounted(&top));
}

#[test]
fn unmount_waits_for_the_server() {
    let Some(mut f) = fixture() else { return };
    let (base, _mid, _top) = stack(&f);
    f.mount(&base, Access::ReadOnly);
    let pid: i32 = f.backend.metadata(&base).unwrap()["ServerPid"]
        .parse()
        .unwrap();
    f.unmount(&base);
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "server {pid} still running: {stat}"
    );
    // Removing a layer removes every trace of it.
    f.backend.remove("base").unwrap();
    assert!(!f.diff("base").exists());
    assert!(f.backend.keys().unwrap().iter().all(|k| k != "base"));
}

/// Read names from `dir` by getdents64 with a small buffer, stopping between two calls once
/// `out` holds `stop` names: the next reading goes on from the directory's position.
fn read_names(dir: &fs::File, stop: usize, out: &mut Vec<String>) {
    use std::mem::MaybeUninit;
    let mut buf = [MaybeUninit::<u8>::uninit(); 512];
    let mut raw = rustix::fs::RawDir::new(dir, &mut buf);
    while let Some(ent) = raw.next() {
        let name = ent.unwrap().file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            out.push(name);
        }
        // Only at the end of one call's buffer: the rest of it would be lost.
        if raw.is_buffer_empty() && out.len() >= stop {
            return;
        }
    }
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// Read directory `dir` of a mounted view partway, change it (remove a name read, remove a
/// name not yet read, add one), read on to the end: every other name must come exactly once.
/// With `others`, other readers read the whole directory before and after the change, so
/// that the kernel's cache of the listing is whole, then dropped and made again.
fn read_through_a_change(view: &Path, dir: &str, expected: &[String], others: bool) {
    let path = view.join(dir);
    let read_all = || {
        let mut all = Vec::new();
        read_names(&fs::File::open(&path).unwrap(), usize::MAX, &mut all);
        sorted(all)
    };
    let reader = fs::File::open(&path).unwrap();
    let mut seen = Vec::new();
    // A 512-byte buffer takes about 20 names per getdents64.
    read_names(&reader, 400, &mut seen);
    assert!(
        seen.len() >= 400 && seen.len() < expected.len(),
        "read {} names",
        seen.len()
    );
    if others {
        assert_eq!(read_all(), sorted(expected.to_vec()));
    }
    let gone_read = seen[10].clone();
    let gone_unread = expected.iter().find(|n| !seen.contains(n)).unwrap().clone();
    fs::remove_file(path.join(&gone_read)).unwrap();
    fs::remove_file(path.join(&gone_unread)).unwrap();
    write(&path.join("added"), "new");
    let kept = |n: &&String| **n != gone_read && **n != gone_unread;
    let want = sorted(
        expected
            .iter()
            .filter(kept)
            .cloned()
            .chain(["added".to_string()])
            .collect(),
    );
    if others {
        // A new reader sees the change: the kernel drops its cache at an open after one.
        assert_eq!(read_all(), want);
    }
    read_names(&reader, usize::MAX, &mut seen);
    let mut counts = std::collections::HashMap::new();
    for n in &seen {
        *counts.entry(n.as_str()).or_insert(0) += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "{dir}: listed more than once: {twice:?}");
    let missing: Vec<_> = expected
        .iter()
        .filter(kept)
        .filter(|n| !counts.contains_key(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "{dir}: never listed: {missing:?}");
    // Through std's readdir too.
    let again: Vec<String> = fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(sorted(again), want);
}

/// Readdir offsets must stay meaningful across changes (`cookie` in union.rs): the first
/// case reads on from the server at an offset into a listing made after the change (it
/// fails with positional offsets), the second from the kernel's cache made again.
#[test]
fn a_directory_read_in_pieces_while_it_changes_lists_every_other_name_once() {
    let Some(mut f) = fixture() else { return };
    let base = layer("base", &[]);
    let top = layer("top", &["base"]);
    for l in [&base, &top] {
        f.backend.create(l).unwrap();
    }
    // Merged directories: names in both branches, a lower one whited out.
    let names: Vec<String> = (0..1500).map(|i| format!("name-{i:04}")).collect();
    for dir in ["alone", "shared"] {
        let low = f.diff("base").join(dir);
        let up = f.diff("top").join(dir);
        fs::create_dir_all(&low).unwrap();
        fs::create_dir_all(&up).unwrap();
        for (i, n) in names.iter().enumerate() {
            write(&(if i % 3 == 0 { &up } else { &low }).join(n), "x");
        }
        write(&up.join(".wh.name-0001"), "");
    }
    let expected: Vec<String> = names
        .iter()
        .filter(|n| *n != "name-0001")
        .cloned()
        .collect();
    let view = f.mount(&top, Access::ReadWrite);
    read_through_a_change(&view, "alone", &expected, false);
    read_through_a_change(&view, "shared", &expected, true);
    f.unmount(&top);
}
