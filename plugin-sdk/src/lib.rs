//! The plugin SDK: one macro call turns a driver into a gd plugin.
//!
//! ```ignore
//! // Cargo.toml: [lib] crate-type = ["cdylib"]
//! // A Backend factory: the plugin gets the LayerStore's semantics for free.
//! gd_plugin_sdk::export_plugin!(my_backend::factory());
//! // Or any GraphDriver:
//! gd_plugin_sdk::export_plugin!(gd_plugin_sdk::PluginSpec::new(
//!     "mine",
//!     |_home| Ok(()),
//!     |home, opts| Ok(Box::new(MyDriver::open(home, opts)?)),
//! ));
//! ```
//!
//! The SDK implements the plugin's side of the C ABI (`driver_api::plugin::abi`, described
//! in docs/plugin-abi.md): it decodes arguments, encodes results as JSON in buffers it
//! allocates and later frees, adapts the host's read/write callbacks to `Read`/`Write`, and
//! catches every panic at the boundary (a panic unwinding through `extern "C"` would abort
//! the host). A plugin must therefore be built with `panic = "unwind"` (the default).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use driver_api;
pub use driver_api::plugin::abi;
use driver_api::plugin::abi::*;
use driver_api::plugin::wire::{CreateOptionsWire, ErrorReport};
use driver_api::{CreateOptions, DriverFactory, Error, GraphDriver, LayerStore};

type ProbeFn = dyn Fn(&Path) -> Result<(), String> + Send + Sync;
type OpenFn = dyn Fn(&Path, &BTreeMap<String, String>) -> driver_api::Result<Box<dyn GraphDriver>>
    + Send
    + Sync;

/// What a plugin exports: a driver name, a probe and a way to open the driver.
pub struct PluginSpec {
    name: String,
    probe: Box<ProbeFn>,
    open: Box<OpenFn>,
}

impl PluginSpec {
    /// A plugin of any `GraphDriver`.
    pub fn new(
        name: &str,
        probe: impl Fn(&Path) -> Result<(), String> + Send + Sync + 'static,
        open: impl Fn(&Path, &BTreeMap<String, String>) -> driver_api::Result<Box<dyn GraphDriver>>
            + Send
            + Sync
            + 'static,
    ) -> PluginSpec {
        PluginSpec {
            name: name.to_string(),
            probe: Box::new(probe),
            open: Box::new(open),
        }
    }
}

/// A backend factory becomes a plugin whose driver is a `LayerStore` over that backend.
impl From<DriverFactory> for PluginSpec {
    fn from(f: DriverFactory) -> PluginSpec {
        let (probe, open) = (f.probe, f.open);
        PluginSpec::new(f.name, probe, move |home, opts| {
            let backend = open(home, opts)?;
            Ok(Box::new(LayerStore::open(home, backend)?))
        })
    }
}

/// The one plugin this library exports (each plugin `.so` has its own copy of the SDK).
struct Exported {
    spec: PluginSpec,
    _name: CString,
    table: GdPluginTable,
}

// SAFETY: the table holds only a pointer to `_name` (immutable, owned alongside) and function
// pointers; nothing in it is mutated after construction.
unsafe impl Sync for Exported {}
unsafe impl Send for Exported {}

static EXPORTED: OnceLock<Exported> = OnceLock::new();

fn spec() -> &'static PluginSpec {
    &EXPORTED.get().expect("the entry symbol ran first").spec
}

/// The body of the entry symbol `export_plugin!` defines. Returns null (which the host
/// reports) if building the spec panics or the name is not a C string.
pub fn entry(make: impl FnOnce() -> PluginSpec) -> *const GdPluginTable {
    let built = catch_unwind(AssertUnwindSafe(|| {
        EXPORTED.get_or_init(|| {
            let spec = make();
            let name = CString::new(spec.name.clone()).unwrap_or_else(|_| c"<bad name>".into());
            let table = table_for(name.as_ptr());
            Exported {
                spec,
                _name: name,
                table,
            }
        }) as *const Exported
    }));
    match built {
        // SAFETY: the OnceLock's value lives until the process exits.
        Ok(e) => unsafe { &(*e).table },
        Err(_) => std::ptr::null(),
    }
}

