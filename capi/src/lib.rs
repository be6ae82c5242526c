//! The C ABI of dmafile: `libdmafile.so.0` and `dmafile.h` (generated
//! from this file by cbindgen; `scripts/capi-header.sh --check` keeps the
//! checked-in header equal to it).
//!
//! Rules every entry point keeps (docs/integration.md, "C"):
//! - it returns 0 or a negative errno, and writes a reason number of the
//!   one table ([`dmafile_code`]: the kernel's below 100, the runtime's
//!   from 100, this ABI's own from 200) to `reason` when that is not
//!   NULL (0 on success); `dmafile_last_error()` then has a sentence
//!   naming the problem;
//! - no Rust panic crosses it: each body runs under `catch_unwind`, and a
//!   panic (a dmafile bug) becomes `-ENOTRECOVERABLE` with
//!   `DMAFILE_CODE_INTERNAL_PANIC`, its message kept for
//!   `dmafile_last_error()` and not printed;
//! - handles are opaque numbers looked up in a table, so a NULL, freed,
//!   made-up or wrong-kind handle is `-EBADF` with
//!   `DMAFILE_CODE_BAD_HANDLE`, never a crash;
//! - it never prints and never reads the environment.
#![deny(unsafe_op_in_unsafe_fn)]
#![allow(non_camel_case_types, clippy::missing_safety_doc)]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_int, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};

use ash::vk;
use dmafile::{
    BorrowedDevice, Destination, Error, Gpu, PathChoice, PathKind, ReadQueue, ReadQueueOptions,
    ReadRequest, ReasonCode, Region, RegionOptions, TimelineSignal,
};

#[cfg(feature = "test-panic")]
pub mod panic_hook;

// Vulkan's own types, spelled as <vulkan/vulkan.h> spells them (cbindgen
// is told not to define them; the header includes vulkan.h).
pub type VkInstance = vk::Instance;
pub type VkPhysicalDevice = vk::PhysicalDevice;
pub type VkDevice = vk::Device;
pub type VkBuffer = vk::Buffer;
pub type VkDeviceMemory = vk::DeviceMemory;
pub type VkSemaphore = vk::Semaphore;
pub type VkCommandBuffer = vk::CommandBuffer;
pub type VkPipelineStageFlags = u32;
pub type VkAccessFlags = u32;
pub type PFN_vkGetInstanceProcAddr =
    Option<unsafe extern "system" fn(VkInstance, *const c_char) -> vk::PFN_vkVoidFunction>;

/// The ABI's version: `major << 16 | minor`. The major is the soname's
/// (`libdmafile.so.0`) and changes only when an existing function or
/// struct changes; the minor counts additions.
pub const DMAFILE_ABI_VERSION: u32 = 1;

/// The reason table: every number a `reason` out-parameter can hold.
/// Below 100 the kernel module's (`enum dmafile_reason` of
/// `<linux/dmafile.h>`, the same numbers); 100..=199 the runtime's
/// reasons a path cannot serve a request; from 200 this ABI's own call
/// errors. `dmafile_code_name()` and `dmafile_code_description()` give
/// each its stable short name and a sentence; numbers are never reused.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum dmafile_code {
    /// No error, nothing skipped.
    DMAFILE_CODE_NONE = 0,
    DMAFILE_CODE_INVALID_ARGUMENT = 1,
    DMAFILE_CODE_FLAGS_UNSUPPORTED = 2,
    DMAFILE_CODE_PIN_REQUIRED = 3,
    DMAFILE_CODE_BAD_FD = 4,
    DMAFILE_CODE_NOT_REGULAR_FILE = 5,
    DMAFILE_CODE_FS_NOT_SUPPORTED = 6,
    DMAFILE_CODE_UNALIGNED = 7,
    DMAFILE_CODE_INVALID_RANGE = 8,
    DMAFILE_CODE_BEYOND_EOF = 9,
    DMAFILE_CODE_TOO_LARGE = 10,
    DMAFILE_CODE_MEMLOCK_LIMIT = 11,
    DMAFILE_CODE_GLOBAL_LIMIT = 12,
    DMAFILE_CODE_FD_NOT_READABLE = 13,
    DMAFILE_CODE_FD_NOT_WRITABLE = 14,
    DMAFILE_CODE_SEALED = 15,
    DMAFILE_CODE_IMMUTABLE = 16,
    DMAFILE_CODE_WRITE_PIN_NOT_ALLOWED = 17,
    DMAFILE_CODE_FILE_CHANGED = 18,
    DMAFILE_CODE_IO_ERROR = 19,
    DMAFILE_CODE_NO_MEMORY = 20,
    DMAFILE_CODE_INTERRUPTED = 21,
    DMAFILE_CODE_MAP_FAILED = 22,
    DMAFILE_CODE_DAX_UNBACKED = 23,
    DMAFILE_CODE_FILE_BUSY = 24,
    DMAFILE_CODE_NOT_OWNER = 25,
    DMAFILE_CODE_MODULE_ABSENT = 100,
    DMAFILE_CODE_MODULE_UNUSABLE = 101,
    DMAFILE_CODE_NO_DMA_HEAP = 102,
    DMAFILE_CODE_MISSING_EXTENSION = 103,
    DMAFILE_CODE_NOT_MAPPABLE = 104,
    DMAFILE_CODE_NO_LEASE = 105,
    DMAFILE_CODE_IMPORT_FAILED = 106,
    DMAFILE_CODE_DEVICE_LIMIT = 107,
    DMAFILE_CODE_READ_ONLY_PATH = 108,
    /// A handle that is NULL, freed, never made, or of another kind.
    DMAFILE_CODE_BAD_HANDLE = 200,
    /// A required pointer argument is NULL.
    DMAFILE_CODE_NULL_ARGUMENT = 201,
    /// An argument is out of range (a path number, an option, a length).
    DMAFILE_CODE_BAD_ARGUMENT = 202,
    /// The file could not be opened or read (the errno says why).
    DMAFILE_CODE_FILE_IO = 203,
    /// Not something dmafile can read: a directory, a FIFO, a device.
    DMAFILE_CODE_BAD_INPUT = 204,
    /// The range passes the end of the file.
    DMAFILE_CODE_RANGE_PAST_EOF = 205,
    /// The destination buffer (or an output array) is smaller than asked.
    DMAFILE_CODE_DESTINATION_TOO_SMALL = 206,
    /// The file changed while it was read: the bytes are not one version.
    DMAFILE_CODE_CHANGED_WHILE_READ = 207,
    /// A Vulkan call failed.
    DMAFILE_CODE_VULKAN_ERROR = 208,
    /// The device cannot serve dmafile (Vulkan below 1.2, no timeline
    /// semaphores, no compute queue of that family and index).
    DMAFILE_CODE_DEVICE_UNSUITABLE = 209,
    /// A dmafile bug: an internal panic, caught at the boundary.
    DMAFILE_CODE_INTERNAL_PANIC = 210,
}

