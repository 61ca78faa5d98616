//! The `gd` binary, run for real against a temporary root with the vfs driver.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const GD: &str = env!("CARGO_BIN_EXE_gd");

/// A store root under /tmp; unmounts whatever a failed test left mounted, then goes away.
struct Root {
    dir: tempfile::TempDir,
    driver: &'static str,
}

impl Root {
    fn new() -> Root {
        Root::with_driver("vfs")
    }

    fn with_driver(driver: &'static str) -> Root {
        Root {
            dir: tempfile::Builder::new()
                .prefix("gd-cli-")
                .tempdir()
                .unwrap(),
            driver,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(GD);
        c.env_remove("GD_ROOT")
            .env_remove("GD_DRIVER")
            .arg("--root")
            .arg(self.path())
            .args(["--driver", self.driver])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn run_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The child may refuse early and close stdin; that is not the test's failure.
        let _ = child.stdin.take().unwrap().write_all(input);
        child.wait_with_output().unwrap()
    }

    /// Run and require success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_ok(args, &out);
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("gd {args:?} --json: {e}: {text}"))
    }

    /// Run, require failure with exit status 1 and exactly one line on stderr; returns it.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        one_line_failure(args, &out)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = Command::new(GD)
            .arg("--root")
            .arg(self.path())
            .args(["--driver", self.driver, "cleanup"])
            .output();
    }
}

fn assert_ok(args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "gd {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn one_line_failure(args: &[&str], out: &Output) -> String {
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "gd {args:?} should fail with status 1; stderr: {stderr}"
    );
    assert!(stderr.starts_with("gd: "), "gd {args:?}: {stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "gd {args:?}: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr.trim_end().to_string()
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(size);
    h
}

/// A layer tar: directories, files (path, content), symlinks (path, target) and whiteouts.
fn layer_tar(dirs: &[&str], files: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for d in dirs {
        let mut h = header(d, tar::EntryType::Directory, 0o755, 0);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }
    for (p, content) in files {
        let mode = if p.contains(".wh.") { 0 } else { 0o644 };
        let mut h = header(p, tar::EntryType::Regular, mode, content.len() as u64);
        h.set_cksum();
        b.append(&h, *content).unwrap();
    }
    for (p, target) in links {
        let mut h = header(p, tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name(target).unwrap();
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }
    b.into_inner().unwrap()
}

fn base_tar() -> Vec<u8> {
    layer_tar(
        &["bin/", "etc/"],
        &[
            ("bin/sh", b"#!shell\n"),
            ("etc/hosts", b"127.0.0.1 localhost\n"),
        ],
        &[("bin/bash", "sh")],
    )
}

/// Changes on top of `base_tar`: etc/hosts modified, etc/new added, bin/sh deleted.
fn child_tar() -> Vec<u8> {
    layer_tar(
        &["bin/", "etc/"],
        &[
            ("bin/.wh.sh", b""),
            ("etc/hosts", b"10.0.0.1 gd\n"),
            ("etc/new", b"fresh"),
        ],
        &[],
    )
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// base (from a file), child (from stdin) on top.
fn two_layers(root: &Root) {
    let files = tempfile::tempdir().unwrap();
    root.ok(&["create", "base"]);
    let tar = write_file(files.path(), "base.tar", &base_tar());
    let applied = root.ok(&["apply", "base", tar.to_str().unwrap()]);
    assert_eq!(applied.trim(), (8 + 20).to_string());
    root.ok(&["create", "--parent", "base", "child"]);
    let out = root.run_stdin(&["apply", "child", "-"], &child_tar());
    assert_ok(&["apply", "child", "-"], &out);
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "17");
}

#[test]
fn create_ls_inspect_rm() {
    let root = Root::new();
    root.ok(&["create", "base"]);
    root.ok(&["create", "--parent", "base", "--rw", "c1"]);

    let ls = root.ok(&["ls"]);
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(lines.len(), 3, "{ls}");
    assert!(lines[0].starts_with("ID"), "{ls}");
    assert!(lines[1].starts_with("base "), "{ls}");
    let c1: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(c1, ["c1", "base", "rw", "-", "no"], "{ls}");

    let list = root.json(&["ls"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["id"], "c1");
    assert_eq!(list[1]["parent"], "base");
    assert_eq!(list[1]["kind"], "rw");
    assert_eq!(list[1]["mounts"], 0);

    // inspect prints JSON with or without --json.
    let text = root.ok(&["inspect", "c1"]);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["id"], "c1");
    assert_eq!(v["parent"], "base");
    assert!(v["metadata"].is_object(), "{text}");
    assert_eq!(root.json(&["inspect", "base"])["kind"], "ro");

    let err = root.fails(&["rm", "base"]);
    assert!(err.contains("base") && err.contains("c1"), "{err}");
    root.ok(&["rm", "c1"]);
    root.ok(&["rm", "base"]);
    assert_eq!(root.json(&["ls"]), serde_json::json!([]));
}

#[test]
fn status_and_drivers() {
    let root = Root::new();
    let status = root.json(&["status"]);
    assert_eq!(status["Driver"], "vfs", "{status}");
    let text = root.ok(&["status"]);
    assert!(text.lines().any(|l| l.starts_with("Driver:")), "{text}");

    let drivers = root.json(&["drivers"]);
    let vfs = drivers
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "vfs")
        .expect("vfs is built in");
    assert_eq!(vfs["usable"], true);
    assert_eq!(vfs["selected"], true);
    assert!(vfs["priority"].is_u64());
    let text = root.ok(&["drivers"]);
    assert!(text.lines().next().unwrap().starts_with("DRIVER"), "{text}");
    root.ok(&["cleanup"]);
}

