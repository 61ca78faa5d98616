//! The conformance suite: the same cases run against every driver (built in, or loaded as a
//! plugin). It checks what Docker's graphtest and containerd's snapshotter suite check, and
//! gd's own contract: for every layer, the driver's view has the manifest of a plain
//! reference directory that went through the same steps, and the driver's diff is
//! byte-identical to the canonical changeset between the two reference directories.
//!
//! A driver's runner is one line, in `tests/tests/<driver>.rs`:
//!
//! ```ignore
//! gd_conformance::conformance_tests!(driver_vfs::factory());
//! ```
//!
//! A driver whose probe fails on this host is skipped with a loud `SKIPPED:` line, unless its
//! name is listed in `GD_REQUIRE_DRIVERS` (comma-separated; CI sets it), in which case the
//! case fails: CI never skips a whole driver silently.

pub mod cases;
pub mod plugins;
pub mod scenarios;
pub mod steps;

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use driver_api::archive::write_changeset;
use driver_api::copy::copy_tree;
use driver_api::manifest::write_manifest;
use driver_api::{CreateOptions, DriverFactory, GraphDriver, LayerStore};

pub use steps::{apply_step, apply_steps, Step};

/// One driver's store in a fresh temporary root, plus room for reference directories.
pub struct Harness {
    pub name: &'static str,
    /// A `LayerStore` over the factory's backend, or a driver given whole (a loaded plugin).
    pub store: Box<dyn GraphDriver>,
    pub home: PathBuf,
    /// Things to drop after the store and before `tmp` (e.g. a mount `home` lives on).
    /// Fields drop in declaration order: store, then guards, then tmp.
    _guards: Vec<Box<dyn std::any::Any>>,
    tmp: tempfile::TempDir,
    next_ref: std::cell::Cell<u32>,
}