/// This ABI's own call errors, number, name and sentence.
const CALL_CODES: [(dmafile_code, &str, &str); 11] = [
    (dmafile_code::DMAFILE_CODE_BAD_HANDLE, "bad-handle", "the handle is NULL, freed, never made, or of another kind"),
    (dmafile_code::DMAFILE_CODE_NULL_ARGUMENT, "null-argument", "a required pointer argument is NULL"),
    (dmafile_code::DMAFILE_CODE_BAD_ARGUMENT, "bad-argument", "an argument is out of range"),
    (dmafile_code::DMAFILE_CODE_FILE_IO, "file-io", "the file could not be opened or read"),
    (dmafile_code::DMAFILE_CODE_BAD_INPUT, "bad-input", "not a file dmafile can read (a directory, FIFO or device)"),
    (dmafile_code::DMAFILE_CODE_RANGE_PAST_EOF, "range-past-eof", "the range passes the end of the file"),
    (dmafile_code::DMAFILE_CODE_DESTINATION_TOO_SMALL, "destination-too-small", "the destination buffer or output array is smaller than the request"),
    (dmafile_code::DMAFILE_CODE_CHANGED_WHILE_READ, "changed-while-read", "the file changed while it was read; the bytes are not one version of it"),
    (dmafile_code::DMAFILE_CODE_VULKAN_ERROR, "vulkan-error", "a Vulkan call failed"),
    (dmafile_code::DMAFILE_CODE_DEVICE_UNSUITABLE, "device-unsuitable", "the device cannot serve dmafile (Vulkan 1.2 with timeline semaphores and a compute queue needed)"),
    (dmafile_code::DMAFILE_CODE_INTERNAL_PANIC, "internal-panic", "a dmafile bug: an internal panic, caught at the C boundary"),
];

/// The paths, as the ABI numbers them (`auto` only as a request; 0 in a
/// report means no path served the request).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum dmafile_path {
    DMAFILE_PATH_AUTO = 0,
    DMAFILE_PATH_DIRECT = 1,
    DMAFILE_PATH_HOST = 2,
    DMAFILE_PATH_HEAP = 3,
    DMAFILE_PATH_UPLOAD = 4,
}

/// What backs the memory a direct request read: the numbers of the
/// kernel's `enum dmafile_backing` (named apart so that both headers can
/// be included).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum dmafile_memory {
    DMAFILE_MEMORY_NONE = 0,
    DMAFILE_MEMORY_PAGE_CACHE = 1,
    DMAFILE_MEMORY_STORAGE_DIRECT = 2,
}

/// A device the application lends dmafile (`dmafile_gpu_borrow`).
#[repr(C)]
pub struct dmafile_borrowed_device {
    /// The loader's `vkGetInstanceProcAddr` that made `instance`.
    pub get_instance_proc_addr: PFN_vkGetInstanceProcAddr,
    pub instance: VkInstance,
    /// The `apiVersion` the instance was created with (at least 1.2).
    pub instance_api_version: u32,
    pub physical_device: VkPhysicalDevice,
    pub device: VkDevice,
    /// A family with `VK_QUEUE_COMPUTE_BIT`; queue `queue_index` of it
    /// was created with the device (no flags).
    pub queue_family: u32,
    pub queue_index: u32,
    /// The device extensions the application enabled (what
    /// `dmafile_device_extensions` listed, or fewer: a path whose
    /// extensions are missing is then unavailable).
    pub enabled_extensions: *const *const c_char,
    pub enabled_extension_count: u32,
    /// Non-zero when `VkPhysicalDeviceVulkan12Features::timelineSemaphore`
    /// was enabled (required).
    pub timeline_semaphore: u32,
}

/// The Vulkan objects of an open region (`dmafile_region_raw`), valid
/// until `dmafile_region_free`.
#[repr(C)]
pub struct dmafile_raw_range {
    pub buffer: VkBuffer,
    pub memory: VkDeviceMemory,
    /// Offset of `buffer` in `memory` (0 today).
    pub memory_offset: u64,
    /// Bytes of `buffer`: the range from its page start, rounded up to 4.
    pub size: u64,
    /// Where the file's byte at the region's offset is in `buffer`.
    pub skew: u64,
    /// The region's length from `skew`.
    pub len: u64,
    /// The path that serves it (`dmafile_path`) and, for direct, what
    /// backs it (`dmafile_memory`).
    pub path: u32,
    pub backing: u32,
    /// Bytes the CPU copied to make it visible (0 for direct and host).
    pub cpu_copied_bytes: u64,
    /// The acquire barrier to record before first use in each
    /// submission, as plain fields (or call `dmafile_region_cmd_acquire`):
    /// a `VkBufferMemoryBarrier` on `buffer`, whole size, from
    /// `src_queue_family` (`VK_QUEUE_FAMILY_EXTERNAL` for imported memory,
    /// `VK_QUEUE_FAMILY_IGNORED` for upload's own memory) to
    /// `dst_queue_family` (the family lent), with your stage and access.
    pub src_queue_family: u32,
    pub dst_queue_family: u32,
    /// The reason the first faster path was skipped (0 if none was).
    pub fallback_reason: i32,
}

/// How a read queue works (`dmafile_queue_new`); a zero field takes the
/// default.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct dmafile_queue_options {
    /// `dmafile_path`: `DMAFILE_PATH_AUTO` (direct, host, upload) or one.
    pub path: u32,
    /// Bytes of staging for the copy paths (default 64 MiB).
    pub staging_bytes: u64,
    /// Bytes one staging copy covers (default 16 MiB).
    pub piece: u64,
    /// Bytes one import covers (default 256 MiB).
    pub import_piece: u64,
    /// Imports that may wait for the device at once (default 64).
    pub max_imports_in_flight: u32,
}

/// One read: `length` bytes of `file` at `offset` into `dst` at
/// `dst_offset`. `dst` must have been created with
/// `VK_BUFFER_USAGE_TRANSFER_DST_BIT`, be bound to memory and be
/// `dst_size` bytes long.
#[repr(C)]
pub struct dmafile_read_request {
    /// A NUL-terminated path.
    pub file: *const c_char,
    pub offset: u64,
    pub length: u64,
    pub dst: VkBuffer,
    pub dst_size: u64,
    pub dst_offset: u64,
}