fn table_for(name: *const std::ffi::c_char) -> GdPluginTable {
    GdPluginTable {
        abi_major: ABI_MAJOR,
        abi_minor: ABI_MINOR,
        table_size: std::mem::size_of::<GdPluginTable>(),
        name,
        free_buffer: Some(free_buffer),
        probe: Some(probe),
        open: Some(open),
        close: Some(close),
        status: Some(status),
        create: Some(create),
        remove: Some(remove),
        get: Some(get),
        put: Some(put),
        exists: Some(exists),
        list: Some(list),
        info: Some(info),
        metadata: Some(metadata),
        diff: Some(diff),
        changes: Some(changes),
        apply_diff: Some(apply_diff),
        diff_size: Some(diff_size),
        cleanup: Some(cleanup),
    }
}

/// Define the plugin's entry symbol for a `PluginSpec` or anything that converts into one
/// (a `DriverFactory`). The expression is evaluated once, on the first call.
#[macro_export]
macro_rules! export_plugin {
    ($spec:expr) => {
        #[no_mangle]
        pub extern "C" fn gd_plugin_entry() -> *const $crate::abi::GdPluginTable {
            $crate::entry(|| ::core::convert::Into::<$crate::PluginSpec>::into($spec))
        }
    };
}

// ---- the boundary ------------------------------------------------------------------------

/// A failure at the boundary: the driver's error, or arguments that break the ABI.
enum Failure {
    Driver(Error),
    BadArgument(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Driver(e)
    }
}

fn put_buf(out: *mut GdBuf, bytes: Vec<u8>) {
    if !out.is_null() {
        // SAFETY: the host passes a writable out-parameter.
        unsafe { out.write(GdBuf::from_vec(bytes)) };
    }
}

fn put_json(out: *mut GdBuf, v: &impl serde::Serialize) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::BadArgument("null out-parameter".into()));
    }
    let bytes = serde_json::to_vec(v).map_err(|e| Failure::BadArgument(e.to_string()))?;
    put_buf(out, bytes);
    Ok(())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".into()
    }
}

/// Run one function of the table: catch panics, encode failures into `err`.
fn boundary(err: *mut GdBuf, f: impl FnOnce() -> Result<(), Failure>) -> i32 {
    let (code, report) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return GD_OK,
        Ok(Err(Failure::Driver(e))) => ErrorReport::from_error(&e),
        Ok(Err(Failure::BadArgument(m))) => (
            GD_ERR_BAD_ARGUMENT,
            ErrorReport {
                message: m,
                ..Default::default()
            },
        ),
        Err(p) => (
            GD_ERR_PANIC,
            ErrorReport {
                message: panic_message(&*p),
                ..Default::default()
            },
        ),
    };
    // Serialising a report of plain strings cannot fail; keep a literal fallback anyway so
    // that nothing here can panic outside the catch.
    let bytes = serde_json::to_vec(&report)
        .unwrap_or_else(|_| br#"{"message":"unencodable error"}"#.to_vec());
    put_buf(err, bytes);
    code
}

fn arg_str<'a>(s: GdStr, what: &str) -> Result<&'a str, Failure> {
    // SAFETY: the ABI: `s` points to `len` bytes alive for the call.
    let bytes =
        unsafe { s.as_bytes() }.ok_or_else(|| Failure::BadArgument(format!("{what} is absent")))?;
    std::str::from_utf8(bytes).map_err(|_| Failure::BadArgument(format!("{what} is not UTF-8")))
}

fn arg_opt_str<'a>(s: GdStr, what: &str) -> Result<Option<&'a str>, Failure> {
    if s.ptr.is_null() {
        Ok(None)
    } else {
        arg_str(s, what).map(Some)
    }
}

struct Instance {
    driver: Box<dyn GraphDriver>,
}

fn instance<'a>(handle: GdHandle) -> Result<&'a dyn GraphDriver, Failure> {
    if handle.is_null() {
        return Err(Failure::BadArgument("null handle".into()));
    }
    // SAFETY: a non-null handle is one `open` returned and `close` has not released.
    Ok(unsafe { &*(handle as *const Instance) }.driver.as_ref())
}

