//! `gd check [--repair] [--json]` and the recovery report every command prints: on real
//! stores damaged the ways a crash or a person damages them (docs/recovery.md).

mod reliability;

use std::fs;
use std::path::Path;

use reliability::{drivers, Gd};

fn store(driver: &str) -> (tempfile::TempDir, Gd) {
    Gd::on_temp_root("gd-check-", driver)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn storage_dirs(gd: &Gd) -> usize {
    let home = gd.root.join(&gd.driver);
    // Every driver keeps one entry per storage key somewhere under its home; count all
    // 32-hex names, wherever they are.
    fn walk(p: &Path, n: &mut usize, depth: u32) {
        if depth > 3 {
            return;
        }
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    *n += 1;
                } else if name != "store" && e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), n, depth + 1);
                }
            }
        }
    }
    let mut n = 0;
    walk(&home, &mut n, 0);
    n
}

/// A clean store, a chain with a mounted container: no problem, exit 0.
fn clean(driver: &str) {
    let (_root, gd) = store(driver);
    gd.ok(&["create", "base"]);
    gd.ok(&["create", "--parent", "base", "mid"]);
    gd.ok(&["create", "--rw", "--parent", "mid", "c"]);
    gd.ok(&["mount", "c"]);
    let out = gd.ok(&["check"]);
    assert!(out.starts_with("ok: "), "[{driver}] {out}");
    let v: serde_json::Value = serde_json::from_str(&gd.ok(&["--json", "check"])).unwrap();
    assert_eq!(v["remaining"], 0, "[{driver}] {v}");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "[{driver}] {v}");
    gd.ok(&["umount", "c"]);
    gd.assert_check_clean("after umount");
    gd.cleanup();
}