/// A timeline semaphore of the application's and a value on it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct dmafile_timeline {
    pub semaphore: VkSemaphore,
    pub value: u64,
}

/// What happened to one request (`dmafile_queue_wait`/`_poll`).
#[repr(C)]
pub struct dmafile_request_report {
    /// 0, or a negative errno when the request failed (its destination
    /// bytes are then not the file's).
    pub status: i32,
    /// Why it failed (a `dmafile_code`), 0 when it did not.
    pub reason: i32,
    /// The path that served it (`dmafile_path`, 0 if none did).
    pub path: u32,
    /// `dmafile_memory` (direct only).
    pub backing: u32,
    /// The first faster path skipped for it and why (0 if none was), and
    /// how many paths were skipped or abandoned in all.
    pub fallback_reason: i32,
    pub fallback_count: u32,
    pub cpu_copied_bytes: u64,
    pub gpu_copied_bytes: u64,
    /// Seconds the CPU spent on it.
    pub seconds: f64,
    /// The error, or else the first fallback's reason, as a sentence
    /// (NUL-terminated, truncated to fit).
    pub message: [c_char; 256],
}

/// A device lent to dmafile (`dmafile_gpu_borrow`).
pub struct dmafile_gpu {
    _opaque: [u8; 0],
}
/// An imported file range (`dmafile_region_open`).
pub struct dmafile_region {
    _opaque: [u8; 0],
}
/// A read queue (`dmafile_queue_new`).
pub struct dmafile_queue {
    _opaque: [u8; 0],
}

// ---- the handle table --------------------------------------------------

enum Object {
    Gpu(Gpu),
    /// The region and the queue family of the device it was opened on.
    Region(Mutex<Option<Region>>, u32),
    Queue(Mutex<Option<QueueState>>),
}

impl Object {
    fn kind(&self) -> &'static str {
        match self {
            Object::Gpu(_) => "dmafile_gpu",
            Object::Region(..) => "dmafile_region",
            Object::Queue(_) => "dmafile_queue",
        }
    }
}

struct Handles {
    next: usize,
    live: BTreeMap<usize, Arc<Object>>,
}

static HANDLES: Mutex<Handles> = Mutex::new(Handles {
    next: 0,
    live: BTreeMap::new(),
});

fn handles() -> std::sync::MutexGuard<'static, Handles> {
    // A panic never happens while it is held; recover anyway.
    HANDLES.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new handle for `o`: a number, never a pointer to anything, never
/// reused (16-aligned so it looks like no small integer).
fn register<T>(o: Object) -> *mut T {
    let mut h = handles();
    h.next += 1;
    let id = h.next << 4;
    h.live.insert(id, Arc::new(o));
    id as *mut T
}

fn lookup<T>(p: *const T, want: &'static str) -> Result<Arc<Object>, Fail> {
    if p.is_null() {
        return Err(Fail::bad_handle(format!("the {want} handle is NULL")));
    }
    let o = handles().live.get(&(p as usize)).cloned();
    match o {
        Some(o) if o.kind() == want => Ok(o),
        Some(o) => Err(Fail::bad_handle(format!(
            "the handle passed as a {want} is a {}",
            o.kind()
        ))),
        None => Err(Fail::bad_handle(format!(
            "{p:p} is not a live {want} handle (freed already, or never made by dmafile)"
        ))),
    }
}

fn unregister<T>(p: *const T, want: &'static str) -> Result<Arc<Object>, Fail> {
    lookup(p, want)?;
    // Two threads may free the same handle at once: the one that finds it
    // gone gets the same error as for any stale handle.
    handles().live.remove(&(p as usize)).ok_or_else(|| {
        Fail::bad_handle(format!(
            "{p:p} is not a live {want} handle (freed already, or never made by dmafile)"
        ))
    })
}

/// The object behind a handle, locked: an error if an earlier call
/// panicked while it held it (the object may be half-updated; only freeing
/// it is allowed) or if another thread freed it meanwhile.
fn live<'a, P, T>(
    p: *const P,
    m: &'a Mutex<Option<T>>,
) -> Result<std::sync::MutexGuard<'a, Option<T>>, Fail> {
    let g = m.lock().map_err(|_| {
        Fail::new(
            libc::ENOTRECOVERABLE,
            dmafile_code::DMAFILE_CODE_INTERNAL_PANIC,
            format!("{p:p} was left unusable by an internal panic in an earlier call: free it"),
        )
    })?;
    if g.is_none() {
        return Err(Fail::bad_handle(format!(
            "{p:p} was freed by another thread"
        )));
    }
    Ok(g)
}

/// Frees the object behind a handle now, in this call: waits for a call
/// of another thread that holds it, then drops it (its Vulkan objects are
/// gone when this returns, so the app may destroy its device next).
fn free_now<T>(p: *const T, want: &'static str) -> Result<(), Fail> {
    let o = unregister(p, want)?;
    match &*o {
        Object::Region(m, _) => drop(m.lock().unwrap_or_else(|e| e.into_inner()).take()),
        Object::Queue(m) => drop(m.lock().unwrap_or_else(|e| e.into_inner()).take()),
        Object::Gpu(_) => {}
    }
    Ok(())
}

fn gpu_of(p: *const dmafile_gpu) -> Result<Gpu, Fail> {
    match &*lookup(p, "dmafile_gpu")? {
        Object::Gpu(g) => Ok(g.clone()),
        _ => unreachable!("lookup checked the kind"),
    }
}

// ---- errors -------------------------------------------------------------

/// A failed call: the errno, the reason number and a sentence.
#[derive(Debug)]
struct Fail {
    errno: c_int,
    reason_number: i32,
    msg: String,
}

impl Fail {
    fn new(errno: c_int, reason: dmafile_code, msg: impl Into<String>) -> Fail {
        Fail {
            errno,
            reason_number: reason as i32,
            msg: msg.into(),
        }
    }
    fn bad_handle(msg: String) -> Fail {
        Fail::new(libc::EBADF, dmafile_code::DMAFILE_CODE_BAD_HANDLE, msg)
    }
    fn null(what: &str) -> Fail {
        Fail::new(
            libc::EINVAL,
            dmafile_code::DMAFILE_CODE_NULL_ARGUMENT,
            format!("{what} is NULL"),
        )
    }
    fn arg(msg: impl Into<String>) -> Fail {
        Fail::new(libc::EINVAL, dmafile_code::DMAFILE_CODE_BAD_ARGUMENT, msg)
    }
}

/// The one rule from a runtime error to an errno and a reason number.
impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::from(&e)
    }
}

