//! The `apply` fuzz target: the first byte picks the whiteout format, the rest is the layer
//! tar. The root is pre-populated with links pointing at a sentinel tree (absolute and
//! relative) and a lower layer; after every input the sentinel, the lower and /etc/passwd
//! must be unchanged, and the applier must have returned (no panic).

use std::fs;
use std::path::Path;

use driver_api::archive::{apply_tar, ApplyOptions, WhiteoutFormat};

#[path = "../../driver-api/tests/apply_util/mod.rs"]
pub mod apply_util;

use apply_util::{tar, tar_no_end, Raw};

/// The `reader` target: gd's tar reader over arbitrary bytes (the first byte unused, so the
/// `apply` corpus serves as seeds). It must return an error or entries, never panic, and each
/// entry's content must read exactly its size (checked up to 1 MiB) or fail.
pub fn read_one(data: &[u8]) {
    use std::io::Read;
    let Some((_, tar)) = data.split_first() else {
        return;
    };
    let mut reader = driver_api::archive::reader::TarReader::new(tar);
    while let Ok(Some(mut entry)) = reader.next_entry() {
        let size = entry.header.size;
        let mut content = Vec::new();
        match (&mut entry).take(1 << 20).read_to_end(&mut content) {
            Ok(n) => assert_eq!(n as u64, size.min(1 << 20), "content length of an entry"),
            Err(_) => break,
        }
    }
}

/// The `changeset` target (manifest and changeset writer, round trip through the applier).
pub mod changeset;

fn populate(base: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let root = base.join("root");
    let outside = base.join("outside");
    let lower = base.join("lower");
    for d in [&root, &outside, &lower] {
        fs::create_dir(d).unwrap();
    }
    fs::create_dir_all(outside.join("dir/sub")).unwrap();
    fs::write(outside.join("victim"), b"victim").unwrap();
    fs::write(outside.join("dir/sub/f"), b"f").unwrap();
    fs::create_dir_all(lower.join("d/e")).unwrap();
    fs::write(lower.join("d/file"), b"lower").unwrap();
    fs::write(lower.join("x"), b"x").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside", root.join("rel")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), root.join("v")).unwrap();
    fs::create_dir(root.join("d")).unwrap();
    fs::write(root.join("d/f"), b"f").unwrap();
    std::os::unix::fs::symlink("/", root.join("d/up")).unwrap();
    (root, outside, lower)
}

pub fn apply_one(data: &[u8]) {
    let Some((&sel, tar)) = data.split_first() else {
        return;
    };
    let format = match sel % 3 {
        0 => WhiteoutFormat::Remove,
        1 => WhiteoutFormat::Overlay,
        _ => WhiteoutFormat::Aufs,
    };
    let base = tempfile::tempdir().unwrap();
    let (root, _outside, lower) = populate(base.path());
    let before = apply_util::manifest(base.path(), &["root"]);
    let passwd = fs::read("/etc/passwd").unwrap();
    let opts = ApplyOptions {
        whiteouts: format,
        lowers: vec![lower],
    };
    let _ = apply_tar(&root, &mut &tar[..], &opts);
    let after = apply_util::manifest(base.path(), &["root"]);
    assert_eq!(
        before, after,
        "the applier changed something outside its root"
    );
    assert_eq!(passwd, fs::read("/etc/passwd").unwrap());
    assert!(fs::symlink_metadata(&root).unwrap().is_dir());
}

/// Seeds: valid tars of every kind and the hostile shapes of driver-api/tests/hostile.rs.
pub fn seeds() -> Vec<Vec<u8>> {
    let tars: Vec<Vec<u8>> = vec![
        tar(&[
            Raw::dir("a/").mode(0o1777).pax("mtime", "1.5"),
            Raw::file("a/f", b"hello").mode(0o4755).owner(1, 2),
            Raw::symlink("a/l", "f"),
            Raw::hardlink("a/h", "a/f"),
            Raw::new("a/c", b'3').dev(1, 3),
            Raw::new("a/p", b'6'),
            Raw::file("a/x", b"").pax("SCHILY.xattr.user.k", "v"),
        ]),
        tar(&[
            Raw::file("d/.wh.f", b""),
            Raw::file("d/.wh..wh..opq", b""),
            Raw::file(".wh.x", b""),
            Raw::file("d/e/new", b"n"),
            Raw::hardlink("hl", "d/file"),
        ]),
        tar(&[
            Raw::file(".wh..wh.plnk/1.2", b"p"),
            Raw::hardlink("t", ".wh..wh.plnk/1.2"),
        ]),
        tar(&[Raw::symlink("evil", "/"), Raw::file("evil/etc/x", b"x")]),
        tar(&[Raw::symlink("e2", "../../.."), Raw::file("e2/x", b"x")]),
        tar(&[
            Raw::file("abs/victim", b"x"),
            Raw::file("rel/.wh.victim", b""),
        ]),
        tar(&[Raw::file("v", b"replace"), Raw::dir("d/up/")]),
        tar(&[Raw::file("../../etc/x", b"x")]),
        tar(&[Raw::hardlink("h", "/etc/passwd")]),
        tar(&[Raw::hardlink("h", "abs/victim")]),
        tar(&[
            Raw::symlink("a", "b"),
            Raw::symlink("b", "a"),
            Raw::file("a/x", b""),
        ]),
        tar(&[Raw::file("x", b"").pax("path", "d/".repeat(2100))]),
        tar_no_end(&[Raw::file("huge", b"0123456789").claimed_size(8 << 30)]),
        tar(&[Raw::file("d", b"over a dir")]),
        tar(&[Raw::file(".wh...", b""), Raw::file("../.wh.x", b"")]),
        tar(&[Raw::file("long", b"").pax("path", "p".repeat(300))]),
    ];
    let mut out = Vec::new();
    for (i, t) in tars.iter().enumerate() {
        let mut s = vec![(i % 3) as u8];
        s.extend_from_slice(t);
        out.push(s);
    }
    // compressed forms of the first one
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tars[0]).unwrap();
    let mut s = vec![0u8];
    s.extend(gz.finish().unwrap());
    out.push(s);
    let mut s = vec![1u8];
    s.extend(zstd::stream::encode_all(&tars[1][..], 3).unwrap());
    out.push(s);
    out
}