#[test]
fn driver_is_chosen_from_existing_layers() {
    let root = Root::new();
    root.ok(&["create", "l1"]);
    let auto = |args: &[&str]| {
        // Empty means unset.
        Command::new(GD)
            .env("GD_DRIVER", "")
            .env("GD_ROOT", root.path())
            .args(args)
            .output()
            .unwrap()
    };
    // Only vfs has layers under the root, so it is used without being named.
    let out = auto(&["--json", "status"]);
    assert_ok(&["status"], &out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Driver"], "vfs");

    // Layers of a second driver: gd refuses to guess.
    let other = root.path().join("overlay/store/layers");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x.json"), "{}").unwrap();
    let out = auto(&["ls"]);
    let err = one_line_failure(&["ls"], &out);
    assert!(err.contains("--driver"), "{err}");
    std::fs::remove_dir_all(root.path().join("overlay")).unwrap();
}

#[test]
fn apply_changes_diff_and_diff_size() {
    let root = Root::new();
    two_layers(&root);

    let changes = root.ok(&["changes", "child"]);
    let lines: Vec<&str> = changes.lines().collect();
    for want in ["D /bin/sh", "C /etc/hosts", "A /etc/new"] {
        assert!(lines.contains(&want), "missing {want:?} in:\n{changes}");
    }
    let json = root.json(&["changes", "child"]);
    assert!(json
        .as_array()
        .unwrap()
        .contains(&serde_json::json!({"path": "/etc/new", "kind": "A"})));

    assert_eq!(root.ok(&["diff-size", "child"]).trim(), "17");
    assert_eq!(root.json(&["diff-size", "child"])["size"], 17);

    // To a file, through a temporary sibling that is renamed into place.
    let files = tempfile::tempdir().unwrap();
    let out_path = files.path().join("child.tar");
    root.ok(&["diff", "child", "-o", out_path.to_str().unwrap()]);
    assert_eq!(dir_names(files.path()), ["child.tar"]);
    let bytes = std::fs::read(&out_path).unwrap();
    let mut names = Vec::new();
    for e in tar::Archive::new(&bytes[..]).entries().unwrap() {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    for want in ["bin/.wh.sh", "etc/hosts", "etc/new"] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    // To standard output (a pipe here): the same bytes.
    let out = root.run(&["diff", "child"]);
    assert_ok(&["diff"], &out);
    assert_eq!(out.stdout, bytes);

    // The changeset reproduces the child's view when applied onto its parent.
    root.ok(&["create", "--parent", "base", "copy"]);
    root.ok(&["apply", "copy", out_path.to_str().unwrap()]);
    assert_eq!(
        root.ok(&["manifest", "--digest", "copy"]),
        root.ok(&["manifest", "--digest", "child"])
    );
}

#[test]
fn diff_failure_leaves_no_file() {
    let root = Root::new();
    let files = tempfile::tempdir().unwrap();
    let out_path = files.path().join("x.tar");
    let err = root.fails(&["diff", "missing", "-o", out_path.to_str().unwrap()]);
    assert!(err.contains("missing"), "{err}");
    assert!(
        dir_names(files.path()).is_empty(),
        "{:?}",
        dir_names(files.path())
    );
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `-o` names what the user has: a device node or a fifo is written in place (replacing
/// /dev/null with a regular file would break the machine), a symlink is followed and stays,
/// an existing file keeps its mode, and a bare file name lands in the working directory.
#[test]
fn diff_output_to_devices_fifos_links_and_files() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let root = Root::new();
    two_layers(&root);
    let want = root.run(&["diff", "child"]).stdout;
    let files = tempfile::tempdir().unwrap();
    let at = |name: &str| files.path().join(name);
    let arg = |p: &PathBuf| p.to_str().unwrap().to_string();

    // A character device like /dev/null (made here, never the machine's own).
    let null = at("null");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &null,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    root.ok(&["diff", "child", "-o", &arg(&null)]);
    let m = std::fs::symlink_metadata(&null).unwrap();
    assert!(m.file_type().is_char_device(), "{:?}", m.file_type());

    // A fifo: the bytes arrive at its reader, and it stays a fifo.
    let fifo = at("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    root.ok(&["diff", "child", "-o", &arg(&fifo)]);
    assert_eq!(reader.join().unwrap(), want);
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());

    // An existing file behind a symlink: the file is replaced with its mode kept, the link stays.
    let file = at("file.tar");
    std::fs::write(&file, b"old").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = at("link.tar");
    std::os::unix::fs::symlink("file.tar", &link).unwrap();
    root.ok(&["diff", "child", "-o", &arg(&link)]);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&file).unwrap(), want);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o640);

    // A bare name, relative to the working directory.
    let out = root
        .cmd(&["diff", "child", "-o", "bare.tar"])
        .current_dir(files.path())
        .output()
        .unwrap();
    assert_ok(&["diff", "-o", "bare.tar"], &out);
    assert_eq!(std::fs::read(at("bare.tar")).unwrap(), want);

    // A directory is refused, and nothing is left beside it.
    let err = root.fails(&["diff", "child", "-o", &arg(&files.path().to_path_buf())]);
    assert!(err.contains("directory"), "{err}");
    assert_eq!(
        dir_names(files.path()),
        ["bare.tar", "fifo", "file.tar", "link.tar", "null"]
    );
}

