//! The manifest's line format (docs/changeset.md §1, "Manifest lines") on real trees.

mod changeset_common;

use std::fs;

use changeset_common::*;
use driver_api::manifest::{escape, manifest_digest, manifest_entries, write_manifest_json};
use sha2::{Digest, Sha256};
use tempfile::tempdir;

#[test]
fn lines_fields_and_escaping() {
    let t = tempdir().unwrap();
    let r = t.path();
    dir(r, "d", 0o2755, 1);
    let weird = "d/sp ace,%=\\\u{e9}";
    let f = file(r, weird, b"abc", 0o640, 2);
    setxattr(&f, "user.k", b"\x00\xff");
    lchown(&f, 1000, 3_000_000);
    chmod(&f, 0o640);
    set_mtime(&f, 2, 7);
    fs::hard_link(&f, r.join("e")).unwrap();
    link(r, "l", "tab\there", 3);
    set_mtime(&r.join("d"), 1, 0);

    let m = manifest(r);
    let sha_abc = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let esc = "d/sp%20ace%2C%25%3D%5C%C3%A9";
    let want = format!(
        "d\td\t2755\t0\t0\t0\t1.000000000\t-\t-\t-\t-\t-\n\
         {esc}\tf\t0640\t1000\t3000000\t3\t2.000000007\t{sha_abc}\t-\t-\t{esc}\tuser.k=00ff\n\
         e\tf\t0640\t1000\t3000000\t3\t2.000000007\t{sha_abc}\t-\t-\t{esc}\tuser.k=00ff\n\
         l\tl\t0777\t0\t0\t8\t3.000000000\t-\ttab%09here\t-\t-\t-\n"
    );
    assert_eq!(m, want);

    let digest = format!("sha256:{}", hex::encode(Sha256::digest(m.as_bytes())));
    assert_eq!(manifest_digest(r).unwrap(), digest);

    let mut json = Vec::new();
    assert_eq!(write_manifest_json(r, &mut json).unwrap(), digest);
    let lines: Vec<serde_json::Value> = String::from_utf8(json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[1]["path"], esc);
    assert_eq!(lines[1]["type"], "f");
    assert_eq!(lines[1]["mode"], "0640");
    assert_eq!(lines[1]["gid"], 3_000_000);
    assert_eq!(lines[1]["xattrs"][0][0], "user.k");
    assert_eq!(lines[1]["xattrs"][0][1], "00ff");
    assert_eq!(lines[2]["hardlink"], esc);
    assert_eq!(lines[3]["link_target"], "tab%09here");
    assert!(lines[0]["content"].is_null());
    assert_eq!(manifest_entries(r).unwrap().len(), 4);
}

#[test]
fn escape_covers_separators() {
    assert_eq!(escape(b"a\tb\nc d"), "a%09b%0Ac%20d");
    assert_eq!(escape(b"x=y,z%w\\"), "x%3Dy%2Cz%25w%5C");
    assert_eq!(escape(b"\x7f~!"), "%7F~!");
}

#[test]
fn sockets_are_skipped_and_root_is_not_an_entry() {
    let t = tempdir().unwrap();
    let r = t.path();
    let _sock = std::os::unix::net::UnixListener::bind(r.join("sock")).unwrap();
    file(r, "f", b"", 0o644, 1);
    chmod(r, 0o700);
    let m = manifest(r);
    assert_eq!(m.lines().count(), 1, "{m}");
    assert!(m.starts_with("f\tf\t0644\t"));
}

#[test]
fn changed_means_manifest_differs() {
    // Each single-field edit changes the manifest and is listed by `changes`.
    type Edit = Box<dyn Fn(&std::path::Path)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("mode", Box::new(|r| chmod(&r.join("f"), 0o600))),
        ("uid", Box::new(|r| lchown(&r.join("f"), 5, 0))),
        ("mtime ns", Box::new(|r| set_mtime(&r.join("f"), 1, 1))),
        ("xattr", Box::new(|r| setxattr(&r.join("f"), "user.x", b""))),
        (
            "content",
            Box::new(|r| {
                fs::write(r.join("f"), b"y").unwrap();
                set_mtime(&r.join("f"), 1, 0);
            }),
        ),
    ];
    for (what, edit) in edits {
        let t = tempdir().unwrap();
        let (p, c) = (t.path().join("p"), t.path().join("c"));
        fs::create_dir(&p).unwrap();
        file(&p, "f", b"x", 0o644, 1);
        cp_a(&p, &c);
        edit(&c);
        assert_ne!(manifest(&p), manifest(&c), "{what}");
        assert_eq!(changes(Some(&p), &c), vec!["C /f"], "{what}");
    }
}
