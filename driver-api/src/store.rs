//! The layer store. (Stub: being written.)

use std::path::{Path, PathBuf};

use crate::driver::Backend;
use crate::error::Result;

pub struct LayerStore {
    home: PathBuf,
    backend: Box<dyn Backend>,
}

impl LayerStore {
    /// Open (creating if needed) the store of `backend` under `home`, recovering from any
    /// operation a killed process left half-done.
    pub fn open(home: &Path, backend: Box<dyn Backend>) -> Result<Self> {
        Ok(LayerStore {
            home: home.to_path_buf(),
            backend,
        })
    }
    pub fn home(&self) -> &Path {
        &self.home
    }
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }
}