fn out_ok<T>(p: *mut T) -> Result<(), Failure> {
    if p.is_null() {
        Err(Failure::BadArgument("null out-parameter".into()))
    } else {
        Ok(())
    }
}

// ---- the table's functions ---------------------------------------------------------------

unsafe extern "C" fn free_buffer(buf: GdBuf) {
    // SAFETY: the host returns a buffer this SDK allocated with `GdBuf::from_vec`.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { GdBuf::free_boxed(buf) }));
}

unsafe extern "C" fn probe(home: GdStr, err: *mut GdBuf) -> i32 {
    boundary(err, || {
        let home = arg_str(home, "home")?;
        let spec = spec();
        (spec.probe)(Path::new(home)).map_err(|reason| {
            Failure::Driver(Error::Unsupported {
                driver: spec.name.clone(),
                reason,
            })
        })
    })
}

unsafe extern "C" fn open(home: GdStr, options: GdStr, out: *mut GdHandle, err: *mut GdBuf) -> i32 {
    boundary(err, || {
        out_ok(out)?;
        let home = arg_str(home, "home")?;
        let opts: BTreeMap<String, String> = serde_json::from_str(arg_str(options, "options")?)
            .map_err(|e| Failure::BadArgument(format!("options: {e}")))?;
        let driver = (spec().open)(Path::new(home), &opts)?;
        let handle = Box::into_raw(Box::new(Instance { driver }));
        // SAFETY: checked non-null above.
        unsafe { out.write(handle as GdHandle) };
        Ok(())
    })
}

unsafe extern "C" fn close(handle: GdHandle) {
    if handle.is_null() {
        return;
    }
    // A panic in a driver's Drop must not unwind into the host.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host closes each handle `open` gave it exactly once.
        drop(unsafe { Box::from_raw(handle as *mut Instance) })
    }));
}

unsafe extern "C" fn status(handle: GdHandle, out: *mut GdBuf, err: *mut GdBuf) -> i32 {
    boundary(err, || put_json(out, &instance(handle)?.status()?))
}

unsafe extern "C" fn create(
    handle: GdHandle,
    id: GdStr,
    parent: GdStr,
    options: GdStr,
    err: *mut GdBuf,
) -> i32 {
    boundary(err, || {
        let d = instance(handle)?;
        let id = arg_str(id, "id")?;
        let parent = arg_opt_str(parent, "parent")?;
        let wire: CreateOptionsWire = serde_json::from_str(arg_str(options, "options")?)
            .map_err(|e| Failure::BadArgument(format!("create options: {e}")))?;
        let opts = CreateOptions {
            rw: wire.rw,
            storage_opts: wire.storage_opts,
        };
        Ok(d.create(id, parent, &opts)?)
    })
}

unsafe extern "C" fn remove(handle: GdHandle, id: GdStr, err: *mut GdBuf) -> i32 {
    boundary(err, || Ok(instance(handle)?.remove(arg_str(id, "id")?)?))
}

unsafe extern "C" fn get(handle: GdHandle, id: GdStr, out: *mut GdBuf, err: *mut GdBuf) -> i32 {
    boundary(err, || {
        out_ok(out)?;
        let d = instance(handle)?;
        let id = arg_str(id, "id")?;
        let path: PathBuf = d.get(id)?;
        let Some(s) = path.to_str() else {
            // The host needs a UTF-8 path; give the mount back rather than leak it.
            let _ = d.put(id);
            return Err(Failure::Driver(Error::driver(
                d.name(),
                format!("the view of {id} has a non-UTF-8 path {}", path.display()),
            )));
        };
        put_buf(out, s.as_bytes().to_vec());
        Ok(())
    })
}

unsafe extern "C" fn put(handle: GdHandle, id: GdStr, err: *mut GdBuf) -> i32 {
    boundary(err, || Ok(instance(handle)?.put(arg_str(id, "id")?)?))
}

unsafe extern "C" fn exists(handle: GdHandle, id: GdStr, out: *mut u8, err: *mut GdBuf) -> i32 {
    boundary(err, || {
        out_ok(out)?;
        let e = instance(handle)?.exists(arg_str(id, "id")?)?;
        // SAFETY: checked non-null.
        unsafe { out.write(e as u8) };
        Ok(())
    })
}

