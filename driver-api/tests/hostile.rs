//! Hostile layer tars: each one either fails with an error naming the entry or has a safe
//! outcome, and the sentinel tree next to the root (and /etc/passwd) never changes.

mod apply_util;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use apply_util::{header, tar, tar_no_end, Arena, Raw};
use driver_api::archive::{apply_tar, ApplyOptions, WhiteoutFormat};
use driver_api::ArchiveError;

const FORMATS: [WhiteoutFormat; 3] = [
    WhiteoutFormat::Remove,
    WhiteoutFormat::Overlay,
    WhiteoutFormat::Aufs,
];

/// Apply in every whiteout format, each on a fresh arena prepared by `setup`; the sentinel is
/// checked every time. Returns the results.
fn attack(
    bytes: &[u8],
    setup: impl Fn(&Arena),
) -> Vec<(Arena, Result<driver_api::archive::ApplyStats, ArchiveError>)> {
    FORMATS
        .iter()
        .map(|&fmt| {
            let a = Arena::new();
            setup(&a);
            let lowers = if fmt == WhiteoutFormat::Remove {
                vec![]
            } else {
                // the sentinel doubles as a lower layer: read-only for the applier
                vec![a.outside.clone()]
            };
            let opts = ApplyOptions {
                whiteouts: fmt,
                lowers,
            };
            let r = apply_tar(&a.root, &mut &bytes[..], &opts);
            a.check_outside();
            (a, r)
        })
        .collect()
}

fn must_fail(bytes: &[u8], setup: impl Fn(&Arena), naming: &str) {
    for (_, r) in attack(bytes, setup) {
        let err = r.expect_err("hostile tar was accepted");
        let msg = err.to_string();
        assert!(
            msg.contains(naming),
            "error {msg:?} does not name {naming:?}"
        );
    }
}

fn no_setup(_: &Arena) {}

#[test]
fn dotdot_escape() {
    must_fail(
        &tar(&[Raw::file("../../etc/x", b"pwned")]),
        no_setup,
        "../../etc/x",
    );
    must_fail(
        &tar(&[Raw::file("a/../../x", b"pwned")]),
        no_setup,
        "a/../../x",
    );
    must_fail(&tar(&[Raw::dir("..")]), no_setup, "..");
}

#[test]
fn absolute_paths_stay_inside() {
    for (a, r) in attack(
        &tar(&[Raw::file("/x", b"abs"), Raw::file("/etc/x", b"abs")]),
        no_setup,
    ) {
        r.unwrap();
        assert_eq!(fs::read(a.root.join("x")).unwrap(), b"abs");
        assert_eq!(fs::read(a.root.join("etc/x")).unwrap(), b"abs");
    }
}

#[test]
fn symlinks_in_the_tar_resolve_in_root() {
    for target in ["/", "../../..", "..", "/etc", "../outside"] {
        let bytes = tar(&[
            Raw::symlink("evil", target),
            Raw::file("evil/x", b"through the link"),
            Raw::dir("evil/dir/"),
            Raw::file("evil/.wh.victim", b""),
            Raw::file("evil/.wh..wh..opq", b""),
            Raw::hardlink("evil/hl", "evil/x"),
        ]);
        for (_, r) in attack(&bytes, no_setup) {
            // Inside the root either way; whether it worked depends on where the link lands.
            let _ = r;
        }
    }
}

