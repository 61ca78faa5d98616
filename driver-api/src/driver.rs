//! The `GraphDriver` trait (what runtimes and the CLI use) and the `Backend` trait (what a
//! storage backend implements). The `LayerStore` turns any `Backend` into a `GraphDriver`:
//! ids, parents, metadata, locks, atomic create/apply/remove, mount reference counts and the
//! generic diff all live there, once, so that a backend holds only what is specific to it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::view::ViewSource;

/// A layer's view and its parent's, read in place (see `Backend::views_in_place`).
pub struct ViewsInPlace {
    pub parent: Box<dyn ViewSource>,
    pub child: Box<dyn ViewSource>,
}

/// Read-only image layer or read-write (container) layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    Ro,
    Rw,
}

impl LayerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LayerKind::Ro => "ro",
            LayerKind::Rw => "rw",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// A read-write layer (a container's). Read-only layers are filled with `apply_diff`.
    pub rw: bool,
    /// Backend-specific options (`-o key=value` at create time), passed through.
    pub storage_opts: BTreeMap<String, String>,
}

/// What the store knows about one layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerInfo {
    pub id: String,
    pub parent: Option<String>,
    pub kind: LayerKind,
    /// Seconds since the epoch.
    pub created: i64,
    /// Bytes of file content applied into this layer (None until something was applied).
    pub size: Option<u64>,
    /// Number of outstanding `get`s (mounts) on this layer.
    pub mounts: u32,
}

/// One line of `changes`: what happened to a path between the parent view and the layer's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChangeKind {
    #[serde(rename = "A")]
    Add,
    #[serde(rename = "C")]
    Modify,
    #[serde(rename = "D")]
    Delete,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Add => 'A',
            ChangeKind::Modify => 'C',
            ChangeKind::Delete => 'D',
        }
    }
}

/// A change to one path. `path` is absolute within the view (`/etc/passwd`), as `docker diff` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.letter(), self.path)
    }
}

/// The interface of a layer store, with the semantics of Docker's graph drivers.
///
/// `get` and `put` are reference-counted and the count survives the process: two `get`s need
/// two `put`s, whichever processes make them.
pub trait GraphDriver: Send + Sync {
    /// The driver's name (`vfs`, `overlay`, `aufs`, `devmapper`, or a plugin's own).
    fn name(&self) -> String;
    /// Key/value pairs describing the backend and the host (shown by `gd status`).
    fn status(&self) -> Result<Vec<(String, String)>>;
    fn create(&self, id: &str, parent: Option<&str>, opts: &CreateOptions) -> Result<()>;
    fn remove(&self, id: &str) -> Result<()>;
    /// Mount (or otherwise materialise) the merged view of `id` and return its path.
    fn get(&self, id: &str) -> Result<PathBuf>;
    fn put(&self, id: &str) -> Result<()>;
    fn exists(&self, id: &str) -> Result<bool>;
    fn list(&self) -> Result<Vec<LayerInfo>>;
    fn info(&self, id: &str) -> Result<LayerInfo>;
    /// Backend-specific facts about one layer (its directories, device, ...).
    fn metadata(&self, id: &str) -> Result<BTreeMap<String, String>>;
    /// Write the canonical changeset of `id` against its parent; returns the bytes written.
    fn diff(&self, id: &str, out: &mut dyn Write) -> Result<u64>;
    fn changes(&self, id: &str) -> Result<Vec<Change>>;
    /// Apply a layer tar (plain, gzip or zstd) onto `id`; returns the bytes of content applied.
    /// On failure the layer is left exactly as it was.
    fn apply_diff(&self, id: &str, tar: &mut dyn Read) -> Result<u64>;
    /// Bytes of file content added or modified by `id` (hardlinked content counted once).
    fn diff_size(&self, id: &str) -> Result<u64>;
    /// Release everything the driver holds on this host (mounts, devices, servers).
    fn cleanup(&self) -> Result<()>;
}

/// How a backend's view of a layer is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// A layer as the store hands it to a backend: its storage key and its ancestors' keys.
///
/// Storage keys are opaque names chosen by the store; they differ from layer ids so that an
/// apply onto a non-empty layer can be built aside under a new key and switched in atomically.
/// A key is always 32 lowercase hex digits (see `is_storage_key`), so a backend can tell its
/// per-key files from its other files. The store keeps its own files in `<home>/store/`; a
/// backend may use any other name under `<home>`.
#[derive(Debug, Clone)]
pub struct LayerRef {
    pub id: String,
    pub key: String,
    /// Keys of the ancestors, nearest parent first.
    pub ancestors: Vec<String>,
    pub kind: LayerKind,
}

