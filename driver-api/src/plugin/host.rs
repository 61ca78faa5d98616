//! The host side of the plugin ABI: load a plugin `.so`, check its table, and make an opened
//! plugin a `GraphDriver` again (`PluginDriver`), so that the CLI and the conformance suite
//! use it exactly like a built-in driver.
//!
//! What the host defends against: a file that is not a plugin (no entry symbol), a table of
//! another ABI major, a table too small or with missing functions, a bad driver name, and
//! functions that return invalid UTF-8, invalid JSON, a JSON value of the wrong shape or an
//! unknown status. Each becomes a typed error naming the plugin; the process goes on. A panic
//! inside the plugin is caught by the plugin's side of the boundary (the SDK does it) and
//! arrives as `GD_ERR_PANIC`. What no host can defend against — a plugin that corrupts memory,
//! aborts, or lets a panic unwind through `extern "C"` (which aborts) — is out of reach of any
//! in-process loader.

use std::collections::BTreeMap;
use std::ffi::{c_void, CStr};
use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::abi::*;
use super::wire::{CreateOptionsWire, ErrorReport};
use crate::driver::{Change, CreateOptions, GraphDriver, LayerInfo};
use crate::error::{Error, Result};

/// Why a plugin could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot load plugin {}: {source}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: libloading::Error,
    },
    #[error("{} is not a gd plugin: it has no `{symbol}` symbol", path.display())]
    MissingSymbol { path: PathBuf, symbol: String },
    #[error("plugin {}: `{symbol}` returned no table", path.display())]
    NullTable { path: PathBuf, symbol: String },
    #[error(
        "plugin {} speaks gd plugin ABI {major}.{minor}, this gd speaks {ABI_MAJOR}.{ABI_MINOR} (the major must match: rebuild the plugin against this gd's SDK)",
        path.display()
    )]
    AbiMismatch {
        path: PathBuf,
        major: u32,
        minor: u32,
    },
    #[error(
        "plugin {}: its table is {size} bytes, ABI {ABI_MAJOR}.0 needs at least {TABLE_SIZE_V1_0}",
        path.display()
    )]
    TableTooSmall { path: PathBuf, size: usize },
    #[error("plugin {}: function `{function}` is missing from its table", path.display())]
    MissingFunction {
        path: PathBuf,
        function: &'static str,
    },
    #[error("plugin {}: bad driver name: {reason}", path.display())]
    BadName { path: PathBuf, reason: String },
    #[error("no plugin named {name:?} in {searched}")]
    NotFound { name: String, searched: String },
}

/// A loaded, checked plugin. It is never unloaded: a Rust plugin may have registered
/// thread-local destructors that would run into unmapped code after `dlclose`, and a
/// process loads a handful of plugins at most.
pub struct Plugin {
    path: PathBuf,
    table: &'static GdPluginTable,
    name: String,
    abi: (u32, u32),
}

// SAFETY: the table is immutable static data of the loaded library (which is never unloaded),
// and the ABI requires its functions to be callable from any thread.
unsafe impl Send for Plugin {}
unsafe impl Sync for Plugin {}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("abi", &self.abi)
            .finish()
    }
}

/// The file name of the plugin called `name` in a plugin directory: `libgd_<name>.so` or
/// `<name>.so`.
pub fn plugin_file_names(name: &str) -> [String; 2] {
    [format!("libgd_{name}.so"), format!("{name}.so")]
}

/// The directories searched for plugins by name: `GD_PLUGIN_PATH` (colon-separated) first,
/// then `/usr/local/lib/gd/plugins` and `/usr/lib/gd/plugins`.
pub fn plugin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("GD_PLUGIN_PATH")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/local/lib/gd/plugins"));
    dirs.push(PathBuf::from("/usr/lib/gd/plugins"));
    dirs
}

