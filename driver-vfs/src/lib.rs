//! The vfs driver: every layer is a full directory, created as a copy of its parent's.
//!
//! It needs nothing from the kernel, which makes it the reference the other drivers are
//! checked against. Copies share data with reflinks where the filesystem has them (xfs,
//! btrfs) and use `copy_file_range` otherwise (see `driver_api::copy`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use driver_api::copy::copy_tree;
use driver_api::{is_storage_key, Access, Backend, DriverFactory, Error, LayerRef, Result};

pub const NAME: &str = "vfs";

pub struct VfsBackend {
    dirs: PathBuf,
}

pub fn factory() -> DriverFactory {
    DriverFactory {
        name: NAME,
        priority: 1,
        probe: |_| Ok(()),
        open: |home, _opts| Ok(Box::new(VfsBackend::open(home)?)),
    }
}

impl VfsBackend {
    pub fn open(home: &Path) -> Result<Self> {
        let dirs = home.join("dir");
        // Every command opens the backend: one stat when the directory is there.
        if !dirs.is_dir() {
            fs::create_dir_all(&dirs).map_err(|e| Error::io("creating", &dirs, e))?;
        }
        Ok(VfsBackend { dirs })
    }

    fn dir(&self, key: &str) -> PathBuf {
        self.dirs.join(key)
    }
}

impl Backend for VfsBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn status(&self) -> Vec<(String, String)> {
        let fs_type = rustix::fs::statfs(&self.dirs)
            .map(|s| format!("{:#x}", s.f_type))
            .unwrap_or_default();
        vec![("Backing filesystem magic".into(), fs_type)]
    }

    fn create(&self, layer: &LayerRef) -> Result<()> {
        let dst = self.dir(&layer.key);
        match layer.parent_key() {
            Some(parent) => Ok(copy_tree(&self.dir(parent), &dst)?),
            None => {
                fs::create_dir(&dst).map_err(|e| Error::io("creating", &dst, e))?;
                // A layer's root is always 0755 root:root (docs/changeset.md §1).
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))
                    .map_err(|e| Error::io("chmod", &dst, e))
            }
        }
    }

    fn clone_layer(&self, src_key: &str, dst: &LayerRef) -> Result<()> {
        Ok(copy_tree(&self.dir(src_key), &self.dir(&dst.key))?)
    }

    fn remove(&self, key: &str) -> Result<()> {
        let d = self.dir(key);
        match fs::remove_dir_all(&d) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", d, e)),
        }
    }

    fn keys(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for ent in fs::read_dir(&self.dirs).map_err(|e| Error::io("listing", &self.dirs, e))? {
            let ent = ent.map_err(|e| Error::io("listing", &self.dirs, e))?;
            if let Some(name) = ent.file_name().to_str() {
                if is_storage_key(name) {
                    out.push(name.to_string());
                }
            }
        }
        Ok(out)
    }

    fn mount(&self, layer: &LayerRef, _access: Access) -> Result<PathBuf> {
        Ok(self.dir(&layer.key))
    }

    fn unmount(&self, _layer: &LayerRef) -> Result<()> {
        Ok(())
    }

    fn is_mounted(&self, layer: &LayerRef) -> bool {
        // The view is the directory itself: it is there whenever the layer is.
        self.dir(&layer.key).is_dir()
    }

    fn mount_is_separate(&self) -> bool {
        false
    }

    fn metadata(&self, layer: &LayerRef) -> Result<BTreeMap<String, String>> {
        Ok(BTreeMap::from([(
            "Dir".to_string(),
            self.dir(&layer.key).display().to_string(),
        )]))
    }
}