#[test]
fn mount_and_umount() {
    let root = Root::new();
    two_layers(&root);
    root.ok(&["create", "--parent", "child", "--rw", "ctr"]);

    let path = PathBuf::from(root.ok(&["mount", "ctr"]).trim());
    assert_eq!(
        std::fs::read(path.join("etc/hosts")).unwrap(),
        b"10.0.0.1 gd\n"
    );
    assert!(!path.join("bin/sh").exists());
    std::fs::write(path.join("etc/written"), b"by the container").unwrap();

    // Counted: a second mount gives the same path and needs a second umount.
    let again = root.json(&["mount", "ctr"]);
    assert_eq!(again["path"], path.to_str().unwrap());
    let ls = root.json(&["ls"]);
    let ctr = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == "ctr")
        .unwrap();
    assert_eq!(ctr["mounts"], 2);

    let err = root.fails(&["rm", "ctr"]);
    assert!(err.contains("ctr") && err.contains("mounted"), "{err}");

    root.ok(&["umount", "ctr"]);
    root.ok(&["umount", "ctr"]);
    let err = root.fails(&["umount", "ctr"]);
    assert!(err.contains("ctr") && err.contains("not mounted"), "{err}");

    let changes = root.ok(&["changes", "ctr"]);
    assert!(changes.lines().any(|l| l == "A /etc/written"), "{changes}");
    assert_eq!(root.ok(&["diff-size", "ctr"]).trim(), "16");
    root.ok(&["rm", "ctr"]);
}

