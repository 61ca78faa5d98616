//! The `overlay` backend: layers stored as kernel overlayfs directories, in the layout of
//! Docker's overlay2 (see [`layout`]). A layer's view is an overlay mount of its own `diff/`
//! over its ancestors' `diff/` directories; a layer without a parent is its `diff/` directly.

mod index;
mod layout;
mod mount;
mod native;
mod probe;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use driver_api::archive::{apply_tar, ApplyOptions, WhiteoutFormat};
use driver_api::copy::{copy_tree_with, CopyOptions};
use driver_api::view::ViewSource;
use driver_api::{Access, Backend, Change, DriverFactory, Error, LayerKind, LayerRef, Result};

use layout::Layout;

pub const NAME: &str = "overlay";

/// The factory the CLI and the conformance suite use to find this backend.
pub fn factory() -> DriverFactory {
    DriverFactory {
        name: NAME,
        priority: 40,
        probe: probe::probe,
        open: |home, opts| Ok(Box::new(OverlayBackend::open(home, opts)?)),
    }
}

pub struct OverlayBackend {
    layout: Layout,
    /// Gathered on first use (`status`); opening the backend only checks d_type.
    facts: std::sync::OnceLock<probe::HostFacts>,
}

fn err(message: impl Into<String>) -> Error {
    Error::driver(NAME, message)
}

impl OverlayBackend {
    /// Open (creating) the backend's directory `home`. No options are recognised yet.
    pub fn open(home: &Path, opts: &BTreeMap<String, String>) -> Result<Self> {
        if let Some(key) = opts.keys().next() {
            return Err(err(format!(
                "unknown option {key:?} (the overlay driver takes none)"
            )));
        }
        if !probe::overlay_in_kernel() {
            return Err(Error::Unsupported {
                driver: NAME.into(),
                reason: "the kernel has no overlay filesystem (not in /proc/filesystems)".into(),
            });
        }
        let layout = Layout {
            home: home.to_path_buf(),
        };
        std::fs::create_dir_all(layout.links())
            .map_err(|e| Error::io("create", layout.links(), e))?;
        if let Err(reason) = probe::d_type(home) {
            return Err(Error::Unsupported {
                driver: NAME.into(),
                reason,
            });
        }
        Ok(OverlayBackend {
            layout,
            facts: Default::default(),
        })
    }

    pub fn home(&self) -> &Path {
        &self.layout.home
    }

    /// The kernel's limit on lower layers in one mount, measured on first use.
    pub fn max_lowers(&self) -> Option<usize> {
        self.facts().max_lowers
    }

    fn facts(&self) -> &probe::HostFacts {
        self.facts.get_or_init(|| probe::gather(&self.layout.home))
    }

