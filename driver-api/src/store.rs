//! The layer store: turns any `Backend` into a `GraphDriver`.
//!
//! It owns everything that is not specific to a backend: layer ids and parents, metadata,
//! file locks between processes, atomic create/apply/remove with recovery at start-up, the
//! persisted mount reference counts, and the generic diff (mount both views, compare them).
//!
//! On disk, under `<home>/store/`:
//!
//! ```text
//! lock                 flock: short critical sections over the metadata
//! layers/<id>.json     a layer's metadata; its presence is the layer's existence (the commit point)
//! mounts/<id>.json     who holds the layer's view mounted
//! locks/<id>.lock      flock per layer: exclusive to change it, shared to read or mount it
//! pending/<key>.json   a storage key being built by a live process
//! ```
//!
//! Atomicity. A layer exists once `layers/<id>.json` is renamed into place, never before:
//! storage is built first under a fresh key announced in `pending/`, so a crash leaves at
//! worst an unreferenced key, which the next start removes. Apply onto a layer that was never
//! written ("pristine") happens in place, with the metadata saying `applying` until it
//! finishes; a failure, or a crash found at the next start, resets the layer to its pristine
//! state. Apply onto a layer that already has content goes into a clone under a new key, and
//! the metadata is switched to it only when the apply succeeded.
//!
//! Locking. Layer locks are always taken before the store lock, and the store lock is never
//! held while waiting for a layer lock. At most two layer locks are held at once (creating a
//! child holds its parent shared, then the new id exclusive), so there is no cycle.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::driver::{
    Access, Backend, Change, ChangeKind, CreateOptions, GraphDriver, LayerInfo, LayerKind, LayerRef,
};
use crate::error::{Error, Result};
use crate::failpoint::{hit, FailpointReader};
use crate::fsutil::{
    atomic_write, durable_remove, random_hex32, unique, LockGuard, LockMode, ProcessId,
};
use crate::view::{MountedView, ViewSource};

