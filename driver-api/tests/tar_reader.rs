//! Binary xattr values through the tar reader: PAX records whose values hold newline bytes
//! (a uid of 10 in a POSIX ACL or a capability set is byte 0x0a). Written by GNU tar and by
//! gd's own changeset writer, applied, and checked byte for byte. Runs as root.

use std::fs;
use std::path::Path;
use std::process::Command;

use driver_api::archive::{apply_tar, write_changeset, ApplyOptions};
use driver_api::manifest::write_manifest;

/// A POSIX ACL (`system.posix_acl_access` v2): user::rw-, user:10:r--, group::r--,
/// mask::r--, other::r--. The uid 10 is a 0x0a byte.
fn acl_with_uid_10() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 10),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// A `security.capability` v2 value whose permitted and inheritable sets hold 0x0a bytes.
fn capability_with_newlines() -> Vec<u8> {
    [0x0200_0000u32, 0x0a, 0, 0x0a0a, 0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

const NEWLINE_VALUE: &[u8] = b"a\nb=c\n";

fn set(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setting {name} on {}: {e}", path.display()));
}

fn get(path: &Path, name: &str) -> Vec<u8> {
    let mut v = vec![0u8; 65536];
    let n = rustix::fs::lgetxattr(path, name, &mut v[..])
        .unwrap_or_else(|e| panic!("reading {name} of {}: {e}", path.display()));
    v[..n].to_vec()
}

/// A file and a directory carrying the three binary values.
fn make_tree(root: &Path) {
    let f = root.join("bin/ping");
    fs::create_dir_all(f.parent().unwrap()).unwrap();
    fs::write(&f, b"#!/bin/true\n").unwrap();
    set(&f, "user.nl", NEWLINE_VALUE);
    set(&f, "system.posix_acl_access", &acl_with_uid_10());
    set(&f, "security.capability", &capability_with_newlines());
    let d = root.join("shared");
    fs::create_dir(&d).unwrap();
    set(&d, "system.posix_acl_access", &acl_with_uid_10());
    set(&d, "system.posix_acl_default", &acl_with_uid_10());
    set(&d, "user.nl", b"\n");
}

fn check_values(root: &Path) {
    let f = root.join("bin/ping");
    assert_eq!(get(&f, "user.nl"), NEWLINE_VALUE);
    assert_eq!(get(&f, "system.posix_acl_access"), acl_with_uid_10());
    assert_eq!(get(&f, "security.capability"), capability_with_newlines());
    let d = root.join("shared");
    assert_eq!(get(&d, "system.posix_acl_access"), acl_with_uid_10());
    assert_eq!(get(&d, "system.posix_acl_default"), acl_with_uid_10());
    assert_eq!(get(&d, "user.nl"), b"\n");
}

fn manifest(root: &Path) -> String {
    let mut out = Vec::new();
    write_manifest(root, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn gnu_tar_pax_xattrs_with_newlines_apply() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src);
    let tar = work.path().join("layer.tar");
    let status = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--format=pax",
            "--numeric-owner",
            "-C",
        ])
        .arg(&src)
        .arg("-cf")
        .arg(&tar)
        .args(["bin", "shared"])
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("SKIPPED: GNU tar cannot write the test archive ({other:?})");
            return;
        }
    }
    let bytes = fs::read(&tar).unwrap();
    // The archive really carries the values raw, newlines included.
    let needle = [b"SCHILY.xattr.user.nl=".as_slice(), NEWLINE_VALUE].concat();
    assert!(bytes.windows(needle.len()).any(|w| w == needle));
    let dst = work.path().join("dst");
    fs::create_dir(&dst).unwrap();
    apply_tar(&dst, &mut &bytes[..], &ApplyOptions::default()).unwrap();
    check_values(&dst);
    assert_eq!(manifest(&src), manifest(&dst));
}

#[test]
fn changeset_with_binary_xattrs_round_trips() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src);
    let mut tar = Vec::new();
    write_changeset(None, &src, &mut tar).unwrap();
    let dst = work.path().join("dst");
    fs::create_dir(&dst).unwrap();
    apply_tar(&dst, &mut &tar[..], &ApplyOptions::default()).unwrap();
    check_values(&dst);
    assert_eq!(manifest(&src), manifest(&dst));
    // And again: the re-applied tree writes the very same changeset.
    let mut again = Vec::new();
    write_changeset(None, &dst, &mut again).unwrap();
    assert!(again == tar, "the changeset of the applied tree differs");
}

/// An old GNU sparse entry (type `S`) claiming a huge size with a few bytes of data: the
/// applier seeks over the hole instead of writing (or even reading) zeros.
#[test]
fn huge_sparse_hole_is_skipped_not_read() {
    fn seal(h: &mut [u8]) {
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    }
    let real: u64 = 1 << 40; // 1 TiB
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"huge");
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(b"00000000004");
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = b'S';
    h[257..265].copy_from_slice(b"ustar  \0");
    // one region of 4 bytes, 2 bytes before the end
    // offset and real size in GNU base-256 (too large for 11 octal digits)
    let base256 = |v: u64| {
        let mut f = [0u8; 12];
        f[4..].copy_from_slice(&v.to_be_bytes());
        f[0] = 0x80;
        f
    };
    h[386..398].copy_from_slice(&base256(real - 6));
    h[398..409].copy_from_slice(b"00000000004");
    h[483..495].copy_from_slice(&base256(real));
    seal(&mut h);
    let mut tar = h;
    tar.extend_from_slice(b"data");
    tar.resize(1024 + 1024, 0);
    let work = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let r = apply_tar(work.path(), &mut &tar[..], &ApplyOptions::default());
    assert!(start.elapsed().as_secs() < 5, "the hole was read");
    match r {
        Ok(_) => {
            let f = fs::File::open(work.path().join("huge")).unwrap();
            assert_eq!(f.metadata().unwrap().len(), real);
            use std::os::unix::fs::FileExt;
            let mut b = [0u8; 6];
            f.read_exact_at(&mut b, real - 6).unwrap();
            assert_eq!(&b, b"data\0\0");
        }
        // A filesystem whose files cannot be that large says so.
        Err(e) => assert!(e.to_string().contains("huge"), "{e}"),
    }
}
