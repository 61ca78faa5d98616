//! The applier on real files: every entry type and its metadata, replacement rules,
//! hardlinks, whiteouts and opaque markers in the three formats, aufs plnk, compression.

mod apply_util;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use apply_util::{tar, Arena, Raw};
use driver_api::archive::{apply_tar, ApplyOptions, ApplyStats, WhiteoutFormat};

fn apply(root: &Path, bytes: &[u8]) -> Result<ApplyStats, driver_api::ArchiveError> {
    apply_with(root, bytes, WhiteoutFormat::Remove, &[])
}

fn apply_with(
    root: &Path,
    bytes: &[u8],
    whiteouts: WhiteoutFormat,
    lowers: &[&Path],
) -> Result<ApplyStats, driver_api::ArchiveError> {
    let opts = ApplyOptions {
        whiteouts,
        lowers: lowers.iter().map(|p| p.to_path_buf()).collect(),
    };
    apply_tar(root, &mut &bytes[..], &opts)
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut v = vec![0u8; 65536];
    rustix::fs::lgetxattr(path, name, &mut v[..])
        .ok()
        .map(|n| v[..n].to_vec())
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn every_type_with_its_metadata() {
    let a = Arena::new();
    let bytes = tar(&[
        Raw::dir("./").mode(0o700).owner(9, 9),
        Raw::dir("d/")
            .mode(0o1777)
            .owner(1000, 1001)
            .pax("mtime", "1500000000.123456789")
            .pax("SCHILY.xattr.user.dir", "dv"),
        Raw::file("d/suid", b"#!/bin/sh\n")
            .mode(0o4755)
            .owner(5, 6)
            .pax("mtime", "1400000000.000000001")
            .pax("SCHILY.xattr.user.a", "1")
            .pax("SCHILY.xattr.trusted.b", [0u8, 1, 2])
            .pax("SCHILY.xattr.trusted.overlay.opaque", "y")
            .pax(
                "SCHILY.xattr.security.capability",
                [
                    1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
        Raw::file("d/sgid", b"").mode(0o2711).owner(0, 50),
        Raw::symlink("d/link", "suid")
            .owner(7, 8)
            .pax("mtime", "1300000000.5"),
        Raw::new("d/null", b'3').dev(1, 3).mode(0o666).owner(0, 5),
        Raw::new("d/loop", b'4').dev(7, 0).mode(0o660).owner(0, 6),
        Raw::new("d/fifo", b'6')
            .mode(0o640)
            .owner(3, 3)
            .pax("SCHILY.xattr.trusted.f", "ff"),
        Raw::hardlink("d/hard", "d/suid").mode(0o600).owner(99, 99),
    ]);
    let stats = apply(&a.root, &bytes).unwrap();
    assert_eq!(
        stats,
        ApplyStats {
            bytes: 10,
            entries: 9
        }
    );
    let d = a.root.join("d");

    let md = fs::symlink_metadata(&d).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o1777, 1000, 1001)
    );
    assert_eq!(
        (md.mtime(), md.mtime_nsec()),
        (1500000000, 123456789),
        "dir time set last"
    );
    assert_eq!(xattr(&d, "user.dir").unwrap(), b"dv");

    let md = fs::symlink_metadata(d.join("suid")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o4755, 5, 6));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1400000000, 1));
    assert_eq!(md.nlink(), 2);
    assert_eq!(fs::read(d.join("suid")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(xattr(&d.join("suid"), "user.a").unwrap(), b"1");
    assert_eq!(xattr(&d.join("suid"), "trusted.b").unwrap(), [0, 1, 2]);
    assert!(
        xattr(&d.join("suid"), "security.capability").is_some(),
        "set after chown"
    );
    assert_eq!(
        xattr(&d.join("suid"), "trusted.overlay.opaque"),
        None,
        "internal xattr dropped"
    );

    let md = fs::symlink_metadata(d.join("sgid")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o2711, 0, 50));

    let md = fs::symlink_metadata(d.join("link")).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!((md.uid(), md.gid()), (7, 8));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1300000000, 500000000));
    assert_eq!(fs::read_link(d.join("link")).unwrap(), Path::new("suid"));

    let md = fs::symlink_metadata(d.join("null")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(
        (md.rdev(), md.mode() & 0o7777, md.gid()),
        (rustix::fs::makedev(1, 3), 0o666, 5)
    );
    let md = fs::symlink_metadata(d.join("loop")).unwrap();
    assert!(md.file_type().is_block_device());
    assert_eq!(
        (md.rdev(), md.mode() & 0o7777),
        (rustix::fs::makedev(7, 0), 0o660)
    );
    let md = fs::symlink_metadata(d.join("fifo")).unwrap();
    assert!(md.file_type().is_fifo());
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o640, 3));
    assert_eq!(xattr(&d.join("fifo"), "trusted.f").unwrap(), b"ff");

    let hard = fs::symlink_metadata(d.join("hard")).unwrap();
    let orig = fs::symlink_metadata(d.join("suid")).unwrap();
    assert_eq!(hard.ino(), orig.ino());
    assert_eq!(hard.mode() & 0o7777, 0o4755, "hardlink metadata ignored");

    // The root entry is ignored.
    let md = fs::symlink_metadata(&a.root).unwrap();
    assert_eq!(md.uid(), 0);
    a.check_outside();
}

