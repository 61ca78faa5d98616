//! The `aufs` backend: aufs's on-disk layout, with the union view served in user space.
//!
//! Under the store's directory for this driver:
//!
//! - `diff/<key>/`: the layer's files, whiteouts as `.wh.NAME` files, opaque directories
//!   marked by `.wh..wh..opq`: an aufs branch, readable by aufs tools as it is;
//! - `layers/<key>`: the keys of the ancestors, nearest first, one per line;
//! - `mnt/<key>/`: where the view is mounted;
//! - `run/<key>.pid`, `run/<key>.log`: the FUSE server of a mounted view and its messages.
//!
//! Mainline kernels have no aufs, so the view is a FUSE file system served by a separate
//! process, `gd-aufs-server` (see `server`): a mount outlives the process that asked for it
//! (`gd mount` exits at once), and a crash of the caller never takes the view down. The
//! server binary is found, in this order, at `$GD_AUFS_SERVER`, beside the current
//! executable, in its parent directory (test binaries live in `target/*/deps/`), or on
//! `PATH`. Tests of other packages must build it first (`cargo build -p driver-aufs-compat
//! --bins`).

mod native;
pub mod server;
mod sys;
pub mod union;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use driver_api::archive::{apply_tar, ApplyOptions, WhiteoutFormat};
use driver_api::branch::{changes_from_branch, BranchInput};
use driver_api::{Access, Backend, Change, DriverFactory, Error, LayerRef, Result};

pub const DRIVER: &str = "aufs";
/// Name of the server binary.
pub const SERVER_BIN: &str = "gd-aufs-server";
/// Environment variable naming the server binary explicitly.
pub const SERVER_ENV: &str = "GD_AUFS_SERVER";

/// Set (to anything) to make diffs compare the whole views instead of walking the branch:
/// a way to rule the native walk out when a diff looks wrong.
pub const GENERIC_DIFF_ENV: &str = "GD_AUFS_GENERIC_DIFF";

/// How long a mount may take before it is given up.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an unmounted server may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn factory() -> DriverFactory {
    DriverFactory {
        name: DRIVER,
        priority: 20,
        probe,
        open,
    }
}

fn probe(_home: &Path) -> std::result::Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse does not exist".into());
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("fuse"))
    {
        return Err("the kernel has no fuse file system (modprobe fuse)".into());
    }
    if !rustix::process::geteuid().is_root() {
        return Err("mounting FUSE without fusermount needs root".into());
    }
    find_server().map(|_| ())
}

fn open(home: &Path, _opts: &BTreeMap<String, String>) -> Result<Box<dyn Backend>> {
    let backend = AufsBackend::new(home)?;
    Ok(Box::new(backend))
}

/// Locate the `gd-aufs-server` binary (see the crate documentation for the order).
pub fn find_server() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(SERVER_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "${SERVER_ENV} names {}, which is not a file",
                p.display()
            ))
        };
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join(SERVER_BIN));
            if let Some(up) = dir.parent() {
                candidates.push(up.join(SERVER_BIN));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(SERVER_BIN)));
    }
    candidates.into_iter().find(|c| c.is_file()).ok_or_else(|| {
        format!(
            "cannot find {SERVER_BIN} (set ${SERVER_ENV}, install it beside gd, or build it with \
             `cargo build -p driver-aufs-compat --bins`)"
        )
    })
}