impl From<&Error> for Fail {
    fn from(e: &Error) -> Fail {
        use dmafile_code::*;
        let msg = e.to_string();
        let (errno, reason) = match e {
            Error::Io { source, .. } => (
                source.raw_os_error().unwrap_or(libc::EIO),
                DMAFILE_CODE_FILE_IO,
            ),
            Error::BadInput { .. } => (libc::EINVAL, DMAFILE_CODE_BAD_INPUT),
            Error::FileChanged { .. } => (libc::ESTALE, DMAFILE_CODE_CHANGED_WHILE_READ),
            Error::Config { .. } | Error::ReadOnlyRegion { .. } => {
                (libc::EINVAL, DMAFILE_CODE_BAD_ARGUMENT)
            }
            Error::PathUnavailable(u) => {
                return Fail {
                    errno: libc::EOPNOTSUPP,
                    reason_number: u.code.number() as i32,
                    msg,
                }
            }
            Error::Vulkan { result, .. } => (
                match *result {
                    vk::Result::ERROR_OUT_OF_HOST_MEMORY
                    | vk::Result::ERROR_OUT_OF_DEVICE_MEMORY => libc::ENOMEM,
                    vk::Result::ERROR_DEVICE_LOST => libc::ENODEV,
                    _ => libc::EIO,
                },
                DMAFILE_CODE_VULKAN_ERROR,
            ),
            Error::NoVulkan(_) | Error::NoSuchDevice { .. } | Error::DeviceUnsuitable { .. } => {
                (libc::ENODEV, DMAFILE_CODE_DEVICE_UNSUITABLE)
            }
            _ => (libc::EIO, DMAFILE_CODE_VULKAN_ERROR),
        };
        Fail::new(errno, reason, msg)
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    /// Inside an entry point: a panic's message is kept, not printed.
    static IN_CALL: Cell<bool> = const { Cell::new(false) };
    static PANIC_MSG: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = c);
}

/// Chains a panic hook once: a panic inside an entry point is recorded
/// for `dmafile_last_error` instead of printed (the library never
/// prints); any other panic goes to the hook that was there before.
fn quiet_panics_in_calls() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CALL.with(|c| c.get()) {
                let where_ = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let what = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "?".into());
                PANIC_MSG.with(|m| *m.borrow_mut() = Some(format!("{what}{where_}")));
            } else {
                prev(info)
            }
        }));
    });
}

/// Runs an entry point's body: catches panics, writes `reason`, keeps
/// the message, returns 0 or the negative errno.
fn call(name: &'static str, reason: *mut i32, body: impl FnOnce() -> Result<(), Fail>) -> c_int {
    quiet_panics_in_calls();
    let outer = IN_CALL.with(|c| c.replace(true));
    let r = catch_unwind(AssertUnwindSafe(|| {
        #[cfg(feature = "test-panic")]
        panic_hook::maybe_panic(name);
        body()
    }));
    IN_CALL.with(|c| c.set(outer));
    let (rc, code) = match r {
        Ok(Ok(())) => {
            set_last_error("");
            (0, 0)
        }
        Ok(Err(f)) => {
            set_last_error(&format!("{name}: {}", f.msg));
            (-f.errno, f.reason_number)
        }
        Err(_) => {
            let what = PANIC_MSG
                .with(|m| m.borrow_mut().take())
                .unwrap_or_else(|| "?".into());
            set_last_error(&format!(
                "{name}: internal error (a dmafile bug, please report it): {what}"
            ));
            (
                -libc::ENOTRECOVERABLE,
                dmafile_code::DMAFILE_CODE_INTERNAL_PANIC as i32,
            )
        }
    };
    if !reason.is_null() {
        // SAFETY: the caller passes NULL or a writable int32_t.
        unsafe { reason.write(code) };
    }
    rc
}

fn path_choice(p: u32) -> Result<PathChoice, Fail> {
    Ok(match p {
        0 => PathChoice::Auto,
        1 => PathChoice::Only(PathKind::Direct),
        2 => PathChoice::Only(PathKind::Host),
        3 => PathChoice::Only(PathKind::Heap),
        4 => PathChoice::Only(PathKind::Upload),
        n => {
            return Err(Fail::arg(format!(
                "path {n} is not a dmafile_path (0 auto, 1 direct, 2 host, 3 heap, 4 upload)"
            )))
        }
    })
}

fn path_number(k: Option<PathKind>) -> u32 {
    match k {
        None => 0,
        Some(PathKind::Direct) => 1,
        Some(PathKind::Host) => 2,
        Some(PathKind::Heap) => 3,
        Some(PathKind::Upload) => 4,
    }
}

fn backing_number(b: dmafile::kmod::Backing) -> u32 {
    use dmafile::kmod::Backing;
    match b {
        Backing::None | Backing::Unknown(_) => 0,
        Backing::PageCache => 1,
        Backing::StorageDirect => 2,
    }
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn file_arg(p: *const c_char, what: &str) -> Result<PathBuf, Fail> {
    if p.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: per the caller.
    let s = unsafe { CStr::from_ptr(p) };
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(s.to_bytes())))
}

/// Checks a file range before anything is imported or read, so that a C
/// caller gets a specific reason: the file is missing or unreadable
/// (`FILE_IO`), not a regular file (`BAD_INPUT`), or shorter than the
/// range (`RANGE_PAST_EOF`). The runtime checks it again when it reads.
fn check_range(file: &std::path::Path, offset: u64, length: u64) -> Result<(), Fail> {
    let md = std::fs::metadata(file).map_err(|e| {
        Fail::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            dmafile_code::DMAFILE_CODE_FILE_IO,
            format!("{}: {e}", file.display()),
        )
    })?;
    if !md.is_file() {
        return Err(Fail::new(
            libc::EINVAL,
            dmafile_code::DMAFILE_CODE_BAD_INPUT,
            format!("{}: not a regular file", file.display()),
        ));
    }
    if length == 0 {
        return Err(Fail::arg(format!(
            "{}: a zero-length range",
            file.display()
        )));
    }
    match offset.checked_add(length) {
        Some(end) if end <= md.len() => Ok(()),
        _ => Err(Fail::new(
            libc::EINVAL,
            dmafile_code::DMAFILE_CODE_RANGE_PAST_EOF,
            format!(
                "{}: the range of {length} bytes at offset {offset} passes the end of the file ({} bytes)",
                file.display(),
                md.len()
            ),
        )),
    }
}

fn write_message(dst: &mut [c_char; 256], msg: &str) {
    let b = msg.as_bytes();
    let n = b.len().min(dst.len() - 1);
    for (d, s) in dst.iter_mut().zip(&b[..n]) {
        *d = *s as c_char;
    }
    dst[n] = 0;
}