/// Find the plugin file for driver `name` in `dirs`.
pub fn find_plugin(name: &str, dirs: &[PathBuf]) -> std::result::Result<PathBuf, PluginError> {
    for d in dirs {
        for f in plugin_file_names(name) {
            let p = d.join(f);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(PluginError::NotFound {
        name: name.to_string(),
        searched: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Every `*.so` file in `dirs` (first directory wins for a repeated file name), for listing.
pub fn plugin_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        let mut here: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "so") && p.is_file())
            .collect();
        here.sort();
        for p in here {
            if seen.insert(p.file_name().map(|n| n.to_owned())) {
                out.push(p);
            }
        }
    }
    out
}

fn check_name(raw: *const std::ffi::c_char) -> std::result::Result<String, String> {
    if raw.is_null() {
        return Err("the name pointer is null".into());
    }
    // SAFETY: the ABI says `name` is a NUL-terminated static string; we read at most what
    // the plugin promised, and bound the result's length below.
    let c = unsafe { CStr::from_ptr(raw) };
    let s = c
        .to_str()
        .map_err(|_| "the name is not UTF-8".to_string())?;
    // The name becomes a directory name (`<root>/<name>`) and a CLI word.
    if s.is_empty() || s.len() > 64 {
        return Err(format!("{s:?} must be 1 to 64 bytes long"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        || !s.as_bytes()[0].is_ascii_alphanumeric()
    {
        return Err(format!(
            "{s:?} must be lowercase letters, digits, '-' and '_', starting with a letter or digit"
        ));
    }
    Ok(s.to_string())
}

impl Plugin {
    /// Load the plugin at `path` through its standard entry symbol.
    pub fn load(path: &Path) -> std::result::Result<Arc<Plugin>, PluginError> {
        Self::load_with_entry(path, ENTRY_SYMBOL)
    }

    /// Load through another entry symbol (a library exporting several drivers, or tests).
    pub fn load_with_entry(
        path: &Path,
        symbol: &str,
    ) -> std::result::Result<Arc<Plugin>, PluginError> {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        // A bare name would make dlopen search the system library path; a plugin is a file.
        let path = if path.components().count() == 1 {
            Path::new(".").join(path)
        } else {
            path.to_path_buf()
        };
        // SAFETY: loading a library runs its initialisers; running a plugin's code is what
        // loading a plugin means. RTLD_LOCAL keeps its symbols out of the global namespace,
        // so two plugins built with different versions of the same crates do not collide.
        let lib =
            unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_LOCAL) }.map_err(|source| {
                PluginError::Load {
                    path: path.clone(),
                    source,
                }
            })?;
        let lib: &'static Library = Box::leak(Box::new(lib));
        // SAFETY: the symbol's type is the ABI's entry type; a library exporting the name
        // with another type is not a gd plugin and breaks the ABI's one promise we rely on.
        let entry: EntryFn = unsafe { lib.get::<EntryFn>(symbol.as_bytes()) }
            .map(|s| *s)
            .map_err(|_| PluginError::MissingSymbol {
                path: path.clone(),
                symbol: symbol.to_string(),
            })?;
        // SAFETY: calling the entry function the ABI defines.
        let table_ptr = unsafe { entry() };
        if table_ptr.is_null() {
            return Err(PluginError::NullTable {
                path,
                symbol: symbol.to_string(),
            });
        }
        // Read only the header (fixed across majors) before trusting anything else.
        // SAFETY: a non-null table pointer points to at least a header.
        let header = unsafe { &*(table_ptr as *const GdPluginHeader) };
        if header.abi_major != ABI_MAJOR {
            return Err(PluginError::AbiMismatch {
                path,
                major: header.abi_major,
                minor: header.abi_minor,
            });
        }
        if header.table_size < TABLE_SIZE_V1_0 {
            return Err(PluginError::TableTooSmall {
                path,
                size: header.table_size,
            });
        }
        // SAFETY: same major and a table at least as large as 1.0's: it has every 1.0 field.
        let table: &'static GdPluginTable = unsafe { &*table_ptr };
        let name = check_name(table.name).map_err(|reason| PluginError::BadName {
            path: path.clone(),
            reason,
        })?;
        let missing = |function| PluginError::MissingFunction {
            path: path.clone(),
            function,
        };
        // Function pointers are `Option`s so that a null in the table is seen here, not called.
        macro_rules! require {
            ($($f:ident),*) => {
                $( if table.$f.is_none() { return Err(missing(stringify!($f))); } )*
            };
        }
        require!(
            free_buffer,
            probe,
            open,
            close,
            status,
            create,
            remove,
            get,
            put,
            exists,
            list,
            info,
            metadata,
            diff,
            changes,
            apply_diff,
            diff_size,
            cleanup
        );
        Ok(Arc::new(Plugin {
            path,
            table,
            name,
            abi: (header.abi_major, header.abi_minor),
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plugin's ABI version (major, minor).
    pub fn abi_version(&self) -> (u32, u32) {
        self.abi
    }

    /// Copy a plugin buffer and give it back to the plugin.
    fn take(&self, buf: GdBuf) -> Vec<u8> {
        if buf.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: the ABI: a non-null buffer points to `len` bytes the plugin allocated.
        let bytes = unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec();
        // SAFETY: returning the plugin's own buffer to its own allocator, once.
        unsafe { (self.table.free_buffer.expect("checked at load"))(buf) };
        bytes
    }

    /// Call a table function with an error out-parameter and turn its status into a Result.
    fn call(&self, op: &'static str, f: impl FnOnce(*mut GdBuf) -> i32) -> Result<()> {
        let mut err = GdBuf::EMPTY;
        let code = f(&mut err);
        let report = self.take(err);
        if code == GD_OK {
            return Ok(());
        }
        let report: ErrorReport = match serde_json::from_slice(&report) {
            Ok(r) => r,
            Err(e) => ErrorReport {
                message: format!(
                    "(its error report is not valid JSON: {e}; raw: {:?})",
                    String::from_utf8_lossy(&report[..report.len().min(200)])
                ),
                ..Default::default()
            },
        };
        Err(report.into_error(code, &self.name, op))
    }

    fn garbage(&self, op: &str, what: String) -> Error {
        Error::driver(
            &self.name,
            format!(
                "plugin {} returned garbage from {op}: {what}",
                self.path.display()
            ),
        )
    }

    /// Parse a JSON buffer the plugin returned.
    fn json<T: serde::de::DeserializeOwned>(&self, op: &str, buf: GdBuf) -> Result<T> {
        let bytes = self.take(buf);
        serde_json::from_slice(&bytes).map_err(|e| {
            self.garbage(
                op,
                format!(
                    "{e} in {:?}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
            )
        })
    }

    /// Whether this host can run the plugin's driver with its files under `home`.
    pub fn probe(&self, home: &Path) -> std::result::Result<(), String> {
        let home = path_str(home).map_err(|e| e.to_string())?;
        let f = self.table.probe.expect("checked at load");
        // SAFETY: the arguments live for the call; `err` is ours.
        self.call("probe", |err| unsafe { f(GdStr::new(home), err) })
            .map_err(|e| match e {
                Error::Unsupported { reason, .. } => reason,
                other => other.to_string(),
            })
    }

    /// Open the driver whose files live under `home`.
    pub fn open(
        self: &Arc<Self>,
        home: &Path,
        options: &BTreeMap<String, String>,
    ) -> Result<PluginDriver> {
        let home_s = path_str(home)?;
        let opts = serde_json::to_string(options).expect("a map of strings serialises");
        let f = self.table.open.expect("checked at load");
        let mut handle: GdHandle = std::ptr::null_mut();
        // SAFETY: the arguments live for the call; `handle` and `err` are ours.
        self.call("open", |err| unsafe {
            f(GdStr::new(home_s), GdStr::new(&opts), &mut handle, err)
        })?;
        if handle.is_null() {
            return Err(self.garbage("open", "success with a null handle".into()));
        }
        Ok(PluginDriver {
            plugin: Arc::clone(self),
            handle,
        })
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| Error::Store {
        path: p.to_path_buf(),
        message: "a plugin's home must be a UTF-8 path".into(),
    })
}

/// An opened plugin driver: a `GraphDriver` whose every call crosses the C ABI.
pub struct PluginDriver {
    plugin: Arc<Plugin>,
    handle: GdHandle,
}

// SAFETY: the ABI requires handles to be usable from any thread, concurrently (the plugin's
// side is a `GraphDriver`, which is `Send + Sync`).
unsafe impl Send for PluginDriver {}
unsafe impl Sync for PluginDriver {}

impl Drop for PluginDriver {
    fn drop(&mut self) {
        let f = self.plugin.table.close.expect("checked at load");
        // SAFETY: the handle came from `open` and is closed once.
        unsafe { f(self.handle) };
    }
}

impl std::fmt::Debug for PluginDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginDriver")
            .field("plugin", &self.plugin)
            .finish()
    }
}

// ---- stream callbacks ------------------------------------------------------------------

struct ReadCtx<'a> {
    reader: &'a mut dyn Read,
    error: Option<io::Error>,
}

unsafe extern "C" fn read_callback(
    ctx: *mut c_void,
    buf: *mut u8,
    len: usize,
    nread: *mut usize,
) -> i32 {
    // SAFETY: `ctx` is the `ReadCtx` the host passed with this reader, alive for the call.
    let ctx = unsafe { &mut *(ctx as *mut ReadCtx) };
    if buf.is_null() || nread.is_null() {
        ctx.error = Some(io::Error::other("plugin passed a null buffer to read"));
        return 1;
    }
    // SAFETY: the plugin gives a writable buffer of `len` bytes.
    let slice = unsafe { std::slice::from_raw_parts_mut(buf, len) };
    // The host's reader is host code: a panic in it must not unwind into the plugin.
    let res = catch_unwind(AssertUnwindSafe(|| loop {
        match ctx.reader.read(slice) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    }));
    match res {
        Ok(Ok(n)) => {
            // SAFETY: checked non-null above.
            unsafe { *nread = n };
            0
        }
        Ok(Err(e)) => {
            ctx.error = Some(e);
            1
        }
        Err(_) => {
            ctx.error = Some(io::Error::other("the tar stream's reader panicked"));
            1
        }
    }
}

struct WriteCtx<'a> {
    writer: &'a mut dyn Write,
    error: Option<io::Error>,
}

unsafe extern "C" fn write_callback(ctx: *mut c_void, buf: *const u8, len: usize) -> i32 {
    // SAFETY: `ctx` is the `WriteCtx` the host passed with this writer, alive for the call.
    let ctx = unsafe { &mut *(ctx as *mut WriteCtx) };
    if buf.is_null() && len != 0 {
        ctx.error = Some(io::Error::other("plugin passed a null buffer to write"));
        return 1;
    }
    let slice: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: the plugin gives `len` readable bytes.
        unsafe { std::slice::from_raw_parts(buf, len) }
    };
    match catch_unwind(AssertUnwindSafe(|| ctx.writer.write_all(slice))) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            ctx.error = Some(e);
            1
        }
        Err(_) => {
            ctx.error = Some(io::Error::other("the changeset's writer panicked"));
            1
        }
    }
}