unsafe extern "C" fn list(handle: GdHandle, out: *mut GdBuf, err: *mut GdBuf) -> i32 {
    boundary(err, || put_json(out, &instance(handle)?.list()?))
}

unsafe extern "C" fn info(handle: GdHandle, id: GdStr, out: *mut GdBuf, err: *mut GdBuf) -> i32 {
    boundary(err, || {
        put_json(out, &instance(handle)?.info(arg_str(id, "id")?)?)
    })
}

unsafe extern "C" fn metadata(
    handle: GdHandle,
    id: GdStr,
    out: *mut GdBuf,
    err: *mut GdBuf,
) -> i32 {
    boundary(err, || {
        put_json(out, &instance(handle)?.metadata(arg_str(id, "id")?)?)
    })
}

unsafe extern "C" fn changes(handle: GdHandle, id: GdStr, out: *mut GdBuf, err: *mut GdBuf) -> i32 {
    boundary(err, || {
        put_json(out, &instance(handle)?.changes(arg_str(id, "id")?)?)
    })
}

unsafe extern "C" fn diff_size(handle: GdHandle, id: GdStr, out: *mut u64, err: *mut GdBuf) -> i32 {
    boundary(err, || {
        out_ok(out)?;
        let n = instance(handle)?.diff_size(arg_str(id, "id")?)?;
        // SAFETY: checked non-null.
        unsafe { out.write(n) };
        Ok(())
    })
}

unsafe extern "C" fn cleanup(handle: GdHandle, err: *mut GdBuf) -> i32 {
    boundary(err, || Ok(instance(handle)?.cleanup()?))
}

/// The host's reader as `Read`.
struct HostReader<'a>(&'a GdReader);

impl Read for HostReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n: usize = 0;
        // SAFETY: the reader is valid for the duration of the call that received it.
        let rc = unsafe { (self.0.read)(self.0.ctx, buf.as_mut_ptr(), buf.len(), &mut n) };
        if rc != 0 {
            return Err(io::Error::other("the host's tar stream failed"));
        }
        if n > buf.len() {
            return Err(io::Error::other(
                "the host's reader claimed more bytes than asked",
            ));
        }
        Ok(n)
    }
}

/// The host's writer as `Write`.
struct HostWriter<'a>(&'a GdWriter);

impl Write for HostWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: the writer is valid for the duration of the call that received it.
        let rc = unsafe { (self.0.write)(self.0.ctx, buf.as_ptr(), buf.len()) };
        if rc != 0 {
            return Err(io::Error::other("the host's output stream failed"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

unsafe extern "C" fn diff(
    handle: GdHandle,
    id: GdStr,
    writer: *const GdWriter,
    written: *mut u64,
    err: *mut GdBuf,
) -> i32 {
    boundary(err, || {
        out_ok(written)?;
        if writer.is_null() {
            return Err(Failure::BadArgument("null writer".into()));
        }
        // SAFETY: checked non-null; valid for the call.
        let mut w = io::BufWriter::with_capacity(256 * 1024, HostWriter(unsafe { &*writer }));
        let d = instance(handle)?;
        let id = arg_str(id, "id")?;
        let n = d.diff(id, &mut w)?;
        w.flush().map_err(|e| Error::Archive {
            id: Some(id.to_string()),
            source: driver_api::ArchiveError::Stream(e),
        })?;
        // SAFETY: checked non-null.
        unsafe { written.write(n) };
        Ok(())
    })
}

unsafe extern "C" fn apply_diff(
    handle: GdHandle,
    id: GdStr,
    reader: *const GdReader,
    applied: *mut u64,
    err: *mut GdBuf,
) -> i32 {
    boundary(err, || {
        out_ok(applied)?;
        if reader.is_null() {
            return Err(Failure::BadArgument("null reader".into()));
        }
        // SAFETY: checked non-null; valid for the call.
        let mut r = HostReader(unsafe { &*reader });
        let n = instance(handle)?.apply_diff(arg_str(id, "id")?, &mut r)?;
        // SAFETY: checked non-null.
        unsafe { applied.write(n) };
        Ok(())
    })
}
