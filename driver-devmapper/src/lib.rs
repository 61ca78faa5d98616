//! gd's devmapper backend: Docker's devicemapper graph driver, rebuilt.
//!
//! Every storage key owns one thin device in a device-mapper thin pool, a thin snapshot of
//! its parent's device (of the base device for a layer without a parent). The base device is
//! made and formatted once; a layer's view is the `rootfs/` subdirectory of its mounted
//! filesystem, so that `lost+found` never shows.
//!
//! The pool is either a loop-backed pool made from two sparse files under the home directory
//! (`pool/data`, `pool/metadata`) or an existing thin-pool device (`dm.thinpooldev`).
//!
//! Crash safety: before each pool operation (`create_thin`, `create_snap`, `delete`) the
//! operation and the pool transaction id it will end with are recorded in
//! `transaction.json`; the per-device metadata (`devices/<key>.json`) is written next, then
//! the pool's transaction id is moved forward and the record removed. At start-up a record
//! whose transaction the pool never reached is rolled back: its device is deleted from the
//! pool and its metadata removed, so a half-made layer never survives and a half-deleted one
//! is finished.

mod config;
mod dm;
mod loopdev;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use rustix::mount::{MountFlags, UnmountFlags};

pub use config::{Config, Fs};
use dm::{Dm, DmFail, PoolStatus};
use driver_api::{is_storage_key, Access, Backend, DriverFactory, Error, LayerRef, Result};
use state::{DeviceMeta, DeviceSet, OpenTransaction, Paths, TxnOp};

pub const DRIVER: &str = "devmapper";
const SECTOR: u64 = 512;
/// The name of the base device's metadata (not a storage key: keys are 32 hex digits).
const BASE: &str = "base";
/// Thin device ids are 24 bits wide.
const MAX_DEVICE_ID: u32 = (1 << 24) - 1;

pub fn factory() -> DriverFactory {
    DriverFactory {
        name: DRIVER,
        priority: 10,
        probe,
        open,
    }
}

/// Whether this kernel has device-mapper with the thin-pool target, and why not.
pub fn probe(_home: &Path) -> std::result::Result<(), String> {
    let listed = |file: &str| {
        fs::read_to_string(file)
            .map(|s| s.lines().any(|l| l.trim_end().ends_with(" device-mapper")))
            .unwrap_or(false)
    };
    if !listed("/proc/devices") && !listed("/proc/misc") {
        return Err(
            "device-mapper is missing from this kernel (neither /proc/devices nor \
                    /proc/misc lists device-mapper; load the dm_mod module)"
                .into(),
        );
    }
    if !Path::new("/dev/mapper/control").exists() {
        return Err(
            "/dev/mapper/control does not exist (the kernel has device-mapper, \
                    but its control node is missing)"
                .into(),
        );
    }
    let thin = Path::new("/sys/module/dm_thin_pool").exists()
        || Dm::open()
            .and_then(|d| d.targets())
            .map(|t| t.iter().any(|t| t == "thin-pool"))
            .unwrap_or(false);
    if !thin {
        return Err("the dm_thin_pool target is not available (modprobe dm_thin_pool)".into());
    }
    Ok(())
}

fn open(home: &Path, opts: &BTreeMap<String, String>) -> Result<Box<dyn Backend>> {
    Ok(Box::new(DevmapperBackend::open(home, opts)?))
}

fn derr(message: impl Into<String>) -> Error {
    Error::driver(DRIVER, message)
}

pub struct DevmapperBackend {
    paths: Paths,
    config: Config,
    /// Prefix of every device-mapper name this store makes: `gd-MAJ:MIN-INO` of its home,
    /// so that two stores on one host never share a name (as Docker did).
    prefix: String,
    state: Mutex<State>,
}

struct State {
    dm: Dm,
    /// Held (flock) while the backend works, so that two processes never interleave pool
    /// transactions.
    lock: fs::File,
    /// Device ids in use by a metadata file (never handed out again while used).
    used_ids: BTreeSet<u32>,
}

/// Guard of the cross-process lock; released on drop.
struct Locked<'a> {
    st: std::sync::MutexGuard<'a, State>,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.st.lock, rustix::fs::FlockOperation::Unlock);
    }
}

