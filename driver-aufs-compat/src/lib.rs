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
//! server is the mounting process's child and is reaped by it (at unmount, or by its next
//! mount or unmount); one that outlives its parent is reparented to init as usual.
//!
//! A diff walks only the layer's branch (`native`, through `driver_api::branch`) and reads
//! the two views where the branch says something changed; `GD_AUFS_GENERIC_DIFF=1` compares
//! the whole views instead.
//!
//! The server binary is found, in this order, at `$GD_AUFS_SERVER`, beside the current
//! executable, in its parent directory (test binaries live in `target/*/deps/`), or on
//! `PATH`. Tests of other packages must build it first (`cargo build -p driver-aufs-compat
//! --bins`).

mod native;
pub mod server;
mod sys;
pub mod union;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use driver_api::archive::{apply_tar, ApplyOptions, WhiteoutFormat};
use driver_api::branch::{changes_from_branch, BranchInput};
// is_mount_point never asks the FUSE server behind the path (a dead one answers ENOTCONN,
// a hung one never).
use driver_api::driver::ViewsInPlace;
use driver_api::fsutil::{is_mount_point, MountEntry};
use driver_api::view::{BranchUnion, ViewSource};
use driver_api::{Access, Backend, Change, DriverFactory, Error, LayerRef, Result};

pub const DRIVER: &str = "aufs";
/// Name of the server binary.
pub const SERVER_BIN: &str = "gd-aufs-server";
/// Environment variable naming the server binary explicitly.
pub const SERVER_ENV: &str = "GD_AUFS_SERVER";

/// Set (to anything) to make diffs compare the whole views instead of walking the branch:
/// a way to rule the native walk out when a diff looks wrong.
pub const GENERIC_DIFF_ENV: &str = "GD_AUFS_GENERIC_DIFF";

/// The descriptor number on which a server started by the backend reports ready.
const READY_FD: i32 = 3;

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

/// A server this process started: this process is its parent, so it reaps it when it exits
/// (PID 1 of some containers and VMs never reaps orphans, so a daemon that forks away would
/// stay a zombie there). Kept per process, not per backend, so that a dropped backend's
/// servers are still reaped.
struct Server {
    mnt: PathBuf,
    child: Child,
    /// Still serving the view at `mnt` as far as this process knows (false once unmounted:
    /// only waiting to be reaped).
    active: bool,
}

static SERVERS: Mutex<Vec<Server>> = Mutex::new(Vec::new());