impl LayerRef {
    pub fn parent_key(&self) -> Option<&str> {
        self.ancestors.first().map(|s| s.as_str())
    }
}

/// Whether `name` has the form of a storage key (32 lowercase hex digits).
pub fn is_storage_key(name: &str) -> bool {
    name.len() == 32
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What a storage backend implements. Everything else is the `LayerStore`'s job.
pub trait Backend: Send + Sync {
    fn name(&self) -> &str;
    fn status(&self) -> Vec<(String, String)>;

    /// Allocate storage for `layer.key`: empty if it has no parent, else its parent's content
    /// (for a copying backend) or a reference to it (for a union or snapshot backend).
    fn create(&self, layer: &LayerRef) -> Result<()>;
    /// Make `dst.key` hold exactly what `src_key` holds (same ancestors), for an apply onto a
    /// layer that already has content: the apply goes into the copy, which is switched in
    /// only when it succeeded.
    fn clone_layer(&self, src_key: &str, dst: &LayerRef) -> Result<()>;
    /// Free the storage of `key`. Must succeed (doing nothing) if it is already gone.
    fn remove(&self, key: &str) -> Result<()>;
    /// Every storage key present, including half-made ones: the store removes those it does
    /// not reference.
    fn keys(&self) -> Result<Vec<String>>;

    /// Make the merged view of `layer` available and return its path. Called when the
    /// reference count goes from zero to one (or by the store for its own short uses).
    fn mount(&self, layer: &LayerRef, access: Access) -> Result<PathBuf>;
    fn unmount(&self, layer: &LayerRef) -> Result<()>;
    /// Whether the view is currently mounted (after a reboot the store's counts are stale).
    fn is_mounted(&self, layer: &LayerRef) -> bool;

    /// Whether a view is something mounted apart from the layer's storage (false for vfs,
    /// whose view is the storage itself and so is "mounted" whenever the layer exists).
    fn mount_is_separate(&self) -> bool {
        true
    }

    /// Whether this layer's view is something mounted apart from its storage. Defaults to
    /// `mount_is_separate`; a backend whose views differ by layer (overlay: a base layer's
    /// view is its diff directory) says so per layer, so `gd check` does not take such a view
    /// for a mount left behind.
    fn view_is_separate(&self, _layer: &LayerRef) -> bool {
        self.mount_is_separate()
    }

    /// Backend facts about one layer for `metadata`.
    fn metadata(&self, _layer: &LayerRef) -> Result<BTreeMap<String, String>> {
        Ok(BTreeMap::new())
    }

    /// Apply a (decompressed) tar onto the layer. The default mounts the view read-write and
    /// applies there with the flat applier; a backend may write its own format directly.
    fn apply(&self, layer: &LayerRef, tar: &mut dyn Read) -> Result<u64> {
        let view = self.mount(layer, Access::ReadWrite)?;
        let res = crate::archive::apply_tar(&view, tar, &crate::archive::ApplyOptions::default());
        let un = self.unmount(layer);
        let stats = res?;
        un?;
        Ok(stats.bytes)
    }

    /// A native changes list, if the backend can find the changes faster than comparing the
    /// two whole views (overlay and aufs walk only the layer's own directory). The store
    /// passes both views (mounted, or as `views_in_place` gave them), and the backend reads
    /// metadata and content there. The result must equal `tree::changes(parent_view,
    /// child_view)`; the store then writes the canonical tar from it with the shared writer,
    /// so a native diff is byte-identical.
    fn native_changes(
        &self,
        _layer: &LayerRef,
        _parent_view: Option<&dyn ViewSource>,
        _child_view: &dyn ViewSource,
    ) -> Option<Result<Vec<Change>>> {
        None
    }

    /// The parent's view and the layer's view read in place from storage, if the backend can
    /// give them without mounting anything (aufs-compat: the union of its branches, where a
    /// mount is a FUSE server). The store then diffs without mounting. A backend that gives
    /// them must give `native_changes` for them too: the generic comparer needs mounted views.
    fn views_in_place(&self, _layer: &LayerRef) -> Option<ViewsInPlace> {
        None
    }

    /// Tear down what the backend holds on this host.
    fn cleanup(&self) -> Result<()> {
        Ok(())
    }
}

/// How the CLI and the conformance suite find and open a backend.
pub struct DriverFactory {
    pub name: &'static str,
    /// Higher is preferred when the driver is chosen automatically.
    pub priority: u32,
    /// Whether this host can run the backend, and why not.
    pub probe: fn(home: &Path) -> std::result::Result<(), String>,
    /// Open the backend whose files live under `home` (the store's directory for this driver).
    pub open: fn(home: &Path, opts: &BTreeMap<String, String>) -> Result<Box<dyn Backend>>,
}