impl DevmapperBackend {
    pub fn open(home: &Path, opts: &BTreeMap<String, String>) -> Result<DevmapperBackend> {
        if let Err(reason) = probe(home) {
            return Err(Error::Unsupported {
                driver: DRIVER.into(),
                reason,
            });
        }
        let paths = Paths {
            home: home.to_path_buf(),
        };
        for d in [paths.home.clone(), paths.devices(), paths.mnt()] {
            fs::create_dir_all(&d).map_err(|e| Error::io("create directory", &d, e))?;
        }
        let mut explicit = vec![];
        let wanted = Config::default().with_options(opts, &mut explicit)?;
        let config = match state::read_json::<Config>(&paths.config())? {
            Some(have) => {
                have.check_compatible(&wanted, &explicit)?;
                have
            }
            None => wanted,
        };
        let st = fs::metadata(home).map_err(|e| Error::io("stat", home, e))?;
        let prefix = format!(
            "gd-{}:{}-{}",
            rustix::fs::major(st.dev()),
            rustix::fs::minor(st.dev()),
            st.ino()
        );
        let dm = Dm::open().map_err(|f| derr(f.to_string()))?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(paths.lock())
            .map_err(|e| Error::io("open", paths.lock(), e))?;
        let backend = DevmapperBackend {
            paths,
            config,
            prefix,
            state: Mutex::new(State {
                dm,
                lock,
                used_ids: BTreeSet::new(),
            }),
        };
        {
            let mut g = backend.lock()?;
            if state::read_json::<Config>(&backend.paths.config())?.is_none() {
                state::write_json(&backend.paths.config(), &backend.config)?;
            }
            backend.load_used_ids(&mut g)?;
            backend.ensure_pool(&g)?;
            backend.recover(&mut g)?;
            backend.finish_pending_deletes(&mut g)?;
            backend.ensure_base(&mut g)?;
        }
        Ok(backend)
    }