    /// The storage keys of the lower layers of `layer`'s view, topmost first, and whether the
    /// view gets `diff/` as its upper directory.
    fn view_spec<'a>(&self, layer: &'a LayerRef, access: Access) -> (Vec<&'a str>, bool) {
        let writable = layer.kind == LayerKind::Rw || access == Access::ReadWrite;
        let own = (!writable).then_some(layer.key.as_str());
        let lowers = own
            .into_iter()
            .chain(layer.ancestors.iter().map(String::as_str))
            .collect();
        (lowers, writable)
    }

    fn require_layer(&self, layer: &LayerRef) -> Result<()> {
        layout::check_key(&layer.key)?;
        let diff = self.layout.diff(&layer.key);
        if !diff.is_dir() {
            return Err(err(format!(
                "layer {}: its storage {} is missing",
                layer.id,
                diff.display()
            )));
        }
        for key in &layer.ancestors {
            if !self.layout.diff(key).is_dir() {
                return Err(err(format!(
                    "layer {}: the storage of ancestor key {key} ({}) is missing",
                    layer.id,
                    self.layout.diff(key).display()
                )));
            }
        }
        Ok(())
    }

    /// Make `diff/` say what the indexed view shows about hardlinks. When a non-directory
    /// with several names in a lower layer (a file, and also a symlink, device or fifo) was
    /// copied up, the index shows every name on the new inode, but only the name that was
    /// changed exists in `diff/`, maybe renamed. The index says which lower inodes were
    /// copied up (see [`index`]); every name of them in the lower layers that the view still
    /// shows from there gets its own times set again through the view: a change of nothing
    /// that still makes the kernel link it up (a hardlink to the indexed inode, parent
    /// directories copied up with their times kept). Opening for write would do the same for
    /// a file, but not for a symlink, and would open a device. Costs nothing when the index
    /// is empty, which it is unless a hardlinked lower entry was changed.
    fn link_up_aliases(&self, layer: &LayerRef, view: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let index = self.layout.work(&layer.key).join("index");
        let lowers: Vec<PathBuf> = layer
            .ancestors
            .iter()
            .map(|k| self.layout.diff(k))
            .collect();
        let Some(lower_fs) = lowers.first() else {
            return Ok(());
        };
        let origins = index::origins(&index, lower_fs)
            .map_err(|e| Error::io("read the overlay index", &index, e))?;
        if origins.is_empty() {
            return Ok(());
        }
        let inodes: std::collections::HashSet<u64> = origins.iter().map(|o| o.ino).collect();
        // The branches holding those inodes: the ones the kernel named, or all of them when it
        // could not name one.
        let named: Option<std::collections::BTreeSet<usize>> = origins
            .iter()
            .map(|o| {
                let path = o.path.as_ref()?;
                lowers.iter().position(|l| path.starts_with(l))
            })
            .collect();
        let branches: Vec<usize> = match named {
            Some(set) => set.into_iter().collect(),
            None => (0..lowers.len()).collect(),
        };
        let diff = self.layout.diff(&layer.key);
        // The layer's own view as branches: a name the upper hides (a whiteout or an opaque
        // directory above it) is not shown.
        let view_branches: Vec<PathBuf> = std::iter::once(diff.clone())
            .chain(lowers.iter().cloned())
            .collect();
        for i in branches {
            let mut aliases = Vec::new();
            walk_non_dirs(&lowers[i], &mut |rel, md| {
                if md.nlink() > 1 && inodes.contains(&md.ino()) {
                    aliases.push((rel.to_path_buf(), md.ino()));
                }
            })?;
            for (rel, ino) in aliases {
                if std::fs::symlink_metadata(diff.join(&rel)).is_ok() {
                    continue; // already in the upper (linked, rewritten or whited out)
                }
                // Only a name the view still shows from that same lower inode.
                match native::lookup_lowers(&view_branches, &rel) {
                    Some((j, md)) if j == i + 1 && md.ino() == ino => {}
                    _ => continue,
                }
                let path = view.join(&rel);
                let md = std::fs::symlink_metadata(&path)
                    .map_err(|e| Error::io("lstat hardlink alias", &path, e))?;
                // Its own times again: through the view, a change of nothing that copies it up.
                driver_api::copy::set_times_of(&path, &md)
                    .map_err(|e| Error::io("link up hardlink alias", &path, e.into()))?;
            }
        }
        Ok(())
    }

    fn write_lower_file(&self, layer: &LayerRef) -> Result<()> {
        if layer.ancestors.is_empty() {
            return Ok(());
        }
        let mut names = Vec::with_capacity(layer.ancestors.len());
        for key in &layer.ancestors {
            match self.layout.link_name(key) {
                Some(name) => names.push(format!("{}/{name}", layout::LINK_DIR)),
                None => {
                    return Err(err(format!(
                        "layer {}: ancestor key {key} has no link name ({} is missing)",
                        layer.id,
                        self.layout.link_file(key).display()
                    )))
                }
            }
        }
        let path = self.layout.lower_file(&layer.key);
        std::fs::write(&path, names.join(":")).map_err(|e| Error::io("write", &path, e))
    }
}