/// For test harnesses of other packages (cargo does not build another package's binaries for
/// their tests): find the server, or build it with the cargo running the tests and point
/// `$GD_AUFS_SERVER` at it. Returns the factory, ready to probe.
pub fn factory_for_tests() -> DriverFactory {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        if find_server().is_ok() {
            return;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let exe = std::env::current_exe().unwrap_or_default();
        // target/<profile>/deps/<test binary>: build the same profile.
        let profile_dir = exe.parent().and_then(|d| d.parent()).map(Path::to_path_buf);
        let release = profile_dir
            .as_ref()
            .and_then(|d| d.file_name())
            .is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "driver-aufs-compat", "--bins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            cmd.arg("--release");
        }
        if let Some(target) = profile_dir.as_ref().and_then(|d| d.parent()) {
            cmd.arg("--target-dir").arg(target);
        }
        match cmd.status() {
            Ok(s) if s.success() => {}
            other => eprintln!("building {SERVER_BIN} failed: {other:?}"),
        }
        if let Some(dir) = profile_dir {
            let bin = dir.join(SERVER_BIN);
            if bin.is_file() {
                std::env::set_var(SERVER_ENV, bin);
            }
        }
    });
    factory()
}

pub struct AufsBackend {
    home: PathBuf,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |e| Error::io(op, path, e)
}

fn mkdir_p(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(io_err("mkdir", path))
}

