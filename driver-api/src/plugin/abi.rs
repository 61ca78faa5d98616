//! The plugin C ABI, version 1 (documented for plugin authors in `docs/plugin-abi.md`).
//!
//! Only C types cross: integers, pointers, `#[repr(C)]` structs and `extern "C"` function
//! pointers. Strings passed *into* a plugin are `GdStr` (pointer + length, UTF-8, not
//! NUL-terminated, borrowed for the call). Everything a plugin hands *back* (JSON values,
//! paths, error reports) is a `GdBuf` the plugin allocated and the host returns to the
//! plugin's `free_buffer`. Tar streams cross as read/write callbacks (`GdReader`,
//! `GdWriter`), a chunk at a time, never as a whole buffer.

use std::ffi::{c_char, c_void};

/// The symbol every plugin exports: `extern "C" fn() -> *const GdPluginTable`.
pub const ENTRY_SYMBOL: &str = "gd_plugin_entry";

/// Incompatible changes bump the major: a host loads only plugins of its own major.
pub const ABI_MAJOR: u32 = 1;
/// Compatible additions (new function pointers appended to the table) bump the minor.
pub const ABI_MINOR: u32 = 0;

/// Status codes returned by every table function. `GD_OK` means success; any other value
/// means failure, and the function filled its `err` out-parameter with a JSON error report
/// (see `ErrorReport` in `host.rs` and docs/plugin-abi.md §Errors).
pub const GD_OK: i32 = 0;
pub const GD_ERR_NOT_FOUND: i32 = 1;
pub const GD_ERR_ALREADY_EXISTS: i32 = 2;
pub const GD_ERR_INVALID_ID: i32 = 3;
pub const GD_ERR_PARENT_NOT_FOUND: i32 = 4;
pub const GD_ERR_HAS_CHILDREN: i32 = 5;
pub const GD_ERR_MOUNTED: i32 = 6;
pub const GD_ERR_NOT_MOUNTED: i32 = 7;
pub const GD_ERR_READ_ONLY: i32 = 8;
pub const GD_ERR_IO: i32 = 9;
pub const GD_ERR_ARCHIVE: i32 = 10;
pub const GD_ERR_DRIVER: i32 = 11;
pub const GD_ERR_UNSUPPORTED: i32 = 12;
pub const GD_ERR_STORE: i32 = 13;
/// The plugin code panicked; the SDK caught it at the boundary.
pub const GD_ERR_PANIC: i32 = 14;
/// The arguments were not what the ABI promises (bad UTF-8, bad JSON, null handle).
pub const GD_ERR_BAD_ARGUMENT: i32 = 15;

/// A borrowed UTF-8 string (not NUL-terminated). `ptr == NULL` means "absent" (an optional
/// argument such as a layer's parent); an empty string has a non-null `ptr` and `len == 0`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GdStr {
    pub ptr: *const u8,
    pub len: usize,
}

impl GdStr {
    pub const NONE: GdStr = GdStr {
        ptr: std::ptr::null(),
        len: 0,
    };

    pub fn new(s: &str) -> GdStr {
        // A dangling but non-null pointer for "" keeps "empty" distinct from "absent".
        GdStr {
            ptr: if s.is_empty() {
                std::ptr::NonNull::<u8>::dangling().as_ptr()
            } else {
                s.as_ptr()
            },
            len: s.len(),
        }
    }

    pub fn from_option(s: Option<&str>) -> GdStr {
        s.map(GdStr::new).unwrap_or(GdStr::NONE)
    }

    /// # Safety
    /// `ptr` must be null or point to `len` readable bytes that outlive `'a`.
    pub unsafe fn as_bytes<'a>(self) -> Option<&'a [u8]> {
        if self.ptr.is_null() {
            None
        } else if self.len == 0 {
            Some(&[])
        } else {
            Some(std::slice::from_raw_parts(self.ptr, self.len))
        }
    }
}