/// Call `f` with the relative path and metadata of every entry beneath `root` that is not a
/// directory.
fn walk_non_dirs(root: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) -> Result<()> {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("read directory", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
            let md = entry
                .metadata()
                .map_err(|e| Error::io("lstat", entry.path(), e))?;
            let sub = rel.join(entry.file_name());
            if md.is_dir() {
                stack.push(sub);
            } else {
                f(&sub, &md);
            }
        }
    }
    Ok(())
}

impl Backend for OverlayBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn status(&self) -> Vec<(String, String)> {
        let f = self.facts();
        let mut out = vec![
            ("Backing Filesystem".to_string(), f.backing_fs.clone()),
            ("Supports d_type".to_string(), f.d_type.is_ok().to_string()),
            (
                "Mount API".to_string(),
                if f.lowerdir_add {
                    "fsopen/fsconfig with lowerdir+ (no page limit on layer depth)".to_string()
                } else {
                    "mount(2) with short links (the options must fit in one page)".to_string()
                },
            ),
            (
                "Max Layer Depth".to_string(),
                match f.max_lowers {
                    Some(n) => format!("{n} lower layers (measured)"),
                    None => "unknown".to_string(),
                },
            ),
            (
                "Mount Options".to_string(),
                mount::MOUNT_OPTIONS
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("Native Overlay Diff".to_string(), "true".to_string()),
        ];
        let defaults = f
            .module_defaults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        out.push(("Kernel Overlay Defaults".to_string(), defaults));
        out
    }

