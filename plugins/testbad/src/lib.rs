//! Deliberately broken plugins, one per entry symbol, for the host's robustness tests
//! (tests/tests/plugin_robustness.rs). Each breaks one promise of the ABI:
//!
//! - `gd_plugin_entry`: a well-formed SDK plugin whose driver panics in every operation
//!   (the SDK must catch each panic at the boundary).
//! - `gd_plugin_entry_wrong_major`: a table of ABI major 99.
//! - `gd_plugin_entry_short_table`: a table claiming to be 16 bytes long.
//! - `gd_plugin_entry_null`: no table at all.
//! - `gd_plugin_entry_null_function`: a table with a null `list`.
//! - `gd_plugin_entry_bad_name`: a driver name that is not a safe directory name.
//! - `gd_plugin_entry_future_minor`: a valid table of a later minor (1.7), longer than 1.0's
//!   — not broken: a host must accept it and ignore the tail.
//! - `gd_plugin_entry_garbage`: functions that return invalid UTF-8, invalid JSON, JSON of the
//!   wrong shape, a relative path, a non-boolean, an unknown status and an unparsable error
//!   report.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use driver_api::plugin::abi::*;
use driver_api::{Change, CreateOptions, GraphDriver, LayerInfo, Result};

// ---- a driver that panics --------------------------------------------------------------

struct Panicker;

impl GraphDriver for Panicker {
    fn name(&self) -> String {
        "testbad".into()
    }
    fn status(&self) -> Result<Vec<(String, String)>> {
        panic!("status exploded")
    }
    fn create(&self, id: &str, _: Option<&str>, _: &CreateOptions) -> Result<()> {
        panic!("create of {id} exploded")
    }
    fn remove(&self, _: &str) -> Result<()> {
        panic!("remove exploded")
    }
    fn get(&self, _: &str) -> Result<PathBuf> {
        panic!("get exploded")
    }
    fn put(&self, _: &str) -> Result<()> {
        panic!("put exploded")
    }
    fn exists(&self, _: &str) -> Result<bool> {
        panic!("exists exploded")
    }
    fn list(&self) -> Result<Vec<LayerInfo>> {
        panic!("list exploded")
    }
    fn info(&self, _: &str) -> Result<LayerInfo> {
        panic!("info exploded")
    }
    fn metadata(&self, _: &str) -> Result<BTreeMap<String, String>> {
        panic!("metadata exploded")
    }
    fn diff(&self, _: &str, out: &mut dyn Write) -> Result<u64> {
        // Half a stream, then a panic: the host must not be left with a broken state.
        out.write_all(&[0u8; 1000]).unwrap();
        panic!("diff exploded mid-stream")
    }
    fn changes(&self, _: &str) -> Result<Vec<Change>> {
        panic!("changes exploded")
    }
    fn apply_diff(&self, _: &str, tar: &mut dyn Read) -> Result<u64> {
        let mut buf = [0u8; 100];
        tar.read_exact(&mut buf).unwrap();
        panic!("apply_diff exploded mid-stream")
    }
    fn diff_size(&self, _: &str) -> Result<u64> {
        panic!("diff_size exploded")
    }
    fn cleanup(&self) -> Result<()> {
        Ok(())
    }
}

gd_plugin_sdk::export_plugin!(gd_plugin_sdk::PluginSpec::new(
    "testbad",
    |_home: &Path| Ok(()),
    |_home: &Path, _opts: &BTreeMap<String, String>| Ok(Box::new(Panicker) as Box<dyn GraphDriver>),
));

// ---- hand-made tables ------------------------------------------------------------------

struct Table(GdPluginTable);
// SAFETY: immutable statics of pointers to static data and functions.
unsafe impl Sync for Table {}

unsafe extern "C" fn free_buffer(buf: GdBuf) {
    // SAFETY: only buffers made by `GdBuf::from_vec` in this library come back here.
    unsafe { GdBuf::free_boxed(buf) }
}

unsafe extern "C" fn probe(_home: GdStr, _err: *mut GdBuf) -> i32 {
    GD_OK
}

/// A distinct non-null handle; the garbage functions never dereference it.
static HANDLE_TARGET: u8 = 0;

unsafe extern "C" fn open(_home: GdStr, _o: GdStr, out: *mut GdHandle, _err: *mut GdBuf) -> i32 {
    // SAFETY: the host passes a writable out-parameter.
    unsafe { out.write(&HANDLE_TARGET as *const u8 as GdHandle) };
    GD_OK
}

unsafe extern "C" fn close(_h: GdHandle) {}

fn give(out: *mut GdBuf, bytes: &[u8]) {
    // SAFETY: the host passes a writable out-parameter.
    unsafe { out.write(GdBuf::from_vec(bytes.to_vec())) };
}

/// `status`: invalid UTF-8 where JSON is expected.
unsafe extern "C" fn status(_h: GdHandle, out: *mut GdBuf, _err: *mut GdBuf) -> i32 {
    give(out, b"\xff\xfe\x00garbage");
    GD_OK
}

/// `create`: an unknown status with an error report that is not JSON.
unsafe extern "C" fn create(_h: GdHandle, _i: GdStr, _p: GdStr, _o: GdStr, err: *mut GdBuf) -> i32 {
    give(err, b"this is not json {");
    4242
}

