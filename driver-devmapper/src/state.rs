//! What the backend records on disk so that it survives a crash: the configuration, the next
//! thin device id, one metadata file per device, and the open pool transaction.
//!
//! Every file is replaced atomically (write a temporary, fsync it, rename it over, fsync the
//! directory), so after a crash each file holds either its old or its new content.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use driver_api::{Error, Result};

/// The metadata of one thin device: a layer's (`devices/<key>.json`) or the base's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMeta {
    /// The thin device id inside the pool (24 bits).
    pub device_id: u32,
    /// Virtual size in bytes.
    pub size: u64,
    /// The pool transaction that made it.
    pub transaction_id: u64,
    /// Only for the base: whether its filesystem was made completely.
    #[serde(default)]
    pub initialized: bool,
}

/// A pool operation in progress (`transaction.json`), written before the operation is sent
/// to the pool and removed after the pool's transaction id was moved to `transaction_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTransaction {
    pub transaction_id: u64,
    pub device_id: u32,
    /// The storage key (or `base`) whose device the operation makes or deletes.
    pub name: String,
    pub op: TxnOp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TxnOp {
    Create,
    Delete,
}

/// Allocation state of the device set (`deviceset.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSet {
    pub next_device_id: u32,
}

pub struct Paths {
    pub home: PathBuf,
}

impl Paths {
    pub fn config(&self) -> PathBuf {
        self.home.join("config.json")
    }
    pub fn deviceset(&self) -> PathBuf {
        self.home.join("deviceset.json")
    }
    pub fn transaction(&self) -> PathBuf {
        self.home.join("transaction.json")
    }
    pub fn devices(&self) -> PathBuf {
        self.home.join("devices")
    }
    pub fn device(&self, name: &str) -> PathBuf {
        self.devices().join(format!("{name}.json"))
    }
    pub fn mnt(&self) -> PathBuf {
        self.home.join("mnt")
    }
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.mnt().join(name)
    }
    pub fn pool_dir(&self) -> PathBuf {
        self.home.join("pool")
    }
    pub fn data_file(&self) -> PathBuf {
        self.pool_dir().join("data")
    }
    pub fn metadata_file(&self) -> PathBuf {
        self.pool_dir().join("metadata")
    }
    pub fn lock(&self) -> PathBuf {
        self.home.join("devmapper.lock")
    }
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::driver(crate::DRIVER, format!("{} is corrupt: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Replace `path` with `value` atomically and durably.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let dir = path.parent().expect("state files live in a directory");
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    let bytes = serde_json::to_vec_pretty(value).expect("state serializes");
    let mut f = fs::File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("write", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))?;
    sync_dir(dir)
}

/// Remove `path` durably; a missing file is not an error.
pub fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync", dir, e))
}