#[test]
fn symlink_to_the_absolute_sentinel() {
    // Links straight at the sentinel's real path, from the tar and already on disk.
    let probe = Arena::new();
    let abs = probe.outside.to_str().unwrap().to_string();
    drop(probe);
    let bytes = tar(&[
        Raw::symlink("evil", &abs),
        Raw::file("evil/victim", b"overwritten?"),
        Raw::file("evil/.wh.x", b""),
        Raw::new("evil/link", b'6'),
        Raw::file("evil/dir/sub/.wh..wh..opq", b""),
    ]);
    for (a, r) in attack(&bytes, no_setup) {
        // evil -> abs resolves to root/abs, which does not exist: refused, nothing created
        let err = r.unwrap_err();
        assert!(err.to_string().contains("evil/victim"), "{err}");
        assert!(!a.root.join(abs.trim_start_matches('/')).exists());
    }
    // Once the directory exists inside the root, the same tar lands there.
    let setup = |a: &Arena| fs::create_dir_all(a.root.join(abs.trim_start_matches('/'))).unwrap();
    for (a, r) in attack(&bytes, setup) {
        r.unwrap();
        let inside = a.root.join(abs.trim_start_matches('/'));
        assert_eq!(fs::read(inside.join("victim")).unwrap(), b"overwritten?");
    }
    // Links left on disk beforehand, pointing at each arena's own sentinel.
    let setup = |a: &Arena| {
        std::os::unix::fs::symlink(&a.outside, a.root.join("pre")).unwrap();
        std::os::unix::fs::symlink(a.outside.join("victim"), a.root.join("prefile")).unwrap();
        std::os::unix::fs::symlink(a.outside.join("dir"), a.root.join("predir")).unwrap();
        std::os::unix::fs::symlink(a.outside.join("x"), a.root.join("prelink")).unwrap();
        std::os::unix::fs::symlink(a.outside.join("x"), a.root.join("predev")).unwrap();
    };
    must_fail(
        &tar(&[Raw::file("pre/victim", b"overwritten?")]),
        setup,
        "pre/victim",
    );
    must_fail(&tar(&[Raw::dir("pre/new/")]), setup, "pre/new");
    for (_, r) in attack(
        &tar(&[
            Raw::file("pre/.wh.x", b""),
            Raw::file("pre/dir/sub/.wh..wh..opq", b""),
        ]),
        setup,
    ) {
        r.unwrap(); // the link's target does not exist inside the root: nothing to hide
    }
    let bytes = tar(&[
        Raw::file("prefile", b"replaces the link, not the victim"),
        Raw::dir("predir/").mode(0o777).owner(1, 1),
        Raw::file("x", b"x"),
        Raw::hardlink("prelink", "x"),
        Raw::new("predev", b'3').dev(1, 3),
    ]);
    for (a, r) in attack(&bytes, setup) {
        r.unwrap();
        assert!(fs::symlink_metadata(a.root.join("prefile"))
            .unwrap()
            .is_file());
        assert!(fs::symlink_metadata(a.root.join("predir"))
            .unwrap()
            .is_dir());
        let ino = |p: &str| fs::symlink_metadata(a.root.join(p)).unwrap().ino();
        assert_eq!(ino("prelink"), ino("x"));
    }
}

#[test]
fn metadata_never_goes_through_a_symlink() {
    let probe = Arena::new();
    let abs = probe.outside.to_str().unwrap().to_string();
    drop(probe);
    // A symlink with xattrs, owner and times: all on the link itself.
    let bytes = tar(&[
        Raw::symlink("s", format!("{abs}/victim"))
            .owner(123, 456)
            .pax("SCHILY.xattr.trusted.evil", "1")
            .pax("SCHILY.xattr.user.evil", "1"),
        Raw::symlink("t", "../outside/dir").owner(7, 7),
    ]);
    for (a, r) in attack(&bytes, no_setup) {
        r.unwrap();
        let md = fs::symlink_metadata(a.root.join("s")).unwrap();
        assert_eq!(md.uid(), 123);
    }
}

