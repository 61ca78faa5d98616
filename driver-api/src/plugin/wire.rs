//! What crosses the plugin boundary as JSON: error reports and create options (layer infos,
//! changes, status pairs and metadata maps use their own serde forms). Both sides use these
//! types — the SDK to write, the host to read — so the format lives in one place.
//!
//! Error reports keep every field of the `Error` variant, so that the host rebuilds the same
//! variant (`Error::NotFound { id }` from a plugin is `Error::NotFound { id }` to the caller)
//! and the same message. Paths are carried as (lossy) UTF-8: they only feed error messages.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::abi::*;
use crate::error::{ArchiveError, Error};

/// `create`'s options.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CreateOptionsWire {
    #[serde(default)]
    pub rw: bool,
    #[serde(default)]
    pub storage_opts: BTreeMap<String, String>,
}

/// The JSON error report a failing function stores in `*err`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ErrorReport {
    /// The full message (what `Display` of the plugin's error said).
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// `InvalidId.reason`, `ReadOnly.what`, `Unsupported.reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<IoReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveReport>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct IoReport {
    /// The OS error number, when the error came from the OS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// `std::io::ErrorKind` as its Debug name (`InvalidData`, `UnexpectedEof`, ...).
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ArchiveReport {
    BadEntry {
        entry: String,
        reason: String,
    },
    EntryIo {
        entry: String,
        io: IoReport,
    },
    Stream {
        io: IoReport,
    },
    Tree {
        op: String,
        path: String,
        io: IoReport,
    },
    Unrepresentable {
        path: String,
        reason: String,
    },
}

