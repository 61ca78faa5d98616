//! The canonical changeset on real trees (docs/changeset.md §2, §3). Runs as root.

mod changeset_common;

use std::fs;
use std::path::Path;

use changeset_common::*;
use driver_api::ArchiveError;
use tempfile::tempdir;

/// A ustar block built by hand from the rules of §3, independent of the writer.
fn golden_block(
    name: &[u8],
    mode: u32,
    size: u64,
    mtime: u64,
    typeflag: u8,
    linkname: &[u8],
) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[..name.len()].copy_from_slice(name);
    b[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    b[108..116].copy_from_slice(b"0000000\0");
    b[116..124].copy_from_slice(b"0000000\0");
    b[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    b[136..148].copy_from_slice(format!("{mtime:011o}\0").as_bytes());
    b[156] = typeflag;
    b[157..157 + linkname.len()].copy_from_slice(linkname);
    b[257..265].copy_from_slice(b"ustar\x0000");
    b[329..337].copy_from_slice(b"0000000\0");
    b[337..345].copy_from_slice(b"0000000\0");
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| x as u32).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    b
}

#[test]
fn exact_bytes_of_a_small_tree() {
    let child = tempdir().unwrap();
    let c = child.path();
    dir(c, "d", 0o755, 1000);
    file(c, "d/f", b"hello\n", 0o644, 2000);
    link(c, "l", "d/f", 3000);
    set_mtime(&c.join("d"), 1000, 0);

    let got = diff(None, c);
    let mut want = Vec::new();
    want.extend(golden_block(b"d/", 0o755, 0, 1000, b'5', b""));
    want.extend(golden_block(b"d/f", 0o644, 6, 2000, b'0', b""));
    let mut content = b"hello\n".to_vec();
    content.resize(512, 0);
    want.extend(content);
    want.extend(golden_block(b"l", 0o777, 0, 3000, b'2', b"d/f"));
    want.extend(vec![0u8; 1024]);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.chunks(512).zip(want.chunks(512)).enumerate() {
        assert_eq!(g, w, "block {i} differs");
    }
}

#[test]
fn exact_bytes_of_a_pax_mtime_header() {
    let child = tempdir().unwrap();
    let c = child.path();
    let f = file(c, "f", b"", 0o600, 0);
    set_mtime(&f, 1234, 5);
    let got = diff(None, c);
    // The record length counts itself: " mtime=1234.000000005\n" is 22 bytes, plus "24".
    let rec = b"24 mtime=1234.000000005\n";
    assert_eq!(rec.len(), 24);
    let mut want = golden_block(b"PaxHeader/f", 0o644, rec.len() as u64, 0, b'x', b"");
    let mut data = rec.to_vec();
    data.resize(512, 0);
    want.extend(data);
    want.extend(golden_block(b"f", 0o600, 0, 1234, b'0', b""));
    want.extend(vec![0u8; 1024]);
    assert_eq!(got, want);
}

#[test]
fn order_whiteouts_first_then_names_by_bytes() {
    let parent = tempdir().unwrap();
    let child = tempdir().unwrap();
    let (pp, c) = (parent.path(), child.path());
    for root in [pp, c] {
        dir(root, "a", 0o755, 10);
        file(root, "a/z", b"z", 0o644, 10);
        set_mtime(&root.join("a"), 10, 0);
    }
    file(pp, "a/c", b"c", 0o644, 10);
    file(pp, "gone", b"g", 0o644, 10);
    file(c, "a/b", b"b", 0o644, 10);
    file(c, "a.txt", b"t", 0o644, 10);
    set_mtime(&pp.join("a"), 10, 0);
    set_mtime(&c.join("a"), 11, 0);

    assert_eq!(
        changes(Some(pp), c),
        vec!["C /a", "A /a/b", "D /a/c", "A /a.txt", "D /gone"]
    );
    let tar = read_tar(&diff(Some(pp), c));
    assert_eq!(
        paths(&tar),
        vec![".wh.gone", "a/", "a/.wh.c", "a/b", "a.txt"]
    );
    let wh = &tar[0];
    assert_eq!(
        (wh.typeflag, wh.mode, wh.uid, wh.gid, wh.size, wh.mtime),
        (b'0', 0, 0, 0, 0, 0)
    );
}