/// The state of a layer's content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "lowercase")]
enum State {
    Ready,
    /// An apply is writing into the layer in place; if `by` is dead, reset to pristine.
    Applying {
        by: ProcessId,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerMeta {
    id: String,
    parent: Option<String>,
    kind: LayerKind,
    key: String,
    created: i64,
    size: Option<u64>,
    /// Never applied to nor mounted read-write: an apply may go in place, and a failed one is
    /// undone by re-creating the storage.
    pristine: bool,
    #[serde(flatten)]
    state: State,
}

/// Who holds a layer's view mounted: `count` from `get`s (held until the matching `put`,
/// whichever process makes it), and processes using the view for a moment (a diff), which
/// no longer count once they are dead.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MountRecord {
    count: u32,
    #[serde(default)]
    users: Vec<ProcessId>,
    path: Option<PathBuf>,
}

impl MountRecord {
    fn live_holders(&self) -> u32 {
        self.count + self.users.iter().filter(|p| p.is_alive()).count() as u32
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    by: ProcessId,
    id: String,
}

pub struct LayerStore {
    home: PathBuf,
    dir: PathBuf,
    backend: Box<dyn Backend>,
    /// What the recovery at open repaired, one sentence each (the CLI tells the user).
    recovered: std::sync::Mutex<Vec<String>>,
    /// This instance's record in `store/intents/`, made before its first change to the store
    /// and removed when it is dropped (see `declare_intent`).
    intent: std::sync::Mutex<Option<PathBuf>>,
}

/// One finding of `check`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, in one sentence naming the layer, key or path.
    pub what: String,
    /// Whether `check --repair` can fix it without losing anything that is still in use.
    pub repairable: bool,
    /// Set when `--repair` fixed it.
    pub repaired: bool,
}

/// Check a layer id: it names files, so it is restricted to a safe alphabet.
pub fn validate_id(id: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidId {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > 200 {
        return bad("it is longer than 200 bytes");
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("it must start with a letter or digit");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
    {
        return bad("only letters, digits, '.', '_', '-' and ':' are allowed");
    }
    Ok(())
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
fn boot_id() -> Option<String> {
    let id = crate::fsutil::read_proc_file(Path::new("/proc/sys/kernel/random/boot_id"), 64);
    String::from_utf8(id.ok()?).ok()
}

fn is_out_of_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl LayerStore {
    /// Open (creating if needed) the store of `backend` under `home`, and recover from
    /// whatever a killed process left half-done.
    pub fn open(home: &Path, backend: Box<dyn Backend>) -> Result<Self> {
        let dir = home.join("store");
        let store = LayerStore {
            home: home.to_path_buf(),
            dir,
            backend,
            recovered: Default::default(),
            intent: Default::default(),
        };
        // Every command opens the store: two stats answer for the layout when it is complete
        // (the removal lock is made last; `intents/` is the newest directory).
        if !(store.removal_lock_path().is_file() && store.intents_dir().is_dir()) {
            for sub in ["layers", "mounts", "locks", "pending", "intents"] {
                let p = store.dir.join(sub);
                fs::create_dir_all(&p)
                    .map_err(|e| Error::io("creating the store directory", &p, e))?;
            }
            // Made while there is space, so that `rm` can take it on a full disk.
            let _ = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(store.removal_lock_path());
        }
        store.recover()?;
        Ok(store)
    }

    /// Open without the recovery, to look at the store as a crash left it (`gd check`).
    pub fn open_for_check(home: &Path, backend: Box<dyn Backend>) -> Result<Self> {
        let dir = home.join("store");
        if !dir.join("layers").is_dir() {
            return Err(Error::Store {
                path: dir,
                message: "no layer store here".into(),
            });
        }
        Ok(LayerStore {
            home: home.to_path_buf(),
            dir,
            backend,
            recovered: Default::default(),
            intent: Default::default(),
        })
    }

    /// What the recovery at open repaired (empty when the store was clean).
    pub fn recovery_report(&self) -> Vec<String> {
        self.recovered.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn note(&self, what: String) {
        if let Ok(mut v) = self.recovered.lock() {
            v.push(what);
        }
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    // ---- paths and records -------------------------------------------------------------

    fn meta_path(&self, id: &str) -> PathBuf {
        self.dir.join("layers").join(format!("{id}.json"))
    }
    fn mount_path(&self, id: &str) -> PathBuf {
        self.dir.join("mounts").join(format!("{id}.json"))
    }
    fn lock_path(&self, id: &str) -> PathBuf {
        self.dir.join("locks").join(format!("{id}.lock"))
    }
    fn pending_path(&self, key: &str) -> PathBuf {
        self.dir.join("pending").join(format!("{key}.json"))
    }

    /// Held shared by every `rm` while it frees a removed layer's storage outside the store
    /// lock. The orphan sweeps (recovery at open, `check`) run only when they can take it
    /// exclusive without waiting, so two processes never free one key and no `rm` under way
    /// is reported as an orphan. A lock rather than a record, because `rm` must work on a
    /// full disk.
    fn removal_lock_path(&self) -> PathBuf {
        self.dir.join("removing")
    }

    /// The removal lock taken exclusive, or None while an `rm` is freeing storage (or when
    /// the lock file cannot be opened); under the store lock.
    fn no_removal_under_way(&self) -> Option<fs::File> {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.removal_lock_path())
            .ok()?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
        Some(f)
    }

    fn intents_dir(&self) -> PathBuf {
        self.dir.join("intents")
    }

    /// The marker that the intent records can be trusted: while it exists and holds this
    /// boot's id, every process that changed the store in this boot recorded its intent, so
    /// the records of dead processes are all the half-done work there can be.
    fn intents_trusted_path(&self) -> PathBuf {
        self.intents_dir().join("trusted")
    }

    /// Say, once per instance and before its first change to the store, that a live process
    /// is at work here: an empty file `store/intents/<pid>-<start time>-<n>`. A process that
    /// dies with changes half-made leaves its record behind, and the next open, finding the
    /// record of a dead process, runs the full recovery; a store with no such record needs
    /// none, so opening it costs one directory listing instead of a scan of every layer.
    /// Dropping the instance removes the record. Every change to the store is made under a
    /// store or layer lock, so taking either declares the intent first.
    ///
    /// The records need no fsync: the marker names the boot it was made in, and the first
    /// open after a reboot (a power cut among them) recovers in full whatever the disk kept.
    /// On a full disk the record cannot be made, and `rm` must still work there: the process
    /// then removes the marker (which needs no space), so that every open runs the full
    /// recovery until one finds the store clean with space to say so.
    fn declare_intent(&self) -> Result<()> {
        let mut intent = self.intent.lock().unwrap_or_else(|e| e.into_inner());
        if intent.is_some() {
            return Ok(());
        }
        let me = ProcessId::current();
        let p = self
            .intents_dir()
            .join(format!("{}-{}-{}", me.pid, me.start, unique()));
        match fs::File::create_new(&p) {
            Ok(_) => *intent = Some(p),
            Err(e) if is_out_of_space(&e) => {
                let m = self.intents_trusted_path();
                durable_remove(&m).map_err(|e| Error::io("removing", m, e))?;
            }
            Err(e) => return Err(Error::io("creating", p, e)),
        }
        Ok(())
    }

    /// Whether the intent records can be trusted (a marker of this boot; not after a
    /// reboot, in a store made by an older gd, or after a process could not record its
    /// intent on a full disk), and the records of dead processes: the work the recovery has
    /// to look for.
    fn stale_intents(&self) -> Result<(bool, Vec<PathBuf>)> {
        let marker = fs::read_to_string(self.intents_trusted_path()).ok();
        let trusted = marker.is_some() && marker == boot_id();
        let dir = self.intents_dir();
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
        let mut stale = Vec::new();
        for ent in entries {
            let ent = ent.map_err(|e| Error::io("listing", &dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if name == "trusted" {
                continue;
            }
            let mut fields = name.split('-').map(|f| f.parse::<u64>().ok());
            let alive = match (fields.next().flatten(), fields.next().flatten()) {
                (Some(pid), Some(start)) => ProcessId {
                    pid: pid as u32,
                    start,
                }
                .is_alive(),
                _ => false,
            };
            if !alive {
                stale.push(ent.path());
            }
        }
        Ok((trusted, stale))
    }

    fn store_lock(&self) -> Result<LockGuard> {
        self.declare_intent()?;
        self.store_lock_only()
    }

    /// The store lock, without declaring an intent: for looking before changing anything.
    fn store_lock_only(&self) -> Result<LockGuard> {
        let p = self.dir.join("lock");
        LockGuard::acquire_never_unlinked(&p, LockMode::Exclusive)
            .map_err(|e| Error::io("locking the store", p, e))
    }

    fn layer_lock(&self, id: &str, mode: LockMode) -> Result<LockGuard> {
        self.declare_intent()?;
        let p = self.lock_path(id);
        LockGuard::acquire(&p, mode).map_err(|e| Error::io("locking layer", p, e))
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Result<Option<T>> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Store {
                    path: path.to_path_buf(),
                    message: format!("corrupt record: {e}"),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", path, e)),
        }
    }

    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value).expect("records serialize");
        atomic_write(path, &bytes).map_err(|e| Error::io("writing", path, e))
    }

    fn load(&self, id: &str) -> Result<LayerMeta> {
        validate_id(id)?;
        self.read_json(&self.meta_path(id))?
            .ok_or_else(|| Error::NotFound { id: id.to_string() })
    }

    fn save(&self, meta: &LayerMeta) -> Result<()> {
        self.write_json(&self.meta_path(&meta.id), meta)
    }

    fn mount_record(&self, id: &str) -> Result<MountRecord> {
        Ok(self.read_json(&self.mount_path(id))?.unwrap_or_default())
    }

    fn save_mount_record(&self, id: &str, rec: &MountRecord) -> Result<()> {
        let p = self.mount_path(id);
        if rec.count == 0 && rec.users.is_empty() {
            durable_remove(&p).map_err(|e| Error::io("removing", p, e))
        } else {
            self.write_json(&p, rec)
        }
    }

    fn all_metas(&self) -> Result<Vec<LayerMeta>> {
        let dir = self.dir.join("layers");
        let mut out = Vec::new();
        for ent in fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))? {
            let ent = ent.map_err(|e| Error::io("listing", &dir, e))?;
            let name = ent.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if validate_id(id).is_err() {
                continue;
            }
            if let Some(m) = self.read_json::<LayerMeta>(&ent.path())? {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn children_of(&self, id: &str) -> Result<Vec<String>> {
        Ok(self
            .all_metas()?
            .into_iter()
            .filter(|m| m.parent.as_deref() == Some(id))
            .map(|m| m.id)
            .collect())
    }

    /// The layer as the backend sees it: key and ancestors' keys (nearest first).
    fn layer_ref(&self, meta: &LayerMeta) -> Result<LayerRef> {
        let mut ancestors = Vec::new();
        let mut seen = HashSet::new();
        let mut next = meta.parent.clone();
        while let Some(pid) = next {
            if !seen.insert(pid.clone()) {
                return Err(Error::Store {
                    path: self.meta_path(&pid),
                    message: format!("the parent chain of {} loops at {pid}", meta.id),
                });
            }
            let p = self.load(&pid).map_err(|e| match e {
                Error::NotFound { .. } => Error::ParentNotFound {
                    id: meta.id.clone(),
                    parent: pid.clone(),
                },
                e => e,
            })?;
            ancestors.push(p.key.clone());
            next = p.parent;
        }
        Ok(LayerRef {
            id: meta.id.clone(),
            key: meta.key.clone(),
            ancestors,
            kind: meta.kind,
        })
    }

    fn access_for(kind: LayerKind) -> Access {
        match kind {
            LayerKind::Ro => Access::ReadOnly,
            LayerKind::Rw => Access::ReadWrite,
        }
    }

    // ---- recovery ----------------------------------------------------------------------

    /// Undo what dead processes left half-done. Runs at every open, and looks through the
    /// store only when a dead process left its intent record behind, or the records cannot
    /// be trusted (see `stale_intents`): a clean store opens with one directory listing.
    ///
    /// That first look takes no lock. A clean answer (marker of this boot, no record of a dead
    /// process) cannot come from the middle of a recovery: a recovery runs only while a stale
    /// record or an untrusted marker exists, and removes the stale records only when it is
    /// done. Any other answer is checked again under the store lock before recovering.
    fn recover(&self) -> Result<()> {
        let (trusted, stale) = self.stale_intents()?;
        if trusted && stale.is_empty() {
            return Ok(());
        }
        let _g = self.store_lock_only()?;
        let (trusted, stale) = self.stale_intents()?;
        if trusted && stale.is_empty() {
            return Ok(());
        }
        // Recovering changes the store: if this process dies half-way, the next one recovers.
        self.declare_intent()?;
        self.recover_all()?;
        for p in stale {
            durable_remove(&p).map_err(|e| Error::io("removing", p, e))?;
        }
        // Every process at work now has its record (it declared before changing anything, or
        // removed the marker after this point, which the next open sees). On a full disk the
        // marker cannot be made, and the next open recovers again.
        let m = self.intents_trusted_path();
        match fs::write(&m, boot_id().unwrap_or_default()) {
            Ok(()) => Ok(()),
            Err(e) if is_out_of_space(&e) => Ok(()),
            Err(e) => Err(Error::io("creating", m, e)),
        }
    }

    fn recover_all(&self) -> Result<()> {
        self.sweep_tmp_files()?;
        let metas = self.all_metas()?;
        for m in &metas {
            if let State::Applying { by } = m.state {
                if !by.is_alive() {
                    self.reset_to_pristine(m)?;
                    self.note(format!(
                        "layer {}: an apply was interrupted (process {} died); the layer was reset to empty",
                        m.id, by.pid
                    ));
                }
            }
        }
        // Mount records of dead users.
        let mdir = self.dir.join("mounts");
        for ent in fs::read_dir(&mdir)
            .map_err(|e| Error::io("listing", &mdir, e))?
            .flatten()
        {
            let name = ent.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Ok(mut rec) = self.mount_record(id) else {
                continue;
            };
            let before = rec.users.len();
            rec.users.retain(|p| p.is_alive());
            if rec.users.len() != before {
                if rec.count == 0 && rec.users.is_empty() {
                    if let Ok(meta) = self.load(id) {
                        let lref = self.layer_ref(&meta)?;
                        if self.backend.is_mounted(&lref) {
                            self.backend.unmount(&lref)?;
                            self.note(format!(
                                "layer {id}: unmounted a view left by a process that died"
                            ));
                        }
                    }
                }
                self.save_mount_record(id, &rec)?;
            }
        }
        // Views mounted with no record at all: a process killed after the backend mounted
        // and before it counted the mount. Nobody else can be in that window now: it is
        // under the store lock, which we hold.
        let metas = self.all_metas()?;
        let by_id: HashMap<&str, &LayerMeta> = metas.iter().map(|m| (m.id.as_str(), m)).collect();
        for m in &metas {
            let Some(lref) = layer_ref_from(m, &by_id) else {
                continue;
            };
            if self.mount_record(&m.id)?.live_holders() == 0
                && self.backend.view_is_separate(&lref)
                && self.backend.is_mounted(&lref)
            {
                self.backend.unmount(&lref)?;
                self.note(format!(
                    "layer {}: unmounted a view that nobody held (left by a killed process)",
                    m.id
                ));
            }
        }
        // Storage keys nobody references and no live process is building.
        let referenced: HashSet<String> = self.all_metas()?.into_iter().map(|m| m.key).collect();
        let pdir = self.dir.join("pending");
        let mut building = HashSet::new();
        for ent in fs::read_dir(&pdir)
            .map_err(|e| Error::io("listing", &pdir, e))?
            .flatten()
        {
            let name = ent.file_name();
            let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            match self.read_json::<Pending>(&ent.path()) {
                Ok(Some(p)) if p.by.is_alive() => {
                    building.insert(key.to_string());
                }
                _ => {
                    if !referenced.contains(key) {
                        self.backend.remove(key)?;
                        self.note(format!(
                            "removed storage {key} that a killed process left half-made"
                        ));
                    }
                    durable_remove(&ent.path())
                        .map_err(|e| Error::io("removing", ent.path(), e))?;
                }
            }
        }
        let sweep = self.no_removal_under_way();
        for key in self.backend.keys()? {
            if sweep.is_some() && !referenced.contains(&key) && !building.contains(&key) {
                self.backend.remove(&key)?;
                self.note(format!("removed storage {key} that no layer uses"));
            }
        }
        Ok(())
    }

    fn sweep_tmp_files(&self) -> Result<()> {
        for sub in ["layers", "mounts", "pending"] {
            let d = self.dir.join(sub);
            for ent in fs::read_dir(&d)
                .map_err(|e| Error::io("listing", &d, e))?
                .flatten()
            {
                let name = ent.file_name();
                let name = name.to_string_lossy();
                if let Some(pos) = name.find(".tmp-") {
                    // `<name>.tmp-<pid>-<n>`: only sweep files of dead writers.
                    let pid = name[pos + 5..]
                        .split('-')
                        .next()
                        .and_then(|p| p.parse::<u32>().ok());
                    if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                        let _ = fs::remove_file(ent.path());
                    }
                }
            }
        }
        Ok(())
    }

    /// Rebuild a layer's storage as freshly created from its parent (undoing a failed or
    /// interrupted in-place apply).
    fn reset_to_pristine(&self, meta: &LayerMeta) -> Result<()> {
        let lref = self.layer_ref(meta)?;
        self.backend.remove(&meta.key)?;
        self.backend.create(&lref)?;
        let mut m = meta.clone();
        m.state = State::Ready;
        m.pristine = true;
        m.size = None;
        self.save(&m)
    }

    /// A layer found `applying` by a process that died after we opened the store.
    fn recover_layer_if_needed(&self, id: &str) -> Result<()> {
        let meta = self.load(id)?;
        if let State::Applying { by } = meta.state {
            if !by.is_alive() {
                let _l = self.layer_lock(id, LockMode::Exclusive)?;
                let _g = self.store_lock()?;
                let meta = self.load(id)?;
                if let State::Applying { by } = meta.state {
                    if !by.is_alive() {
                        self.reset_to_pristine(&meta)?;
                    }
                }
            }
        }
        Ok(())
    }

    // ---- views -------------------------------------------------------------------------

    /// Mount a layer's view for this process's own short use; the returned guard releases it.
    fn use_view(&self, id: &str) -> Result<ViewGuard<'_>> {
        let _g = self.store_lock()?;
        let meta = self.load(id)?;
        let lref = self.layer_ref(&meta)?;
        let mut rec = self.mount_record(id)?;
        rec.users.retain(|p| p.is_alive());
        let path = self.ensure_mounted(&meta, &lref, &mut rec)?;
        rec.users.push(ProcessId::current());
        self.save_mount_record(id, &rec)?;
        Ok(ViewGuard {
            store: self,
            id: id.to_string(),
            path,
        })
    }

    fn release_view(&self, id: &str) -> Result<()> {
        let _g = self.store_lock()?;
        let mut rec = self.mount_record(id)?;
        let me = ProcessId::current();
        if let Some(pos) = rec.users.iter().position(|p| *p == me) {
            rec.users.remove(pos);
        }
        rec.users.retain(|p| p.is_alive());
        self.unmount_if_unused(id, &mut rec)
    }

    /// Mount if no one holds the view or it vanished (after a reboot, or a dead server).
    fn ensure_mounted(
        &self,
        meta: &LayerMeta,
        lref: &LayerRef,
        rec: &mut MountRecord,
    ) -> Result<PathBuf> {
        let mounted = self.backend.is_mounted(lref);
        if let Some(p) = &rec.path {
            if mounted && rec.live_holders() > 0 {
                return Ok(p.clone());
            }
        }
        if mounted {
            // Left by a holder that died: it may be mounted with the wrong access.
            self.backend.unmount(lref)?;
        }
        let path = self.backend.mount(lref, Self::access_for(meta.kind))?;
        hit("mount.mounted");
        rec.path = Some(path.clone());
        if meta.kind == LayerKind::Rw && meta.pristine {
            let mut m = meta.clone();
            m.pristine = false;
            self.save(&m)?;
        }
        Ok(path)
    }

    fn unmount_if_unused(&self, id: &str, rec: &mut MountRecord) -> Result<()> {
        if rec.live_holders() == 0 {
            if let Ok(meta) = self.load(id) {
                let lref = self.layer_ref(&meta)?;
                if self.backend.is_mounted(&lref) {
                    self.backend.unmount(&lref)?;
                }
            }
            rec.path = None;
        }
        self.save_mount_record(id, rec)
    }

    /// Run `f` with the parent's view (None for a base layer) and the layer's view mounted.
    fn with_views<T>(
        &self,
        id: &str,
        f: impl FnOnce(&LayerRef, Option<&Path>, &Path) -> Result<T>,
    ) -> Result<T> {
        self.recover_layer_if_needed(id)?;
        let _l = self.layer_lock(id, LockMode::Shared)?;
        let meta = self.load(id)?;
        let lref = self.layer_ref(&meta)?;
        let parent = match &meta.parent {
            Some(p) => Some(self.use_view(p)?),
            None => None,
        };
        let child = self.use_view(id)?;
        let r = f(
            &lref,
            parent.as_ref().map(|g| g.path.as_path()),
            &child.path,
        );
        let c = child.release();
        let p = parent.map(|g| g.release()).transpose();
        let out = r?;
        c?;
        p?;
        Ok(out)
    }

    /// Run `f` with the parent's view (None for a base layer) and the layer's view: read in
    /// place when the backend can give them so (nothing mounted), else mounted. Not in place
    /// while the layer's view is mounted: a process writing through it may hold data the
    /// storage does not have yet (dirty pages of a shared mapping), or the view's server may
    /// be half-way through a multi-step change (a copy-up); the mounted view shows neither.
    fn with_sources<T>(
        &self,
        id: &str,
        f: impl FnOnce(&LayerRef, Option<&dyn ViewSource>, &dyn ViewSource) -> Result<T>,
    ) -> Result<T> {
        self.recover_layer_if_needed(id)?;
        {
            // The shared lock keeps the layer's storage as it is (no apply, no removal) while
            // its branches are read; its ancestors cannot go while it exists.
            let _l = self.layer_lock(id, LockMode::Shared)?;
            let meta = self.load(id)?;
            let lref = self.layer_ref(&meta)?;
            let in_use = || -> Result<bool> {
                Ok(self.mount_record(id)?.live_holders() > 0 || self.backend.is_mounted(&lref))
            };
            if meta.parent.is_some() && !in_use()? {
                if let Some(v) = self.backend.views_in_place(&lref) {
                    return f(&lref, Some(&*v.parent), &*v.child);
                }
            }
        }
        self.with_views(id, |lref, parent, child| {
            let parent = parent.map(MountedView::new);
            f(
                lref,
                parent.as_ref().map(|p| p as &dyn ViewSource),
                &MountedView::new(child),
            )
        })
    }

    fn changes_between(
        &self,
        lref: &LayerRef,
        parent: Option<&dyn ViewSource>,
        child: &dyn ViewSource,
    ) -> Result<Vec<Change>> {
        if let Some(r) = self.backend.native_changes(lref, parent, child) {
            return r;
        }
        // The generic comparer walks mounted views.
        match (parent.map(|p| p.mounted_root()), child.mounted_root()) {
            (None, Some(c)) => Ok(crate::tree::changes(None, c)?),
            (Some(Some(p)), Some(c)) => Ok(crate::tree::changes(Some(p), c)?),
            _ => Err(not_mounted(self.backend.name())),
        }
    }
}

impl Drop for LayerStore {
    /// This instance is done: its changes are complete (or undone), so its intent goes.
    fn drop(&mut self) {
        let intent = self.intent.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = intent.take() {
            // Not durable, and need not be: a record that comes back after a crash of the
            // machine is of a dead process, and a reboot means a full recovery anyway.
            let _ = fs::remove_file(&p);
        }
    }
}

/// A layer's `LayerRef` from an index of all metadata (None if its chain is broken; the
/// caller reports that elsewhere). Reading each ancestor's record again for every layer would
/// make opening a store with deep chains quadratic in file reads.
fn layer_ref_from(meta: &LayerMeta, by_id: &HashMap<&str, &LayerMeta>) -> Option<LayerRef> {
    let mut ancestors = Vec::new();
    let mut next = meta.parent.as_deref();
    while let Some(pid) = next {
        let p = by_id.get(pid)?;
        ancestors.push(p.key.clone());
        if ancestors.len() > by_id.len() {
            return None; // a loop
        }
        next = p.parent.as_deref();
    }
    Some(LayerRef {
        id: meta.id.clone(),
        key: meta.key.clone(),
        ancestors,
        kind: meta.kind,
    })
}

/// A view mounted for the store's own use; released explicitly (to see errors) or on drop.
struct ViewGuard<'a> {
    store: &'a LayerStore,
    id: String,
    path: PathBuf,
}

impl ViewGuard<'_> {
    fn release(mut self) -> Result<()> {
        let id = std::mem::take(&mut self.id);
        self.store.release_view(&id)
    }
}

impl Drop for ViewGuard<'_> {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            let _ = self.store.release_view(&self.id);
        }
    }
}

