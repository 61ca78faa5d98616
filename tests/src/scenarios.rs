//! Named scenarios: each a stack of layers, each layer a list of steps. Every driver builds
//! them twice (from tars, and by writing through a mounted read-write layer), and the
//! cross-driver test checks that all drivers give the same bytes and digests.

use crate::steps::Step;

fn s(x: &str) -> String {
    x.to_string()
}

pub fn basic() -> Vec<Vec<Step>> {
    vec![
        vec![
            Step::mkdir("etc"),
            Step::write("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            Step::write("etc/hostname", "gd\n"),
            Step::mkdir("bin"),
            Step::Write {
                path: s("bin/sh"),
                content: b"#!ELF pretend\n".to_vec(),
                mode: 0o755,
            },
            Step::Symlink {
                path: s("bin/bash"),
                target: s("sh"),
            },
            Step::Symlink {
                path: s("etc/abs"),
                target: s("/etc/passwd"),
            },
            Step::Hardlink {
                path: s("bin/sh-link"),
                target: s("bin/sh"),
            },
            Step::mkdir("dev"),
            Step::Fifo {
                path: s("dev/fifo"),
            },
            Step::CharDev {
                path: s("dev/null"),
                major: 1,
                minor: 3,
            },
            Step::Mkdir {
                path: s("tmp"),
                mode: 0o1777,
            },
            Step::mkdir("home"),
            Step::mkdir("home/user"),
            Step::write("home/user/notes", "hello\n"),
            Step::Chown {
                path: s("home/user"),
                uid: 1000,
                gid: 1000,
            },
            Step::Chown {
                path: s("home/user/notes"),
                uid: 1000,
                gid: 100,
            },
            Step::Xattr {
                path: s("etc/hostname"),
                name: s("user.origin"),
                value: b"gd-test".to_vec(),
            },
            Step::Xattr {
                path: s("bin/sh"),
                name: s("trusted.gd.note"),
                value: vec![0, 1, 2, 255],
            },
            Step::mkdir("var"),
            Step::mkdir("var/lib"),
            Step::write("var/lib/state", "1"),
        ],
        vec![
            // Modify, chmod only, chown only, delete, add, move a file from the lower layer.
            Step::Append {
                path: s("etc/passwd"),
                content: b"user:x:1000:1000::/home/user:/bin/sh\n".to_vec(),
            },
            Step::Chmod {
                path: s("etc/hostname"),
                mode: 0o600,
            },
            Step::Chown {
                path: s("var/lib/state"),
                uid: 7,
                gid: 7,
            },
            Step::remove("home/user/notes"),
            Step::mkdir("opt"),
            Step::write("opt/new", "new file\n"),
            Step::Rename {
                from: s("etc/hostname"),
                to: s("opt/hostname"),
            },
            Step::Xattr {
                path: s("bin/sh"),
                name: s("user.changed"),
                value: b"yes".to_vec(),
            },
        ],
        vec![
            // Remove a directory of a lower layer; the deleted files stay hidden.
            Step::remove("var"),
            Step::write("etc/motd", "welcome\n"),
        ],
    ]
}

/// Delete and re-create directories at several depths.
pub fn nested_recreate() -> Vec<Vec<Step>> {
    vec![
        vec![
            Step::mkdir("a"),
            Step::mkdir("a/b"),
            Step::mkdir("a/b/c"),
            Step::mkdir("a/b/c/d"),
            Step::write("a/b/c/d/deep", "deep"),
            Step::write("a/b/c/file", "c"),
            Step::write("a/b/file", "b"),
            Step::write("a/file", "a"),
            Step::mkdir("x"),
            Step::write("x/keep", "keep"),
        ],
        vec![
            Step::remove("a/b/c"),
            Step::mkdir("a/b/c"),
            Step::write("a/b/c/new", "new c"),
            Step::Mkdir {
                path: s("a/b/c/d"),
                mode: 0o700,
            },
        ],
        vec![
            Step::remove("a"),
            Step::mkdir("a"),
            Step::mkdir("a/b"),
            Step::write("a/b/file", "b again"),
            Step::remove("x/keep"),
        ],
        vec![Step::remove("a"), Step::remove("x")],
    ]
}

pub fn hardlinks() -> Vec<Vec<Step>> {
    vec![
        vec![
            Step::write("f1", "shared content"),
            Step::Hardlink {
                path: s("f2"),
                target: s("f1"),
            },
            Step::mkdir("d"),
            Step::Hardlink {
                path: s("d/f3"),
                target: s("f1"),
            },
            Step::write("solo", "solo"),
        ],
        vec![
            // A new link to an unchanged file, and a file rewritten out of its group.
            Step::Hardlink {
                path: s("d/f4"),
                target: s("solo"),
            },
            Step::Write {
                path: s("f2"),
                content: b"broken away".to_vec(),
                mode: 0o644,
            },
        ],
        vec![
            Step::remove("f1"),
            Step::Hardlink {
                path: s("g"),
                target: s("d/f3"),
            },
        ],
    ]
}

/// Entries other than files with several names, and hardlinked files renamed before they are
/// changed: every name shows the change (one inode), though the union branch holds only the
/// name that was changed, under a name the lower layer does not have.
pub fn hardlinked_non_files() -> Vec<Vec<Step>> {
    vec![
        vec![
            Step::mkdir("d"),
            Step::Symlink {
                path: s("c"),
                target: s("../x"),
            },
            Step::Fifo { path: s("p") },
            Step::write("f1", "shared content"),
        ],
        vec![
            Step::Hardlink {
                path: s("b"),
                target: s("c"),
            },
            Step::Hardlink {
                path: s("d/q"),
                target: s("p"),
            },
            Step::Hardlink {
                path: s("f2"),
                target: s("f1"),
            },
        ],
        vec![
            Step::Rename {
                from: s("b"),
                to: s("a"),
            },
            Step::Touch {
                path: s("a"),
                sec: 1000,
                nsec: 0,
            },
            Step::Rename {
                from: s("d/q"),
                to: s("r"),
            },
            Step::Chmod {
                path: s("r"),
                mode: 0o600,
            },
            Step::Rename {
                from: s("f2"),
                to: s("d/f3"),
            },
            Step::Append {
                path: s("d/f3"),
                content: b" and more".to_vec(),
            },
        ],
    ]
}

pub fn type_changes() -> Vec<Vec<Step>> {
    vec![
        vec![
            Step::write("x", "file"),
            Step::mkdir("y"),
            Step::write("y/inner", "inner"),
            Step::Symlink {
                path: s("z"),
                target: s("x"),
            },
            Step::Fifo { path: s("p") },
            Step::mkdir("g"),
            Step::write("g/in", "moved with its directory"),
        ],
        vec![
            Step::remove("x"),
            Step::mkdir("x"),
            Step::write("x/now-a-dir", "d"),
            Step::remove("y"),
            Step::write("y", "now a file"),
            Step::remove("z"),
            Step::write("z", "now a file"),
            Step::remove("p"),
            Step::Symlink {
                path: s("p"),
                target: s("y"),
            },
            // A lower directory renamed onto an empty new one (EXDEV on overlay and aufs:
            // the copy fallback must replace the empty target, as rename(2) does).
            Step::mkdir("c"),
            Step::Rename {
                from: s("g"),
                to: s("c"),
            },
        ],
    ]
}

pub fn odd_modes() -> Vec<Vec<Step>> {
    vec![
        vec![
            Step::Write {
                path: s("none"),
                content: b"0000".to_vec(),
                mode: 0o000,
            },
            Step::Write {
                path: s("suid"),
                content: b"4755".to_vec(),
                mode: 0o4755,
            },
            Step::Write {
                path: s("sgid"),
                content: b"2755".to_vec(),
                mode: 0o2755,
            },
            Step::Mkdir {
                path: s("sticky"),
                mode: 0o1777,
            },
            Step::Mkdir {
                path: s("private"),
                mode: 0o700,
            },
            Step::write("private/secret", "s"),
            Step::write("nobody", "n"),
            Step::Chown {
                path: s("nobody"),
                uid: 65534,
                gid: 65534,
            },
            Step::write("bigid", "b"),
            Step::Chown {
                path: s("bigid"),
                uid: 3_000_000,
                gid: 3_000_001,
            },
            Step::CharDev {
                path: s("tty"),
                major: 5,
                minor: 0,
            },
        ],
        vec![
            Step::Chmod {
                path: s("private"),
                mode: 0o750,
            },
            Step::Chmod {
                path: s("suid"),
                mode: 0o755,
            },
            Step::Chown {
                path: s("sticky"),
                uid: 1,
                gid: 1,
            },
        ],
    ]
}

pub fn long_names() -> Vec<Vec<Step>> {
    let long = "n".repeat(120);
    let dir = "d".repeat(90);
    vec![
        vec![
            Step::mkdir(&dir),
            Step::write(&format!("{dir}/{long}"), "long"),
            Step::Symlink {
                path: s("longlink"),
                target: "t/".repeat(80),
            },
            Step::write("name with spaces\tand tab", "odd"),
            Step::write("ünïcödé", "utf8"),
        ],
        vec![
            Step::remove(&format!("{dir}/{long}")),
            Step::write(&format!("{dir}/{long}.2"), "long2"),
        ],
    ]
}

/// A file rewritten within the same second with the same size must still show as changed.
pub fn same_second() -> Vec<Vec<Step>> {
    vec![
        vec![
            Step::write("f", "aaaa"),
            Step::Touch {
                path: s("f"),
                sec: 1_500_000_000,
                nsec: 0,
            },
        ],
        vec![
            Step::write("f", "bbbb"),
            Step::Touch {
                path: s("f"),
                sec: 1_500_000_000,
                nsec: 0,
            },
        ],
        vec![Step::Touch {
            path: s("f"),
            sec: 1_500_000_000,
            nsec: 1,
        }],
    ]
}

pub fn all() -> Vec<(&'static str, Vec<Vec<Step>>)> {
    vec![
        ("basic", basic()),
        ("nested_recreate", nested_recreate()),
        ("hardlinks", hardlinks()),
        ("hardlinked_non_files", hardlinked_non_files()),
        ("type_changes", type_changes()),
        ("odd_modes", odd_modes()),
        ("long_names", long_names()),
        ("same_second", same_second()),
    ]
}