#[test]
fn unchanged_ancestors_are_written() {
    let parent = tempdir().unwrap();
    let (pp, c) = (parent.path().join("p"), parent.path().join("c"));
    fs::create_dir(&pp).unwrap();
    fs::create_dir_all(pp.join("x/y/z")).unwrap();
    file(&pp, "x/y/z/f", b"one", 0o644, 5);
    file(&pp, "x/other", b"o", 0o644, 5);
    for d in ["x/y/z", "x/y", "x"] {
        set_mtime(&pp.join(d), 7, 0);
    }
    cp_a(&pp, &c);
    fs::write(c.join("x/y/z/f"), b"two").unwrap();
    set_mtime(&c.join("x/y/z/f"), 5, 0);
    assert_eq!(changes(Some(&pp), &c), vec!["C /x/y/z/f"]);
    let tar = read_tar(&diff(Some(&pp), &c));
    assert_eq!(paths(&tar), vec!["x/", "x/y/", "x/y/z/", "x/y/z/f"]);
    assert_eq!(tar[0].mtime, 7);
    assert_eq!(tar[3].content, b"two");
}

#[test]
fn rewrite_with_same_size_and_mtime_is_seen_and_a_copy_is_not() {
    let t = tempdir().unwrap();
    let (pp, c) = (t.path().join("p"), t.path().join("c"));
    fs::create_dir(&pp).unwrap();
    file(&pp, "same", b"abc", 0o644, 5);
    file(&pp, "rewritten", b"abc", 0o644, 5);
    cp_a(&pp, &c);
    // A copy (new inode, same bytes) is not a change.
    fs::remove_file(c.join("same")).unwrap();
    file(&c, "same", b"abc", 0o644, 5);
    file(&c, "rewritten", b"xyz", 0o644, 5);
    set_mtime(&c, 0, 0);
    set_mtime(&pp, 0, 0);
    assert_eq!(changes(Some(&pp), &c), vec!["C /rewritten"]);
    assert_eq!(driver_api::tree::diff_size(Some(&pp), &c).unwrap(), 3);
}

#[test]
fn hardlink_added_to_an_existing_group_links_to_the_first_path() {
    let t = tempdir().unwrap();
    let (pp, c) = (t.path().join("p"), t.path().join("c"));
    fs::create_dir(&pp).unwrap();
    file(&pp, "f1", b"data", 0o640, 5);
    fs::hard_link(pp.join("f1"), pp.join("f2")).unwrap();
    set_mtime(&pp, 1, 0);
    cp_a(&pp, &c);
    fs::hard_link(c.join("f1"), c.join("f3")).unwrap();
    set_mtime(&c, 1, 0);
    assert_eq!(changes(Some(&pp), &c), vec!["A /f3"]);
    let tar = read_tar(&diff(Some(&pp), &c));
    assert_eq!(paths(&tar), vec!["f3"]);
    let h = &tar[0];
    assert_eq!(h.typeflag, b'1');
    assert_eq!(h.link.as_deref(), Some(&b"f1"[..]));
    assert_eq!((h.size, h.mtime, h.mode), (0, 0, 0o640));
    assert!(h.pax.is_empty());
    // Content of the group counted once.
    assert_eq!(driver_api::tree::diff_size(Some(&pp), &c).unwrap(), 4);
}

#[test]
fn new_group_first_path_is_a_file_the_rest_links() {
    let child = tempdir().unwrap();
    let c = child.path();
    dir(c, "b", 0o755, 1);
    file(c, "b/x", b"data", 0o644, 5);
    fs::hard_link(c.join("b/x"), c.join("a")).unwrap();
    fs::hard_link(c.join("b/x"), c.join("c")).unwrap();
    set_mtime(&c.join("b"), 1, 0);
    let tar = read_tar(&diff(None, c));
    assert_eq!(paths(&tar), vec!["a", "b/", "b/x", "c"]);
    assert_eq!(
        (tar[0].typeflag, tar[0].content.as_slice()),
        (b'0', &b"data"[..])
    );
    assert_eq!(
        (tar[2].typeflag, tar[2].link.as_deref()),
        (b'1', Some(&b"a"[..]))
    );
    assert_eq!(
        (tar[3].typeflag, tar[3].link.as_deref()),
        (b'1', Some(&b"a"[..]))
    );
    assert_eq!(driver_api::tree::diff_size(None, c).unwrap(), 4);
}