fn servers() -> std::sync::MutexGuard<'static, Vec<Server>> {
    SERVERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reap the servers this process started that have exited (a view unmounted by another
/// process, a server that died): no zombie stays behind while this process runs.
fn reap_servers() {
    servers().retain_mut(|s| matches!(s.child.try_wait(), Ok(None)));
}

/// Take the active server of `mnt` out of the registry, if this process started it.
fn take_server(mnt: &Path) -> Option<Child> {
    let mut all = servers();
    let i = all.iter().position(|s| s.active && s.mnt == mnt)?;
    Some(all.swap_remove(i).child)
}

/// Keep a server that has not exited yet, to be reaped later.
fn keep_exiting(mnt: &Path, child: Child) {
    servers().push(Server {
        mnt: mnt.to_path_buf(),
        child,
        active: false,
    });
}

fn access_name(a: Access) -> &'static str {
    match a {
        Access::ReadOnly => "read-only",
        Access::ReadWrite => "read-write",
    }
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

fn mounts() -> Vec<MountEntry> {
    driver_api::fsutil::mounts()
}

fn umount(path: &Path, flags: rustix::mount::UnmountFlags) -> io::Result<()> {
    Ok(rustix::mount::unmount(path, flags)?)
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

/// Block until the process `watch` follows exits or `deadline` passes; without a watch (no
/// pidfd), sleep a little. The callers check again whether it exited.
fn wait_for_exit(watch: Option<&std::os::fd::OwnedFd>, deadline: Instant) {
    match watch {
        Some(fd) => {
            let left = deadline.saturating_duration_since(Instant::now());
            // An error (EINTR) just means looking again.
            let _ = sys::wait_readable(fd.as_fd(), left.max(Duration::from_millis(1)));
        }
        None => std::thread::sleep(Duration::from_millis(2)),
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

    /// The ancestors' branches, nearest first.
    fn lower_dirs(&self, layer: &LayerRef) -> Vec<PathBuf> {
        layer.ancestors.iter().map(|k| self.diff_dir(k)).collect()
    }

    /// Whether diffs of `layer` walk its branch (not for a base layer, whose branch is its
    /// whole view, nor when GENERIC_DIFF_ENV asks for the comparer).
    fn walks_branch(&self, layer: &LayerRef) -> bool {
        !layer.ancestors.is_empty() && std::env::var_os(GENERIC_DIFF_ENV).is_none()
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
        if !is_mount_point(&mnt) {
            return false;
        }
        // statfs always reaches the server (attributes may be answered from the kernel's
        // cache even when it is gone): ENOTCONN means it died. Detach what it left.
        let served =
            sys::statvfs(&mnt).is_ok() && self.server_pid(key).map(process_alive).unwrap_or(true);
        if served {
            return true;
        }
        while is_mount_point(&mnt) {
            if umount(&mnt, rustix::mount::UnmountFlags::DETACH).is_err() {
                break;
            }
        }
        let _ = fs::remove_file(self.pid_file(key));
        false
    }

    /// How the view of `key` is mounted now (None: not mounted).
    fn mounted_access(&self, key: &str) -> Option<Access> {
        let mnt = self.mnt_dir(key);
        let entry = mounts().into_iter().rev().find(|m| m.target == mnt)?;
        Some(if entry.options.split(',').any(|o| o == "ro") {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        })
    }

    fn unmount_key(&self, key: &str) -> Result<()> {
        reap_servers();
        let mnt = self.mnt_dir(key);
        let pid = self.server_pid(key);
        let mut detached = false;
        while is_mount_point(&mnt) {
            match umount(&mnt, rustix::mount::UnmountFlags::empty()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // Something still uses the view: detach it; the server ends when the
                    // last user lets go.
                    umount(&mnt, rustix::mount::UnmountFlags::DETACH)
                        .map_err(io_err("umount", &mnt))?;
                    detached = true;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(Error::io("umount", &mnt, e)),
            }
        }
        let mut pid = pid;
        if let Some(mut child) = take_server(&mnt) {
            // Our own child: wait for it, which also reaps it. A detached view's server ends
            // only when the last user lets go: it is reaped later.
            let deadline = Instant::now() + EXIT_TIMEOUT;
            let watch = sys::exit_watch(child.id() as i32).ok().flatten();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => {
                        pid = None;
                        break;
                    }
                    // Reaped by someone else (a caller that waits for any child, or ignores
                    // SIGCHLD): fall back to watching the pid.
                    Err(_) => {
                        pid = Some(child.id() as i32);
                        break;
                    }
                    Ok(None) if detached => {
                        keep_exiting(&mnt, child);
                        pid = None;
                        break;
                    }
                    Ok(None) if Instant::now() > deadline => {
                        let pid = child.id();
                        keep_exiting(&mnt, child);
                        return Err(Error::driver(
                            DRIVER,
                            format!("server {pid} of layer key {key} did not exit after unmount"),
                        ));
                    }
                    Ok(None) => wait_for_exit(watch.as_ref(), deadline),
                }
            }
        }
        if let Some(pid) = pid.filter(|_| !detached) {
            let deadline = Instant::now() + EXIT_TIMEOUT;
            let watch = sys::exit_watch(pid).ok().flatten();
            while process_alive(pid) {
                if Instant::now() > deadline {
                    return Err(Error::driver(
                        DRIVER,
                        format!("server {pid} of layer key {key} did not exit after unmount"),
                    ));
                }
                wait_for_exit(watch.as_ref(), deadline);
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
        reap_servers();
        if self.mounted_key(&layer.key) {
            // Handing out a read-only view to a writer (or a writable one to a reader) would
            // break the caller's assumptions; a remount would pull the view from under its
            // current users. The caller unmounts first.
            return match self.mounted_access(&layer.key) {
                Some(have) if have != access => Err(Error::driver(
                    DRIVER,
                    format!(
                        "layer {} is already mounted {} at {}; it cannot be mounted {} \
                         until it is unmounted",
                        layer.id,
                        access_name(have),
                        mnt.display(),
                        access_name(access)
                    ),
                )),
                _ => Ok(mnt),
            };
        }
        // A server of ours that served this view before is only waiting to be reaped now.
        for s in servers().iter_mut().filter(|s| s.mnt == mnt) {
            s.active = false;
        }
        mkdir_p(&mnt)?;
        let server = find_server().map_err(|reason| Error::Unsupported {
            driver: DRIVER.into(),
            reason,
        })?;
        let log = self.log_file(&layer.key);
        let log_file = fs::File::create(&log).map_err(io_err("create", &log))?;
        let (ready_rd, ready_wr) = sys::pipe_cloexec().map_err(io_err("pipe", &log))?;
        let mut cmd = Command::new(&server);
        cmd.arg("--mountpoint")
            .arg(&mnt)
            .arg("--pidfile")
            .arg(self.pid_file(&layer.key))
            .arg("--fsname")
            .arg(format!("aufs:{}", layer.key))
            .arg("--ready-fd")
            .arg(READY_FD.to_string());
        sys::pass_fd(&mut cmd, ready_wr.as_raw_fd(), READY_FD);
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
        // Only the server holds the write end now: end of file means it gave up.
        drop(ready_wr);
        let mut ready = fs::File::from(ready_rd);
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(format!("timed out after {}s", MOUNT_TIMEOUT.as_secs()));
            }
            match sys::wait_readable(ready.as_fd(), left.min(Duration::from_millis(500))) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => break Err(format!("waiting for the server: {e}")),
            }
            let mut byte = [0u8; 1];
            match ready.read(&mut byte) {
                Ok(1) if byte[0] == b'R' => break Ok(()),
                Ok(_) => break Err("the server exited before the view was ready".into()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(format!("waiting for the server: {e}")),
            }
        };
        let outcome = outcome.and_then(|()| {
            if self.mounted_key(&layer.key) {
                Ok(())
            } else {
                Err("the view is not mounted although the server reported ready".into())
            }
        });
        if let Err(why) = outcome {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            let _ = self.unmount_key(&layer.key);
            let mut msg = String::new();
            if let Ok(mut f) = fs::File::open(&log) {
                let _ = f.read_to_string(&mut msg);
            }
            return Err(Error::driver(
                DRIVER,
                format!(
                    "mounting layer {} at {} failed: {why} ({status}): {}",
                    layer.id,
                    mnt.display(),
                    msg.trim()
                ),
            ));
        }
        servers().push(Server {
            mnt: mnt.clone(),
            child,
            active: true,
        });
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
            lowers: self.lower_dirs(layer),
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
        parent_view: Option<&dyn ViewSource>,
        child_view: &dyn ViewSource,
    ) -> Option<Result<Vec<Change>>> {
        let parent_view = parent_view?;
        if !self.walks_branch(layer) {
            return None;
        }
        let branch = self.diff_dir(&layer.key);
        let lowers = self.lower_dirs(layer);
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

    /// The union of the branches read in place: a diff then starts no FUSE server (two of them,
    /// parent and child, were most of its time). Same rules as the server's view (`native`
    /// is the format; the aufs tests compare the two on every scenario).
    fn views_in_place(&self, layer: &LayerRef) -> Option<ViewsInPlace> {
        if !self.walks_branch(layer) {
            return None;
        }
        let lowers = self.lower_dirs(layer);
        let mut branches = vec![self.diff_dir(&layer.key)];
        branches.extend(lowers.iter().cloned());
        Some(ViewsInPlace {
            parent: Box::new(BranchUnion::new(&native::AufsFormat, lowers)),
            child: Box::new(BranchUnion::new(&native::AufsFormat, branches)),
        })
    }

    fn cleanup(&self) -> Result<()> {
        for key in self.keys()? {
            if is_mount_point(&self.mnt_dir(&key)) {
                self.unmount_key(&key)?;
            }
        }
        Ok(())
    }
}