/// A backend gave views in place but no native change list for them: a backend bug, since
/// the generic comparer reads mounted views.
fn not_mounted(backend: &str) -> Error {
    Error::Driver {
        driver: backend.to_string(),
        message: "it gave views in place without a native change list for them".into(),
    }
}

/// Sum of the sizes of added and modified regular files, each inode once.
fn size_of_changes(child: &dyn ViewSource, changes: &[Change]) -> Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    for c in changes {
        if c.kind == ChangeKind::Delete {
            continue;
        }
        let rel = c.path.trim_start_matches('/').as_bytes();
        let Some(md) = child.locate(rel)?.map(|l| l.md) else {
            let p = child.display(rel);
            return Err(Error::io(
                "reading",
                &p,
                std::io::ErrorKind::NotFound.into(),
            ));
        };
        if md.is_file() && seen.insert((md.dev(), md.ino())) {
            total += md.size();
        }
    }
    Ok(total)
}

impl GraphDriver for LayerStore {
    fn name(&self) -> String {
        self.backend.name().to_string()
    }

    fn status(&self) -> Result<Vec<(String, String)>> {
        let mut out = vec![
            ("Driver".to_string(), self.backend.name().to_string()),
            ("Home".to_string(), self.home.display().to_string()),
            ("Layers".to_string(), self.all_metas()?.len().to_string()),
        ];
        out.extend(self.backend.status());
        Ok(out)
    }