#[test]
fn link_removed_from_group_becomes_a_regular_file() {
    let t = tempdir().unwrap();
    let (pp, c) = (t.path().join("p"), t.path().join("c"));
    fs::create_dir(&pp).unwrap();
    file(&pp, "f1", b"data", 0o644, 5);
    fs::hard_link(pp.join("f1"), pp.join("f2")).unwrap();
    fs::hard_link(pp.join("f1"), pp.join("f3")).unwrap();
    set_mtime(&pp, 1, 0);
    cp_a(&pp, &c);
    fs::remove_file(c.join("f1")).unwrap();
    set_mtime(&c, 1, 0);
    // f2 becomes the first path of the group: it changed, and f3's label changed with it.
    assert_eq!(changes(Some(&pp), &c), vec!["D /f1", "C /f2", "C /f3"]);
    let tar = read_tar(&diff(Some(&pp), &c));
    assert_eq!(paths(&tar), vec![".wh.f1", "f2", "f3"]);
    assert_eq!(
        (tar[1].typeflag, tar[1].content.as_slice()),
        (b'0', &b"data"[..])
    );
    assert_eq!(
        (tar[2].typeflag, tar[2].link.as_deref()),
        (b'1', Some(&b"f2"[..]))
    );

    // Down to a single path: no group at all, a plain file.
    let c2 = t.path().join("c2");
    cp_a(&pp, &c2);
    fs::remove_file(c2.join("f1")).unwrap();
    fs::remove_file(c2.join("f3")).unwrap();
    set_mtime(&c2, 1, 0);
    let tar = read_tar(&diff(Some(&pp), &c2));
    assert_eq!(paths(&tar), vec![".wh.f1", ".wh.f3", "f2"]);
    assert_eq!(tar[2].typeflag, b'0');
    assert!(manifest(&c2)
        .lines()
        .all(|l| l.split('\t').nth(10) == Some("-")));
}

#[test]
fn type_changes_are_the_new_entry_only() {
    let t = tempdir().unwrap();
    let (pp, c) = (t.path().join("p"), t.path().join("c"));
    fs::create_dir(&pp).unwrap();
    dir(&pp, "d", 0o755, 1);
    file(&pp, "d/inner", b"i", 0o644, 1);
    file(&pp, "f", b"f", 0o644, 1);
    link(&pp, "l", "f", 1);
    set_mtime(&pp.join("d"), 1, 0);
    fs::create_dir(&c).unwrap();
    file(&c, "d", b"now a file", 0o644, 1);
    dir(&c, "f", 0o700, 1);
    file(&c, "f/x", b"x", 0o644, 1);
    set_mtime(&c.join("f"), 1, 0);
    file(&c, "l", b"f", 0o644, 1);
    set_mtime(&c, 1, 0);
    set_mtime(&pp, 1, 0);
    assert_eq!(
        changes(Some(&pp), &c),
        vec!["C /d", "C /f", "A /f/x", "C /l"]
    );
    let tar = read_tar(&diff(Some(&pp), &c));
    assert_eq!(paths(&tar), vec!["d", "f/", "f/x", "l"]);
    assert_eq!(
        tar.iter().map(|e| e.typeflag).collect::<Vec<_>>(),
        vec![b'0', b'5', b'0', b'0']
    );
}

#[test]
fn nanosecond_and_old_mtimes_go_to_pax() {
    let child = tempdir().unwrap();
    let c = child.path();
    let f = file(c, "f", b"x", 0o644, 0);
    set_mtime(&f, 1_700_000_000, 123_456_789);
    let l = link(c, "l", "f", 0);
    set_mtime(&l, 5, 1);
    let g = file(c, "neg", b"", 0o644, 0);
    set_mtime(&g, -2, 500_000_000);
    let tar = read_tar(&diff(None, c));
    assert_eq!(paths(&tar), vec!["f", "l", "neg"]);
    assert_eq!(tar[0].pax_get("mtime"), Some(&b"1700000000.123456789"[..]));
    assert_eq!(tar[0].mtime, 1_700_000_000);
    assert_eq!(tar[1].pax_get("mtime"), Some(&b"5.000000001"[..]));
    // 1.5 s before the epoch, written as the exact decimal value.
    assert_eq!(tar[2].pax_get("mtime"), Some(&b"-1.500000000"[..]));
    assert_eq!(tar[2].mtime, 0);
    let m = manifest(c);
    assert!(m.contains("\t1700000000.123456789\t"), "{m}");
    assert!(m.contains("\t-1.500000000\t"), "{m}");
}

