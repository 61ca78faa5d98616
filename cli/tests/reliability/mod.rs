//! What the reliability tests (concurrency.rs, full_disk.rs) share: running `gd` against a
//! root with a time limit, the drivers this host can run, and layer tars made from
//! directories.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const GD: &str = env!("CARGO_BIN_EXE_gd");

/// No single `gd` call of these tests may take longer: past it, the call counts as hung.
pub const CALL_LIMIT: Duration = Duration::from_secs(60);

/// `gd --root ROOT --driver DRIVER`, with the environment's own choices removed.
#[derive(Clone)]
pub struct Gd {
    pub root: PathBuf,
    pub driver: String,
    /// The test kills gd on purpose: `ok` accepts the recovery reports that follow.
    pub crashes: bool,
}

impl Gd {
    /// gd for `driver` with its stores under `root`.
    pub fn new(root: PathBuf, driver: &str) -> Gd {
        Gd {
            root,
            driver: driver.to_string(),
            crashes: false,
        }
    }

    /// gd on a fresh root in /var/tmp (a disk, not the tmpfs /tmp may be), removed with the
    /// returned directory.
    pub fn on_temp_root(prefix: &str, driver: &str) -> (tempfile::TempDir, Gd) {
        let root = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/var/tmp")
            .unwrap();
        let gd = Gd::new(root.path().to_path_buf(), driver);
        (root, gd)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(GD);
        c.env_remove("GD_ROOT")
            .env_remove("GD_DRIVER")
            .env_remove("GD_FAILPOINT")
            .arg("--root")
            .arg(&self.root)
            .arg("--driver")
            .arg(&self.driver)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Run, killing the process and failing the test if it takes longer than `CALL_LIMIT`
    /// (a deadlock shows up as this failure, naming the command).
    pub fn run(&self, args: &[&str]) -> Output {
        let mut child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if start.elapsed() > CALL_LIMIT {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "[{}] gd {args:?} hung for {:?} (deadlock?): {}",
                    self.driver,
                    CALL_LIMIT,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "[{}] gd {args:?} failed: {}",
            self.driver,
            String::from_utf8_lossy(&out.stderr)
        );
        // Unless the test kills gd, a recovery means one process took another's work in
        // progress for a dead one's.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            self.crashes || !stderr.contains("gd: recovered:"),
            "[{}] gd {args:?} recovered from a crash that did not happen: {stderr}",
            self.driver
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run with the failpoint `failpoint` armed (`GD_FAILPOINT`); whether it killed gd.
    pub fn killed_at(&self, failpoint: &str, args: &[&str]) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let out = self
            .cmd(args)
            .env("GD_FAILPOINT", failpoint)
            .output()
            .unwrap();
        out.status.signal() == Some(9)
    }

    /// `gd --json ls`
    pub fn layers(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["--json", "ls"])).unwrap();
        v.as_array().unwrap().clone()
    }

    pub fn ids(&self) -> Vec<String> {
        self.layers()
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn digest(&self, id: &str) -> String {
        self.ok(&["manifest", id, "--digest"]).trim().to_string()
    }

    /// `gd check` must find nothing.
    pub fn assert_check_clean(&self, ctx: &str) {
        let out = self.run(&["check"]);
        assert!(
            out.status.success(),
            "[{}] {ctx}: gd check found problems:\n{}{}",
            self.driver,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Unmount whatever a failing test left mounted.
    pub fn cleanup(&self) {
        let _ = self.cmd(&["cleanup"]).output();
    }
}

/// The manifest digest of a directory (`gd manifest --digest --path DIR`).
pub fn digest_of(dir: &Path) -> String {
    let out = Command::new(GD)
        .args(["manifest", "--digest", "--path"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Write the canonical changeset from `from` (None: empty) to `to` into `path`.
pub fn write_tar(from: Option<&Path>, to: &Path, path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    driver_api::archive::write_changeset(from, to, &mut f).unwrap();
    f.flush().unwrap();
}

/// The built-in drivers this host can run, except devmapper (it needs its own guest);
/// drivers named in GD_REQUIRE_DRIVERS must run, the others skip loudly.
pub fn drivers(what: &str) -> Vec<String> {
    ["vfs", "overlay", "aufs"]
        .into_iter()
        .filter(|d| driver_usable(d, what))
        .map(str::to_string)
        .collect()
}

/// Whether the built-in driver `name` can run here (`gd drivers`). One named in
/// GD_REQUIRE_DRIVERS must: the test fails if it cannot. Any other says SKIPPED and why.
pub fn driver_usable(name: &str, what: &str) -> bool {
    let probe = tempfile::tempdir().unwrap();
    let out = Command::new(GD)
        .arg("--root")
        .arg(probe.path())
        .args(["--json", "drivers"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = v
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name && d["source"] == "built-in")
        .unwrap_or_else(|| panic!("{name} is not a built-in driver"));
    if d["usable"].as_bool() == Some(true) {
        return true;
    }
    let required = std::env::var("GD_REQUIRE_DRIVERS").unwrap_or_default();
    if required.split(',').any(|r| r.trim() == name) {
        panic!(
            "driver {name} is required here but cannot run: {}",
            d["reason"]
        );
    }
    eprintln!("SKIPPED: {what} on driver {name}: {}", d["reason"]);
    false
}

/// A tiny xorshift generator: the tests are reproducible from their seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