// ---- entry points ------------------------------------------------------

/// The ABI version of the library loaded (`DMAFILE_ABI_VERSION` of the
/// header it was built with): compare majors (`>> 16`) at startup.
/// Thread-safe; cannot fail.
#[no_mangle]
pub extern "C" fn dmafile_abi_version() -> u32 {
    DMAFILE_ABI_VERSION
}

/// The stable short name of reason number `code` (`"fs-not-supported"`),
/// or NULL for a number no reason has. The string is static. Thread-safe.
#[no_mangle]
pub extern "C" fn dmafile_code_name(code: i32) -> *const c_char {
    code_text(code, true)
}

/// A sentence saying what reason number `code` means, or NULL for a
/// number no reason has. The string is static. Thread-safe.
#[no_mangle]
pub extern "C" fn dmafile_code_description(code: i32) -> *const c_char {
    code_text(code, false)
}

/// The name of reason `code` and its sentence, for the table and the docs.
pub fn code_strs(code: i32) -> Option<(&'static str, &'static str)> {
    if code >= 200 {
        return CALL_CODES
            .iter()
            .find(|(c, _, _)| *c as i32 == code)
            .map(|(_, n, d)| (*n, *d));
    }
    let n = u32::try_from(code).ok()?;
    match ReasonCode::from_number(n)? {
        ReasonCode::Kernel(dmafile::kmod::MapReason::Unknown(_)) => None,
        r => Some((r.name(), r.describe())),
    }
}

fn code_text(code: i32, name: bool) -> *const c_char {
    // Static NUL-terminated copies, made once per code.
    static CACHE: Mutex<Vec<(i32, bool, &'static CStr)>> = Mutex::new(Vec::new());
    let r = catch_unwind(|| {
        let (n, d) = code_strs(code)?;
        let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, s)) = c.iter().find(|(k, b, _)| *k == code && *b == name) {
            return Some(s.as_ptr());
        }
        let s: &'static CStr = Box::leak(
            CString::new(if name { n } else { d })
                .ok()?
                .into_boxed_c_str(),
        );
        c.push((code, name, s));
        Some(s.as_ptr())
    });
    r.ok().flatten().unwrap_or(std::ptr::null())
}

/// The name of `dmafile_path` `path` (`"auto"` for 0, which in a report
/// means that no path served the request; `"direct"`, ...), NULL for a
/// number that is no path. The string is static. Thread-safe.
#[no_mangle]
pub extern "C" fn dmafile_path_name(path: u32) -> *const c_char {
    let s: &'static [u8] = match path {
        0 => b"auto\0",
        1 => b"direct\0",
        2 => b"host\0",
        3 => b"heap\0",
        4 => b"upload\0",
        _ => return std::ptr::null(),
    };
    s.as_ptr().cast()
}

/// The last failed call's message on this thread ("" after a call that
/// succeeded), naming the function and the problem. Valid until the
/// thread's next dmafile call. Thread-safe (per thread).
#[no_mangle]
pub extern "C" fn dmafile_last_error() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}

/// The device extensions to enable on `physical_device` for every path
/// it can support (Vulkan-style: `*count` is the capacity of `names` on
/// entry, the number of extensions on return; `names` may be NULL to ask
/// for the count; a capacity too small is `-ENOSPC` with
/// `DESTINATION_TOO_SMALL` and `*count` set). The strings are static.
/// Enable `timelineSemaphore` (Vulkan 1.2) too. Call it before
/// `vkCreateDevice`. Thread-safe.
///
/// # Safety
/// `instance` was made by `get_instance_proc_addr`'s loader with an
/// `apiVersion` of at least 1.2, `physical_device` is one of its.
#[no_mangle]
pub unsafe extern "C" fn dmafile_device_extensions(
    get_instance_proc_addr: PFN_vkGetInstanceProcAddr,
    instance: VkInstance,
    physical_device: VkPhysicalDevice,
    count: *mut u32,
    names: *mut *const c_char,
    reason: *mut i32,
) -> c_int {
    call("dmafile_device_extensions", reason, || {
        let gipa = get_instance_proc_addr.ok_or_else(|| Fail::null("get_instance_proc_addr"))?;
        if count.is_null() {
            return Err(Fail::null("count"));
        }
        if instance == vk::Instance::null() || physical_device == vk::PhysicalDevice::null() {
            return Err(Fail::null("instance or physical_device"));
        }
        let sf = ash::StaticFn {
            get_instance_proc_addr: gipa,
        };
        // SAFETY: per the caller: the loader's function and its instance.
        let inst = unsafe { ash::Instance::load(&sf, instance) };
        // SAFETY: per the caller.
        let req = unsafe { dmafile::device_requirements(&inst, physical_device) }?;
        let n = req.extensions.len() as u32;
        // SAFETY: count is a valid u32 (checked non-NULL; the caller's).
        let cap = unsafe { count.read() };
        // SAFETY: as above.
        unsafe { count.write(n) };
        if names.is_null() {
            return Ok(());
        }
        if cap < n {
            return Err(Fail::new(
                libc::ENOSPC,
                dmafile_code::DMAFILE_CODE_DESTINATION_TOO_SMALL,
                format!("names holds {cap} entries; {n} are needed (*count is now {n})"),
            ));
        }
        for (i, e) in req.extensions.iter().enumerate() {
            // SAFETY: names has cap >= n entries (the caller's promise).
            unsafe { names.add(i).write(e.as_ptr()) };
        }
        Ok(())
    })
}

