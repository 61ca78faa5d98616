//! `gd` with driver plugins, end to end: `--plugin PATH`, discovery by name in
//! `GD_PLUGIN_PATH`, `gd drivers` listing plugins with their ABI version, and broken plugins
//! failing with a clear message and exit status 1 (never a crash).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gd_conformance::plugins::{build_artifact, build_plugin, mount_scratch_btrfs};

fn gd_bin() -> PathBuf {
    build_artifact("gd-cli", "gd", &["--bin", "gd"])
}

fn gd(root: &Path, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut cmd = Command::new(gd_bin());
    cmd.arg("--root").arg(root).args(args);
    cmd.env_remove("GD_DRIVER")
        .env_remove("GD_ROOT")
        .env_remove("GD_PLUGIN_PATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "gd failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn fails(o: Output) -> String {
    assert_eq!(o.status.code(), Some(1), "gd must fail cleanly: {o:?}");
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn btrfs_plugin_through_the_cli() {
    let plugin = build_plugin("gd-plugin-btrfs", "gd_btrfs");
    let p = plugin.to_str().unwrap();
    let tmp = gd_conformance::Harness::new_tmp("plugin-cli");
    let (mnt, _unmount) = match mount_scratch_btrfs(tmp.path()) {
        Ok(m) => m,
        Err(reason) => {
            assert!(
                !gd_conformance::required("btrfs"),
                "btrfs required: {reason}"
            );
            eprintln!("SKIPPED: no scratch btrfs: {reason}");
            return;
        }
    };
    let root = mnt.join("root");

    let drivers = ok(gd(&root, &[], &["--plugin", p, "drivers"]));
    let line = drivers
        .lines()
        .find(|l| l.starts_with("btrfs"))
        .expect(&drivers);
    assert!(
        line.contains("btrfs *") && line.contains("plugin ABI 1.0") && line.contains("yes"),
        "{drivers}"
    );
    let json = ok(gd(&root, &[], &["--plugin", p, "--json", "drivers"]));
    assert!(
        json.contains("\"abi\": \"1.0\"") && json.contains("\"source\": \"plugin\""),
        "{json}"
    );

    // A layer from a tar, a container layer on it, changes made in its view.
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    let tar = tmp.path().join("base.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&tar)
        .arg("etc")
        .status()
        .unwrap()
        .success());
    ok(gd(&root, &[], &["--plugin", p, "create", "base"]));
    ok(gd(
        &root,
        &[],
        &["--plugin", p, "apply", "base", tar.to_str().unwrap()],
    ));
    ok(gd(
        &root,
        &[],
        &["--plugin", p, "create", "--parent", "base", "--rw", "c1"],
    ));
    let view = ok(gd(&root, &[], &["--plugin", p, "mount", "c1"]));
    let view = PathBuf::from(view.trim());
    assert_eq!(
        std::fs::read_to_string(view.join("etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n"
    );
    std::fs::write(view.join("etc/motd"), "hi\n").unwrap();
    ok(gd(&root, &[], &["--plugin", p, "umount", "c1"]));
    assert_eq!(
        ok(gd(&root, &[], &["--plugin", p, "changes", "c1"])),
        "C /etc\nA /etc/motd\n"
    );
    let inspect = ok(gd(&root, &[], &["--plugin", p, "inspect", "c1"]));
    assert!(inspect.contains("Subvolume"), "{inspect}");

    // Found by name: the root holds btrfs layers, the plugin is in GD_PLUGIN_PATH.
    let dir = tmp.path().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&plugin, dir.join("libgd_btrfs.so")).unwrap();
    let env = [("GD_PLUGIN_PATH", dir.as_path())];
    let ls = ok(gd(&root, &env, &["ls"]));
    assert!(ls.contains("base") && ls.contains("c1"), "{ls}");
    ok(gd(
        &root,
        &env,
        &[
            "--driver",
            "btrfs",
            "diff",
            "c1",
            "-o",
            tmp.path().join("c1.tar").to_str().unwrap(),
        ],
    ));
    // Without the plugin, gd says what is missing.
    let err = fails(gd(&root, &[], &["ls"]));
    assert!(err.contains("\"btrfs\"") && err.contains("plugin"), "{err}");

    ok(gd(&root, &env, &["rm", "c1"]));
    ok(gd(&root, &env, &["rm", "base"]));
    ok(gd(&root, &env, &["cleanup"]));
}

#[test]
fn broken_plugins_fail_cleanly() {
    let tmp = gd_conformance::Harness::new_tmp("plugin-cli-bad");
    let root = tmp.path().join("root");
    // A plugin whose driver panics: the panic is an error message, gd exits 1.
    let bad = build_plugin("gd-plugin-testbad", "gd_testbad");
    let err = fails(gd(&root, &[], &["--plugin", bad.to_str().unwrap(), "ls"]));
    assert!(err.contains("panicked in list: list exploded"), "{err}");
    // Not a plugin.
    let fake = tmp.path().join("libgd_fake.so");
    std::fs::write(&fake, "not an ELF file").unwrap();
    let err = fails(gd(&root, &[], &["--plugin", fake.to_str().unwrap(), "ls"]));
    assert!(
        err.contains("cannot load plugin") && err.contains("libgd_fake.so"),
        "{err}"
    );
    // `gd drivers` lists an unloadable file in the plugin directory with the reason.
    let dir = tmp.path().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&fake, dir.join("libgd_fake.so")).unwrap();
    let out = ok(gd(
        &root,
        &[("GD_PLUGIN_PATH", dir.as_path())],
        &["drivers"],
    ));
    assert!(
        out.contains("libgd_fake") && out.contains("cannot load plugin"),
        "{out}"
    );
    // An unknown driver name.
    let err = fails(gd(
        &root,
        &[("GD_PLUGIN_PATH", dir.as_path())],
        &["--driver", "nosuch", "ls"],
    ));
    assert!(err.contains("unknown driver \"nosuch\""), "{err}");
}