#[test]
fn manifest_of_layer_and_directory() {
    let root = Root::new();
    two_layers(&root);
    let listing = root.ok(&["manifest", "child"]);
    assert!(
        listing.lines().any(|l| l.starts_with("etc/new\t")),
        "{listing}"
    );
    assert!(
        !listing.lines().any(|l| l.starts_with("bin/sh\t")),
        "{listing}"
    );

    let digest = root.ok(&["manifest", "--digest", "child"]);
    assert!(digest.starts_with("sha256:"), "{digest}");
    let doc = root.json(&["manifest", "child"]);
    assert_eq!(doc["digest"], digest.trim());
    assert!(doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["path"] == "etc/new"));
    assert_eq!(
        root.json(&["manifest", "--digest", "child"])["digest"],
        digest.trim()
    );

    // The same view through a mount, listed as a plain directory.
    let path = root.ok(&["mount", "child"]);
    let by_path = root.ok(&["manifest", "--path", path.trim()]);
    root.ok(&["umount", "child"]);
    assert_eq!(by_path, listing);
    // The layer's view was released again.
    let info = root.json(&["inspect", "child"]);
    assert_eq!(info["mounts"], 0);

    // --path needs no store: a root that cannot exist is never touched.
    let out = Command::new(GD)
        .args([
            "--root",
            "/proc/no-such-root",
            "manifest",
            "--digest",
            "--path",
        ])
        .arg(root.path())
        .output()
        .unwrap();
    assert_ok(&["manifest", "--path"], &out);
    let err = root.fails(&["manifest", "--path", "/no/such/dir"]);
    assert!(err.contains("/no/such/dir"), "{err}");
}

#[test]
fn error_messages() {
    let root = Root::new();
    assert_eq!(
        root.fails(&["inspect", "nope"]),
        "gd: layer nope does not exist"
    );
    for args in [
        &["mount", "nope"][..],
        &["rm", "nope"],
        &["diff-size", "nope"],
        &["changes", "nope"],
        &["manifest", "nope"],
    ] {
        let err = root.fails(args);
        assert!(err.contains("nope"), "gd {args:?}: {err}");
    }
    let err = root.fails(&["create", "../evil"]);
    assert!(
        err.contains("../evil") && err.contains("not a valid layer id"),
        "{err}"
    );
    let err = root.fails(&["create", "--parent", "ghost", "kid"]);
    assert!(err.contains("ghost"), "{err}");
    root.ok(&["create", "dup"]);
    let err = root.fails(&["create", "dup"]);
    assert!(
        err.contains("dup") && err.contains("already exists"),
        "{err}"
    );
    let err = root.fails(&["apply", "dup", "/no/such.tar"]);
    assert!(err.contains("/no/such.tar"), "{err}");
    let err = root.fails(&["--driver", "floppy", "ls"]);
    assert!(err.contains("floppy"), "{err}");

    // Usage errors are clap's: status 2.
    for args in [
        &[][..],
        &["frobnicate"],
        &["create"],
        &["-o", "novalue", "ls"],
    ] {
        let out = root.run(args);
        assert_eq!(out.status.code(), Some(2), "gd {args:?}");
    }
}