/// Adopts the application's device: dmafile works on it and its queue
/// and never destroys them. Free the handle with `dmafile_gpu_free`
/// after every region and queue made from it, and before destroying the
/// device. Thread-safe (the handle too: dmafile serializes its own
/// submissions on the queue; an application that submits to the same
/// queue from another thread at the same time as a dmafile call must
/// lend dmafile a queue of its own).
///
/// # Safety
/// The handles in `*device` are valid and made from one another, with
/// the extensions listed and `timelineSemaphore` enabled.
#[no_mangle]
pub unsafe extern "C" fn dmafile_gpu_borrow(
    device: *const dmafile_borrowed_device,
    out: *mut *mut dmafile_gpu,
    reason: *mut i32,
) -> c_int {
    call("dmafile_gpu_borrow", reason, || {
        if device.is_null() {
            return Err(Fail::null("device"));
        }
        if out.is_null() {
            return Err(Fail::null("out"));
        }
        // SAFETY: non-NULL, the caller's struct.
        let b = unsafe { &*device };
        let gipa = b
            .get_instance_proc_addr
            .ok_or_else(|| Fail::null("device->get_instance_proc_addr"))?;
        if b.instance == vk::Instance::null()
            || b.physical_device == vk::PhysicalDevice::null()
            || b.device == vk::Device::null()
        {
            return Err(Fail::null(
                "device->instance, ->physical_device or ->device",
            ));
        }
        if b.enabled_extension_count > 0 && b.enabled_extensions.is_null() {
            return Err(Fail::null("device->enabled_extensions"));
        }
        let exts: Vec<&CStr> = (0..b.enabled_extension_count as usize)
            // SAFETY: the caller's array of that many NUL-terminated names.
            .map(|i| unsafe { CStr::from_ptr(*b.enabled_extensions.add(i)) })
            .collect();
        // SAFETY: per the caller.
        let gpu = unsafe {
            Gpu::from_raw(BorrowedDevice {
                get_instance_proc_addr: gipa,
                instance: b.instance,
                instance_api_version: b.instance_api_version,
                physical_device: b.physical_device,
                device: b.device,
                queue_family: b.queue_family,
                queue_index: b.queue_index,
                enabled_extensions: &exts,
                timeline_semaphore: b.timeline_semaphore != 0,
            })
        }?;
        // SAFETY: non-NULL, the caller's.
        unsafe { out.write(register(Object::Gpu(gpu))) };
        Ok(())
    })
}

/// Frees the handle. dmafile's objects on the device that regions and
/// queues still hold stay until those are freed too. Thread-safe; the
/// handle is invalid afterwards (using it is `-EBADF`).
#[no_mangle]
pub extern "C" fn dmafile_gpu_free(gpu: *mut dmafile_gpu, reason: *mut i32) -> c_int {
    call("dmafile_gpu_free", reason, || {
        unregister(gpu, "dmafile_gpu").map(drop)
    })
}

/// Whether `path` can work on this machine with this device: 0 and
/// `*reason` 0 when it can; 0 and `*reason` the reason it cannot (and
/// `why`, if not NULL, a sentence of at most `why_len` bytes with its
/// NUL) when it cannot. Thread-safe.
///
/// # Safety
/// `why` is NULL or holds `why_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn dmafile_gpu_path_available(
    gpu: *const dmafile_gpu,
    path: u32,
    reason: *mut i32,
    why: *mut c_char,
    why_len: usize,
) -> c_int {
    let mut code = 0i32;
    let rc = call("dmafile_gpu_path_available", reason, || {
        let g = gpu_of(gpu)?;
        let kind = match path_choice(path)? {
            PathChoice::Only(k) => k,
            PathChoice::Auto => return Err(Fail::arg("ask about one path, not auto")),
        };
        let text = match g.unavailable(kind) {
            None => String::new(),
            Some(u) => {
                code = u.code.number() as i32;
                u.reason
            }
        };
        if !why.is_null() && why_len > 0 {
            let b = text.as_bytes();
            let n = b.len().min(why_len - 1);
            // SAFETY: the caller's buffer of why_len bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(b.as_ptr(), why.cast::<u8>(), n);
                why.add(n).write(0);
            }
        }
        Ok(())
    });
    if rc == 0 && !reason.is_null() {
        // SAFETY: the caller passes NULL or a writable int32_t.
        unsafe { reason.write(code) };
    }
    rc
}

/// Imports `length` bytes of `file` at `offset` for the application's
/// own shaders, through `path` (`dmafile_path`; auto tries direct, host,
/// heap, upload). `dmafile_region_raw` gives its Vulkan objects. A path
/// named that cannot serve it is `-EOPNOTSUPP` with its reason.
/// Thread-safe.
///
/// # Safety
/// `file` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn dmafile_region_open(
    gpu: *const dmafile_gpu,
    file: *const c_char,
    offset: u64,
    length: u64,
    path: u32,
    out: *mut *mut dmafile_region,
    reason: *mut i32,
) -> c_int {
    call("dmafile_region_open", reason, || {
        let g = gpu_of(gpu)?;
        // SAFETY: per the caller.
        let f = unsafe { file_arg(file, "file") }?;
        if out.is_null() {
            return Err(Fail::null("out"));
        }
        let choice = path_choice(path)?;
        check_range(&f, offset, length)?;
        let r = Region::open(
            &g,
            &f,
            offset,
            length,
            RegionOptions {
                path: choice,
                ..Default::default()
            },
        )?;
        // SAFETY: non-NULL, the caller's.
        unsafe {
            out.write(register(Object::Region(
                Mutex::new(Some(r)),
                g.queue_family(),
            )))
        };
        Ok(())
    })
}

fn with_region<T>(
    region: *const dmafile_region,
    f: impl FnOnce(&Region, u32) -> Result<T, Fail>,
) -> Result<T, Fail> {
    let o = lookup(region, "dmafile_region")?;
    match &*o {
        Object::Region(m, family) => f(live(region, m)?.as_ref().expect("live"), *family),
        _ => unreachable!("lookup checked the kind"),
    }
}

/// The region's Vulkan objects, path and acquire barrier. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn dmafile_region_raw(
    region: *const dmafile_region,
    out: *mut dmafile_raw_range,
    reason: *mut i32,
) -> c_int {
    call("dmafile_region_raw", reason, || {
        if out.is_null() {
            return Err(Fail::null("out"));
        }
        let r = with_region(region, |r, family| {
            let raw = r.raw();
            Ok(dmafile_raw_range {
                buffer: raw.buffer,
                memory: raw.memory,
                memory_offset: 0,
                size: raw.size,
                skew: raw.skew,
                len: raw.len,
                path: path_number(Some(r.path_kind())),
                backing: backing_number(r.backing()),
                cpu_copied_bytes: r.cpu_copied_bytes(),
                src_queue_family: if raw.imported {
                    vk::QUEUE_FAMILY_EXTERNAL
                } else {
                    vk::QUEUE_FAMILY_IGNORED
                },
                dst_queue_family: if raw.imported {
                    family
                } else {
                    vk::QUEUE_FAMILY_IGNORED
                },
                fallback_reason: r.fallbacks().first().map_or(0, |f| f.code.number() as i32),
            })
        })?;
        // SAFETY: non-NULL, the caller's.
        unsafe { out.write(r) };
        Ok(())
    })
}