impl PluginDriver {
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    fn t(&self) -> &GdPluginTable {
        self.plugin.table
    }

    /// A call taking an id and returning only a status.
    fn id_call(&self, op: &'static str, f: Option<IdFn>, id: &str) -> Result<()> {
        let f = f.expect("checked at load");
        // SAFETY: live handle, arguments alive for the call.
        self.plugin
            .call(op, |err| unsafe { f(self.handle, GdStr::new(id), err) })
    }

    /// A call taking an id and returning a JSON value.
    fn id_json<T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        f: Option<IdOutFn>,
        id: &str,
    ) -> Result<T> {
        let f = f.expect("checked at load");
        let mut out = GdBuf::EMPTY;
        // SAFETY: live handle, arguments alive for the call.
        self.plugin.call(op, |err| unsafe {
            f(self.handle, GdStr::new(id), &mut out, err)
        })?;
        self.plugin.json(op, out)
    }

    /// The plugin's stream error if the host's side of a stream failed: the host's own error
    /// is the real cause, the plugin only saw "the host's stream failed".
    fn stream_error(&self, id: &str, host_error: Option<io::Error>, plugin_error: Error) -> Error {
        match host_error {
            Some(e) => Error::Archive {
                id: Some(id.to_string()),
                source: crate::error::ArchiveError::Stream(e),
            },
            None => plugin_error,
        }
    }
}