#[test]
fn apply_garbage_leaves_layer_unchanged() {
    let root = Root::new();
    two_layers(&root);
    let before = root.ok(&["manifest", "--digest", "child"]);
    let size_before = root.json(&["inspect", "child"])["size"].clone();

    let mut garbage = child_tar();
    garbage.truncate(700); // cut inside the second entry's header
    garbage.extend_from_slice(&[0x5a; 300]);
    for input in [
        &b"this is not a tar archive at all, just words"[..],
        &garbage,
    ] {
        let out = root.run_stdin(&["apply", "child"], input);
        let err = one_line_failure(&["apply", "child"], &out);
        assert!(err.contains("child"), "{err}");
    }
    assert_eq!(root.ok(&["manifest", "--digest", "child"]), before);
    assert_eq!(root.json(&["inspect", "child"])["size"], size_before);

    // A pristine layer is also left as it was (empty).
    root.ok(&["create", "fresh"]);
    let empty = root.ok(&["manifest", "--digest", "fresh"]);
    let out = root.run_stdin(&["apply", "fresh"], &garbage);
    one_line_failure(&["apply", "fresh"], &out);
    assert_eq!(root.ok(&["manifest", "--digest", "fresh"]), empty);
}

/// `create --from`: one command makes and fills a layer; when the tar is bad, the layer is
/// gone again and the error names it.
#[test]
fn create_from_a_tar() {
    let root = Root::new();
    two_layers(&root);
    let files = tempfile::tempdir().unwrap();
    let tar = write_file(files.path(), "child.tar", &child_tar());
    let printed = root.ok(&[
        "create",
        "--parent",
        "base",
        "--from",
        tar.to_str().unwrap(),
        "again",
    ]);
    // What `gd apply` prints for the same tar.
    root.ok(&["create", "--parent", "base", "by-apply"]);
    assert_eq!(
        printed,
        root.ok(&["apply", "by-apply", tar.to_str().unwrap()])
    );
    assert_eq!(
        root.ok(&["manifest", "--digest", "again"]),
        root.ok(&["manifest", "--digest", "child"])
    );
    let args = [
        "--json", "create", "--parent", "base", "--from", "-", "piped",
    ];
    let out = root.run_stdin(&args, &child_tar());
    assert_ok(&args, &out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], "piped");

    let bad = write_file(files.path(), "bad.tar", b"not a tar at all, just words");
    let args = [
        "create",
        "--parent",
        "base",
        "--from",
        bad.to_str().unwrap(),
        "broken",
    ];
    let err = root.fails(&args);
    assert!(err.contains("broken"), "{err}");
    let ids: Vec<Value> = root
        .json(&["ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].clone())
        .collect();
    assert!(!ids.contains(&Value::from("broken")), "{ids:?}");
}

#[test]
fn broken_pipe_is_quiet() {
    let root = Root::new();
    root.ok(&["create", "big"]);
    let big = vec![b'x'; 4 << 20];
    let tar = layer_tar(&[], &[("big", &big)], &[]);
    let out = root.run_stdin(&["apply", "big"], &tar);
    assert_ok(&["apply"], &out);

    let script = format!(
        "set -o pipefail; {GD} --root {} --driver vfs diff big | head -c 10 >/dev/null",
        root.path().display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert!(out.status.success(), "{}", out.status);
}

/// gd has its own process start (cli/src/start.rs), which reopens descriptors 0-2 on /dev/null
/// when a parent closed them. Run so, gd still does its work and its records stay whole.
#[test]
fn closed_standard_descriptors_are_reopened() {
    let root = Root::new();
    root.ok(&["create", "base"]);
    root.ok(&["create", "--rw", "--parent", "base", "c1"]);
    let script = format!(
        "{GD} --root {} --driver vfs mount c1 <&- >&- 2>&-",
        root.path().display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", out.status);
    let info = root.json(&["inspect", "c1"]);
    assert_eq!(info["mounts"], 1, "{info}");
    root.ok(&["umount", "c1"]);
    // And the records it wrote are whole.
    assert_eq!(root.json(&["inspect", "c1"])["mounts"], 0);
    assert_eq!(root.ok(&["check"]).lines().count(), 1);
}

#[test]
fn help_texts() {
    let root = Root::new();
    let main = root.ok(&["--help"]);
    for cmd in [
        "create",
        "rm",
        "ls",
        "inspect",
        "status",
        "drivers",
        "cleanup",
        "mount",
        "umount",
        "apply",
        "diff",
        "changes",
        "diff-size",
        "manifest",
    ] {
        assert!(main.contains(&format!("  {cmd} ")), "{cmd} not in:\n{main}");
        let help = root.ok(&[cmd, "--help"]);
        assert!(help.contains("Usage: gd"), "{help}");
    }
    for cmd in ["mount", "apply", "diff"] {
        let help = root.ok(&[cmd, "--help"]);
        assert!(help.contains("Example"), "gd {cmd} --help:\n{help}");
    }
}

/// The same commands on every driver this host can run give the same changeset bytes and
/// the same manifests as on vfs.
#[test]
fn every_usable_driver_agrees_with_vfs() {
    let vfs = Root::new();
    two_layers(&vfs);
    let want_diff = vfs.run(&["diff", "child"]).stdout;
    let want_manifest = vfs.ok(&["manifest", "child"]);
    let drivers = vfs.json(&["drivers"]);
    for d in drivers.as_array().unwrap() {
        let name = d["name"].as_str().unwrap().to_string();
        if name == "vfs" {
            continue;
        }
        if d["usable"] != true {
            eprintln!("SKIPPED: driver {name}: {}", d["reason"]);
            continue;
        }
        let root = Root::with_driver(Box::leak(name.clone().into_boxed_str()));
        two_layers(&root);
        let out = root.run(&["diff", "child"]);
        assert_ok(&["diff", "child"], &out);
        assert!(
            out.stdout == want_diff,
            "driver {name}: diff differs from vfs"
        );
        assert_eq!(
            root.ok(&["manifest", "child"]),
            want_manifest,
            "driver {name}"
        );

        root.ok(&["create", "--parent", "child", "--rw", "ctr"]);
        let path = PathBuf::from(root.ok(&["mount", "ctr"]).trim());
        std::fs::write(path.join("etc/written"), b"by the container").unwrap();
        root.ok(&["umount", "ctr"]);
        let changes = root.ok(&["changes", "ctr"]);
        assert!(
            changes.lines().any(|l| l == "A /etc/written"),
            "{name}: {changes}"
        );
        root.ok(&["rm", "ctr"]);
        root.ok(&["rm", "child"]);
        root.ok(&["rm", "base"]);
    }
}

fn send_sigint(pid: u32) {
    let st = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Ctrl-C while an apply waits for more of the tar: the layer is rolled back, the exit
/// status says so, and the layer stays usable.
#[test]
fn interrupted_apply_leaves_layer_unchanged() {
    let root = Root::new();
    two_layers(&root);
    let before = root.ok(&["manifest", "--digest", "child"]);
    let big = vec![b'y'; 1 << 20];
    let tar = layer_tar(&[], &[("one", &big), ("two", &big)], &[]);

    let mut child = root
        .cmd(&["apply", "child"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&tar[..(1 << 20) + 4096]).unwrap();
    // Let gd consume the first file and block reading the second, then interrupt it.
    std::thread::sleep(std::time::Duration::from_millis(300));
    send_sigint(child.id());
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(root.ok(&["manifest", "--digest", "child"]), before);
    let info = root.json(&["inspect", "child"]);
    assert_eq!(info["size"], 17);
}

/// Ctrl-C during `manifest` of a layer does not leave the layer counted as mounted.
#[test]
fn interrupted_manifest_releases_the_view() {
    let root = Root::new();
    root.ok(&["create", "many"]);
    let names: Vec<String> = (0..20_000).map(|i| format!("d{}/f{i}", i % 100)).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let out = root.run_stdin(&["apply", "many"], &layer_tar(&[], &files, &[]));
    assert_ok(&["apply", "many"], &out);

    let child = root
        .cmd(&["manifest", "many"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    send_sigint(child.id());
    let out = child.wait_with_output().unwrap();
    // Finished before the signal, or stopped by it; either way the view was put back.
    assert!(matches!(out.status.code(), Some(0) | Some(130)), "{out:?}");
    if out.status.code() == Some(0) {
        eprintln!("note: manifest finished before the signal arrived");
    }
    assert_eq!(root.json(&["inspect", "many"])["mounts"], 0);
    root.ok(&["rm", "many"]);
}