/// A create killed after building its storage: check finds it (exit 1), --repair removes
/// it (exit 0), and the next check is clean. The layer never existed.
fn killed_create(driver: &str) {
    let (_root, gd) = store(driver);
    gd.ok(&["create", "base"]);
    assert!(
        gd.killed_at("create.built", &["create", "--parent", "base", "half"]),
        "[{driver}] the failpoint did not kill"
    );
    let out = gd.run(&["check"]);
    assert_eq!(out.status.code(), Some(1), "[{driver}] {}", stdout(&out));
    assert!(
        stdout(&out).contains("problem: storage ")
            && stdout(&out).contains("being built by a process that died"),
        "[{driver}] {}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("gd check --repair"),
        "[{driver}] {}",
        stderr(&out)
    );
    let out = gd.run(&["--json", "check"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["remaining"], 1, "[{driver}] {v}");
    assert_eq!(v["problems"][0]["repairable"], true, "[{driver}] {v}");
    let out = gd.ok(&["check", "--repair"]);
    assert!(out.starts_with("repaired: storage "), "[{driver}] {out}");
    gd.assert_check_clean("after --repair");
    assert_eq!(gd.ids(), vec!["base".to_string()]);
    gd.cleanup();
}

/// An apply killed half-way: the next command, whatever it is, repairs it and says so.
fn recovery_is_reported(driver: &str) {
    let (root, gd) = store(driver);
    let src = root.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..50 {
        fs::write(src.join(format!("d/f{i}")), "x".repeat(1000)).unwrap();
    }
    let tar = root.path().join("l.tar");
    reliability::write_tar(None, &src, &tar);
    gd.ok(&["create", "l"]);
    assert!(gd.killed_at("apply.applied", &["apply", "l", tar.to_str().unwrap()]));
    // check sees the store as the crash left it...
    let out = gd.run(&["check"]);
    assert!(
        stdout(&out).contains("layer l: an apply by process"),
        "[{driver}] {}",
        stdout(&out)
    );
    // ...and any other command recovers, once, saying what it did.
    let out = gd.run(&["ls"]);
    assert!(out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("gd: recovered: layer l: an apply was interrupted"),
        "[{driver}] {err}"
    );
    let out = gd.run(&["ls"]);
    assert!(
        !stderr(&out).contains("recovered"),
        "[{driver}] reported twice"
    );
    gd.assert_check_clean("after the recovery");
    gd.ok(&["apply", "l", tar.to_str().unwrap()]);
    gd.cleanup();
}

/// Damage only a person can fix: a corrupt record and a missing parent. check reports all
/// of it and carries on; --repair removes nothing (the storage no readable record names may
/// be the corrupt record's layer's).
fn damage_needing_a_person(driver: &str) {
    let (_root, gd) = store(driver);
    gd.ok(&["create", "a"]);
    gd.ok(&["create", "--parent", "a", "b"]);
    gd.ok(&["create", "c"]);
    let layers = gd.root.join(driver).join("store/layers");
    fs::remove_file(layers.join("a.json")).unwrap();
    fs::write(layers.join("c.json"), "{not json").unwrap();
    let before = storage_dirs(&gd);
    let out = gd.run(&["check", "--repair"]);
    assert_eq!(out.status.code(), Some(1), "[{driver}] {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("c.json: corrupt record"), "[{driver}] {text}");
    assert!(
        text.contains("layer b: its parent a is missing"),
        "[{driver}] {text}"
    );
    assert!(!text.contains("repaired:"), "[{driver}] {text}");
    assert_eq!(
        storage_dirs(&gd),
        before,
        "[{driver}] --repair removed storage"
    );
    // Every other command refuses to open such a store rather than guess.
    let out = gd.run(&["ls"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("c.json"),
        "[{driver}] {}",
        stderr(&out)
    );
    fs::remove_file(layers.join("c.json")).unwrap();
    fs::remove_file(layers.join("b.json")).unwrap();
    // The layers whose records are gone: opening the store leaves their storage alone (no
    // process died, so the recovery does not look), and `check --repair` frees it.
    let out = gd.run(&["ls"]);
    assert!(out.status.success(), "[{driver}] {}", stderr(&out));
    assert_eq!(
        storage_dirs(&gd),
        before,
        "[{driver}] opening removed storage"
    );
    let out = gd.run(&["check", "--repair"]);
    assert_eq!(
        stdout(&out).matches("no layer uses it").count(),
        3,
        "[{driver}] {}",
        stdout(&out)
    );
    gd.assert_check_clean("after the person removed the records");
    gd.cleanup();
}

fn intent_names(gd: &Gd) -> Vec<String> {
    let dir = gd.root.join(&gd.driver).join("store/intents");
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The intent records that let a clean store open without a scan: a command that ends
/// leaves none behind, a killed one leaves its own, which makes the next open recover and
/// remove it; without the `trusted` marker (a full disk, an older gd) every open recovers
/// until one finds the store clean.
fn intent_records(driver: &str) {
    let (_root, gd) = store(driver);
    gd.ok(&["create", "base"]);
    gd.ok(&["create", "--rw", "--parent", "base", "rw"]);
    gd.ok(&["mount", "rw"]);
    gd.ok(&["umount", "rw"]);
    assert_eq!(intent_names(&gd), ["trusted"], "[{driver}]");

    assert!(
        gd.killed_at("create.built", &["create", "--parent", "base", "half"]),
        "[{driver}] the failpoint did not kill"
    );
    assert_eq!(
        intent_names(&gd).len(),
        2,
        "[{driver}] {:?}",
        intent_names(&gd)
    );
    let out = gd.run(&["ls"]);
    assert!(
        stderr(&out).contains("gd: recovered: removed storage"),
        "[{driver}] {}",
        stderr(&out)
    );
    assert_eq!(intent_names(&gd), ["trusted"], "[{driver}]");

    fs::remove_file(gd.root.join(driver).join("store/intents/trusted")).unwrap();
    gd.ok(&["ls"]);
    assert_eq!(
        intent_names(&gd),
        ["trusted"],
        "[{driver}] marker not made again"
    );
    gd.assert_check_clean("after the intents");
    gd.cleanup();
}

#[test]
fn gd_check_and_the_recovery_report() {
    let all = drivers("gd check test");
    assert!(!all.is_empty());
    for d in &all {
        clean(d);
        killed_create(d);
        intent_records(d);
        recovery_is_reported(d);
        damage_needing_a_person(d);
    }
}