/// Records into `cmd` the barrier that acquires the region's buffer from
/// the external queue family for `access` at `stage` (before the first
/// use in each submission); with `release` non-zero, the matching release
/// back to it after the last use (`stage` and `access` then name that
/// use). Thread-safe for the region; `cmd` is the caller's
/// to synchronize.
///
/// # Safety
/// `cmd` is a command buffer of the region's device in the recording
/// state, submitted on the lent queue family while the region lives.
#[no_mangle]
pub unsafe extern "C" fn dmafile_region_cmd_barrier(
    region: *const dmafile_region,
    cmd: VkCommandBuffer,
    release: u32,
    stage: VkPipelineStageFlags,
    access: VkAccessFlags,
    reason: *mut i32,
) -> c_int {
    call("dmafile_region_cmd_barrier", reason, || {
        if cmd == vk::CommandBuffer::null() {
            return Err(Fail::null("cmd"));
        }
        let stage = vk::PipelineStageFlags::from_raw(stage);
        let access = vk::AccessFlags::from_raw(access);
        with_region(region, |r, _| {
            // SAFETY: per the caller.
            unsafe {
                if release != 0 {
                    r.cmd_release(cmd, stage, access)
                } else {
                    r.cmd_acquire(cmd, stage, access)
                }
            };
            Ok(())
        })
    })
}

/// Frees the region: its Vulkan objects are destroyed before this
/// returns (after any call of another thread on it), so every submission
/// using them must have completed. Thread-safe.
#[no_mangle]
pub extern "C" fn dmafile_region_free(region: *mut dmafile_region, reason: *mut i32) -> c_int {
    call("dmafile_region_free", reason, || {
        free_now(region, "dmafile_region")
    })
}

/// A read queue on the lent device; `options` may be NULL (defaults).
/// Thread-safe (calls on one queue are serialized: a redeem that waits
/// blocks other calls on the same queue until it returns).
#[no_mangle]
pub unsafe extern "C" fn dmafile_queue_new(
    gpu: *const dmafile_gpu,
    options: *const dmafile_queue_options,
    out: *mut *mut dmafile_queue,
    reason: *mut i32,
) -> c_int {
    call("dmafile_queue_new", reason, || {
        let g = gpu_of(gpu)?;
        if out.is_null() {
            return Err(Fail::null("out"));
        }
        let o = if options.is_null() {
            dmafile_queue_options::default()
        } else {
            // SAFETY: non-NULL, the caller's.
            unsafe { *options }
        };
        let d = ReadQueueOptions::default();
        let or = |v: u64, d: u64| if v == 0 { d } else { v };
        let opts = ReadQueueOptions {
            path: path_choice(o.path)?,
            staging_bytes: or(o.staging_bytes, d.staging_bytes),
            piece: or(o.piece, d.piece),
            import_piece: or(o.import_piece, d.import_piece),
            max_imports_in_flight: if o.max_imports_in_flight == 0 {
                d.max_imports_in_flight
            } else {
                o.max_imports_in_flight as usize
            },
        };
        let q = ReadQueue::new(&g, opts)?;
        // SAFETY: non-NULL, the caller's.
        unsafe {
            out.write(register(Object::Queue(Mutex::new(Some(QueueState {
                q,
                tickets: HashMap::new(),
                next: 0,
            })))))
        };
        Ok(())
    })
}

/// A read queue and the tickets it handed out, by the number the C
/// caller holds.
struct QueueState {
    q: ReadQueue,
    tickets: HashMap<u64, dmafile::Ticket>,
    next: u64,
}

fn with_queue<T>(
    queue: *const dmafile_queue,
    f: impl FnOnce(&mut QueueState) -> Result<T, Fail>,
) -> Result<T, Fail> {
    let o = lookup(queue, "dmafile_queue")?;
    match &*o {
        Object::Queue(m) => f(live(queue, m)?.as_mut().expect("live")),
        _ => unreachable!("lookup checked the kind"),
    }
}

/// Submits `count` requests as one batch and returns at once with a
/// `ticket` for `dmafile_queue_redeem`; `signal` (NULL for none)
/// is the application's timeline semaphore and the value it reaches
/// once every request has landed or failed. Every request is checked
/// first (file readable, range inside it: `RANGE_PAST_EOF`; destination
/// range inside `dst_size`: `DESTINATION_TOO_SMALL`); on an error
/// nothing is submitted or signalled. Thread-safe.
///
/// # Safety
/// `requests` holds `count` requests whose `dst` buffers follow the
/// rules of `dmafile_read_request` and are not touched by the app until
/// `signal` is reached; `signal->semaphore` is a timeline semaphore of
/// the device and `signal->value` above every value pending on it.
#[no_mangle]
pub unsafe extern "C" fn dmafile_queue_submit(
    queue: *const dmafile_queue,
    requests: *const dmafile_read_request,
    count: usize,
    signal: *const dmafile_timeline,
    ticket: *mut u64,
    reason: *mut i32,
) -> c_int {
    // SAFETY: the caller's contract, with no waits.
    unsafe {
        submit_after(
            "dmafile_queue_submit",
            queue,
            requests,
            count,
            std::ptr::null(),
            0,
            signal,
            ticket,
            reason,
        )
    }
}

/// `dmafile_queue_submit`, with the batch's copies waiting on the device
/// until each of the `wait_count` timelines in `waits` (the
/// application's semaphores) reaches its value: the application's own
/// work that still uses the destinations goes first, without its CPU
/// waiting. Thread-safe.
///
/// # Safety
/// As `dmafile_queue_submit`; and `waits` holds `wait_count` timeline
/// semaphores of the device whose values are signalled by the host or by
/// work submitted earlier on the lent queue or on another queue, never by
/// a later submission on the lent queue (a signal there waits for every
/// earlier command, these copies included): when all staging or imports
/// are busy this call waits for the queue's earlier copies, which may sit
/// behind them.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dmafile_queue_submit_after(
    queue: *const dmafile_queue,
    requests: *const dmafile_read_request,
    count: usize,
    waits: *const dmafile_timeline,
    wait_count: usize,
    signal: *const dmafile_timeline,
    ticket: *mut u64,
    reason: *mut i32,
) -> c_int {
    // SAFETY: per the caller.
    unsafe {
        submit_after(
            "dmafile_queue_submit_after",
            queue,
            requests,
            count,
            waits,
            wait_count,
            signal,
            ticket,
            reason,
        )
    }
}