    fn create(&self, id: &str, parent: Option<&str>, opts: &CreateOptions) -> Result<()> {
        validate_id(id)?;
        if let Some(p) = parent {
            validate_id(p)?;
            self.recover_layer_if_needed(p).map_err(|e| match e {
                Error::NotFound { .. } => Error::ParentNotFound {
                    id: id.into(),
                    parent: p.into(),
                },
                e => e,
            })?;
        }
        let _parent_lock = parent
            .map(|p| self.layer_lock(p, LockMode::Shared))
            .transpose()?;
        let _lock = self.layer_lock(id, LockMode::Exclusive)?;
        let key = random_hex32();
        let kind = if opts.rw {
            LayerKind::Rw
        } else {
            LayerKind::Ro
        };
        let lref = {
            let _g = self.store_lock()?;
            if self.meta_path(id).exists() {
                return Err(Error::AlreadyExists { id: id.to_string() });
            }
            let mut ancestors = Vec::new();
            if let Some(p) = parent {
                let pm = self.load(p).map_err(|e| match e {
                    Error::NotFound { .. } => Error::ParentNotFound {
                        id: id.into(),
                        parent: p.into(),
                    },
                    e => e,
                })?;
                ancestors.push(pm.key.clone());
                ancestors.extend(self.layer_ref(&pm)?.ancestors);
            }
            self.write_json(
                &self.pending_path(&key),
                &Pending {
                    by: ProcessId::current(),
                    id: id.to_string(),
                },
            )?;
            LayerRef {
                id: id.to_string(),
                key: key.clone(),
                ancestors,
                kind,
            }
        };
        hit("create.pending");
        let built = self.backend.create(&lref);
        hit("create.built");
        let _g = self.store_lock()?;
        let pending = self.pending_path(&key);
        if let Err(e) = built {
            let _ = self.backend.remove(&key);
            let _ = durable_remove(&pending);
            return Err(e);
        }
        self.save(&LayerMeta {
            id: id.to_string(),
            parent: parent.map(str::to_string),
            kind,
            key,
            created: now_secs(),
            size: None,
            pristine: true,
            state: State::Ready,
        })?;
        hit("create.committed");
        durable_remove(&pending).map_err(|e| Error::io("removing", pending, e))
    }