impl GraphDriver for PluginDriver {
    fn name(&self) -> String {
        self.plugin.name.clone()
    }

    fn status(&self) -> Result<Vec<(String, String)>> {
        let f = self.t().status.expect("checked at load");
        let mut out = GdBuf::EMPTY;
        // SAFETY: live handle; out-parameters are ours.
        self.plugin
            .call("status", |err| unsafe { f(self.handle, &mut out, err) })?;
        self.plugin.json("status", out)
    }

    fn create(&self, id: &str, parent: Option<&str>, opts: &CreateOptions) -> Result<()> {
        let f = self.t().create.expect("checked at load");
        let wire = serde_json::to_string(&CreateOptionsWire {
            rw: opts.rw,
            storage_opts: opts.storage_opts.clone(),
        })
        .expect("create options serialise");
        // SAFETY: live handle, arguments alive for the call.
        self.plugin.call("create", |err| unsafe {
            f(
                self.handle,
                GdStr::new(id),
                GdStr::from_option(parent),
                GdStr::new(&wire),
                err,
            )
        })
    }

    fn remove(&self, id: &str) -> Result<()> {
        self.id_call("remove", self.t().remove, id)
    }

    fn get(&self, id: &str) -> Result<PathBuf> {
        let f = self.t().get.expect("checked at load");
        let mut out = GdBuf::EMPTY;
        // SAFETY: live handle, arguments alive for the call.
        self.plugin.call("get", |err| unsafe {
            f(self.handle, GdStr::new(id), &mut out, err)
        })?;
        let bytes = self.plugin.take(out);
        let path = String::from_utf8(bytes).map_err(|_| {
            self.plugin
                .garbage("get", "a path that is not UTF-8".into())
        })?;
        if !path.starts_with('/') {
            return Err(self
                .plugin
                .garbage("get", format!("{path:?} is not an absolute path")));
        }
        Ok(PathBuf::from(path))
    }