    fn lock(&self) -> Result<Locked<'_>> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        rustix::fs::flock(&st.lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io("lock", self.paths.lock(), e.into()))?;
        Ok(Locked { st })
    }

    // ---- names and paths -------------------------------------------------------------

    fn pool_name(&self) -> String {
        match &self.config.thin_pool_dev {
            Some(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            None => format!("{}-pool", self.prefix),
        }
    }

    fn dm_name(&self, name: &str) -> String {
        format!("{}-{}", self.prefix, name)
    }

    fn read_meta(&self, name: &str) -> Result<Option<DeviceMeta>> {
        state::read_json(&self.paths.device(name))
    }

    fn load_used_ids(&self, g: &mut Locked) -> Result<()> {
        g.st.used_ids.clear();
        for name in self.device_names()? {
            if let Some(m) = self.read_meta(&name)? {
                g.st.used_ids.insert(m.device_id);
            }
        }
        Ok(())
    }

    /// Names of all metadata files (keys, `base`).
    fn device_names(&self) -> Result<Vec<String>> {
        let dir = self.paths.devices();
        let mut names = vec![];
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("read directory", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
            let file = entry.file_name();
            let file = file.to_string_lossy();
            if let Some(stem) = file.strip_suffix(".json") {
                if !stem.starts_with('.') {
                    names.push(stem.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    // ---- the pool -------------------------------------------------------------------

    /// Make sure the pool device is active: the given one must exist; a loop pool is
    /// (re)assembled from its files when it is not active (after `cleanup` or a reboot).
    fn ensure_pool(&self, g: &Locked) -> Result<()> {
        let name = self.pool_name();
        if g.st
            .dm
            .device(&name)
            .map_err(|f| self.pool_error(g, f))?
            .is_some()
        {
            return Ok(());
        }
        if let Some(dev) = &self.config.thin_pool_dev {
            return Err(derr(format!(
                "the thin pool {} (dm.thinpooldev) is not active",
                dev.display()
            )));
        }
        let dir = self.paths.pool_dir();
        fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let data = self.paths.data_file();
        let meta = self.paths.metadata_file();
        for (path, size) in [
            (&data, self.config.loop_data_size),
            (&meta, self.config.loop_metadata_size),
        ] {
            // A new sparse file: a fresh, all-zero metadata area is what the kernel formats.
            if !path.exists() {
                let f = fs::File::create(path).map_err(|e| Error::io("create", path, e))?;
                f.set_len(size).map_err(|e| Error::io("size", path, e))?;
                f.sync_all().map_err(|e| Error::io("fsync", path, e))?;
            }
        }
        let data_len = fs::metadata(&data)
            .map_err(|e| Error::io("stat", &data, e))?
            .len();
        let data_loop = loopdev::attach(&data)?;
        let meta_loop = loopdev::attach(&meta)?;
        let block_sectors = self.config.block_size / SECTOR;
        let data_sectors = data_len / SECTOR / block_sectors * block_sectors;
        let blocks = data_sectors / block_sectors;
        let low_water = (blocks / 10).clamp(1, 32768);
        let table = vec![(
            0,
            data_sectors,
            "thin-pool".to_string(),
            // Writes to a full pool fail at once rather than hang until a timeout.
            format!(
                "{} {} {} {} 1 error_if_no_space",
                meta_loop.path.display(),
                data_loop.path.display(),
                block_sectors,
                low_water
            ),
        )];
        g.st.dm
            .create(&name, &table)
            .map_err(|f| derr(format!("cannot assemble the loop thin pool {name}: {f}")))?;
        // The pool holds the loop devices now; dropping our handles arms their autoclear.
        drop((data_loop, meta_loop));
        Ok(())
    }

    fn pool_status(&self, g: &Locked) -> Result<PoolStatus> {
        let name = self.pool_name();
        let (target, params) = g.st.dm.status(&name).map_err(|f| derr(f.to_string()))?;
        if target != "thin-pool" {
            return Err(derr(format!(
                "{name} is a {target} device, not a thin pool"
            )));
        }
        PoolStatus::parse(&params)
            .ok_or_else(|| derr(format!("cannot parse the status of {name}: {params:?}")))
    }

    /// A sentence about the pool's health if it is in trouble (full, read-only, failed).
    fn pool_trouble(&self, g: &Locked) -> Option<String> {
        let name = self.pool_name();
        let s = self.pool_status(g).ok()?;
        if s.mode == "Fail" {
            return Some(format!(
                "the thin pool {name} has failed; its metadata needs repair (thin_check)"
            ));
        }
        if s.meta_total > 0 && s.meta_used >= s.meta_total {
            return Some(format!(
                "the thin pool {name} is out of metadata space ({}/{} blocks used); remove \
                 layers or make the pool with a larger dm.loopmetadatasize",
                s.meta_used, s.meta_total
            ));
        }
        if s.mode == "out_of_data_space" || (s.data_total > 0 && s.data_used >= s.data_total) {
            return Some(format!(
                "the thin pool {name} is full ({}/{} data blocks of {} bytes used); remove \
                 layers or make the pool with a larger dm.loopdatasize",
                s.data_used, s.data_total, self.config.block_size
            ));
        }
        if s.mode == "ro" || s.needs_check {
            return Some(format!(
                "the thin pool {name} is read-only (its metadata needs checking: thin_check)"
            ));
        }
        None
    }

    /// Turn a failed dm call into an error, preferring the pool's own trouble as the reason.
    fn pool_error(&self, g: &Locked, f: DmFail) -> Error {
        match self.pool_trouble(g) {
            Some(trouble) => derr(format!("{}: {trouble}", f.what)),
            None => derr(f.to_string()),
        }
    }

    fn message(&self, g: &Locked, msg: &str) -> std::result::Result<(), DmFail> {
        g.st.dm.message(&self.pool_name(), msg)
    }

    // ---- transactions ---------------------------------------------------------------

    fn begin(&self, g: &Locked, name: &str, device_id: u32, op: TxnOp) -> Result<OpenTransaction> {
        let status = self.pool_status(g)?;
        let txn = OpenTransaction {
            transaction_id: status.transaction_id + 1,
            device_id,
            name: name.to_string(),
            op,
        };
        state::write_json(&self.paths.transaction(), &txn)?;
        Ok(txn)
    }

    fn commit(&self, g: &Locked, txn: &OpenTransaction) -> Result<()> {
        let msg = format!(
            "set_transaction_id {} {}",
            txn.transaction_id - 1,
            txn.transaction_id
        );
        self.message(g, &msg).map_err(|f| self.pool_error(g, f))?;
        state::remove_file(&self.paths.transaction())
    }

    /// The pool refused the operation: it did not change, so the record just goes.
    fn abandon(&self) -> Result<()> {
        state::remove_file(&self.paths.transaction())
    }

    /// Roll back (or, if the pool got there, close) a transaction left open by a crash.
    fn recover(&self, g: &mut Locked) -> Result<()> {
        let Some(txn) = state::read_json::<OpenTransaction>(&self.paths.transaction())? else {
            return Ok(());
        };
        let pool_txn = self.pool_status(g)?.transaction_id;
        if pool_txn == txn.transaction_id {
            // The pool and the metadata were both done; only closing the record was not.
            return self.abandon();
        }
        if pool_txn + 1 != txn.transaction_id {
            return Err(derr(format!(
                "the thin pool {} is at transaction {pool_txn} but {} records an open \
                 transaction {}; the pool was changed by something else",
                self.pool_name(),
                self.paths.transaction().display(),
                txn.transaction_id
            )));
        }
        // Undo whatever part was done: the device must not exist afterwards. For a delete
        // that is the finish of the job; for a create, the half-made layer goes away.
        let dm_name = self.dm_name(&txn.name);
        let mp = self.paths.mountpoint(&txn.name);
        if is_mountpoint(&mp) {
            let _ = rustix::mount::unmount(&mp, UnmountFlags::DETACH);
        }
        g.st.dm
            .remove(&dm_name, false)
            .map_err(|f| derr(format!("rolling back {:?}: {f}", txn)))?;
        self.delete_thin(g, txn.device_id)
            .map_err(|f| derr(format!("rolling back {:?}: {f}", txn)))?;
        if let Some(meta) = self.read_meta(&txn.name)? {
            if meta.device_id == txn.device_id {
                state::remove_file(&self.paths.device(&txn.name))?;
                g.st.used_ids.remove(&txn.device_id);
            }
        }
        self.abandon()
    }

    /// `delete ID` in the pool; a device the pool does not have is already deleted.
    fn delete_thin(&self, g: &Locked, id: u32) -> std::result::Result<(), DmFail> {
        match self.message(g, &format!("delete {id}")) {
            Err(f) if f.errno == Some(libc::ENODATA) => Ok(()),
            other => other,
        }
    }

    /// Make a new thin device in the pool with `send(id)`, recorded as `name`'s device.
    fn make_device(
        &self,
        g: &mut Locked,
        name: &str,
        size: u64,
        send: &dyn Fn(&Locked, u32) -> std::result::Result<(), DmFail>,
    ) -> Result<DeviceMeta> {
        if self.read_meta(name)?.is_some() {
            return Err(derr(format!("storage key {name} already has a device")));
        }
        let mut set = state::read_json::<DeviceSet>(&self.paths.deviceset())?.unwrap_or_default();
        for _ in 0..1024 {
            let mut id = set.next_device_id;
            while g.st.used_ids.contains(&id) {
                id = if id >= MAX_DEVICE_ID { 0 } else { id + 1 };
            }
            set.next_device_id = if id >= MAX_DEVICE_ID { 0 } else { id + 1 };
            state::write_json(&self.paths.deviceset(), &set)?;
            let txn = self.begin(g, name, id, TxnOp::Create)?;
            match send(g, id) {
                Ok(()) => {}
                // A leftover device no metadata names (e.g. from another tool): next id.
                Err(f) if f.errno == Some(libc::EEXIST) => {
                    self.abandon()?;
                    continue;
                }
                Err(f) => {
                    let err = self.pool_error(g, f);
                    self.abandon()?;
                    return Err(err);
                }
            }
            let meta = DeviceMeta {
                device_id: id,
                size,
                transaction_id: txn.transaction_id,
                initialized: false,
            };
            state::write_json(&self.paths.device(name), &meta)?;
            g.st.used_ids.insert(id);
            self.commit(g, &txn)?;
            return Ok(meta);
        }
        Err(derr(format!(
            "no free thin device id in the pool {} after 1024 tries",
            self.pool_name()
        )))
    }

    /// A thin snapshot of `origin` (`base` or a key) recorded as `name`.
    fn snapshot(&self, g: &mut Locked, name: &str, origin: &str, for_layer: &str) -> Result<()> {
        let origin_meta = self.read_meta(origin)?.ok_or_else(|| {
            derr(format!(
                "layer {for_layer}: the device of {origin} to snapshot does not exist"
            ))
        })?;
        let origin_dm = self.dm_name(origin);
        let origin_id = origin_meta.device_id;
        self.make_device(g, name, origin_meta.size, &|g, id| {
            // An active origin must be suspended for the snapshot (this also freezes a
            // filesystem mounted on it, so the snapshot is consistent).
            let active =
                g.st.dm.device(&origin_dm)?.is_some() && !g.st.dm.is_suspended(&origin_dm)?;
            if active {
                g.st.dm.suspend(&origin_dm)?;
            }
            let res = self.message(g, &format!("create_snap {id} {origin_id}"));
            if active {
                g.st.dm.resume(&origin_dm)?;
            }
            res
        })
        .map_err(|e| match e {
            Error::Driver { driver, message } => Error::Driver {
                driver,
                message: format!("layer {for_layer}: {message}"),
            },
            other => other,
        })?;
        Ok(())
    }

    /// The base device: made, formatted (with an empty `rootfs/`) once.
    fn ensure_base(&self, g: &mut Locked) -> Result<()> {
        match self.read_meta(BASE)? {
            Some(m) if m.initialized => return Ok(()),
            Some(m) => {
                // A crash while formatting: start again from nothing.
                self.delete_device(g, BASE, &m)?;
            }
            None => {}
        }
        let mut meta = self.make_device(g, BASE, self.config.base_size, &|g, id| {
            self.message(g, &format!("create_thin {id}"))
        })?;
        let dev = self.activate(g, BASE, &meta)?;
        let node = dm::node(dev);
        let res = self.format_base(&node);
        let _ = g.st.dm.remove(&self.dm_name(BASE), true);
        res?;
        meta.initialized = true;
        state::write_json(&self.paths.device(BASE), &meta)
    }

    fn format_base(&self, node: &Path) -> Result<()> {
        let mut cmd = Command::new(self.config.fs.mkfs());
        match self.config.fs {
            // Lazy inode-table and journal init is safe: the pool zeroes newly provisioned
            // blocks, so what mkfs does not write reads as zeros (and noinit_itable at mount
            // keeps the kernel from writing them in the background).
            Fs::Ext4 => cmd.args([
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
                "-m",
                "0",
            ]),
            Fs::Xfs => cmd.args(["-q", "-f", "-K"]),
        };
        cmd.arg(node);
        let out = cmd
            .output()
            .map_err(|e| derr(format!("cannot run {}: {e}", self.config.fs.mkfs())))?;
        if !out.status.success() {
            return Err(derr(format!(
                "{} {} failed ({}): {}",
                self.config.fs.mkfs(),
                node.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let mp = self.paths.mountpoint(BASE);
        fs::create_dir_all(&mp).map_err(|e| Error::io("create directory", &mp, e))?;
        self.mount_fs(node, &mp, false)?;
        let rootfs = mp.join("rootfs");
        let res = fs::create_dir(&rootfs)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| Error::io("create directory", &rootfs, e))
            .and_then(|_| {
                fs::set_permissions(&rootfs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    .map_err(|e| Error::io("chmod", &rootfs, e))
            });
        let un = rustix::mount::unmount(&mp, UnmountFlags::empty())
            .map_err(|e| Error::io("unmount", &mp, e.into()));
        let _ = fs::remove_dir(&mp);
        res?;
        un
    }

    /// Deactivate and delete `name`'s device and its metadata, in one transaction.
    fn delete_device(&self, g: &mut Locked, name: &str, meta: &DeviceMeta) -> Result<()> {
        let txn = self.begin(g, name, meta.device_id, TxnOp::Delete)?;
        if let Err(f) = self.delete_thin(g, meta.device_id) {
            let err = self.pool_error(g, f);
            self.abandon()?;
            return Err(derr(format!("cannot delete the device of {name}: {err}")));
        }
        state::remove_file(&self.paths.device(name))?;
        g.st.used_ids.remove(&meta.device_id);
        self.commit(g, &txn)
    }

    /// Devices whose removal was deferred (their dm device was still open): delete those
    /// whose dm device is gone now.
    fn finish_pending_deletes(&self, g: &mut Locked) -> Result<()> {
        for name in self.device_names()? {
            let Some(meta) = self.read_meta(&name)? else {
                continue;
            };
            if !meta_pending_delete(&self.paths, &name) {
                continue;
            }
            if g.st
                .dm
                .device(&self.dm_name(&name))
                .map_err(|f| derr(f.to_string()))?
                .is_none()
            {
                self.delete_device(g, &name, &meta)?;
                let _ = fs::remove_file(pending_marker(&self.paths, &name));
            }
        }
        Ok(())
    }

    // ---- activation and mounting ----------------------------------------------------

    /// Activate `name`'s thin device (if it is not active) and return its device number.
    fn activate(&self, g: &Locked, name: &str, meta: &DeviceMeta) -> Result<devicemapper::Device> {
        let dm_name = self.dm_name(name);
        if let Some(dev) = g.st.dm.device(&dm_name).map_err(|f| derr(f.to_string()))? {
            return Ok(dev);
        }
        let pool =
            g.st.dm
                .device(&self.pool_name())
                .map_err(|f| derr(f.to_string()))?
                .ok_or_else(|| derr(format!("the thin pool {} is not active", self.pool_name())))?;
        let table = vec![(
            0,
            meta.size / SECTOR,
            "thin".to_string(),
            format!("{pool} {}", meta.device_id),
        )];
        g.st.dm.create(&dm_name, &table).map_err(|f| {
            let e = self.pool_error(g, f);
            derr(format!("cannot activate the device of {name}: {e}"))
        })
    }

    fn mount_fs(&self, node: &Path, mp: &Path, read_only: bool) -> Result<()> {
        let mut data = match self.config.fs {
            Fs::Ext4 => "noinit_itable".to_string(),
            // Every snapshot carries the base's filesystem UUID.
            Fs::Xfs => "nouuid".to_string(),
        };
        if let Some(extra) = &self.config.mount_options {
            data.push(',');
            data.push_str(extra);
        }
        let flags = if read_only {
            MountFlags::RDONLY
        } else {
            MountFlags::empty()
        };
        let data = std::ffi::CString::new(data)
            .map_err(|_| derr("dm.mountopt must not contain a NUL byte"))?;
        rustix::mount::mount(node, mp, self.config.fs.as_str(), flags, data.as_c_str()).map_err(
            |e| {
                derr(format!(
                    "cannot mount {} ({}) on {}: {}",
                    node.display(),
                    self.config.fs.as_str(),
                    mp.display(),
                    std::io::Error::from(e)
                ))
            },
        )
    }

    fn unmount_and_deactivate(&self, g: &Locked, name: &str) -> Result<()> {
        let mp = self.paths.mountpoint(name);
        if is_mountpoint(&mp) {
            match rustix::mount::unmount(&mp, UnmountFlags::empty()) {
                Ok(()) => {}
                // Someone still has a file open in it: detach now, the kernel finishes the
                // unmount (and then the deferred device removal) when they let go.
                Err(rustix::io::Errno::BUSY) => {
                    rustix::mount::unmount(&mp, UnmountFlags::DETACH)
                        .map_err(|e| Error::io("unmount", &mp, e.into()))?;
                }
                Err(e) => return Err(Error::io("unmount", &mp, e.into())),
            }
        }
        g.st.dm
            .remove(&self.dm_name(name), true)
            .map_err(|f| derr(format!("cannot deactivate the device of {name}: {f}")))
    }

    fn key_meta(&self, key: &str, id: &str) -> Result<DeviceMeta> {
        self.read_meta(key)?
            .ok_or_else(|| derr(format!("layer {id}: storage key {key} has no thin device")))
    }

    /// Apply like the default, but flush the filesystem before unmounting so that a pool
    /// that fills up fails the apply (instead of losing the writes silently), and name the
    /// pool's trouble when it does.
    fn apply_checked(&self, layer: &LayerRef, tar: &mut dyn Read) -> Result<u64> {
        let view = self.mount(layer, Access::ReadWrite)?;
        let res = driver_api::archive::apply_tar(
            &view,
            tar,
            &driver_api::archive::ApplyOptions::default(),
        )
        .map_err(|e| Error::from(e).in_layer(&layer.id))
        .and_then(|stats| {
            let dir = fs::File::open(&view).map_err(|e| Error::io("open", &view, e))?;
            rustix::fs::syncfs(&dir).map_err(|e| Error::io("sync", &view, e.into()))?;
            Ok(stats.bytes)
        });
        let un = self.unmount(layer);
        match res {
            Ok(bytes) => un.map(|_| bytes),
            Err(e) => {
                let g = self.lock()?;
                match self.pool_trouble(&g) {
                    Some(trouble) => Err(derr(format!(
                        "layer {}: {trouble} (the apply failed with: {e})",
                        layer.id
                    ))),
                    None => Err(e),
                }
            }
        }
    }
}

fn pending_marker(paths: &Paths, name: &str) -> PathBuf {
    paths.devices().join(format!("{name}.deleting"))
}

fn meta_pending_delete(paths: &Paths, name: &str) -> bool {
    pending_marker(paths, name).exists()
}

/// Whether `path` is the root of a mount (its device differs from its parent's).
fn is_mountpoint(path: &Path) -> bool {
    let (Ok(me), Some(Ok(parent))) = (
        fs::symlink_metadata(path),
        path.parent().map(fs::symlink_metadata),
    ) else {
        return false;
    };
    me.dev() != parent.dev() || me.ino() == parent.ino()
}

impl Backend for DevmapperBackend {
    fn name(&self) -> &str {
        DRIVER
    }

    fn status(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("Pool Name".to_string(), self.pool_name()),
            (
                "Pool Blocksize".to_string(),
                self.config.block_size.to_string(),
            ),
            (
                "Base Device Size".to_string(),
                self.config.base_size.to_string(),
            ),
            (
                "Backing Filesystem".to_string(),
                self.config.fs.as_str().to_string(),
            ),
        ];
        if self.config.thin_pool_dev.is_none() {
            out.push((
                "Data file".into(),
                self.paths.data_file().display().to_string(),
            ));
            out.push((
                "Metadata file".into(),
                self.paths.metadata_file().display().to_string(),
            ));
        }
        if let Ok(g) = self.lock() {
            if let Ok(s) = self.pool_status(&g) {
                let bs = self.config.block_size;
                out.push(("Data Space Used".into(), (s.data_used * bs).to_string()));
                out.push(("Data Space Total".into(), (s.data_total * bs).to_string()));
                // Thin-pool metadata blocks are 4 KiB.
                out.push((
                    "Metadata Space Used".into(),
                    (s.meta_used * 4096).to_string(),
                ));
                out.push((
                    "Metadata Space Total".into(),
                    (s.meta_total * 4096).to_string(),
                ));
                out.push(("Pool Mode".into(), s.mode.clone()));
                out.push(("Transaction Id".into(), s.transaction_id.to_string()));
            }
            if let Some(t) = self.pool_trouble(&g) {
                out.push(("Pool Trouble".into(), t));
            }
        }
        out.push(("Udev Sync Supported".into(), "false".into()));
        out.push(("Deferred Removal Enabled".into(), "true".into()));
        out
    }

    fn create(&self, layer: &LayerRef) -> Result<()> {
        let mut g = self.lock()?;
        self.ensure_pool(&g)?;
        let origin = layer.parent_key().unwrap_or(BASE).to_string();
        self.snapshot(&mut g, &layer.key, &origin, &layer.id)
    }

    fn clone_layer(&self, src_key: &str, dst: &LayerRef) -> Result<()> {
        let mut g = self.lock()?;
        self.ensure_pool(&g)?;
        self.snapshot(&mut g, &dst.key, src_key, &dst.id)
    }

    fn remove(&self, key: &str) -> Result<()> {
        let mut g = self.lock()?;
        self.ensure_pool(&g)?;
        // Earlier removals that had to wait for a busy device may be finished now.
        self.finish_pending_deletes(&mut g)?;
        let Some(meta) = self.read_meta(key)? else {
            // Already gone; make sure nothing of it is left active.
            self.unmount_and_deactivate(&g, key)?;
            let _ = fs::remove_dir(self.paths.mountpoint(key));
            return Ok(());
        };
        self.unmount_and_deactivate(&g, key)?;
        let _ = fs::remove_dir(self.paths.mountpoint(key));
        if g.st
            .dm
            .device(&self.dm_name(key))
            .map_err(|f| derr(f.to_string()))?
            .is_some()
        {
            // Still open somewhere: the kernel removes the dm device when it is closed;
            // the thin device is deleted then (on a later open, remove or cleanup).
            let marker = pending_marker(&self.paths, key);
            fs::write(&marker, b"").map_err(|e| Error::io("create", &marker, e))?;
            return Ok(());
        }
        self.delete_device(&mut g, key, &meta)
    }

    fn keys(&self) -> Result<Vec<String>> {
        Ok(self
            .device_names()?
            .into_iter()
            .filter(|n| is_storage_key(n) && !meta_pending_delete(&self.paths, n))
            .collect())
    }

    fn mount(&self, layer: &LayerRef, access: Access) -> Result<PathBuf> {
        let g = self.lock()?;
        self.ensure_pool(&g)?;
        let meta = self.key_meta(&layer.key, &layer.id)?;
        let mp = self.paths.mountpoint(&layer.key);
        let view = mp.join("rootfs");
        if is_mountpoint(&mp) {
            if access == Access::ReadWrite {
                // Mounted read-only before: make it writable in place.
                let st =
                    rustix::fs::statvfs(&mp).map_err(|e| Error::io("statvfs", &mp, e.into()))?;
                if st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
                    rustix::mount::mount_remount(&mp, MountFlags::empty(), "")
                        .map_err(|e| Error::io("remount read-write", &mp, e.into()))?;
                }
            }
            return Ok(view);
        }
        let dev = self.activate(&g, &layer.key, &meta)?;
        fs::create_dir_all(&mp).map_err(|e| Error::io("create directory", &mp, e))?;
        if let Err(e) = self.mount_fs(&dm::node(dev), &mp, access == Access::ReadOnly) {
            let _ = g.st.dm.remove(&self.dm_name(&layer.key), true);
            return Err(match self.pool_trouble(&g) {
                Some(t) => derr(format!("layer {}: {e}: {t}", layer.id)),
                None => derr(format!("layer {}: {e}", layer.id)),
            });
        }
        Ok(view)
    }

    fn unmount(&self, layer: &LayerRef) -> Result<()> {
        let g = self.lock()?;
        self.unmount_and_deactivate(&g, &layer.key)
    }

    fn is_mounted(&self, layer: &LayerRef) -> bool {
        is_mountpoint(&self.paths.mountpoint(&layer.key))
    }

    fn metadata(&self, layer: &LayerRef) -> Result<BTreeMap<String, String>> {
        let meta = self.key_meta(&layer.key, &layer.id)?;
        let dm_name = self.dm_name(&layer.key);
        let mut out = BTreeMap::new();
        out.insert("DeviceId".into(), meta.device_id.to_string());
        out.insert("DeviceName".into(), dm_name.clone());
        out.insert("DeviceSize".into(), meta.size.to_string());
        out.insert("PoolName".into(), self.pool_name());
        if let Ok(g) = self.lock() {
            if let Ok(Some(dev)) = g.st.dm.device(&dm_name) {
                out.insert("DeviceNode".into(), dm::node(dev).display().to_string());
            }
        }
        out.insert(
            "MountPoint".into(),
            self.paths.mountpoint(&layer.key).display().to_string(),
        );
        Ok(out)
    }

    fn apply(&self, layer: &LayerRef, tar: &mut dyn Read) -> Result<u64> {
        self.apply_checked(layer, tar)
    }

    fn cleanup(&self) -> Result<()> {
        let mut g = self.lock()?;
        let mut errors = vec![];
        if let Ok(entries) = fs::read_dir(self.paths.mnt()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Err(err) = self.unmount_and_deactivate(&g, &name) {
                    errors.push(err.to_string());
                }
                let _ = fs::remove_dir(e.path());
            }
        }
        // Devices activated by a process that died without unmounting.
        let ours = format!("{}-", self.prefix);
        let pool = self.pool_name();
        match g.st.dm.list() {
            Ok(names) => {
                for n in names.iter().filter(|n| n.starts_with(&ours) && **n != pool) {
                    if let Err(f) = g.st.dm.remove(n, true) {
                        errors.push(f.to_string());
                    }
                }
            }
            Err(f) => errors.push(f.to_string()),
        }
        if g.st.dm.device(&pool).ok().flatten().is_some() {
            if let Err(e) = self.finish_pending_deletes(&mut g) {
                errors.push(e.to_string());
            }
            if self.config.thin_pool_dev.is_none() {
                if let Err(f) = g.st.dm.remove(&pool, false) {
                    errors.push(format!("{f} (is a layer still in use?)"));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(derr(format!(
                "cleanup left things behind: {}",
                errors.join("; ")
            )))
        }
    }
}