/// `remove`: a known status whose report lacks the fields of its variant.
unsafe extern "C" fn remove(_h: GdHandle, _i: GdStr, err: *mut GdBuf) -> i32 {
    give(err, br#"{"message":"no id here"}"#);
    GD_ERR_NOT_FOUND
}

/// `get`: a relative path.
unsafe extern "C" fn get(_h: GdHandle, _i: GdStr, out: *mut GdBuf, _err: *mut GdBuf) -> i32 {
    give(out, b"relative/path");
    GD_OK
}

/// `put`: a failure with no report at all.
unsafe extern "C" fn put(_h: GdHandle, _i: GdStr, _err: *mut GdBuf) -> i32 {
    GD_ERR_IO
}

/// `exists`: a boolean that is 7.
unsafe extern "C" fn exists(_h: GdHandle, _i: GdStr, out: *mut u8, _err: *mut GdBuf) -> i32 {
    // SAFETY: the host passes a writable out-parameter.
    unsafe { out.write(7) };
    GD_OK
}

/// `list`: truncated JSON.
unsafe extern "C" fn list(_h: GdHandle, out: *mut GdBuf, _err: *mut GdBuf) -> i32 {
    give(out, br#"[{"id":"a","par"#);
    GD_OK
}

/// `info`: valid JSON of the wrong shape.
unsafe extern "C" fn info(_h: GdHandle, _i: GdStr, out: *mut GdBuf, _err: *mut GdBuf) -> i32 {
    give(out, br#"{"hello":"world"}"#);
    GD_OK
}

/// `metadata`: success without filling the buffer (empty is not a JSON value).
unsafe extern "C" fn metadata(_h: GdHandle, _i: GdStr, _out: *mut GdBuf, _err: *mut GdBuf) -> i32 {
    GD_OK
}

/// `diff`: a writer that is called with garbage, then success.
unsafe extern "C" fn diff(
    _h: GdHandle,
    _i: GdStr,
    writer: *const GdWriter,
    written: *mut u64,
    _err: *mut GdBuf,
) -> i32 {
    // SAFETY: the host's writer, valid for this call.
    let w = unsafe { &*writer };
    let junk = [0xAAu8; 10];
    // SAFETY: calling the host's callback with a valid buffer.
    unsafe { (w.write)(w.ctx, junk.as_ptr(), junk.len()) };
    // SAFETY: the host passes a writable out-parameter.
    unsafe { written.write(10) };
    GD_OK
}

unsafe extern "C" fn changes(_h: GdHandle, _i: GdStr, out: *mut GdBuf, _err: *mut GdBuf) -> i32 {
    give(out, br#"[{"path":"/x","kind":"Z"}]"#);
    GD_OK
}

unsafe extern "C" fn apply_diff(
    _h: GdHandle,
    _i: GdStr,
    _r: *const GdReader,
    _applied: *mut u64,
    err: *mut GdBuf,
) -> i32 {
    give(
        err,
        br#"{"message":"disk on fire","driver":"testbad","reason":"disk on fire"}"#,
    );
    GD_ERR_DRIVER
}

unsafe extern "C" fn diff_size(_h: GdHandle, _i: GdStr, _out: *mut u64, err: *mut GdBuf) -> i32 {
    give(err, b"\xff\xff");
    GD_ERR_PANIC
}

unsafe extern "C" fn cleanup(_h: GdHandle, _err: *mut GdBuf) -> i32 {
    GD_OK
}

const fn garbage_table(name: &'static std::ffi::CStr) -> GdPluginTable {
    GdPluginTable {
        abi_major: ABI_MAJOR,
        abi_minor: ABI_MINOR,
        table_size: std::mem::size_of::<GdPluginTable>(),
        name: name.as_ptr(),
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

static GARBAGE: Table = Table(garbage_table(c"garbage"));

static WRONG_MAJOR: Table = Table(GdPluginTable {
    abi_major: 99,
    ..garbage_table(c"wrongmajor")
});

static SHORT: Table = Table(GdPluginTable {
    table_size: 16,
    ..garbage_table(c"short")
});

static NULL_FUNCTION: Table = Table(GdPluginTable {
    list: None,
    ..garbage_table(c"nullfn")
});

static BAD_NAME: Table = Table(garbage_table(c"../../etc"));

#[no_mangle]
pub extern "C" fn gd_plugin_entry_garbage() -> *const GdPluginTable {
    &GARBAGE.0
}

#[no_mangle]
pub extern "C" fn gd_plugin_entry_wrong_major() -> *const GdPluginTable {
    &WRONG_MAJOR.0
}

#[no_mangle]
pub extern "C" fn gd_plugin_entry_short_table() -> *const GdPluginTable {
    &SHORT.0
}

#[no_mangle]
pub extern "C" fn gd_plugin_entry_null_function() -> *const GdPluginTable {
    &NULL_FUNCTION.0
}

#[no_mangle]
pub extern "C" fn gd_plugin_entry_bad_name() -> *const GdPluginTable {
    &BAD_NAME.0
}

#[no_mangle]
pub extern "C" fn gd_plugin_entry_null() -> *const GdPluginTable {
    std::ptr::null()
}

/// A table as a plugin built for ABI 1.7 would have it: 1.0's fields, then some appended.
#[repr(C)]
struct FutureTable {
    v1_0: GdPluginTable,
    appended_in_later_minors: [usize; 4],
}
// SAFETY: as `Table`.
unsafe impl Sync for FutureTable {}

static FUTURE: FutureTable = FutureTable {
    v1_0: GdPluginTable {
        abi_minor: 7,
        table_size: std::mem::size_of::<FutureTable>(),
        ..garbage_table(c"future")
    },
    appended_in_later_minors: [0; 4],
};

#[no_mangle]
pub extern "C" fn gd_plugin_entry_future_minor() -> *const GdPluginTable {
    &FUTURE.v1_0
}