/// Remove a file or tree; gone already is fine.
fn remove_all(path: &Path) -> Result<()> {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    match res {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

/// Mount points of the calling process's namespace, unescaped, with their fs types.
fn mounts() -> Vec<(PathBuf, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mp = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(sep + 1)?;
            Some((PathBuf::from(unescape(mp)), fstype.to_string()))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len() + 0
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from_vec(out)
}

fn umount(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: NUL-terminated path; umount2 has no memory effects.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `pid` is a live process (a zombie nobody reaped counts as gone).
fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

impl AufsBackend {
    pub fn new(home: &Path) -> Result<Self> {
        for sub in ["diff", "layers", "mnt", "run"] {
            mkdir_p(&home.join(sub))?;
        }
        Ok(AufsBackend {
            home: home.to_path_buf(),
        })
    }

    pub fn diff_dir(&self, key: &str) -> PathBuf {
        self.home.join("diff").join(key)
    }
    fn layers_file(&self, key: &str) -> PathBuf {
        self.home.join("layers").join(key)
    }
    pub fn mnt_dir(&self, key: &str) -> PathBuf {
        self.home.join("mnt").join(key)
    }
    fn pid_file(&self, key: &str) -> PathBuf {
        self.home.join("run").join(format!("{key}.pid"))
    }
    fn log_file(&self, key: &str) -> PathBuf {
        self.home.join("run").join(format!("{key}.log"))
    }

    fn write_layers_file(&self, layer: &LayerRef) -> Result<()> {
        let path = self.layers_file(&layer.key);
        let tmp = path.with_extension("tmp");
        let mut text = String::new();
        for a in &layer.ancestors {
            text.push_str(a);
            text.push('\n');
        }
        fs::write(&tmp, text).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))
    }

    fn server_pid(&self, key: &str) -> Option<i32> {
        fs::read_to_string(self.pid_file(key))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether the view of `key` is mounted and served; a mount whose server died is
    /// detached on the way.
    fn mounted_key(&self, key: &str) -> bool {
        let mnt = self.mnt_dir(key);
        if !mounts().iter().any(|(p, _)| *p == mnt) {
            return false;
        }
        // statfs always reaches the server (attributes may be answered from the kernel's
        // cache even when it is gone): ENOTCONN means it died. Detach what it left.
        let served =
            sys::statvfs(&mnt).is_ok() && self.server_pid(key).map(process_alive).unwrap_or(true);
        if served {
            return true;
        }
        while mounts().iter().any(|(p, _)| *p == mnt) {
            if umount(&mnt, libc::MNT_DETACH).is_err() {
                break;
            }
        }
        let _ = fs::remove_file(self.pid_file(key));
        false
    }

    fn unmount_key(&self, key: &str) -> Result<()> {
        let mnt = self.mnt_dir(key);
        let pid = self.server_pid(key);
        let mut detached = false;
        while mounts().iter().any(|(p, _)| *p == mnt) {
            match umount(&mnt, 0) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // Something still uses the view: detach it; the server ends when the
                    // last user lets go.
                    umount(&mnt, libc::MNT_DETACH).map_err(io_err("umount", &mnt))?;
                    detached = true;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(Error::io("umount", &mnt, e)),
            }
        }
        if let Some(pid) = pid.filter(|_| !detached) {
            let deadline = Instant::now() + EXIT_TIMEOUT;
            while process_alive(pid) {
                if Instant::now() > deadline {
                    return Err(Error::driver(
                        DRIVER,
                        format!("server {pid} of layer key {key} did not exit after unmount"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = fs::remove_file(self.pid_file(key));
        Ok(())
    }
}

impl Backend for AufsBackend {
    fn name(&self) -> &str {
        DRIVER
    }

    fn status(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("Root Dir".to_string(), self.home.display().to_string()),
            (
                "Format".to_string(),
                "aufs branches (diff/, layers/, mnt/)".to_string(),
            ),
            (
                "View".to_string(),
                "FUSE (fuser 0.18), served by gd-aufs-server".to_string(),
            ),
        ];
        out.push((
            "Server".to_string(),
            find_server()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|e| e),
        ));
        if let Ok(rd) = fs::read_dir(self.home.join("diff")) {
            out.push(("Dirs".to_string(), rd.count().to_string()));
        }
        out
    }

    fn create(&self, layer: &LayerRef) -> Result<()> {
        let diff = self.diff_dir(&layer.key);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&diff)
            .map_err(io_err("mkdir", &diff))?;
        // The root of a layer is always 0755 whatever the umask.
        fs::set_permissions(&diff, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io_err("chmod", &diff))?;
        mkdir_p(&self.mnt_dir(&layer.key))?;
        self.write_layers_file(layer)
    }

    fn clone_layer(&self, src_key: &str, dst: &LayerRef) -> Result<()> {
        let src = self.diff_dir(src_key);
        let to = self.diff_dir(&dst.key);
        remove_all(&to)?;
        // Copied in this process: a `cp` child would outlive a killed gd and keep writing
        // while the next start removes the half-made copy.
        driver_api::copy::copy_tree(&src, &to)?;
        mkdir_p(&self.mnt_dir(&dst.key))?;
        self.write_layers_file(dst)
    }

    fn remove(&self, key: &str) -> Result<()> {
        self.unmount_key(key)?;
        remove_all(&self.diff_dir(key))?;
        remove_all(&self.layers_file(key))?;
        remove_all(&self.log_file(key))?;
        remove_all(&self.pid_file(key))?;
        let mnt = self.mnt_dir(key);
        match fs::remove_dir(&mnt) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("rmdir", &mnt, e)),
            _ => Ok(()),
        }
    }

    fn keys(&self) -> Result<Vec<String>> {
        let dir = self.home.join("diff");
        let mut keys = Vec::new();
        for ent in fs::read_dir(&dir).map_err(io_err("read_dir", &dir))? {
            let ent = ent.map_err(io_err("read_dir", &dir))?;
            if let Some(name) = ent.file_name().to_str() {
                keys.push(name.to_string());
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn mount(&self, layer: &LayerRef, access: Access) -> Result<PathBuf> {
        let mnt = self.mnt_dir(&layer.key);
        if self.mounted_key(&layer.key) {
            return Ok(mnt);
        }
        mkdir_p(&mnt)?;
        let server = find_server().map_err(|reason| Error::Unsupported {
            driver: DRIVER.into(),
            reason,
        })?;
        let log = self.log_file(&layer.key);
        let log_file = fs::File::create(&log).map_err(io_err("create", &log))?;
        let mut cmd = Command::new(&server);
        cmd.arg("--mountpoint")
            .arg(&mnt)
            .arg("--pidfile")
            .arg(self.pid_file(&layer.key))
            .arg("--fsname")
            .arg(format!("aufs:{}", layer.key));
        if access == Access::ReadOnly {
            cmd.arg("--ro");
        }
        cmd.arg(self.diff_dir(&layer.key));
        for a in &layer.ancestors {
            cmd.arg(self.diff_dir(a));
        }
        let err_file = log_file.try_clone().map_err(io_err("dup", &log))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(io_err("spawn", &server))?;
        // The command exits once the view answers (its daemon half lives on).
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        let status = loop {
            match child.try_wait().map_err(io_err("wait", &server))? {
                Some(status) => break status,
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = self.unmount_key(&layer.key);
                    return Err(Error::driver(
                        DRIVER,
                        format!("mounting layer {} timed out", layer.id),
                    ));
                }
                None => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        if !status.success() || !self.mounted_key(&layer.key) {
            let mut msg = String::new();
            if let Ok(mut f) = fs::File::open(&log) {
                let _ = f.read_to_string(&mut msg);
            }
            let _ = self.unmount_key(&layer.key);
            return Err(Error::driver(
                DRIVER,
                format!(
                    "mounting layer {} at {} failed ({status}): {}",
                    layer.id,
                    mnt.display(),
                    msg.trim()
                ),
            ));
        }
        Ok(mnt)
    }

    fn unmount(&self, layer: &LayerRef) -> Result<()> {
        self.unmount_key(&layer.key)
    }

    fn is_mounted(&self, layer: &LayerRef) -> bool {
        self.mounted_key(&layer.key)
    }

    fn metadata(&self, layer: &LayerRef) -> Result<BTreeMap<String, String>> {
        let mut m = BTreeMap::new();
        m.insert(
            "DiffDir".into(),
            self.diff_dir(&layer.key).display().to_string(),
        );
        m.insert(
            "LayersFile".into(),
            self.layers_file(&layer.key).display().to_string(),
        );
        m.insert(
            "MountPoint".into(),
            self.mnt_dir(&layer.key).display().to_string(),
        );
        let branches: Vec<String> = std::iter::once(&layer.key)
            .chain(layer.ancestors.iter())
            .map(|k| self.diff_dir(k).display().to_string())
            .collect();
        m.insert("Branches".into(), branches.join(":"));
        if let Some(pid) = self.server_pid(&layer.key).filter(|&p| process_alive(p)) {
            m.insert("ServerPid".into(), pid.to_string());
        }
        Ok(m)
    }

    fn apply(&self, layer: &LayerRef, tar: &mut dyn Read) -> Result<u64> {
        let opts = ApplyOptions {
            whiteouts: WhiteoutFormat::Aufs,
            lowers: layer.ancestors.iter().map(|k| self.diff_dir(k)).collect(),
        };
        let stats = apply_tar(&self.diff_dir(&layer.key), tar, &opts)
            .map_err(|e| Error::from(e).in_layer(&layer.id))?;
        Ok(stats.bytes)
    }

    /// Changes found by walking only the layer's branch `diff/<key>` (see `native`). A base
    /// layer's branch is its whole view, so there the generic comparer is just as fast: None.
    fn native_changes(
        &self,
        layer: &LayerRef,
        parent_view: Option<&Path>,
        child_view: &Path,
    ) -> Option<Result<Vec<Change>>> {
        let parent_view = parent_view?;
        if layer.ancestors.is_empty() || std::env::var_os(GENERIC_DIFF_ENV).is_some() {
            return None;
        }
        let branch = self.diff_dir(&layer.key);
        let lowers: Vec<PathBuf> = layer.ancestors.iter().map(|k| self.diff_dir(k)).collect();
        let input = BranchInput {
            branch: &branch,
            lowers: &lowers,
            parent_view,
            child_view,
        };
        Some(
            changes_from_branch(&native::AufsFormat, &input)
                .map_err(|e| Error::from(e).in_layer(&layer.id)),
        )
    }

    fn cleanup(&self) -> Result<()> {
        for key in self.keys()? {
            if mounts().iter().any(|(p, _)| *p == self.mnt_dir(&key)) {
                self.unmount_key(&key)?;
            }
        }
        Ok(())
    }
}
