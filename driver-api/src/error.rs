//! Typed errors of the core. Every variant names the layer id or the path involved, so that
//! the CLI can print one clear sentence without guessing.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("layer {id} does not exist")]
    NotFound { id: String },
    #[error("layer {id} already exists")]
    AlreadyExists { id: String },
    #[error("{id:?} is not a valid layer id: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("parent layer {parent} of {id} does not exist")]
    ParentNotFound { id: String, parent: String },
    #[error("layer {id} has children ({children}); remove them first")]
    HasChildren { id: String, children: String },
    #[error("layer {id} is mounted {count} time(s); unmount it first")]
    Mounted { id: String, count: u32 },
    #[error("layer {id} is not mounted")]
    NotMounted { id: String },
    #[error("layer {id} is read-only: {what}")]
    ReadOnly { id: String, what: &'static str },
    #[error("{op} on {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}{source}", id.as_ref().map(|i| format!("layer {i}: ")).unwrap_or_default())]
    Archive {
        id: Option<String>,
        #[source]
        source: ArchiveError,
    },
    #[error("driver {driver}: {message}")]
    Driver { driver: String, message: String },
    #[error("driver {driver} is not supported on this host: {reason}")]
    Unsupported { driver: String, reason: String },
    #[error("store at {}: {message}", path.display())]
    Store { path: PathBuf, message: String },
}

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
    pub fn driver(driver: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Driver {
            driver: driver.into(),
            message: message.into(),
        }
    }
    /// Attach the layer id to an archive error that does not name one yet.
    pub fn in_layer(self, layer: &str) -> Self {
        match self {
            Error::Archive { id: None, source } => Error::Archive {
                id: Some(layer.to_string()),
                source,
            },
            other => other,
        }
    }
}

impl From<ArchiveError> for Error {
    fn from(source: ArchiveError) -> Self {
        Error::Archive { id: None, source }
    }
}

/// Errors of the archive code (reading, applying and writing layer tars, walking trees).
/// `entry` is the path of the tar entry (or of the file in the tree) that caused the failure.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("tar entry {entry:?}: {reason}")]
    BadEntry { entry: String, reason: String },
    #[error("tar entry {entry:?}: {source}")]
    EntryIo {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the tar stream: {0}")]
    Stream(#[source] io::Error),
    #[error("{op} {}: {source}", path.display())]
    Tree {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} cannot be represented in a layer tar: {reason}", path.display())]
    Unrepresentable { path: PathBuf, reason: &'static str },
}

impl ArchiveError {
    pub fn bad(entry: impl Into<String>, reason: impl Into<String>) -> Self {
        ArchiveError::BadEntry {
            entry: entry.into(),
            reason: reason.into(),
        }
    }
    pub fn entry_io(entry: impl Into<String>, source: io::Error) -> Self {
        ArchiveError::EntryIo {
            entry: entry.into(),
            source,
        }
    }
    pub fn tree(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ArchiveError::Tree {
            op,
            path: path.into(),
            source,
        }
    }
}