#[test]
fn replacement_rules() {
    let a = Arena::new();
    let r = &a.root;
    fs::write(r.join("was_file"), b"f").unwrap();
    fs::create_dir_all(r.join("was_dir/sub")).unwrap();
    fs::write(r.join("was_dir/sub/x"), b"x").unwrap();
    fs::create_dir(r.join("merge")).unwrap();
    fs::write(r.join("merge/keep"), b"keep").unwrap();
    rustix::fs::lsetxattr(
        r.join("merge").as_path(),
        "user.stale",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::write(r.join("shared"), b"old").unwrap();
    fs::hard_link(r.join("shared"), r.join("sibling")).unwrap();
    std::os::unix::fs::symlink("../outside/victim", r.join("sym")).unwrap();

    let bytes = tar(&[
        Raw::dir("was_file/").mode(0o750),
        Raw::file("was_file/inner", b"in"),
        Raw::file("was_dir", b"now a file"),
        Raw::dir("merge/")
            .mode(0o711)
            .pax("SCHILY.xattr.user.new", "n"),
        Raw::file("shared", b"new content"),
        Raw::file("sym", b"replaced the symlink"),
    ]);
    apply(r, &bytes).unwrap();
    assert!(r.join("was_file").is_dir());
    assert_eq!(fs::read(r.join("was_file/inner")).unwrap(), b"in");
    assert_eq!(fs::read(r.join("was_dir")).unwrap(), b"now a file");
    assert_eq!(
        fs::read(r.join("merge/keep")).unwrap(),
        b"keep",
        "dir onto dir merges"
    );
    assert_eq!(
        fs::metadata(r.join("merge")).unwrap().mode() & 0o7777,
        0o711
    );
    assert_eq!(
        xattr(&r.join("merge"), "user.stale"),
        None,
        "xattrs follow the entry"
    );
    assert_eq!(xattr(&r.join("merge"), "user.new").unwrap(), b"n");
    assert_eq!(fs::read(r.join("shared")).unwrap(), b"new content");
    assert_eq!(
        fs::read(r.join("sibling")).unwrap(),
        b"old",
        "hardlinked sibling untouched"
    );
    assert!(fs::symlink_metadata(r.join("sym")).unwrap().is_file());
    a.check_outside();
}

#[test]
fn hardlinks_in_tar_and_on_disk() {
    let a = Arena::new();
    fs::create_dir(a.root.join("old")).unwrap();
    fs::write(a.root.join("old/file"), b"on disk").unwrap();
    let bytes = tar(&[
        Raw::file("new", b"in tar"),
        Raw::hardlink("l1", "new"),
        Raw::hardlink("./d/l2", "/new"),
        Raw::hardlink("l3", "old/file"),
        Raw::hardlink("new", "new"), // onto itself: nothing to do
    ]);
    apply(&a.root, &bytes).unwrap();
    let ino = |p: &str| fs::symlink_metadata(a.root.join(p)).unwrap().ino();
    assert_eq!(ino("new"), ino("l1"));
    assert_eq!(ino("new"), ino("d/l2"));
    assert_eq!(ino("old/file"), ino("l3"));
    assert_eq!(fs::read(a.root.join("new")).unwrap(), b"in tar");
    // implied parent: 0755 root
    let md = fs::metadata(a.root.join("d")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o755, 0));

    let err = apply(&a.root, &tar(&[Raw::hardlink("x", "missing")])).unwrap_err();
    assert!(err.to_string().contains("\"x\""), "{err}");
}