    fn remove(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let lock = self.layer_lock(id, LockMode::Exclusive)?;
        let (key, removing) = {
            let _g = self.store_lock()?;
            let meta = self.load(id)?;
            self.check_unused(id)?;
            // A stale mount left by a dead user: take it down before the storage goes.
            let lref = self.layer_ref(&meta)?;
            if self.backend.is_mounted(&lref) {
                self.backend.unmount(&lref)?;
            }
            let mp = self.mount_path(id);
            durable_remove(&mp).map_err(|e| Error::io("removing", mp, e))?;
            // Before the commit point and under the store lock, so that no orphan sweep
            // sees the key unreferenced while we free it (shared: it never waits, since the
            // sweeps hold it exclusive only under the store lock). Without the lock file
            // (it could not be made on a full disk), rm still works, racing a sweep.
            let removing = LockGuard::acquire(&self.removal_lock_path(), LockMode::Shared).ok();
            // The commit point: from here on the layer does not exist, and its key is an
            // orphan that the next start removes if we die before freeing it.
            let p = self.meta_path(id);
            durable_remove(&p).map_err(|e| Error::io("removing", p, e))?;
            (meta.key, removing)
        };
        hit("remove.committed");
        self.backend.remove(&key)?;
        drop(removing);
        let _ = lock.unlink();
        Ok(())
    }