/// A buffer allocated by the plugin and owned by the host until it passes it back to the
/// plugin's `free_buffer`. `ptr == NULL` (with `len == 0`) is the empty buffer, which needs
/// no freeing (freeing it is allowed and does nothing).
#[repr(C)]
#[derive(Debug)]
pub struct GdBuf {
    pub ptr: *mut u8,
    pub len: usize,
}

impl GdBuf {
    pub const EMPTY: GdBuf = GdBuf {
        ptr: std::ptr::null_mut(),
        len: 0,
    };

    /// Hand `bytes` over as a buffer that `free_boxed` (on the same side) releases.
    pub fn from_vec(bytes: Vec<u8>) -> GdBuf {
        if bytes.is_empty() {
            return GdBuf::EMPTY;
        }
        let boxed: Box<[u8]> = bytes.into_boxed_slice();
        let len = boxed.len();
        GdBuf {
            ptr: Box::into_raw(boxed) as *mut u8,
            len,
        }
    }

    /// Release a buffer made by `from_vec` in this same binary.
    ///
    /// # Safety
    /// `buf` must come from `GdBuf::from_vec` of this binary and not have been freed.
    pub unsafe fn free_boxed(buf: GdBuf) {
        if !buf.ptr.is_null() {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                buf.ptr, buf.len,
            )));
        }
    }
}

/// A source of bytes the host gives the plugin (the layer tar of `apply_diff`).
///
/// `read` fills up to `len` bytes at `buf`, stores how many it wrote in `*nread` (0 means the
/// end of the stream) and returns 0; a non-zero return is a read error (the host keeps the
/// details and reports them when the call returns). `ctx` is the host's; the plugin passes it
/// back unchanged and never uses the reader after its call returned.
#[repr(C)]
pub struct GdReader {
    pub ctx: *mut c_void,
    pub read:
        unsafe extern "C" fn(ctx: *mut c_void, buf: *mut u8, len: usize, nread: *mut usize) -> i32,
}

/// A sink of bytes the host gives the plugin (the changeset of `diff`). `write` consumes all
/// `len` bytes or returns non-zero.
#[repr(C)]
pub struct GdWriter {
    pub ctx: *mut c_void,
    pub write: unsafe extern "C" fn(ctx: *mut c_void, buf: *const u8, len: usize) -> i32,
}

/// An opened driver instance inside the plugin (opaque to the host).
pub type GdHandle = *mut c_void;

pub type FreeBufferFn = unsafe extern "C" fn(buf: GdBuf);
pub type ProbeFn = unsafe extern "C" fn(home: GdStr, err: *mut GdBuf) -> i32;
pub type OpenFn =
    unsafe extern "C" fn(home: GdStr, options: GdStr, out: *mut GdHandle, err: *mut GdBuf) -> i32;
pub type CloseFn = unsafe extern "C" fn(handle: GdHandle);
pub type HandleFn = unsafe extern "C" fn(handle: GdHandle, err: *mut GdBuf) -> i32;
pub type OutFn = unsafe extern "C" fn(handle: GdHandle, out: *mut GdBuf, err: *mut GdBuf) -> i32;
pub type IdFn = unsafe extern "C" fn(handle: GdHandle, id: GdStr, err: *mut GdBuf) -> i32;
pub type IdOutFn =
    unsafe extern "C" fn(handle: GdHandle, id: GdStr, out: *mut GdBuf, err: *mut GdBuf) -> i32;
pub type IdU64Fn =
    unsafe extern "C" fn(handle: GdHandle, id: GdStr, out: *mut u64, err: *mut GdBuf) -> i32;
pub type ExistsFn =
    unsafe extern "C" fn(handle: GdHandle, id: GdStr, out: *mut u8, err: *mut GdBuf) -> i32;
pub type CreateFn = unsafe extern "C" fn(
    handle: GdHandle,
    id: GdStr,
    parent: GdStr,
    options: GdStr,
    err: *mut GdBuf,
) -> i32;
pub type DiffFn = unsafe extern "C" fn(
    handle: GdHandle,
    id: GdStr,
    writer: *const GdWriter,
    written: *mut u64,
    err: *mut GdBuf,
) -> i32;
pub type ApplyFn = unsafe extern "C" fn(
    handle: GdHandle,
    id: GdStr,
    reader: *const GdReader,
    applied: *mut u64,
    err: *mut GdBuf,
) -> i32;