#[test]
fn xattrs_sorted_internal_dropped() {
    let child = tempdir().unwrap();
    let c = child.path();
    let f = file(c, "f", b"x", 0o644, 1);
    setxattr(&f, "user.b", b"2");
    setxattr(&f, "user.a", b"1\0bin=");
    setxattr(&f, "trusted.x", b"t");
    setxattr(&f, "trusted.overlay.opaque", b"y");
    setxattr(&f, "user.overlay.origin", b"o");
    let tar = read_tar(&diff(None, c));
    assert_eq!(
        tar[0].pax_keys(),
        vec![
            "SCHILY.xattr.trusted.x",
            "SCHILY.xattr.user.a",
            "SCHILY.xattr.user.b"
        ]
    );
    assert_eq!(tar[0].pax_get("SCHILY.xattr.user.a"), Some(&b"1\0bin="[..]));
    let m = manifest(c);
    assert!(
        m.ends_with("\ttrusted.x=74,user.a=310062696e3d,user.b=32\n"),
        "{m}"
    );
}

#[test]
fn long_paths_and_long_link_targets() {
    let child = tempdir().unwrap();
    let c = child.path();
    let d1 = "d".repeat(60);
    let d2 = "e".repeat(60);
    let long_dir = format!("{d1}/{d2}");
    fs::create_dir_all(c.join(&long_dir)).unwrap();
    let long_file = format!("{long_dir}/{}", "f".repeat(30));
    file(c, &long_file, b"x", 0o644, 1);
    let target = "t".repeat(150);
    link(c, "sl", &target, 1);
    // Exactly 100 bytes fits the ustar field without a record.
    let hundred = "h".repeat(100);
    file(c, &hundred, b"", 0o644, 1);
    set_mtime(&c.join(&long_dir), 1, 0);
    set_mtime(&c.join(&d1), 1, 0);

    let bytes = diff(None, c);
    let tar = read_tar(&bytes);
    assert_eq!(
        paths(&tar),
        vec![
            format!("{d1}/"),
            format!("{long_dir}/"),
            long_file.clone(),
            hundred.clone(),
            "sl".to_string()
        ]
    );
    // The directory's name with its '/' is 122 bytes: in a record, first 100 bytes in ustar.
    let dir_entry = &tar[1];
    assert_eq!(dir_entry.pax_keys(), vec!["path"]);
    assert_eq!(
        dir_entry.block[..100],
        format!("{long_dir}/").as_bytes()[..100]
    );
    assert_eq!(tar[2].pax_get("path"), Some(long_file.as_bytes()));
    assert!(tar[3].pax.is_empty());
    assert_eq!(tar[4].pax_get("linkpath"), Some(target.as_bytes()));
    assert_eq!(tar[4].block[157..257], target.as_bytes()[..100]);
    // The x header's name: PaxHeader/ + the first 89 bytes of the name without its '/'.
    let x_header = &bytes[512..1024];
    let xname = format!("PaxHeader/{}", &long_dir[..89]);
    assert_eq!(&x_header[..xname.len()], xname.as_bytes());
    assert_eq!(x_header[xname.len()], 0);
}

#[test]
fn big_ids_go_to_pax() {
    let child = tempdir().unwrap();
    let c = child.path();
    let f = file(c, "f", b"x", 0o4755, 1);
    lchown(&f, 3_000_000, 2_097_151);
    chmod(&f, 0o4755);
    let tar = read_tar(&diff(None, c));
    assert_eq!(tar[0].pax_keys(), vec!["uid"]);
    assert_eq!(tar[0].pax_get("uid"), Some(&b"3000000"[..]));
    assert_eq!(&tar[0].block[108..116], b"0000000\0");
    assert_eq!(&tar[0].block[116..124], b"7777777\0");
    assert_eq!(tar[0].mode, 0o4755);
}

#[test]
fn whiteout_named_file_in_the_view_is_an_error() {
    let child = tempdir().unwrap();
    let c = child.path();
    dir(c, "d", 0o755, 1);
    file(c, "d/.wh.x", b"", 0o644, 1);
    let err = driver_api::archive::write_changeset(None, c, &mut Vec::new()).unwrap_err();
    match err {
        ArchiveError::Unrepresentable { path, .. } => assert!(path.ends_with("d/.wh.x")),
        other => panic!("expected Unrepresentable, got {other}"),
    }
}

