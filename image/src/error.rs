//! Errors of the image code. Each names the image, blob, layer or file involved, so that the
//! CLI prints one sentence a user can act on.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An error of the layer store (naming the layer).
    #[error(transparent)]
    Store(#[from] driver_api::Error),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The input is not an image archive gd understands, or is malformed.
    #[error("{}: {message}", input.display())]
    BadInput { input: PathBuf, message: String },
    /// Bytes whose digest is not the one the image says they have.
    #[error("{what} is corrupt: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("no image {reference:?} (see `gd image ls`)")]
    UnknownImage { reference: String },
    #[error("{reference:?} matches several images ({matches}); use more of the id")]
    AmbiguousImage { reference: String, matches: String },
    #[error("{reference:?} is not a valid image reference: {reason}")]
    BadReference {
        reference: String,
        reason: &'static str,
    },
    /// A layer cannot be written back as the tar it was imported from.
    #[error("layer {layer}: cannot reproduce its original tar: {reason}")]
    Reproduce { layer: String, reason: String },
    #[error("{0}")]
    Usage(String),
}

impl ImageError {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.into(),
            source,
        }
    }
    pub fn bad_input(input: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ImageError::BadInput {
            input: input.into(),
            message: message.into(),
        }
    }
}

impl From<driver_api::ArchiveError> for ImageError {
    fn from(e: driver_api::ArchiveError) -> Self {
        ImageError::Store(e.into())
    }
}