    fn get(&self, id: &str) -> Result<PathBuf> {
        let (_l, _g, meta) = loop {
            let l = self.layer_lock(id, LockMode::Shared)?;
            let g = self.store_lock()?;
            let meta = self.load(id)?;
            // An applier holds the layer lock exclusive: a layer still marked as being
            // applied, once we hold it, was left so by a process that died.
            if matches!(meta.state, State::Applying { by } if !by.is_alive()) {
                drop((g, l));
                self.recover_layer_if_needed(id)?;
                continue;
            }
            break (l, g, meta);
        };
        let lref = self.layer_ref(&meta)?;
        let mut rec = self.mount_record(id)?;
        rec.users.retain(|p| p.is_alive());
        let path = self.ensure_mounted(&meta, &lref, &mut rec)?;
        rec.count += 1;
        self.save_mount_record(id, &rec)?;
        Ok(path)
    }

    fn put(&self, id: &str) -> Result<()> {
        let _l = self.layer_lock(id, LockMode::Shared)?;
        let _g = self.store_lock()?;
        self.load(id)?;
        let mut rec = self.mount_record(id)?;
        if rec.count == 0 {
            return Err(Error::NotMounted { id: id.to_string() });
        }
        rec.count -= 1;
        rec.users.retain(|p| p.is_alive());
        self.unmount_if_unused(id, &mut rec)
    }

    fn exists(&self, id: &str) -> Result<bool> {
        validate_id(id)?;
        Ok(self.meta_path(id).exists())
    }

    fn list(&self) -> Result<Vec<LayerInfo>> {
        self.all_metas()?
            .into_iter()
            .map(|m| self.info_of(m))
            .collect()
    }