#[test]
fn devices_fifos_and_dir_modes() {
    let child = tempdir().unwrap();
    let c = child.path();
    sh(&format!(
        "mknod {0}/null c 1 3 && mknod {0}/blk b 7 200 && mkfifo {0}/fifo",
        c.display()
    ));
    for n in ["null", "blk", "fifo"] {
        set_mtime(&c.join(n), 9, 0);
    }
    dir(c, "sticky", 0o1777, 9);
    let tar = read_tar(&diff(None, c));
    assert_eq!(paths(&tar), vec!["blk", "fifo", "null", "sticky/"]);
    assert_eq!(tar[0].typeflag, b'4');
    assert_eq!(&tar[0].block[329..345], b"0000007\x000000310\0");
    assert_eq!(tar[1].typeflag, b'6');
    assert_eq!(tar[2].typeflag, b'3');
    assert_eq!(tar[3].mode, 0o1777);
    let m = manifest(c);
    assert!(m.starts_with("blk\tb\t"), "{m}");
    assert!(m.contains("\t7,200\t"), "{m}");
}

/// Build the same final tree along two different histories: the diffs must be identical.
#[test]
fn same_views_from_different_histories_give_identical_bytes() {
    let t = tempdir().unwrap();
    let pp = t.path().join("p");
    fs::create_dir(&pp).unwrap();
    dir(&pp, "etc", 0o755, 1);
    file(&pp, "etc/passwd", b"root:x:0:0\n", 0o644, 1);
    file(&pp, "etc/old", b"old", 0o644, 1);
    dir(&pp, "usr", 0o755, 1);
    file(&pp, "usr/bin", b"binary", 0o755, 1);
    set_mtime(&pp.join("usr"), 1, 0);
    set_mtime(&pp.join("etc"), 1, 0);

    // History 1: copy the parent, then edit.
    let c1 = t.path().join("c1");
    cp_a(&pp, &c1);
    fs::remove_file(c1.join("etc/old")).unwrap();
    fs::write(c1.join("etc/passwd"), b"root:x:0:0\nme:x:1000:1000\n").unwrap();
    fs::create_dir(c1.join("home")).unwrap();
    fs::write(c1.join("home/notes"), b"n").unwrap();

    // History 2: built from scratch, in another order.
    let c2 = t.path().join("c2");
    fs::create_dir(&c2).unwrap();
    fs::create_dir(c2.join("home")).unwrap();
    fs::write(c2.join("home/notes"), b"n").unwrap();
    fs::create_dir(c2.join("usr")).unwrap();
    fs::write(c2.join("usr/bin"), b"binary").unwrap();
    fs::create_dir(c2.join("etc")).unwrap();
    fs::write(c2.join("etc/passwd"), b"root:x:0:0\nme:x:1000:1000\n").unwrap();

    for c in [&c1, &c2] {
        chmod(&c.join("usr/bin"), 0o755);
        chmod(&c.join("home/notes"), 0o644);
        chmod(&c.join("etc/passwd"), 0o644);
        for (rel, s) in [
            ("home/notes", 3),
            ("usr/bin", 1),
            ("etc/passwd", 4),
            ("home", 5),
            ("usr", 1),
            ("etc", 6),
        ] {
            set_mtime(&c.join(rel), s, 0);
        }
        chmod(c, 0o755);
        set_mtime(c, 0, 0);
    }
    assert_eq!(manifest(&c1), manifest(&c2));
    assert_eq!(diff(Some(&pp), &c1), diff(Some(&pp), &c2));
    assert_eq!(
        changes(Some(&pp), &c1),
        vec![
            "C /etc",
            "D /etc/old",
            "C /etc/passwd",
            "A /home",
            "A /home/notes"
        ]
    );
}