/// Where the suite makes its temporary roots. Overlay needs a filesystem with d_type and
/// trusted xattrs, which tmpfs may lack; /var/tmp is on a real disk on most hosts.
fn tmp_base() -> PathBuf {
    std::env::var_os("GD_TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// Whether a driver may be skipped when its probe fails.
pub fn required(name: &str) -> bool {
    std::env::var("GD_REQUIRE_DRIVERS")
        .map(|v| v.split(',').any(|d| d.trim() == name))
        .unwrap_or(false)
}

impl Harness {
    /// A harness for `factory`, or None (after a loud SKIPPED line) when the host can't run it.
    pub fn new(factory: DriverFactory) -> Option<Harness> {
        Self::with_options(factory, &BTreeMap::new())
    }

    pub fn with_options(
        factory: DriverFactory,
        opts: &BTreeMap<String, String>,
    ) -> Option<Harness> {
        let base = tmp_base();
        fs::create_dir_all(&base).expect("temporary base directory");
        let tmp = tempfile::Builder::new()
            .prefix(&format!("gd-{}-", factory.name))
            .tempdir_in(&base)
            .unwrap();
        let home = tmp.path().join("home");
        fs::create_dir_all(&home).unwrap();
        if let Err(reason) = (factory.probe)(&home) {
            if required(factory.name) {
                panic!(
                    "driver {} is required here (GD_REQUIRE_DRIVERS) but cannot run: {reason}",
                    factory.name
                );
            }
            eprintln!(
                "SKIPPED: driver {} cannot run on this host: {reason}",
                factory.name
            );
            return None;
        }
        let backend = (factory.open)(&home, opts)
            .unwrap_or_else(|e| panic!("opening driver {}: {e}", factory.name));
        let store = LayerStore::open(&home, backend).expect("opening the store");
        Some(Harness {
            name: factory.name,
            store: Box::new(store),
            home,
            _guards: Vec::new(),
            tmp,
            next_ref: std::cell::Cell::new(0),
        })
    }

    /// A harness for a driver opened by the caller (a plugin loaded through the C ABI),
    /// whose files live under `home`. Reference directories are made in `tmp`, which is
    /// removed when the harness is dropped; `guards` are dropped after the driver is closed
    /// and before `tmp` is removed (an unmount guard for the filesystem `home` is on).
    pub fn from_driver(
        name: &'static str,
        driver: Box<dyn GraphDriver>,
        home: PathBuf,
        tmp: tempfile::TempDir,
        guards: Vec<Box<dyn std::any::Any>>,
    ) -> Harness {
        Harness {
            name,
            store: driver,
            home,
            _guards: guards,
            tmp,
            next_ref: std::cell::Cell::new(0),
        }
    }

    /// A fresh temporary directory under the suite's base, for `from_driver`.
    pub fn new_tmp(name: &str) -> tempfile::TempDir {
        let base = tmp_base();
        fs::create_dir_all(&base).expect("temporary base directory");
        tempfile::Builder::new()
            .prefix(&format!("gd-{name}-"))
            .tempdir_in(&base)
            .unwrap()
    }

    /// A fresh, empty reference directory (root `0755 0:0`, like a layer's root).
    pub fn ref_dir(&self) -> PathBuf {
        let n = self.next_ref.get();
        self.next_ref.set(n + 1);
        let d = self.tmp.path().join(format!("ref{n}"));
        fs::create_dir(&d).unwrap();
        d
    }

    /// A copy of a reference directory.
    pub fn ref_copy(&self, from: &Path) -> PathBuf {
        let n = self.next_ref.get();
        self.next_ref.set(n + 1);
        let d = self.tmp.path().join(format!("ref{n}"));
        copy_tree(from, &d).unwrap();
        d
    }

    pub fn create(&self, id: &str, parent: Option<&str>, rw: bool) {
        self.store
            .create(
                id,
                parent,
                &CreateOptions {
                    rw,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("[{}] create {id}: {e}", self.name));
    }

    pub fn diff(&self, id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.store
            .diff(id, &mut out)
            .unwrap_or_else(|e| panic!("[{}] diff {id}: {e}", self.name));
        out
    }

    pub fn apply(&self, id: &str, tar: &[u8]) -> u64 {
        self.store
            .apply_diff(id, &mut Cursor::new(tar))
            .unwrap_or_else(|e| panic!("[{}] apply {id}: {e}", self.name))
    }

    /// The manifest of a layer's view (mounted for the occasion).
    pub fn manifest(&self, id: &str) -> String {
        let view = self
            .store
            .get(id)
            .unwrap_or_else(|e| panic!("[{}] get {id}: {e}", self.name));
        let m = manifest_text(&view);
        self.store.put(id).unwrap();
        m
    }

    /// Build layer `id` on `parent` from `steps` the way an image is built: the steps go to a
    /// copy of the reference `prev`, the canonical changeset between the two reference
    /// directories is applied to a new read-only layer. Returns the new reference directory.
    pub fn layer_via_tar(
        &self,
        id: &str,
        parent: Option<&str>,
        prev: &Path,
        steps: &[Step],
        first: usize,
    ) -> PathBuf {
        let next = self.ref_copy(prev);
        apply_steps(&next, steps, first);
        let tar = changeset(prev, &next);
        self.create(id, parent, false);
        self.apply(id, &tar);
        next
    }

    /// Build layer `id` on `parent` the way a container changes: a read-write layer, the steps
    /// made through its mounted view. Returns the new reference directory.
    pub fn layer_via_mount(
        &self,
        id: &str,
        parent: Option<&str>,
        prev: &Path,
        steps: &[Step],
        first: usize,
    ) -> PathBuf {
        let next = self.ref_copy(prev);
        apply_steps(&next, steps, first);
        self.create(id, parent, true);
        let view = self
            .store
            .get(id)
            .unwrap_or_else(|e| panic!("[{}] get {id}: {e}", self.name));
        for (i, s) in steps.iter().enumerate() {
            apply_step(&view, s, first + i)
                .unwrap_or_else(|e| panic!("[{}] step {s:?} in the view of {id}: {e}", self.name));
        }
        self.store.put(id).unwrap();
        next
    }

    /// gd's contract for one layer: its view equals the reference `next`; its diff is the
    /// canonical changeset between `prev` and `next`, byte for byte; its changes and size are
    /// the comparer's; and applying its diff to a fresh layer on the same parent gives the same
    /// view and the same diff again.
    pub fn check_layer(&self, id: &str, parent: Option<&str>, prev: &Path, next: &Path) {
        let want_manifest = manifest_text(next);
        assert_manifest_eq(
            &self.manifest(id),
            &want_manifest,
            &format!("[{}] view of layer {id}", self.name),
        );
        let want_tar = changeset(prev, next);
        let got_tar = self.diff(id);
        assert_tar_eq(
            &got_tar,
            &want_tar,
            &format!("[{}] diff of layer {id}", self.name),
        );
        let want_changes = driver_api::tree::changes(Some(prev), next).unwrap();
        assert_eq!(
            self.store.changes(id).unwrap(),
            want_changes,
            "[{}] changes of layer {id}",
            self.name
        );
        let size = self.store.diff_size(id).unwrap();
        // Round trip through a fresh layer.
        let copy = format!("{id}-roundtrip");
        self.create(&copy, parent, false);
        self.apply(&copy, &got_tar);
        assert_manifest_eq(
            &self.manifest(&copy),
            &want_manifest,
            &format!("[{}] view of {copy}", self.name),
        );
        assert_tar_eq(
            &self.diff(&copy),
            &want_tar,
            &format!("[{}] diff of {copy}", self.name),
        );
        assert_eq!(
            self.store.diff_size(&copy).unwrap(),
            size,
            "[{}] diff size of {copy}",
            self.name
        );
        self.store.remove(&copy).unwrap();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Never leave mounts behind, whatever the test did.
        if let Err(e) = self.store.cleanup() {
            eprintln!("[{}] cleanup: {e}", self.name);
        }
    }
}

/// The manifest of any directory, as text.
pub fn manifest_text(dir: &Path) -> String {
    let mut out = Vec::new();
    write_manifest(dir, &mut out).unwrap_or_else(|e| panic!("manifest of {}: {e}", dir.display()));
    String::from_utf8(out).expect("manifest lines are escaped ASCII")
}

/// The canonical changeset between two directories.
pub fn changeset(prev: &Path, next: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    write_changeset(Some(prev), next, &mut out)
        .unwrap_or_else(|e| panic!("changeset {} -> {}: {e}", prev.display(), next.display()));
    out
}

/// Compare two manifests and, when they differ, show only the lines that differ.
pub fn assert_manifest_eq(got: &str, want: &str, what: &str) {
    if got == want {
        return;
    }
    let g: std::collections::BTreeSet<&str> = got.lines().collect();
    let w: std::collections::BTreeSet<&str> = want.lines().collect();
    let mut msg = format!("{what}: manifest differs from the reference\n");
    for l in w.difference(&g) {
        msg += &format!("  - want {l}\n");
    }
    for l in g.difference(&w) {
        msg += &format!("  + got  {l}\n");
    }
    panic!("{msg}");
}

/// Compare two tars byte for byte and, when they differ, list their entries.
pub fn assert_tar_eq(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    panic!(
        "{what}: tar bytes differ from the canonical changeset ({} vs {} bytes)\n got entries:  {:?}\n want entries: {:?}",
        got.len(),
        want.len(),
        tar_listing(got),
        tar_listing(want)
    );
}

/// `path type size` of each entry of a tar, for error messages.
pub fn tar_listing(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(Cursor::new(bytes));
    let Ok(entries) = ar.entries() else {
        return vec!["<unreadable>".into()];
    };
    for e in entries {
        match e {
            Ok(e) => out.push(format!(
                "{} {:?} {}",
                String::from_utf8_lossy(&e.path_bytes()),
                e.header().entry_type(),
                e.header().size().unwrap_or(0)
            )),
            Err(err) => {
                out.push(format!("<error {err}>"));
                break;
            }
        }
    }
    out
}

/// Run each case as its own `#[test]` for one driver: `conformance_tests!(factory)`, or
/// `conformance_tests!(harness = make)` with `make: fn() -> Option<Harness>` (a plugin).
#[macro_export]
macro_rules! conformance_tests {
    (harness = $make:expr) => {
        $crate::conformance_tests!(@list $make);
    };
    (@list $make:expr) => {
        $crate::conformance_tests!(@cases $make;
            empty_layer,
            root_permissions,
            base_layer_from_gnu_tar,
            snapshot_sees_parent,
            rw_writes_stay_in_layer,
            deep_chain_128,
            refcounted_mounts,
            remove_refused_with_children_or_mounted,
            failed_apply_rolls_back,
            hostile_tars_rejected,
            apply_onto_layer_with_content,
            scenario_basic_via_tar,
            scenario_basic_via_mount,
            scenario_nested_recreate_via_tar,
            scenario_nested_recreate_via_mount,
            scenario_hardlinks_via_tar,
                        scenario_hardlinks_via_mount,
            scenario_hardlinked_non_files_via_tar,
            scenario_hardlinked_non_files_via_mount,
            scenario_type_changes_via_tar,
            scenario_type_changes_via_mount,
            scenario_odd_modes_via_tar,
            scenario_odd_modes_via_mount,
            scenario_long_names_via_tar,
            scenario_long_names_via_mount,
            scenario_same_second_via_tar,
            scenario_same_second_via_mount,
            random_steps_match_reference
        );
    };
    ($factory:expr) => {
        $crate::conformance_tests!(@list || $crate::Harness::new($factory));
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let make: fn() -> Option<$crate::Harness> = $make;
                if let Some(h) = make() {
                    $crate::cases::$case(&h);
                }
            }
        )*
    };
}