fn lossy(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

impl IoReport {
    pub fn from_io(e: &io::Error) -> IoReport {
        IoReport {
            errno: e.raw_os_error(),
            kind: format!("{:?}", e.kind()),
            message: e.to_string(),
        }
    }

    pub fn to_io(&self) -> io::Error {
        if let Some(errno) = self.errno {
            return io::Error::from_raw_os_error(errno);
        }
        use io::ErrorKind::*;
        let kind = [
            NotFound,
            PermissionDenied,
            AlreadyExists,
            InvalidInput,
            InvalidData,
            UnexpectedEof,
            WriteZero,
            Interrupted,
            Unsupported,
            OutOfMemory,
            BrokenPipe,
            TimedOut,
        ]
        .into_iter()
        .find(|k| format!("{k:?}") == self.kind)
        .unwrap_or(Other);
        io::Error::new(kind, self.message.clone())
    }
}

impl ArchiveReport {
    pub fn from_archive(e: &ArchiveError) -> ArchiveReport {
        match e {
            ArchiveError::BadEntry { entry, reason } => ArchiveReport::BadEntry {
                entry: entry.clone(),
                reason: reason.clone(),
            },
            ArchiveError::EntryIo { entry, source } => ArchiveReport::EntryIo {
                entry: entry.clone(),
                io: IoReport::from_io(source),
            },
            ArchiveError::Stream(source) => ArchiveReport::Stream {
                io: IoReport::from_io(source),
            },
            ArchiveError::Tree { op, path, source } => ArchiveReport::Tree {
                op: op.to_string(),
                path: lossy(path),
                io: IoReport::from_io(source),
            },
            ArchiveError::Unrepresentable { path, reason } => ArchiveReport::Unrepresentable {
                path: lossy(path),
                reason: reason.to_string(),
            },
        }
    }

    pub fn to_archive(&self) -> ArchiveError {
        match self {
            ArchiveReport::BadEntry { entry, reason } => ArchiveError::bad(entry, reason),
            ArchiveReport::EntryIo { entry, io } => ArchiveError::entry_io(entry, io.to_io()),
            ArchiveReport::Stream { io } => ArchiveError::Stream(io.to_io()),
            ArchiveReport::Tree { op, path, io } => {
                ArchiveError::tree(intern(op), PathBuf::from(path), io.to_io())
            }
            ArchiveReport::Unrepresentable { path, reason } => ArchiveError::Unrepresentable {
                path: PathBuf::from(path),
                reason: intern(reason),
            },
        }
    }
}

/// A few `Error` fields are `&'static str` (they name fixed reasons in the core). A plugin's
/// strings are made static by keeping one copy of each distinct value; the set is bounded so a
/// plugin inventing new reasons forever cannot grow the host without limit.
pub fn intern(s: &str) -> &'static str {
    const MAX_INTERNED: usize = 1024;
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut guard = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let set = guard.get_or_insert_with(HashSet::new);
    if let Some(found) = set.get(s) {
        return found;
    }
    if set.len() >= MAX_INTERNED {
        return "(reason given by the plugin)";
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(leaked);
    leaked
}

impl ErrorReport {
    /// The status code and report for an error (plugin side).
    pub fn from_error(e: &Error) -> (i32, ErrorReport) {
        let mut r = ErrorReport {
            message: e.to_string(),
            ..Default::default()
        };
        let code = match e {
            Error::NotFound { id } => {
                r.id = Some(id.clone());
                GD_ERR_NOT_FOUND
            }
            Error::AlreadyExists { id } => {
                r.id = Some(id.clone());
                GD_ERR_ALREADY_EXISTS
            }
            Error::InvalidId { id, reason } => {
                r.id = Some(id.clone());
                r.reason = Some(reason.to_string());
                GD_ERR_INVALID_ID
            }
            Error::ParentNotFound { id, parent } => {
                r.id = Some(id.clone());
                r.parent = Some(parent.clone());
                GD_ERR_PARENT_NOT_FOUND
            }
            Error::HasChildren { id, children } => {
                r.id = Some(id.clone());
                r.children = Some(children.clone());
                GD_ERR_HAS_CHILDREN
            }
            Error::Mounted { id, count } => {
                r.id = Some(id.clone());
                r.count = Some(*count);
                GD_ERR_MOUNTED
            }
            Error::NotMounted { id } => {
                r.id = Some(id.clone());
                GD_ERR_NOT_MOUNTED
            }
            Error::ReadOnly { id, what } => {
                r.id = Some(id.clone());
                r.reason = Some(what.to_string());
                GD_ERR_READ_ONLY
            }
            Error::Io { op, path, source } => {
                r.op = Some(op.to_string());
                r.path = Some(lossy(path));
                r.io = Some(IoReport::from_io(source));
                GD_ERR_IO
            }
            Error::Archive { id, source } => {
                r.id = id.clone();
                r.archive = Some(ArchiveReport::from_archive(source));
                GD_ERR_ARCHIVE
            }
            Error::Driver { driver, message } => {
                r.driver = Some(driver.clone());
                r.reason = Some(message.clone());
                GD_ERR_DRIVER
            }
            Error::Unsupported { driver, reason } => {
                r.driver = Some(driver.clone());
                r.reason = Some(reason.clone());
                GD_ERR_UNSUPPORTED
            }
            Error::Store { path, message } => {
                r.path = Some(lossy(path));
                r.reason = Some(message.clone());
                GD_ERR_STORE
            }
        };
        (code, r)
    }

    /// Rebuild the `Error` a plugin reported (host side). `driver` names the plugin, for
    /// codes that carry no structured error. Missing fields fall back to a `Driver` error
    /// holding the message, so nothing the plugin said is lost.
    pub fn into_error(self, code: i32, driver: &str, op: &str) -> Error {
        let fallback = |message: String| Error::Driver {
            driver: driver.to_string(),
            message,
        };
        let ErrorReport {
            message,
            id,
            parent,
            children,
            count,
            reason,
            op: io_op,
            path,
            driver: err_driver,
            io,
            archive,
        } = self;
        match code {
            GD_ERR_NOT_FOUND => match id {
                Some(id) => Error::NotFound { id },
                None => fallback(message),
            },
            GD_ERR_ALREADY_EXISTS => match id {
                Some(id) => Error::AlreadyExists { id },
                None => fallback(message),
            },
            GD_ERR_INVALID_ID => match id {
                Some(id) => Error::InvalidId {
                    id,
                    reason: intern(reason.as_deref().unwrap_or("rejected by the plugin")),
                },
                None => fallback(message),
            },
            GD_ERR_PARENT_NOT_FOUND => match (id, parent) {
                (Some(id), Some(parent)) => Error::ParentNotFound { id, parent },
                _ => fallback(message),
            },
            GD_ERR_HAS_CHILDREN => match id {
                Some(id) => Error::HasChildren {
                    id,
                    children: children.unwrap_or_default(),
                },
                None => fallback(message),
            },
            GD_ERR_MOUNTED => match id {
                Some(id) => Error::Mounted {
                    id,
                    count: count.unwrap_or(1),
                },
                None => fallback(message),
            },
            GD_ERR_NOT_MOUNTED => match id {
                Some(id) => Error::NotMounted { id },
                None => fallback(message),
            },
            GD_ERR_READ_ONLY => match id {
                Some(id) => Error::ReadOnly {
                    id,
                    what: intern(reason.as_deref().unwrap_or("refused by the plugin")),
                },
                None => fallback(message),
            },
            GD_ERR_IO => match io {
                Some(io) => Error::Io {
                    op: intern(io_op.as_deref().unwrap_or(op)),
                    path: PathBuf::from(path.unwrap_or_default()),
                    source: io.to_io(),
                },
                None => fallback(message),
            },
            GD_ERR_ARCHIVE => match archive {
                Some(a) => Error::Archive {
                    id,
                    source: a.to_archive(),
                },
                None => fallback(message),
            },
            GD_ERR_DRIVER => Error::Driver {
                driver: err_driver.unwrap_or_else(|| driver.to_string()),
                message: reason.unwrap_or(message),
            },
            GD_ERR_UNSUPPORTED => Error::Unsupported {
                driver: err_driver.unwrap_or_else(|| driver.to_string()),
                reason: reason.unwrap_or(message),
            },
            GD_ERR_STORE => match path {
                Some(path) => Error::Store {
                    path: PathBuf::from(path),
                    message: reason.unwrap_or(message),
                },
                None => fallback(message),
            },
            GD_ERR_PANIC => fallback(format!("plugin panicked in {op}: {message}")),
            GD_ERR_BAD_ARGUMENT => fallback(format!(
                "plugin rejected the arguments of {op} (host/plugin ABI disagreement?): {message}"
            )),
            other => fallback(format!(
                "plugin returned unknown status {other} from {op}: {message}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(e: Error) -> Error {
        let (code, report) = ErrorReport::from_error(&e);
        let json = serde_json::to_vec(&report).unwrap();
        let back: ErrorReport = serde_json::from_slice(&json).unwrap();
        let got = back.into_error(code, "test", "op");
        assert_eq!(got.to_string(), e.to_string(), "message survives");
        got
    }

    #[test]
    fn every_variant_survives_the_boundary() {
        assert!(matches!(
            round_trip(Error::NotFound { id: "a".into() }),
            Error::NotFound { id } if id == "a"
        ));
        assert!(matches!(
            round_trip(Error::HasChildren {
                id: "a".into(),
                children: "b, c".into()
            }),
            Error::HasChildren { .. }
        ));
        assert!(matches!(
            round_trip(Error::Mounted {
                id: "a".into(),
                count: 3
            }),
            Error::Mounted { count: 3, .. }
        ));
        assert!(matches!(
            round_trip(Error::InvalidId {
                id: "../x".into(),
                reason: "bad"
            }),
            Error::InvalidId { reason: "bad", .. }
        ));
        assert!(matches!(
            round_trip(Error::ParentNotFound {
                id: "x".into(),
                parent: "p".into()
            }),
            Error::ParentNotFound { .. }
        ));
        assert!(matches!(
            round_trip(Error::NotMounted { id: "x".into() }),
            Error::NotMounted { .. }
        ));
        assert!(matches!(
            round_trip(Error::ReadOnly {
                id: "x".into(),
                what: "applying"
            }),
            Error::ReadOnly { .. }
        ));
        let io = round_trip(Error::io("opening", "/x", io::Error::from_raw_os_error(2)));
        match io {
            Error::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(2)),
            other => panic!("{other:?}"),
        }
        round_trip(Error::io(
            "reading",
            "/y",
            io::Error::new(io::ErrorKind::InvalidData, "meh"),
        ));
        let a = round_trip(Error::Archive {
            id: Some("l1".into()),
            source: ArchiveError::bad("../x", "escapes the layer"),
        });
        assert!(matches!(a, Error::Archive { id: Some(_), .. }));
        round_trip(Error::Archive {
            id: None,
            source: ArchiveError::Stream(io::Error::new(io::ErrorKind::UnexpectedEof, "eof")),
        });
        round_trip(ArchiveError::tree("walking", "/a", io::Error::from_raw_os_error(13)).into());
        round_trip(Error::driver("btrfs", "no"));
        round_trip(Error::Unsupported {
            driver: "btrfs".into(),
            reason: "not btrfs".into(),
        });
        round_trip(Error::Store {
            path: "/s".into(),
            message: "locked".into(),
        });
    }

    #[test]
    fn unknown_codes_and_panics_become_driver_errors() {
        let r = ErrorReport {
            message: "boom".into(),
            ..Default::default()
        };
        let e = r.into_error(GD_ERR_PANIC, "bad", "list");
        assert!(matches!(e, Error::Driver { .. }));
        assert!(e.to_string().contains("panicked in list: boom"), "{e}");
        let r = ErrorReport {
            message: "?".into(),
            ..Default::default()
        };
        assert!(r
            .into_error(777, "bad", "list")
            .to_string()
            .contains("unknown status 777"));
    }
}
