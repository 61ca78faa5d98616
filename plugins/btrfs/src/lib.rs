//! The btrfs driver, which exists only as a gd plugin (`libgd_btrfs.so`).
//!
//! Every layer is a btrfs subvolume under `<home>/subvolumes/<key>`. A layer without a parent
//! is a new empty subvolume; a layer with a parent is a writable snapshot of the parent's
//! subvolume, which costs O(1) and shares all data until it is written. The view of a layer
//! is its subvolume itself, so there is nothing to mount. The `LayerStore` (wrapped by the
//! SDK) gives the plugin ids, parents, locks, atomic apply and the canonical diff.
//!
//! Subvolumes are made and destroyed with the btrfs ioctls directly (see `ioctl.rs`);
//! btrfs-progs is not needed at run time.

mod ioctl;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use driver_api::{is_storage_key, Access, Backend, DriverFactory, Error, LayerRef, Result};

pub const NAME: &str = "btrfs";

/// `statfs.f_type` of btrfs.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// The inode number of every subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID).
const SUBVOLUME_ROOT_INO: u64 = 256;

gd_plugin_sdk::export_plugin!(factory());

pub fn factory() -> DriverFactory {
    DriverFactory {
        name: NAME,
        priority: 5,
        probe,
        open: |home, _opts| Ok(Box::new(BtrfsBackend::open(home)?)),
    }
}

/// The nearest existing ancestor of `p` (the home may not exist yet at probe time).
fn existing_ancestor(p: &Path) -> &Path {
    let mut cur = p;
    while !cur.exists() {
        match cur.parent() {
            Some(parent) => cur = parent,
            None => break,
        }
    }
    cur
}

fn probe(home: &Path) -> std::result::Result<(), String> {
    let at = existing_ancestor(home);
    let st = rustix::fs::statfs(at).map_err(|e| format!("statfs {}: {e}", at.display()))?;
    if st.f_type as i64 != BTRFS_SUPER_MAGIC {
        return Err(format!(
            "{} is not on a btrfs filesystem (filesystem magic {:#x})",
            at.display(),
            st.f_type
        ));
    }
    Ok(())
}

pub struct BtrfsBackend {
    subvolumes: PathBuf,
}

impl BtrfsBackend {
    pub fn open(home: &Path) -> Result<Self> {
        probe(home).map_err(|reason| Error::Unsupported {
            driver: NAME.into(),
            reason,
        })?;
        let subvolumes = home.join("subvolumes");
        fs::create_dir_all(&subvolumes).map_err(|e| Error::io("creating", &subvolumes, e))?;
        Ok(BtrfsBackend { subvolumes })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.subvolumes.join(key)
    }

    fn snapshot(&self, src_key: &str, dst_key: &str) -> Result<()> {
        let src = self.path(src_key);
        ioctl::snapshot(&src, &self.subvolumes, dst_key)
            .map_err(|e| Error::io("snapshotting subvolume", &src, e))
    }
}

impl Backend for BtrfsBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn status(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("Backing filesystem".to_string(), "btrfs".to_string()),
            (
                "Subvolumes".to_string(),
                self.subvolumes.display().to_string(),
            ),
        ];
        if let Ok(st) = rustix::fs::statvfs(&self.subvolumes) {
            out.push((
                "Free space".to_string(),
                format!("{} bytes", st.f_bavail * st.f_frsize),
            ));
        }
        out
    }

    fn create(&self, layer: &LayerRef) -> Result<()> {
        match layer.parent_key() {
            Some(parent) => self.snapshot(parent, &layer.key),
            None => {
                ioctl::create_subvolume(&self.subvolumes, &layer.key)
                    .map_err(|e| Error::io("creating subvolume", self.path(&layer.key), e))?;
                // A layer's root is always 0755 root:root (docs/changeset.md §1), whatever
                // the umask and the caller's ids.
                let root = self.path(&layer.key);
                rustix::fs::chmod(&root, rustix::fs::Mode::from_raw_mode(0o755))
                    .map_err(|e| Error::io("chmod", &root, e.into()))?;
                rustix::fs::chown(
                    &root,
                    Some(rustix::fs::Uid::ROOT),
                    Some(rustix::fs::Gid::ROOT),
                )
                .map_err(|e| Error::io("chown", &root, e.into()))?;
                Ok(())
            }
        }
    }

    fn clone_layer(&self, src_key: &str, dst: &LayerRef) -> Result<()> {
        self.snapshot(src_key, &dst.key)
    }

    fn remove(&self, key: &str) -> Result<()> {
        let p = self.path(key);
        let md = match fs::symlink_metadata(&p) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("inspecting", &p, e)),
        };
        if md.is_dir() && md.ino() == SUBVOLUME_ROOT_INO {
            ioctl::destroy_subvolume(&self.subvolumes, key)
                .map_err(|e| Error::io("deleting subvolume", &p, e))
        } else {
            // Not a subvolume: something a crash left half-made.
            let r = if md.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(|e| Error::io("removing", &p, e))
        }
    }

    fn keys(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.subvolumes)
            .map_err(|e| Error::io("listing", &self.subvolumes, e))?;
        for ent in entries {
            let ent = ent.map_err(|e| Error::io("listing", &self.subvolumes, e))?;
            if let Some(name) = ent.file_name().to_str() {
                if is_storage_key(name) {
                    out.push(name.to_string());
                }
            }
        }
        Ok(out)
    }

    fn mount(&self, layer: &LayerRef, _access: Access) -> Result<PathBuf> {
        // The subvolume is the view: nothing to mount.
        Ok(self.path(&layer.key))
    }

    fn unmount(&self, _layer: &LayerRef) -> Result<()> {
        Ok(())
    }

    fn is_mounted(&self, layer: &LayerRef) -> bool {
        self.path(&layer.key).is_dir()
    }

    fn metadata(&self, layer: &LayerRef) -> Result<BTreeMap<String, String>> {
        let p = self.path(&layer.key);
        let mut m = BTreeMap::from([("Subvolume".to_string(), p.display().to_string())]);
        if let Some(parent) = layer.parent_key() {
            m.insert(
                "Snapshot of".to_string(),
                self.path(parent).display().to_string(),
            );
        }
        Ok(m)
    }
}