/// The body of both submits.
///
/// # Safety
/// As `dmafile_queue_submit_after`.
#[allow(clippy::too_many_arguments)]
unsafe fn submit_after(
    name: &'static str,
    queue: *const dmafile_queue,
    requests: *const dmafile_read_request,
    count: usize,
    waits: *const dmafile_timeline,
    wait_count: usize,
    signal: *const dmafile_timeline,
    ticket: *mut u64,
    reason: *mut i32,
) -> c_int {
    call(name, reason, || {
        if ticket.is_null() {
            return Err(Fail::null("ticket"));
        }
        if count > 0 && requests.is_null() {
            return Err(Fail::null("requests"));
        }
        let mut reqs = Vec::with_capacity(count);
        for i in 0..count {
            // SAFETY: the caller's array of `count` requests.
            let r = unsafe { &*requests.add(i) };
            // SAFETY: per the caller.
            let file = unsafe { file_arg(r.file, &format!("requests[{i}].file")) }?;
            check_range(&file, r.offset, r.length).map_err(|mut f| {
                f.msg = format!("requests[{i}]: {}", f.msg);
                f
            })?;
            if r.dst == vk::Buffer::null() {
                return Err(Fail::null(&format!("requests[{i}].dst")));
            }
            let fits = r
                .dst_offset
                .checked_add(r.length)
                .is_some_and(|e| e <= r.dst_size);
            if !fits {
                return Err(Fail::new(
                    libc::EINVAL,
                    dmafile_code::DMAFILE_CODE_DESTINATION_TOO_SMALL,
                    format!(
                        "requests[{i}]: {} bytes at offset {} do not fit a destination of {} bytes",
                        r.length, r.dst_offset, r.dst_size
                    ),
                ));
            }
            reqs.push(ReadRequest {
                file,
                offset: r.offset,
                len: r.length,
                dst: Destination {
                    buffer: r.dst,
                    size: r.dst_size,
                },
                dst_offset: r.dst_offset,
            });
        }
        let signal = if signal.is_null() {
            None
        } else {
            // SAFETY: non-NULL, the caller's.
            let s = unsafe { *signal };
            if s.semaphore == vk::Semaphore::null() {
                return Err(Fail::null("signal->semaphore"));
            }
            Some(TimelineSignal {
                semaphore: s.semaphore,
                value: s.value,
            })
        };
        if wait_count > 0 && waits.is_null() {
            return Err(Fail::null("waits"));
        }
        let mut wait = Vec::with_capacity(wait_count);
        for i in 0..wait_count {
            // SAFETY: the caller's array of `wait_count` timelines.
            let w = unsafe { *waits.add(i) };
            if w.semaphore == vk::Semaphore::null() {
                return Err(Fail::null(&format!("waits[{i}].semaphore")));
            }
            wait.push(TimelineSignal {
                semaphore: w.semaphore,
                value: w.value,
            });
        }
        let n = with_queue(queue, |s| {
            // SAFETY: per the caller (submit's contract, restated above).
            let t = unsafe { s.q.submit_after(&reqs, &wait, signal) }?;
            s.next += 1;
            s.tickets.insert(s.next, t);
            Ok(s.next)
        })?;
        // SAFETY: non-NULL, the caller's.
        unsafe { ticket.write(n) };
        Ok(())
    })
}

fn fill_reports(
    b: &dmafile::BatchReport,
    reports: *mut dmafile_request_report,
    capacity: usize,
) -> Result<(), Fail> {
    if reports.is_null() {
        return Ok(());
    }
    for (i, r) in b.requests.iter().take(capacity).enumerate() {
        let mut out = dmafile_request_report {
            status: 0,
            reason: 0,
            path: path_number(r.path),
            backing: backing_number(r.backing),
            fallback_reason: r.fallbacks.first().map_or(0, |f| f.code.number() as i32),
            fallback_count: r.fallbacks.len() as u32,
            cpu_copied_bytes: r.cpu_copied_bytes,
            gpu_copied_bytes: r.gpu_copied_bytes,
            seconds: r.seconds,
            message: [0; 256],
        };
        if let Some(e) = &r.error {
            // The same rule as a call's own errors, from the error itself.
            let f = r.cause.as_deref().map_or(
                Fail::new(libc::EIO, dmafile_code::DMAFILE_CODE_FILE_IO, e.clone()),
                Fail::from,
            );
            out.status = -f.errno;
            out.reason = f.reason_number;
            write_message(&mut out.message, e);
        } else if let Some(f) = r.fallbacks.first() {
            write_message(
                &mut out.message,
                &format!("{} skipped: {} [{}]", f.from, f.reason, f.code),
            );
        }
        // SAFETY: the caller's array of `capacity` reports.
        unsafe { reports.add(i).write(out) };
    }
    Ok(())
}

/// Redeems `ticket`: blocks (`wait` non-zero) until its batch has
/// completed, or returns at once (`wait` 0) with `*done` 0 if it has
/// not. On completion `*done` is 1, up to `capacity` reports (one per
/// request, in submission order) are written to `reports` (NULL to skip),
/// `*count` (if not NULL) is the batch's number of requests, and the
/// ticket is redeemed (using it again is `-EINVAL`). A failed request is
/// not an error of this call: see each report's `status`. Thread-safe;
/// a blocking redeem holds the queue, so other calls on the same queue
/// handle wait for it: do not make the batch's completion depend on one
/// (give each thread its own queue, or redeem with `wait` 0).
///
/// # Safety
/// `reports` is NULL or holds `capacity` reports.
#[no_mangle]
pub unsafe extern "C" fn dmafile_queue_redeem(
    queue: *const dmafile_queue,
    ticket: u64,
    wait: u32,
    done: *mut u32,
    reports: *mut dmafile_request_report,
    capacity: usize,
    count: *mut usize,
    reason: *mut i32,
) -> c_int {
    call("dmafile_queue_redeem", reason, || {
        if done.is_null() {
            return Err(Fail::null("done"));
        }
        with_queue(queue, |s| {
            let t = *s.tickets.get(&ticket).ok_or_else(|| {
                Fail::arg(format!(
                    "ticket {ticket} is not pending on this queue (redeemed already, or another queue's)"
                ))
            })?;
            let b = if wait != 0 {
                Some(s.q.wait(t)?)
            } else {
                s.q.poll(t)?
            };
            let Some(b) = b else {
                // SAFETY: non-NULL, the caller's.
                unsafe { done.write(0) };
                return Ok(());
            };
            s.tickets.remove(&ticket);
            fill_reports(&b, reports, capacity)?;
            if !count.is_null() {
                // SAFETY: the caller's.
                unsafe { count.write(b.requests.len()) };
            }
            // SAFETY: non-NULL, the caller's.
            unsafe { done.write(1) };
            Ok(())
        })
    })
}

/// Frees the queue after waiting for its own submissions (not the
/// application's work): a call of another thread on it (a blocking
/// redeem) finishes first, and everything of the queue is gone when this
/// returns. Tickets not redeemed are dropped. Thread-safe.
#[no_mangle]
pub extern "C" fn dmafile_queue_free(queue: *mut dmafile_queue, reason: *mut i32) -> c_int {
    call("dmafile_queue_free", reason, || {
        free_now(queue, "dmafile_queue")
    })
}