    fn create(&self, layer: &LayerRef) -> Result<()> {
        layout::check_key(&layer.key)?;
        let dir = self.layout.layer_dir(&layer.key);
        // The layer directory first: from here on `keys()` lists the key, so a crash leaves
        // something the store can collect.
        std::fs::create_dir(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => err(format!(
                "layer {}: storage key {} already exists",
                layer.id, layer.key
            )),
            _ => Error::io("create", &dir, e),
        })?;
        use std::os::unix::fs::DirBuilderExt;
        for (path, mode) in [
            (self.layout.diff(&layer.key), 0o755),
            (self.layout.work(&layer.key), 0o700),
            (self.layout.merged(&layer.key), 0o700),
        ] {
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(&path)
                .map_err(|e| Error::io("create", &path, e))?;
            // The umask may have trimmed the mode; a layer's root is 0755 whatever it is.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io("chmod", &path, e))?;
        }
        let name = layout::new_link_name().map_err(|e| Error::io("read", "/dev/urandom", e))?;
        let link = self.layout.links().join(&name);
        std::fs::create_dir_all(self.layout.links())
            .map_err(|e| Error::io("create", self.layout.links(), e))?;
        std::os::unix::fs::symlink(layout::link_target(&layer.key), &link)
            .map_err(|e| Error::io("symlink", &link, e))?;
        let link_file = self.layout.link_file(&layer.key);
        std::fs::write(&link_file, &name).map_err(|e| Error::io("write", &link_file, e))?;
        self.write_lower_file(layer)
    }

    fn clone_layer(&self, src_key: &str, dst: &LayerRef) -> Result<()> {
        layout::check_key(src_key)?;
        let src = self.layout.diff(src_key);
        if !src.is_dir() {
            return Err(err(format!(
                "layer {}: cannot clone storage key {src_key}: {} is missing",
                dst.id,
                src.display()
            )));
        }
        self.create(dst)?;
        // Keep whiteout devices and `trusted.overlay.opaque`: they are this layer's content.
        let opts = CopyOptions {
            keep_internal_xattrs: true,
            into_existing: true,
        };
        Ok(copy_tree_with(&src, &self.layout.diff(&dst.key), opts)?)
    }

    fn remove(&self, key: &str) -> Result<()> {
        layout::check_key(key)?;
        let dir = self.layout.layer_dir(key);
        if !dir.exists() {
            return Ok(());
        }
        let merged = self.layout.merged(key);
        mount::unmount_all(&merged).map_err(|e| Error::io("unmount", &merged, e))?;
        if let Some(name) = self.layout.link_name(key) {
            let link = self.layout.links().join(name);
            match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &link, e)),
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &dir, e)),
        }
    }

    fn keys(&self) -> Result<Vec<String>> {
        let home = &self.layout.home;
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(home).map_err(|e| Error::io("read directory", home, e))? {
            let entry = entry.map_err(|e| Error::io("read directory", home, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // Only names of the key form: `l/`, the store's `store/` and probe scratch
            // directories are not layers.
            if !driver_api::is_storage_key(&name) {
                continue;
            }
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                keys.push(name);
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn mount(&self, layer: &LayerRef, access: Access) -> Result<PathBuf> {
        // The ancestors' storage is checked only when the mount fails (the kernel checks
        // every lower anyway): at depth 500 that is 500 stats on every mount.
        layout::check_key(&layer.key)?;
        if layer.ancestors.is_empty() {
            self.require_layer(layer)?;
            // Nothing to merge: the layer's own directory is its view.
            return Ok(self.layout.diff(&layer.key));
        }
        let merged = self.layout.merged(&layer.key);
        let (lower_keys, writable) = self.view_spec(layer, access);
        if mount::is_mount_point(&merged) {
            // Already mounted (a `get` holds it, or a mount survived a crashed process). A
            // read-only use can share it; a writable one needs it writable.
            if !writable
                || !rustix::fs::statvfs(&merged)
                    .map(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
                    .unwrap_or(true)
            {
                return Ok(merged);
            }
            return Err(Error::Mounted {
                id: layer.id.clone(),
                count: 1,
            });
        }
        let (upper, work) = (self.layout.diff(&layer.key), self.layout.work(&layer.key));
        let lowers: Vec<PathBuf> = lower_keys.iter().map(|k| self.layout.diff(k)).collect();
        // The `l/` links, for kernels that take the lowers in mount(2)'s one page only.
        let short = || {
            lower_keys
                .iter()
                .map(|k| self.layout.lower_path(k))
                .collect()
        };
        let mut spec = mount::OverlaySpec {
            lowers: &lowers,
            upper: writable.then_some((upper.as_path(), work.as_path())),
            target: &merged,
            index: true,
        };
        let mut res = mount::mount_overlay(&spec, short);
        if writable && res.is_err() {
            // The index refuses a lower that another indexed mount uses as its upper (a
            // read-write parent mounted at the same time): mount without it. Writes through
            // this view then break hardlinks on copy-up, as Docker's overlay2 always does.
            spec.index = false;
            if mount::mount_overlay(&spec, short).is_ok() {
                res = Ok(());
            }
        }
        if res.is_err() {
            // A missing layer directory is the likeliest cause: name it.
            self.require_layer(layer)?;
        }
        res.map_err(|e| {
            err(format!(
                "layer {}: cannot mount its view on {}: {e}",
                layer.id,
                merged.display()
            ))
        })?;
        Ok(merged)
    }

    fn unmount(&self, layer: &LayerRef) -> Result<()> {
        if layer.ancestors.is_empty() {
            return Ok(());
        }
        let merged = self.layout.merged(&layer.key);
        if mount::is_mount_point(&merged) {
            self.link_up_aliases(layer, &merged)?;
        }
        mount::unmount_all(&merged).map_err(|e| Error::io("unmount", &merged, e))
    }

    fn view_is_separate(&self, layer: &LayerRef) -> bool {
        // A base layer's view is its diff directory, not a mount.
        !layer.ancestors.is_empty()
    }

    fn is_mounted(&self, layer: &LayerRef) -> bool {
        if layer.ancestors.is_empty() {
            // A base layer's view is its diff directory: available whenever it exists.
            return self.layout.diff(&layer.key).is_dir();
        }
        mount::is_mount_point(&self.layout.merged(&layer.key))
    }

    fn metadata(&self, layer: &LayerRef) -> Result<BTreeMap<String, String>> {
        let mut m = BTreeMap::new();
        let show = |p: PathBuf| p.display().to_string();
        m.insert("UpperDir".into(), show(self.layout.diff(&layer.key)));
        m.insert("WorkDir".into(), show(self.layout.work(&layer.key)));
        m.insert("MergedDir".into(), show(self.layout.merged(&layer.key)));
        if let Some(name) = self.layout.link_name(&layer.key) {
            m.insert("Link".into(), name);
        }
        if !layer.ancestors.is_empty() {
            let lowers: Vec<String> = layer
                .ancestors
                .iter()
                .map(|k| show(self.layout.diff(k)))
                .collect();
            m.insert("LowerDir".into(), lowers.join(":"));
        }
        m.insert("Depth".into(), (layer.ancestors.len() + 1).to_string());
        m.insert("Mounted".into(), self.is_mounted(layer).to_string());
        Ok(m)
    }

    /// Native apply: the tar goes straight into `diff/`, never through a mount. Below a
    /// parent, whiteouts become 0/0 devices and opaque markers the opaque xattr, with the
    /// ancestors' `diff/` directories as the lowers the applier consults (for the metadata of
    /// implied directories and for hardlinks to lower files). A base layer's `diff/` is its
    /// view, so there the tar is applied flat.
    fn apply(&self, layer: &LayerRef, tar: &mut dyn Read) -> Result<u64> {
        self.require_layer(layer)?;
        let merged = self.layout.merged(&layer.key);
        if !layer.ancestors.is_empty() && mount::is_mount_point(&merged) {
            // Changing an upper directory under a live overlay mount is undefined behaviour.
            return Err(Error::Mounted {
                id: layer.id.clone(),
                count: 1,
            });
        }
        let opts = if layer.ancestors.is_empty() {
            ApplyOptions::default()
        } else {
            ApplyOptions {
                whiteouts: WhiteoutFormat::Overlay,
                lowers: layer
                    .ancestors
                    .iter()
                    .map(|k| self.layout.diff(k))
                    .collect(),
            }
        };
        let stats = apply_tar(&self.layout.diff(&layer.key), tar, &opts)
            .map_err(|e| Error::from(e).in_layer(&layer.id))?;
        Ok(stats.bytes)
    }

    /// Changes found by walking only `diff/` (see `native`). A base layer's `diff/` is its
    /// whole view, so there the generic comparer is just as fast: None.
    fn native_changes(
        &self,
        layer: &LayerRef,
        parent_view: Option<&dyn ViewSource>,
        child_view: &dyn ViewSource,
    ) -> Option<Result<Vec<Change>>> {
        let parent_view = parent_view?;
        if layer.ancestors.is_empty() {
            return None;
        }
        Some((|| {
            self.require_layer(layer)?;
            let merged = self.layout.merged(&layer.key);
            if child_view.mounted_root() == Some(merged.as_path()) && mount::is_mount_point(&merged)
            {
                // A live indexed view may show hardlink names that diff/ lacks yet.
                self.link_up_aliases(layer, &merged)?;
            }
            let lowers: Vec<PathBuf> = layer
                .ancestors
                .iter()
                .map(|k| self.layout.diff(k))
                .collect();
            let diff = self.layout.diff(&layer.key);
            let input = driver_api::branch::BranchInput {
                branch: &diff,
                lowers: &lowers,
                parent_view,
                child_view,
            };
            native::native_changes(&input).map_err(|e| Error::from(e).in_layer(&layer.id))
        })())
    }

    fn cleanup(&self) -> Result<()> {
        let mut first_err = None;
        let mut mounts = mount::mounts_under(&self.layout.home);
        // Deepest first, so nothing is unmounted from under another mount.
        mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for m in mounts {
            if let Err(e) = mount::unmount_all(&m) {
                first_err.get_or_insert(Error::io("unmount", &m, e));
            }
        }
        // Short links whose layer is gone (a remove interrupted between its two steps).
        if let Ok(entries) = std::fs::read_dir(self.layout.links()) {
            for entry in entries.flatten() {
                let path = entry.path();
                if std::fs::metadata(&path).is_err() && std::fs::symlink_metadata(&path).is_ok() {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