    fn put(&self, id: &str) -> Result<()> {
        self.id_call("put", self.t().put, id)
    }

    fn exists(&self, id: &str) -> Result<bool> {
        let f = self.t().exists.expect("checked at load");
        let mut out: u8 = 0;
        // SAFETY: live handle, arguments alive for the call.
        self.plugin.call("exists", |err| unsafe {
            f(self.handle, GdStr::new(id), &mut out, err)
        })?;
        match out {
            0 => Ok(false),
            1 => Ok(true),
            n => Err(self
                .plugin
                .garbage("exists", format!("{n} is not a boolean"))),
        }
    }

    fn list(&self) -> Result<Vec<LayerInfo>> {
        let f = self.t().list.expect("checked at load");
        let mut out = GdBuf::EMPTY;
        // SAFETY: live handle; out-parameters are ours.
        self.plugin
            .call("list", |err| unsafe { f(self.handle, &mut out, err) })?;
        self.plugin.json("list", out)
    }

    fn info(&self, id: &str) -> Result<LayerInfo> {
        self.id_json("info", self.t().info, id)
    }

    fn metadata(&self, id: &str) -> Result<BTreeMap<String, String>> {
        self.id_json("metadata", self.t().metadata, id)
    }

    fn diff(&self, id: &str, out: &mut dyn Write) -> Result<u64> {
        let f = self.t().diff.expect("checked at load");
        let mut ctx = WriteCtx {
            writer: out,
            error: None,
        };
        let writer = GdWriter {
            ctx: &mut ctx as *mut WriteCtx as *mut c_void,
            write: write_callback,
        };
        let mut written: u64 = 0;
        // SAFETY: live handle; `writer` and its context outlive the call.
        let res = self.plugin.call("diff", |err| unsafe {
            f(self.handle, GdStr::new(id), &writer, &mut written, err)
        });
        match res {
            Ok(()) => Ok(written),
            Err(e) => Err(self.stream_error(id, ctx.error.take(), e)),
        }
    }

    fn changes(&self, id: &str) -> Result<Vec<Change>> {
        self.id_json("changes", self.t().changes, id)
    }

    fn apply_diff(&self, id: &str, tar: &mut dyn Read) -> Result<u64> {
        let f = self.t().apply_diff.expect("checked at load");
        let mut ctx = ReadCtx {
            reader: tar,
            error: None,
        };
        let reader = GdReader {
            ctx: &mut ctx as *mut ReadCtx as *mut c_void,
            read: read_callback,
        };
        let mut applied: u64 = 0;
        // SAFETY: live handle; `reader` and its context outlive the call.
        let res = self.plugin.call("apply_diff", |err| unsafe {
            f(self.handle, GdStr::new(id), &reader, &mut applied, err)
        });
        match res {
            Ok(()) => Ok(applied),
            Err(e) => Err(self.stream_error(id, ctx.error.take(), e)),
        }
    }

    fn diff_size(&self, id: &str) -> Result<u64> {
        let f = self.t().diff_size.expect("checked at load");
        let mut out: u64 = 0;
        // SAFETY: live handle, arguments alive for the call.
        self.plugin.call("diff_size", |err| unsafe {
            f(self.handle, GdStr::new(id), &mut out, err)
        })?;
        Ok(out)
    }

    fn cleanup(&self) -> Result<()> {
        let f = self.t().cleanup.expect("checked at load");
        // SAFETY: live handle.
        self.plugin
            .call("cleanup", |err| unsafe { f(self.handle, err) })
    }
}