    fn info(&self, id: &str) -> Result<LayerInfo> {
        let m = self.load(id)?;
        self.info_of(m)
    }

    fn metadata(&self, id: &str) -> Result<BTreeMap<String, String>> {
        let meta = self.load(id)?;
        let lref = self.layer_ref(&meta)?;
        let mut out = self.backend.metadata(&lref)?;
        out.insert("StorageKey".into(), meta.key.clone());
        Ok(out)
    }

    fn diff(&self, id: &str, out: &mut dyn Write) -> Result<u64> {
        self.with_sources(id, |lref, parent, child| {
            // Native or generic, the change list goes through the one shared writer, so the
            // bytes can only differ if the lists do (and the suite checks that they do not).
            let changes = self.changes_between(lref, parent, child)?;
            Ok(crate::archive::changeset::write_changeset_from_source(
                child, &changes, out,
            )?)
        })
        .map_err(|e| e.in_layer(id))
    }

    fn changes(&self, id: &str) -> Result<Vec<Change>> {
        self.with_sources(id, |lref, parent, child| {
            self.changes_between(lref, parent, child)
        })
        .map_err(|e| e.in_layer(id))
    }

    fn apply_diff(&self, id: &str, tar: &mut dyn Read) -> Result<u64> {
        self.recover_layer_if_needed(id)?;
        let _l = self.layer_lock(id, LockMode::Exclusive)?;
        let (meta, target) = {
            let _g = self.store_lock()?;
            let mut meta = self.load(id)?;
            self.check_unused(id)?;
            let mut lref = self.layer_ref(&meta)?;
            if meta.pristine {
                meta.state = State::Applying {
                    by: ProcessId::current(),
                };
                self.save(&meta)?;
            } else {
                let key = random_hex32();
                self.write_json(
                    &self.pending_path(&key),
                    &Pending {
                        by: ProcessId::current(),
                        id: id.into(),
                    },
                )?;
                lref.key = key;
            }
            (meta, lref)
        };
        let in_place = meta.pristine;
        let result = (|| -> Result<u64> {
            hit("apply.marked");
            if !in_place {
                self.backend.clone_layer(&meta.key, &target)?;
                hit("apply.cloned");
            }
            let tar = FailpointReader {
                inner: tar,
                name: "apply.read",
            };
            let (_, mut plain) = crate::archive::decompress(tar)
                .map_err(|e| Error::from(crate::ArchiveError::Stream(e)))?;
            let bytes = self.backend.apply(&target, &mut plain)?;
            hit("apply.applied");
            Ok(bytes)
        })();
        let _g = self.store_lock()?;
        match result {
            Ok(bytes) => {
                let mut m = self.load(id)?;
                m.state = State::Ready;
                m.pristine = false;
                m.size = Some(m.size.unwrap_or(0) + bytes);
                let old_key = std::mem::replace(&mut m.key, target.key.clone());
                self.save(&m)?;
                hit("apply.committed");
                if !in_place {
                    let p = self.pending_path(&target.key);
                    durable_remove(&p).map_err(|e| Error::io("removing", p, e))?;
                    self.backend.remove(&old_key)?;
                }
                Ok(bytes)
            }
            Err(e) => {
                if in_place {
                    let m = self.load(id)?;
                    self.reset_to_pristine(&m)?;
                } else {
                    self.backend.remove(&target.key)?;
                    let p = self.pending_path(&target.key);
                    durable_remove(&p).map_err(|e| Error::io("removing", p, e))?;
                }
                Err(e.in_layer(id))
            }
        }
    }

    fn diff_size(&self, id: &str) -> Result<u64> {
        self.with_sources(id, |lref, parent, child| {
            let changes = self.changes_between(lref, parent, child)?;
            size_of_changes(child, &changes)
        })
        .map_err(|e| e.in_layer(id))
    }

    fn cleanup(&self) -> Result<()> {
        let _g = self.store_lock()?;
        for meta in self.all_metas()? {
            let lref = self.layer_ref(&meta)?;
            if self.backend.is_mounted(&lref) {
                self.backend.unmount(&lref)?;
            }
            let mp = self.mount_path(&meta.id);
            durable_remove(&mp).map_err(|e| Error::io("removing", mp, e))?;
        }
        self.backend.cleanup()
    }
}

impl LayerStore {
    fn info_of(&self, m: LayerMeta) -> Result<LayerInfo> {
        let rec = self.mount_record(&m.id)?;
        Ok(LayerInfo {
            id: m.id,
            parent: m.parent,
            kind: m.kind,
            created: m.created,
            size: m.size,
            mounts: rec.live_holders(),
        })
    }

    /// Refuse to change a layer that others build on or use: one with children (their views
    /// would change under them) or one whose view is held mounted. Under the store lock.
    fn check_unused(&self, id: &str) -> Result<()> {
        let children = self.children_of(id)?;
        if !children.is_empty() {
            return Err(Error::HasChildren {
                id: id.to_string(),
                children: children.join(", "),
            });
        }
        let holders = self.mount_record(id)?.live_holders();
        if holders > 0 {
            return Err(Error::Mounted {
                id: id.to_string(),
                count: holders,
            });
        }
        Ok(())
    }

    /// Ids of the layers whose parent is `id`.
    pub fn children(&self, id: &str) -> Result<Vec<String>> {
        self.children_of(id)
    }