/// GNU tar reads the canonical output back to the same view.
#[test]
fn gnu_tar_extracts_the_same_view() {
    let t = tempdir().unwrap();
    let c = t.path().join("c");
    fs::create_dir(&c).unwrap();
    dir(&c, "d", 0o750, 1);
    let f = file(&c, "d/f", &vec![7u8; 70_000], 0o4711, 0);
    set_mtime(&f, 1_600_000_000, 999_999_999);
    setxattr(&f, "user.k", b"v\0v\n=");
    setxattr(&f, "trusted.t", b"x");
    lchown(&f, 3_000_000, 42);
    chmod(&f, 0o4711);
    fs::hard_link(&f, c.join("d/g")).unwrap();
    link(&c, "sl", &"t".repeat(120), 77);
    let long = format!("{}/{}", "a".repeat(80), "b".repeat(80));
    fs::create_dir_all(c.join(&long)).unwrap();
    file(&c, &format!("{long}/leaf"), b"leaf", 0o600, 3);
    set_mtime(&c.join(&long), 4, 5);
    set_mtime(&c.join("a".repeat(80)), 6, 0);
    sh(&format!(
        "mknod {0}/null c 1 3 && mkfifo {0}/fifo",
        c.display()
    ));
    set_mtime(&c.join("fifo"), 8, 0);
    set_mtime(&c.join("d"), 1, 0);

    let bytes = diff(None, &c);
    let tarball = t.path().join("x.tar");
    fs::write(&tarball, &bytes).unwrap();
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    sh(&format!(
        "tar --xattrs --xattrs-include='*' --numeric-owner -xpf {} -C {}",
        tarball.display(),
        out.display()
    ));
    let (want, got) = (manifest(&c), manifest(&out));
    assert_eq!(got, want, "manifest after GNU tar extraction");
    assert!(
        want.contains("\td/f\t"),
        "hardlink group in manifest: {want}"
    );
}

fn apply_roundtrip(parent: &Path, child: &Path, work: &Path) {
    let bytes = diff(Some(parent), child);
    cp_a(parent, work);
    driver_api::archive::apply_tar(
        work,
        &mut &bytes[..],
        &driver_api::archive::ApplyOptions::default(),
    )
    .unwrap();
    set_mtime(work, 0, 0);
    assert_eq!(manifest(work), manifest(child));
}

#[test]
fn applying_the_changeset_onto_the_parent_gives_the_child() {
    if !applier_available() {
        eprintln!("SKIPPED: archive::apply_tar is not implemented yet");
        return;
    }
    let t = tempdir().unwrap();
    let (pp, c) = (t.path().join("p"), t.path().join("c"));
    fs::create_dir(&pp).unwrap();
    dir(&pp, "d", 0o755, 1);
    file(&pp, "d/a", b"a", 0o644, 1);
    file(&pp, "d/b", b"b", 0o644, 1);
    fs::hard_link(pp.join("d/a"), pp.join("d/a2")).unwrap();
    cp_a(&pp, &c);
    fs::remove_file(c.join("d/b")).unwrap();
    fs::hard_link(c.join("d/a"), c.join("new")).unwrap();
    fs::write(c.join("d/c"), b"c").unwrap();
    set_mtime(&c.join("d"), 2, 0);
    set_mtime(&c, 0, 0);
    apply_roundtrip(&pp, &c, &t.path().join("w"));
}

/// A backend's native diff reuses the emission: given the comparer's list it writes the same bytes.
#[test]
fn write_changeset_from_a_change_list_matches_the_generic_diff() {
    let t = tempdir().unwrap();
    let (pp, c) = (t.path().join("p"), t.path().join("c"));
    fs::create_dir(&pp).unwrap();
    dir(&pp, "d", 0o755, 1);
    file(&pp, "d/a", b"a", 0o644, 1);
    file(&pp, "d/b", b"b", 0o644, 1);
    cp_a(&pp, &c);
    fs::remove_file(c.join("d/b")).unwrap();
    file(&c, "d/c", b"c", 0o644, 1);
    let list = driver_api::tree::changes(Some(&pp), &c).unwrap();
    let mut from_list = Vec::new();
    driver_api::archive::changeset::write_changeset_from(&c, &list, &mut from_list).unwrap();
    assert_eq!(from_list, diff(Some(&pp), &c));

    // A list naming a path outside the view is refused.
    let escape = vec![driver_api::Change {
        path: "/d/../../etc".into(),
        kind: driver_api::ChangeKind::Add,
    }];
    let err = driver_api::archive::changeset::write_changeset_from(&c, &escape, &mut Vec::new());
    assert!(matches!(err, Err(ArchiveError::BadEntry { .. })), "{err:?}");
}

#[test]
fn deleting_a_whiteout_named_file_is_an_error() {
    let t = tempdir().unwrap();
    let (pp, c) = (t.path().join("p"), t.path().join("c"));
    fs::create_dir(&pp).unwrap();
    fs::create_dir(&c).unwrap();
    file(&pp, ".wh.old", b"", 0o644, 1);
    let err = driver_api::archive::write_changeset(Some(&pp), &c, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, ArchiveError::Unrepresentable { .. }), "{err}");
}
