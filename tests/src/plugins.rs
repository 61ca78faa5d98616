//! Drivers loaded as plugins, for the suite's plugin runners (`tests/tests/plugin_*.rs`).
//!
//! Cargo's test runners do not build `cdylib` targets, so a runner builds its plugin first:
//! `cargo build -p <crate>` with the test binary's own profile and target directory, once per
//! process (cargo's lock serialises concurrent builds from other test processes, and a second
//! build is a no-op). `GD_TEST_PLUGIN_DIR` points at prebuilt plugins (and `gd`) instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use driver_api::plugin::host::Plugin;

use crate::Harness;

/// The test binary's target directory and cargo profile (`target/<dir>/deps/<test>`).
fn target_and_profile() -> (PathBuf, String) {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary in target/<profile>/deps");
    let target = profile_dir
        .parent()
        .expect("target directory")
        .to_path_buf();
    let dir = profile_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let profile = match dir.as_str() {
        "debug" => "dev".to_string(),
        other => other.to_string(),
    };
    (target, profile)
}

/// Build the cdylib of `package` (library name `lib_name`) and return the `.so`'s path.
pub fn build_plugin(package: &str, lib_name: &str) -> PathBuf {
    build_artifact(package, &format!("lib{lib_name}.so"), &[])
}

/// Build `package` (with `extra` arguments to `cargo build`) once per process and return
/// the path of `file` in the profile's output directory.
pub fn build_artifact(package: &str, file: &str, extra: &[&str]) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(p) = built.get(file) {
        return p.clone();
    }
    let path = if let Some(dir) = std::env::var_os("GD_TEST_PLUGIN_DIR") {
        PathBuf::from(dir).join(file)
    } else {
        let (target, profile) = target_and_profile();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let status = Command::new(&cargo)
            .arg("build")
            .arg("--quiet")
            .args(["-p", package, "--profile", &profile])
            .args(extra)
            .arg("--manifest-path")
            .arg(workspace.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .unwrap_or_else(|e| panic!("running {cargo} build -p {package}: {e}"));
        assert!(status.success(), "cargo build -p {package} failed");
        let dir = target.join(if profile == "dev" { "debug" } else { &profile });
        dir.join(file)
    };
    assert!(path.is_file(), "{} was not built", path.display());
    built.insert(file.to_string(), path.clone());
    path
}

/// Build and load a plugin.
pub fn load_plugin(package: &str, lib_name: &str) -> Arc<Plugin> {
    let path = build_plugin(package, lib_name);
    Plugin::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// A harness for a plugin's driver with its home in a plain temporary directory.
pub fn plugin_harness(package: &str, lib_name: &str) -> Option<Harness> {
    let plugin = load_plugin(package, lib_name);
    let tmp = Harness::new_tmp(&format!("plugin-{}", plugin.name()));
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    open_in(&plugin, tmp, home, Vec::new())
}

/// Probe and open `plugin` with its files under `home`, or skip loudly.
fn open_in(
    plugin: &Arc<Plugin>,
    tmp: tempfile::TempDir,
    home: PathBuf,
    guards: Vec<Box<dyn std::any::Any>>,
) -> Option<Harness> {
    let name: &'static str = Box::leak(plugin.name().to_string().into_boxed_str());
    if let Err(reason) = plugin.probe(&home) {
        if crate::required(name) {
            panic!("driver {name} is required here (GD_REQUIRE_DRIVERS) but cannot run: {reason}");
        }
        eprintln!("SKIPPED: plugin driver {name} cannot run on this host: {reason}");
        return None;
    }
    let driver = plugin
        .open(&home, &Default::default())
        .unwrap_or_else(|e| panic!("opening plugin driver {name}: {e}"));
    Some(Harness::from_driver(
        name,
        Box::new(driver),
        home,
        tmp,
        guards,
    ))
}

/// Unmounts a filesystem when dropped (after the driver using it was closed).
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        use rustix::mount::{unmount, UnmountFlags};
        if let Err(e) = unmount(&self.0, UnmountFlags::empty()) {
            eprintln!("unmounting {}: {e}; detaching it", self.0.display());
            let _ = unmount(&self.0, UnmountFlags::DETACH);
        }
    }
}

/// A fresh btrfs filesystem: a sparse image file, `mkfs.btrfs`, loop-mounted at
/// `<tmp>/mnt`. Returns the mount point and its unmount guard, or why it cannot be made.
pub fn mount_scratch_btrfs(tmp: &Path) -> Result<(PathBuf, Unmount), String> {
    let image = tmp.join("btrfs.img");
    let mnt = tmp.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    let f = std::fs::File::create(&image).map_err(|e| e.to_string())?;
    f.set_len(1 << 30).map_err(|e| e.to_string())?;
    drop(f);
    let out = Command::new("mkfs.btrfs")
        .args(["-q", "-f"])
        .arg(&image)
        .output()
        .map_err(|e| format!("running mkfs.btrfs (btrfs-progs): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mkfs.btrfs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // `mount -o loop` sets the loop device to clear itself when unmounted.
    let out = Command::new("mount")
        .args(["-t", "btrfs", "-o", "loop"])
        .arg(&image)
        .arg(&mnt)
        .output()
        .map_err(|e| format!("running mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mounting a btrfs image: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((mnt.clone(), Unmount(mnt)))
}

/// A harness for the btrfs plugin on a fresh loop-mounted btrfs.
pub fn btrfs_harness() -> Option<Harness> {
    let plugin = load_plugin("gd-plugin-btrfs", "gd_btrfs");
    let tmp = Harness::new_tmp("plugin-btrfs");
    let (mnt, guard) = match mount_scratch_btrfs(tmp.path()) {
        Ok(m) => m,
        Err(reason) => {
            if crate::required("btrfs") {
                panic!("driver btrfs is required here (GD_REQUIRE_DRIVERS) but: {reason}");
            }
            eprintln!("SKIPPED: plugin driver btrfs: no scratch btrfs: {reason}");
            return None;
        }
    };
    let home = mnt.join("home");
    std::fs::create_dir_all(&home).unwrap();
    open_in(&plugin, tmp, home, vec![Box::new(guard)])
}