    /// Verify the store against the disk: metadata, storage, pending work, mount records and
    /// mounts. With `repair`, fix what can be fixed without touching anything still in use
    /// (what a killed process left, records of dead processes, mounts nobody holds).
    pub fn check(&self, repair: bool) -> Result<Vec<Problem>> {
        let _g = self.store_lock()?;
        let mut problems = Vec::new();
        let mut report = |what: String, repairable: bool, fixed: bool| {
            problems.push(Problem {
                what,
                repairable,
                repaired: fixed,
            })
        };
        // Metadata, read one by one so that one corrupt record does not hide the others.
        let ldir = self.dir.join("layers");
        let mut metas = Vec::new();
        let mut unreadable = 0;
        for ent in fs::read_dir(&ldir)
            .map_err(|e| Error::io("listing", &ldir, e))?
            .flatten()
        {
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.contains(".tmp-") {
                let fixed = repair && fs::remove_file(ent.path()).is_ok();
                report(
                    format!(
                        "{}: a temporary file left by an interrupted write",
                        ent.path().display()
                    ),
                    true,
                    fixed,
                );
                continue;
            }
            match self.read_json::<LayerMeta>(&ent.path()) {
                Ok(Some(m)) => metas.push(m),
                Ok(None) => {}
                Err(e) => {
                    unreadable += 1;
                    report(format!("{e}"), false, false)
                }
            }
        }
        // With a record unreadable, storage no readable record names may be that layer's:
        // reported, never removed.
        let orphans_removable = unreadable == 0;
        let ids: HashSet<String> = metas.iter().map(|m| m.id.clone()).collect();
        let keys: HashSet<String> = self.backend.keys()?.into_iter().collect();
        for m in &metas {
            if let Some(p) = &m.parent {
                if !ids.contains(p) {
                    report(
                        format!("layer {}: its parent {p} is missing", m.id),
                        false,
                        false,
                    );
                }
            }
            if !keys.contains(&m.key) {
                report(
                    format!("layer {}: its storage {} is missing", m.id, m.key),
                    false,
                    false,
                );
            }
            if let State::Applying { by } = m.state {
                if !by.is_alive() {
                    let fixed = repair && self.reset_to_pristine(m).is_ok();
                    report(
                        format!(
                            "layer {}: an apply by process {} was interrupted",
                            m.id, by.pid
                        ),
                        true,
                        fixed,
                    );
                }
            }
        }
        // Work in progress, and storage nobody references.
        let referenced: HashSet<&str> = metas.iter().map(|m| m.key.as_str()).collect();
        let pdir = self.dir.join("pending");
        let mut building = HashSet::new();
        for ent in fs::read_dir(&pdir)
            .map_err(|e| Error::io("listing", &pdir, e))?
            .flatten()
        {
            let name = ent.file_name().to_string_lossy().into_owned();
            let key = name.trim_end_matches(".json").to_string();
            match self.read_json::<Pending>(&ent.path()) {
                Ok(Some(p)) if p.by.is_alive() => {
                    building.insert(key);
                }
                _ => {
                    let keep = referenced.contains(key.as_str());
                    let fixed = repair
                        && (keep || orphans_removable)
                        && (keep || self.backend.remove(&key).is_ok())
                        && durable_remove(&ent.path()).is_ok();
                    report(
                        format!("storage {key}: being built by a process that died"),
                        keep || orphans_removable,
                        fixed,
                    );
                    building.insert(key);
                }
            }
        }
        let sweep = self.no_removal_under_way();
        for key in &keys {
            if sweep.is_some() && !referenced.contains(key.as_str()) && !building.contains(key) {
                let fixed = repair && orphans_removable && self.backend.remove(key).is_ok();
                report(
                    format!("storage {key}: no layer uses it"),
                    orphans_removable,
                    fixed,
                );
            }
        }
        // Mount records against the mounts.
        let mdir = self.dir.join("mounts");
        for ent in fs::read_dir(&mdir)
            .map_err(|e| Error::io("listing", &mdir, e))?
            .flatten()
        {
            let name = ent.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let Some(meta) = metas.iter().find(|m| m.id == id) else {
                let fixed = repair && durable_remove(&ent.path()).is_ok();
                report(
                    format!(
                        "{}: a mount record for a layer that does not exist",
                        ent.path().display()
                    ),
                    true,
                    fixed,
                );
                continue;
            };
            let mut rec = match self.mount_record(id) {
                Ok(r) => r,
                Err(e) => {
                    report(format!("{e}"), false, false);
                    continue;
                }
            };
            let dead = rec.users.iter().filter(|p| !p.is_alive()).count();
            if dead > 0 {
                rec.users.retain(|p| p.is_alive());
                let fixed = repair && self.save_mount_record(id, &rec).is_ok();
                report(
                    format!("layer {id}: held mounted by {dead} process(es) that died"),
                    true,
                    fixed,
                );
            }
            // A broken parent chain is reported above; the rest of the store is still checked.
            let Ok(lref) = self.layer_ref(meta) else {
                continue;
            };
            if rec.count > 0 && !self.backend.is_mounted(&lref) {
                rec.count = 0;
                let fixed = repair && self.save_mount_record(id, &rec).is_ok();
                report(
                    format!("layer {id}: counted as mounted but its view is not mounted (after a reboot?)"),
                    true,
                    fixed,
                );
            }
        }
        for m in &metas {
            let rec = self.mount_record(&m.id).unwrap_or_default();
            let Ok(lref) = self.layer_ref(m) else {
                continue;
            };
            if rec.live_holders() == 0
                && self.backend.is_mounted(&lref)
                && self.backend.view_is_separate(&lref)
            {
                let fixed = repair && self.backend.unmount(&lref).is_ok();
                report(
                    format!("layer {}: its view is mounted but nobody holds it", m.id),
                    true,
                    fixed,
                );
            }
        }
        Ok(problems)
    }

    /// Ids of every layer with the storage key each uses (for `gd check`).
    pub fn keys_in_use(&self) -> Result<HashMap<String, String>> {
        Ok(self
            .all_metas()?
            .into_iter()
            .map(|m| (m.key, m.id))
            .collect())
    }
}
