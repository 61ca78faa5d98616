//! gd images: whole container images over any gd driver, without a daemon.
//!
//! [`ImageStore`] imports `docker save` tarballs and OCI image layouts (directory or tar;
//! plain, gzip or zstd layers), checking every blob digest and diff id while streaming, and
//! stores each layer in the driver under its OCI chain id, so images share layers. It mounts
//! an image's merged view (optionally with a read-write layer on top), flattens it to one tar,
//! commits a read-write layer as a new image, and exports images as an archive whose layers
//! are byte-identical to the tars they were imported from (the `tarsplit` module).
//! docs/images.md describes the formats and the guarantees.

pub mod digest;
pub mod error;
pub mod format;
pub mod progress;
pub mod source;
pub mod store;
pub mod tarsplit;

pub use digest::{chain_id, chain_ids, Digest};
pub use error::{ImageError, Result};
pub use progress::{Progress, Quiet, TerminalProgress};
pub use store::{
    normalize_ref, GcReport, ImageRecord, ImageStore, ImageSummary, ImportOptions, Imported,
    LayerRecord,
};