#[test]
fn hardlinks_cannot_reach_out() {
    must_fail(
        &tar(&[Raw::hardlink("h", "/etc/passwd")]),
        no_setup,
        "\"h\"",
    );
    must_fail(&tar(&[Raw::hardlink("h", "../../x")]), no_setup, "\"h\"");
    must_fail(&tar(&[Raw::hardlink("h", "../x")]), no_setup, "\"h\"");
    must_fail(
        &tar(&[Raw::symlink("s", "/etc"), Raw::hardlink("h", "s/passwd")]),
        no_setup,
        "\"h\"",
    );
    // through a link left on disk
    let setup = |a: &Arena| std::os::unix::fs::symlink(&a.outside, a.root.join("o")).unwrap();
    must_fail(&tar(&[Raw::hardlink("h", "o/victim")]), setup, "\"h\"");
    // a hardlink to a symlink links the symlink itself
    for (a, r) in attack(
        &tar(&[Raw::symlink("s", "/etc/passwd"), Raw::hardlink("h", "s")]),
        no_setup,
    ) {
        r.unwrap();
        assert!(fs::symlink_metadata(a.root.join("h"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}

#[test]
fn whiteouts_cannot_delete_outside() {
    must_fail(&tar(&[Raw::file(".wh...", b"")]), no_setup, ".wh...");
    must_fail(&tar(&[Raw::file("a/.wh...", b"")]), no_setup, "a/.wh...");
    must_fail(&tar(&[Raw::file("../.wh.x", b"")]), no_setup, "../.wh.x");
    must_fail(&tar(&[Raw::file(".wh.", b"")]), no_setup, ".wh.");
    // whiteout of the root itself is harmless ('.wh.' + '.' is refused)
    must_fail(&tar(&[Raw::file(".wh..", b"")]), no_setup, ".wh..");
    let setup = |a: &Arena| std::os::unix::fs::symlink(&a.outside, a.root.join("o")).unwrap();
    for (_, r) in attack(
        &tar(&[
            Raw::file("o/.wh.victim", b""),
            Raw::file("o/.wh.dir", b""),
            Raw::file("o/dir/.wh..wh..opq", b""),
            Raw::file("o/.wh..wh..opq", b""),
        ]),
        setup,
    ) {
        r.unwrap(); // resolves inside the root, where there is nothing to delete
    }
}

#[test]
fn symlink_loops() {
    must_fail(
        &tar(&[
            Raw::symlink("a", "b"),
            Raw::symlink("b", "a"),
            Raw::file("a/x", b""),
        ]),
        no_setup,
        "a/x",
    );
    must_fail(
        &tar(&[Raw::symlink("self", "self"), Raw::file("self/x", b"")]),
        no_setup,
        "self/x",
    );
}

#[test]
fn broken_archives() {
    // truncated content
    let mut t = tar_no_end(&[Raw::file("big", vec![1u8; 10_000])]);
    t.truncate(512 + 100);
    must_fail(&t, no_setup, "big");
    // truncated header
    let t = tar(&[Raw::file("a", b"a")]);
    must_fail(&t[..700], no_setup, "after a");
    // garbage
    let mut seed = 0x1234_5678_u64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    must_fail(&garbage, no_setup, "#1");
    // absurd size: 8 GiB claimed, 10 bytes present
    let t = tar_no_end(&[Raw::file("huge", b"0123456789").claimed_size(8 << 30)]);
    let start = Instant::now();
    must_fail(&t, no_setup, "huge");
    assert!(start.elapsed().as_secs() < 5);
    // a directory claiming a size
    let t = tar_no_end(&[Raw::dir("d/").claimed_size(1 << 40)]);
    must_fail(&t, no_setup, "");
    // a PAX header claiming 8 GiB
    let mut t = header(b"PaxHeader/x", b'x', 0o644, 0, 0, 8 << 30, 0, b"", 0, 0).to_vec();
    t.extend_from_slice(b"20 path=aaaaaaaaaaa\n");
    must_fail(&t, no_setup, "#1");
    // a PAX header whose records lie about their length
    let t = tar(&[Raw::file("p", b"").pax("mtime", "12")]);
    let mut bad = t.clone();
    let at = 512;
    bad[at] = b'9';
    bad[at + 1] = b'9';
    must_fail(&bad, no_setup, "");
    // nonsense mtime record
    must_fail(
        &tar(&[Raw::file("m", b"").pax("mtime", "soon")]),
        no_setup,
        "\"m\"",
    );
    // bad checksum
    let mut t = tar(&[Raw::file("c", b"")]);
    t[0] ^= 1;
    must_fail(&t, no_setup, "#1");
    // unknown entry type
    must_fail(&tar(&[Raw::new("v", b'V')]), no_setup, "\"v\"");
    // uid out of range
    must_fail(
        &tar(&[Raw::file("u", b"").pax("uid", "99999999999")]),
        no_setup,
        "\"u\"",
    );
}

#[test]
fn compressed_garbage() {
    let mut gz = vec![0x1f, 0x8b];
    gz.extend_from_slice(&[0xff; 100]);
    must_fail(&gz, no_setup, "");
    let mut zst = vec![0x28, 0xb5, 0x2f, 0xfd];
    zst.extend_from_slice(&[0x00; 100]);
    must_fail(&zst, no_setup, "");
    // a gzip bomb of PAX header: the header budget stops it long before memory does
    let mut t = header(b"PaxHeader/x", b'x', 0o644, 0, 0, 1 << 33, 0, b"", 0, 0).to_vec();
    t.extend(std::iter::repeat(b'a').take(64 << 20));
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &t).unwrap();
    let gz = enc.finish().unwrap();
    must_fail(&gz, no_setup, "#1");
}

#[test]
fn names_too_long_or_with_nul() {
    let deep = "d/".repeat(2500) + "f";
    must_fail(
        &tar(&[Raw::file("x", b"").pax("path", &deep)]),
        no_setup,
        "d/d/",
    );
    let long_component = "n".repeat(300);
    must_fail(
        &tar(&[Raw::file(&long_component[..100], b"").pax("path", &long_component)]),
        no_setup,
        "nnn",
    );
    must_fail(
        &tar(&[Raw::file("x", b"").pax("path", "a\0b")]),
        no_setup,
        "a",
    );
    must_fail(
        &tar(&[Raw::symlink("s", "x").pax("linkpath", "a\0b")]),
        no_setup,
        "\"s\"",
    );
    must_fail(
        &tar(&[Raw::file("f", b"").pax("SCHILY.xattr.user.a\0b", "v")]),
        no_setup,
        "\"f\"",
    );
}

#[test]
fn internal_xattrs_are_dropped() {
    for (a, r) in attack(
        &tar(&[
            Raw::dir("d/").pax("SCHILY.xattr.trusted.overlay.opaque", "y"),
            Raw::file("f", b"").pax("SCHILY.xattr.user.overlay.redirect", "/etc"),
            Raw::file("g", b"").pax("SCHILY.xattr.trusted.aufs.x", "1"),
        ]),
        no_setup,
    ) {
        r.unwrap();
        let m = apply_util::manifest(&a.root, &[]);
        assert!(
            !m.contains("x:trusted.overlay")
                && !m.contains("x:user.overlay")
                && !m.contains("x:trusted.aufs"),
            "{m}"
        );
    }
}

#[test]
fn deep_tree_removal_does_not_follow_links() {
    // An existing directory full of links to the outside is replaced by a file.
    let setup = |a: &Arena| {
        let d = a.root.join("d/e/f");
        fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink(&a.outside, d.join("out")).unwrap();
        std::os::unix::fs::symlink(a.outside.join("victim"), d.join("victim")).unwrap();
        fs::hard_link(a.outside.join("x"), d.join("hardx")).unwrap_or(());
    };
    for (a, r) in attack(&tar(&[Raw::file("d", b"file now")]), setup) {
        r.unwrap();
        assert_eq!(fs::read(a.root.join("d")).unwrap(), b"file now");
    }
    // and a whiteout / opaque marker over the same tree
    for (a, r) in attack(
        &tar(&[Raw::file(".wh.d", b""), Raw::file("d2/.wh..wh..opq", b"")]),
        |a| {
            setup(a);
            fs::create_dir(a.root.join("d2")).unwrap();
            std::os::unix::fs::symlink(&a.outside, a.root.join("d2/out")).unwrap();
        },
    ) {
        r.unwrap();
        let _ = Path::new(&a.root);
    }
}

#[test]
fn deepest_possible_tree_is_replaced_and_pruned() {
    // 2040 levels: as deep as a tar path can go. Then the top is replaced by a file, or made
    // opaque: removal walks it through fds without following anything.
    let deep = "a/".repeat(2040) + "f";
    for last in [Raw::file("a", b"flat"), Raw::file(".wh..wh..opq", b"")] {
        let bytes = tar(&[
            Raw::file("x", b"").pax("path", &deep),
            Raw::symlink("a/a/out", "/"),
            last,
        ]);
        for (_, r) in attack(&bytes, no_setup) {
            if let Err(e) = r {
                // Only the fd limit may stop it (one fd per level while removing).
                assert!(e.to_string().contains("Too many open files"), "{e}");
                eprintln!("deep tree: {e}");
            }
        }
    }
}