#[test]
fn whiteouts_remove_format() {
    let a = Arena::new();
    let r = &a.root;
    for d in ["w/sub", "o1", "o2", "o3/sub"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    for f in [
        "w/a",
        "w/b",
        "w/sub/c",
        "o1/old",
        "o2/old",
        "o3/sub/lower",
        "o3/lowerfile",
    ] {
        fs::write(r.join(f), f).unwrap();
    }
    let bytes = tar(&[
        Raw::dir("w/"),
        Raw::file("w/.wh.a", b"").mode(0),
        Raw::file("w/.wh.sub", b"").mode(0),
        Raw::file("w/.wh.nothing", b""),
        Raw::file("w/new", b"n"),
        Raw::file("w/.wh.new", b""), // written by this tar: survives
        Raw::dir("o1/"),
        Raw::file("o1/.wh..wh..opq", b""),
        Raw::file("o1/new", b"n"),
        Raw::dir("o2/"),
        Raw::file("o2/new", b"n"),
        Raw::file("o2/.wh..wh..opq", b""),
        Raw::file("o3/sub/new", b"n"),
        Raw::file("o3/.wh..wh..opq", b""),
        Raw::file("gone/.wh.x", b""), // parent missing: no-op, not created
        Raw::file(".wh..wh.aufs", b""),
        Raw::file(".wh..wh.orph/x", b""),
    ]);
    apply(r, &bytes).unwrap();
    assert_eq!(names(&r.join("w")), ["b", "new"]);
    assert_eq!(names(&r.join("o1")), ["new"]);
    assert_eq!(names(&r.join("o2")), ["new"]);
    assert_eq!(names(&r.join("o3")), ["sub"]);
    assert_eq!(names(&r.join("o3/sub")), ["new"]);
    assert_eq!(names(r), ["o1", "o2", "o3", "w"]);
    a.check_outside();
}

#[test]
fn aufs_plnk_targets() {
    let a = Arena::new();
    let bytes = tar(&[
        Raw::dir(".wh..wh.plnk/"),
        Raw::file(".wh..wh.plnk/1234.99", b"linked")
            .mode(0o640)
            .owner(4, 4),
        Raw::hardlink("a/one", ".wh..wh.plnk/1234.99"),
        Raw::hardlink("two", "./.wh..wh.plnk/1234.99"),
    ]);
    apply(&a.root, &bytes).unwrap();
    let one = fs::symlink_metadata(a.root.join("a/one")).unwrap();
    let two = fs::symlink_metadata(a.root.join("two")).unwrap();
    assert_eq!(one.ino(), two.ino());
    assert_eq!((one.mode() & 0o7777, one.uid(), one.nlink()), (0o640, 4, 2));
    assert_eq!(fs::read(a.root.join("two")).unwrap(), b"linked");
    assert_eq!(names(&a.root), ["a", "two"], "plnk temp dir removed");
}

#[test]
fn gzip_and_zstd() {
    let plain = tar(&[Raw::dir("d/"), Raw::file("d/f", vec![7u8; 100_000])]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::stream::encode_all(&plain[..], 3).unwrap();
    for bytes in [plain.clone(), gz, zst] {
        let a = Arena::new();
        let stats = apply(&a.root, &bytes).unwrap();
        assert_eq!(
            stats,
            ApplyStats {
                bytes: 100_000,
                entries: 2
            }
        );
        assert_eq!(fs::read(a.root.join("d/f")).unwrap(), vec![7u8; 100_000]);
    }
}

#[test]
fn sparse_and_large_files() {
    let a = Arena::new();
    let mut data = vec![0u8; 8 << 20];
    data[0] = 1;
    data[5 << 20] = 2;
    let len = data.len();
    let mut tail_zero = vec![1u8; 10];
    tail_zero.extend_from_slice(&[0u8; 3 << 20]);
    apply(
        &a.root,
        &tar(&[Raw::file("sparse", &data), Raw::file("tail", &tail_zero)]),
    )
    .unwrap();
    let got = fs::read(a.root.join("sparse")).unwrap();
    assert!(got == data);
    let md = fs::metadata(a.root.join("sparse")).unwrap();
    assert_eq!(md.len() as usize, len);
    assert!(
        md.blocks() * 512 < (1 << 20),
        "holes kept: {} blocks",
        md.blocks()
    );
    assert!(fs::read(a.root.join("tail")).unwrap() == tail_zero);
}

#[test]
fn long_names_gnu_and_pax() {
    let a = Arena::new();
    let long = format!("{}/{}", "d".repeat(150), "f".repeat(200));
    // PAX path
    let bytes = tar(&[Raw::file(&long[..100], b"pax").pax("path", &long)]);
    apply(&a.root, &bytes).unwrap();
    assert_eq!(fs::read(a.root.join(&long)).unwrap(), b"pax");
    // GNU long name, through the tar crate's own builder
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    let gnu = format!("{}/{}", "g".repeat(120), "h".repeat(120));
    b.append_data(&mut h, &gnu, &b"gnu"[..]).unwrap();
    let bytes = b.into_inner().unwrap();
    apply(&a.root, &bytes).unwrap();
    assert_eq!(fs::read(a.root.join(&gnu)).unwrap(), b"gnu");
}

/// Overlay upper dir: whiteout devices, opaque xattr, implied parents from the lower,
/// hardlink to a lower file copied up.
#[test]
fn overlay_format() {
    let a = Arena::new();
    let lower = a.base.path().join("lower");
    fs::create_dir_all(lower.join("dir")).unwrap();
    fs::create_dir_all(lower.join("opq/sub")).unwrap();
    fs::write(lower.join("dir/file"), b"lower file").unwrap();
    fs::write(lower.join("gone"), b"g").unwrap();
    rustix::fs::chown(
        lower.join("dir").as_path(),
        Some(rustix::fs::Uid::from_raw(5)),
        Some(rustix::fs::Gid::from_raw(6)),
    )
    .unwrap();
    fs::set_permissions(
        lower.join("dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o710),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        lower.join("dir").as_path(),
        "user.x",
        b"lx",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        lower.join("dir").as_path(),
        "trusted.overlay.origin",
        b"o",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::chmod(
        lower.join("dir/file").as_path(),
        rustix::fs::Mode::from_raw_mode(0o640),
    )
    .unwrap();
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1000,
            tv_nsec: 5,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 1000,
            tv_nsec: 5,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        lower.join("dir").as_path(),
        &times,
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();

    let bytes = tar(&[
        Raw::file(".wh.gone", b""),
        Raw::file("dir/new", b"n"),
        Raw::file("opq/.wh..wh..opq", b""),
        Raw::hardlink("hl", "dir/file"),
        Raw::file(".wh.nowhere/.wh.x", b"").mode(0), // whiteout as dir: error? no: see below
    ]);
    // the last entry uses a whiteout name as a directory: an error naming it
    let scratch = tempfile::tempdir().unwrap();
    let err = apply_with(scratch.path(), &bytes, WhiteoutFormat::Overlay, &[&lower]).unwrap_err();
    assert!(err.to_string().contains(".wh.nowhere"), "{err}");
    let bytes = tar(&[
        Raw::file(".wh.gone", b""),
        Raw::file("dir/new", b"n"),
        Raw::file("opq/.wh..wh..opq", b""),
        Raw::hardlink("hl", "dir/file"),
        Raw::file("nowhere/.wh.x", b""), // parent exists nowhere: nothing to hide
        Raw::dir("re/"),
        Raw::file(".wh.re", b""), // written by this tar: stays a directory
        Raw::file(".wh.recreated", b""),
        Raw::file("recreated/new", b"only this"), // implied dir over the whiteout: opaque
        Raw::file(".wh.redir", b""),
        Raw::dir("redir/").mode(0o701), // dir entry over the whiteout: opaque
    ]);
    for d in ["recreated", "redir"] {
        fs::create_dir(lower.join(d)).unwrap();
        fs::write(lower.join(d).join("old"), b"hidden").unwrap();
    }
    let upper = a.root.clone();
    apply_with(&upper, &bytes, WhiteoutFormat::Overlay, &[&lower]).unwrap();
    let md = fs::symlink_metadata(upper.join("gone")).unwrap();
    assert!(md.file_type().is_char_device() && md.rdev() == 0);
    let md = fs::symlink_metadata(upper.join("dir")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o710, 5, 6));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1000, 5));
    assert_eq!(xattr(&upper.join("dir"), "user.x").unwrap(), b"lx");
    assert_eq!(xattr(&upper.join("dir"), "trusted.overlay.origin"), None);
    assert_eq!(
        xattr(&upper.join("opq"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    let hl = fs::symlink_metadata(upper.join("hl")).unwrap();
    let up = fs::symlink_metadata(upper.join("dir/file")).unwrap();
    assert_eq!(hl.ino(), up.ino());
    assert_eq!(up.mode() & 0o7777, 0o640);
    assert_eq!(fs::read(upper.join("hl")).unwrap(), b"lower file");
    assert!(!upper.join("nowhere").exists());
    assert!(upper.join("re").is_dir());
    for d in ["recreated", "redir"] {
        assert_eq!(
            xattr(&upper.join(d), "trusted.overlay.opaque").unwrap(),
            b"y",
            "{d}"
        );
    }

    // The real test: mount it and compare with the same tar applied to a flat copy.
    let work = a.base.path().join("work");
    let merged = a.base.path().join("merged");
    fs::create_dir(&work).unwrap();
    fs::create_dir(&merged).unwrap();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    if let Err(e) = rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        rustix::mount::MountFlags::empty(),
        std::ffi::CString::new(data).unwrap().as_c_str(),
    ) {
        eprintln!("SKIPPED: overlay mount of the applied upper dir failed: {e}");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }
    let _guard = Unmount(&merged);
    let flat = a.base.path().join("flat");
    std::process::Command::new("cp")
        .arg("-a")
        .arg(&lower)
        .arg(&flat)
        .status()
        .unwrap();
    apply_with(&flat, &bytes, WhiteoutFormat::Remove, &[]).unwrap();
    let strip = |m: String| -> String {
        m.lines()
            .map(|l| {
                l.split(' ')
                    .filter(|f| {
                        !f.starts_with("x:trusted.overlay") && !f.starts_with("x:security.selinux")
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // An implied directory that exists nowhere below is created "now": its time is not
    // comparable between two applications.
    let no_time = |m: String| -> String {
        m.lines()
            .map(|l| {
                if l.starts_with("recreated ") {
                    l.split(' ')
                        .filter(|f| !f.starts_with("mtime="))
                        .collect::<Vec<_>>()
                        .join(" ")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let m = no_time(strip(apply_util::manifest(&merged, &[])));
    let f = no_time(strip(apply_util::manifest(&flat, &[])));
    assert!(
        m.contains("recreated/new") && !m.contains("recreated/old") && !m.contains("redir/old"),
        "{m}"
    );
    assert_eq!(
        m, f,
        "merged overlay view differs from the flat application"
    );
}

#[test]
fn aufs_format() {
    let a = Arena::new();
    let lower = a.base.path().join("lower");
    fs::create_dir_all(lower.join("dir")).unwrap();
    fs::write(lower.join("dir/file"), b"lower").unwrap();
    fs::create_dir(lower.join("d2")).unwrap();
    let bytes = tar(&[
        Raw::file("dir/.wh.file", b""),
        Raw::file("d2/.wh..wh..opq", b""),
        Raw::file("d2/new", b"n"),
        Raw::hardlink("hl", "dir/file"),
    ]);
    apply_with(&a.root, &bytes, WhiteoutFormat::Aufs, &[&lower]).unwrap_err();
    // dir/file is whited out by this very tar, so the hardlink target is gone: error above.
    let a = Arena::new();
    let bytes = tar(&[
        Raw::file("dir/.wh.other", b""),
        Raw::file("d2/.wh..wh..opq", b""),
        Raw::file("d2/new", b"n"),
        Raw::hardlink("hl", "dir/file"),
        Raw::file(".wh.d3", b""),
        Raw::file("d3/again", b"a"),
        Raw::file(".wh.d4", b""),
        Raw::dir("d4/").mode(0o700),
    ]);
    fs::create_dir(lower.join("d3")).unwrap();
    fs::create_dir(lower.join("d4")).unwrap();
    apply_with(&a.root, &bytes, WhiteoutFormat::Aufs, &[&lower]).unwrap();
    // d3 and d4 were whited out then re-created: opaque, whiteouts gone
    assert!(!a.root.join(".wh.d3").exists() && !a.root.join(".wh.d4").exists());
    assert_eq!(names(&a.root.join("d3")), [".wh..wh..opq", "again"]);
    assert_eq!(names(&a.root.join("d4")), [".wh..wh..opq"]);
    let wh = fs::symlink_metadata(a.root.join("dir/.wh.other")).unwrap();
    assert!(wh.is_file());
    assert_eq!((wh.mode() & 0o7777, wh.len(), wh.uid()), (0o444, 0, 0));
    assert!(fs::symlink_metadata(a.root.join("d2/.wh..wh..opq"))
        .unwrap()
        .is_file());
    assert_eq!(names(&a.root.join("d2")), [".wh..wh..opq", "new"]);
    assert_eq!(fs::read(a.root.join("hl")).unwrap(), b"lower");
}

#[test]
fn aufs_entry_over_a_whiteout_left_by_an_earlier_apply() {
    // The branch is not new: a whiteout from before this apply must still go when the tar
    // brings its name back (the applier looks for whiteouts only where one can exist).
    let a = Arena::new();
    let lower = a.base.path().join("lower");
    fs::create_dir_all(&lower).unwrap();
    fs::write(lower.join("x"), b"lower").unwrap();
    fs::create_dir_all(lower.join("d")).unwrap();
    fs::write(lower.join("d/old"), b"old").unwrap();
    apply_with(
        &a.root,
        &tar(&[Raw::file(".wh.x", b""), Raw::file(".wh.d", b"")]),
        WhiteoutFormat::Aufs,
        &[&lower],
    )
    .unwrap();
    assert_eq!(names(&a.root), [".wh.d", ".wh.x"]);
    apply_with(
        &a.root,
        &tar(&[Raw::file("x", b"again"), Raw::file("d/new", b"n")]),
        WhiteoutFormat::Aufs,
        &[&lower],
    )
    .unwrap();
    assert_eq!(names(&a.root), ["d", "x"]);
    assert_eq!(fs::read(a.root.join("x")).unwrap(), b"again");
    // d was deleted below and made again: opaque, so the lower d/old stays hidden.
    assert_eq!(names(&a.root.join("d")), [".wh..wh..opq", "new"]);
}
