//! gd's core: the `GraphDriver` and `Backend` traits, the `LayerStore`, the archive code
//! (applier and canonical changeset), the tree comparer and the manifest.

pub mod archive;
pub mod branch;
pub mod copy;
pub mod driver;
pub mod error;
pub mod failpoint;
pub mod fsutil;
pub mod manifest;
pub mod plugin;
pub mod store;
pub mod tree;
pub mod view;

pub use driver::is_storage_key;
pub use driver::{
    Access, Backend, Change, ChangeKind, CreateOptions, DriverFactory, GraphDriver, LayerInfo,
    LayerKind, LayerRef,
};
pub use error::{ArchiveError, Error, Result};
pub use store::LayerStore;