/// The function table a plugin's entry symbol returns. It must stay valid (and unchanged)
/// until the process exits: hosts never unload a plugin.
///
/// The first four fields are the *header*, laid out identically in every ABI major, so that a
/// host can read the version and size of any plugin's table before trusting the rest.
///
/// Every function taking `err` returns a `GD_*` status; on failure it stores a JSON error
/// report in `*err`, on success it leaves `*err` empty. Out-parameters are written only on
/// success. Functions returning JSON store it in `*out` (see docs/plugin-abi.md for each
/// shape). Handles are used from several threads at once: a plugin's instance must be
/// thread-safe (a `GraphDriver` is `Send + Sync`).
#[repr(C)]
pub struct GdPluginTable {
    // ---- header (fixed across majors) ----
    pub abi_major: u32,
    pub abi_minor: u32,
    /// `size_of::<GdPluginTable>()` as the plugin was built: at least the size of the 1.0
    /// table; larger when a later minor appended functions.
    pub table_size: usize,
    /// The driver's name: NUL-terminated UTF-8, static.
    pub name: *const c_char,

    // ---- ABI 1.0 ----
    // Every function is an `Option` so that a null pointer in a plugin's table is detected at
    // load time instead of being called.
    /// Release a buffer the plugin handed out.
    pub free_buffer: Option<FreeBufferFn>,
    /// Whether this host can run the driver with its files under `home`.
    pub probe: Option<ProbeFn>,
    /// Open the driver whose files live under `home`; `options` is a JSON object of strings.
    pub open: Option<OpenFn>,
    /// Release an instance (after this the handle is never used again).
    pub close: Option<CloseFn>,
    /// JSON `[[key, value], ...]`.
    pub status: Option<OutFn>,
    /// `parent` may be absent; `options` is JSON `{"rw": bool, "storage_opts": {..}}`.
    pub create: Option<CreateFn>,
    pub remove: Option<IdFn>,
    /// `*out`: the absolute path of the view (UTF-8 bytes, not JSON).
    pub get: Option<IdOutFn>,
    pub put: Option<IdFn>,
    /// `*out`: 1 if the layer exists, 0 if not.
    pub exists: Option<ExistsFn>,
    /// JSON array of layer infos.
    pub list: Option<OutFn>,
    /// JSON layer info.
    pub info: Option<IdOutFn>,
    /// JSON object of strings.
    pub metadata: Option<IdOutFn>,
    /// Writes the canonical changeset to `writer`; `*written`: its length in bytes.
    pub diff: Option<DiffFn>,
    /// JSON array of `{"path": .., "kind": "A"|"C"|"D"}`.
    pub changes: Option<IdOutFn>,
    /// Applies the tar read from `reader`; `*applied`: bytes of content applied.
    pub apply_diff: Option<ApplyFn>,
    pub diff_size: Option<IdU64Fn>,
    pub cleanup: Option<HandleFn>,
}

/// The size of the ABI 1.0 table: the smallest `table_size` a host of major 1 accepts.
pub const TABLE_SIZE_V1_0: usize = std::mem::size_of::<GdPluginTable>();

// The C header (plugin-sdk/include/gd_plugin.h) describes the same layout: a 24-byte header
// (two u32, a size_t, a pointer) and 18 function pointers, no padding on any LP64 target.
const _: () = assert!(
    TABLE_SIZE_V1_0 == 8 + 2 * std::mem::size_of::<usize>() + 18 * std::mem::size_of::<usize>()
);

/// The fixed header every table of every major starts with.
#[repr(C)]
pub struct GdPluginHeader {
    pub abi_major: u32,
    pub abi_minor: u32,
    pub table_size: usize,
    pub name: *const c_char,
}

/// The entry symbol's type.
pub type EntryFn = unsafe extern "C" fn() -> *const GdPluginTable;
