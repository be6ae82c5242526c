//! The ways file bytes become shader-visible, and why one may be unavailable.
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::hostmap::ReadLease;
use crate::kmod::{MapError, MapReason, Module};
use crate::source::SourceFile;

/// A way to make a file range shader-visible, fastest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// dmafile.ko maps the file's own pages into a dma-buf, imported with
    /// VK_EXT_external_memory_dma_buf. Zero CPU copies.
    Direct,
    /// mmap of the file imported with VK_EXT_external_memory_host. Zero CPU
    /// copies; the device reads the page cache through the host mapping.
    Host,
    /// A dma-buf from /dev/dma_heap/system filled from the file, then imported.
    Heap,
    /// Parallel pread into host-visible device memory (plus a GPU copy to
    /// device-local memory where that is separate). Always available.
    Upload,
}

impl PathKind {
    /// In the order `auto` tries them.
    pub const ALL: [PathKind; 4] = [
        PathKind::Direct,
        PathKind::Host,
        PathKind::Heap,
        PathKind::Upload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Host => "host",
            PathKind::Heap => "heap",
            PathKind::Upload => "upload",
        }
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the caller asks for: one path, or the best available one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PathChoice {
    #[default]
    Auto,
    Only(PathKind),
}

impl std::str::FromStr for PathChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(PathChoice::Auto);
        }
        PathKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .map(PathChoice::Only)
            .ok_or_else(|| {
                format!("unknown path `{s}` (expected auto, direct, host, heap or upload)")
            })
    }
}

impl fmt::Display for PathChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathChoice::Auto => f.write_str("auto"),
            PathChoice::Only(k) => k.fmt(f),
        }
    }
}

/// Why a path cannot serve a request. `code` is stable and machine-readable;
/// `reason` is for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unavailable {
    pub path: PathKind,
    pub code: ReasonCode,
    pub reason: String,
}

/// Stable reason codes (docs/runtime.md lists what each means to a user).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasonCode {
    /// The kernel module is not loaded (/dev/dmafile absent).
    ModuleAbsent,
    /// /dev/dmafile exists but cannot be used (permissions, another ABI).
    ModuleUnusable,
    /// The module refused to map the file; its own reason code
    /// (`fs-not-supported`, `memlock-limit`, ...).
    Kernel(MapReason),
    /// No dma-buf heap device.
    NoDmaHeap,
    /// The Vulkan device lacks an extension the path needs.
    MissingExtension,
    /// The file cannot be mapped (pseudo-file, filesystem without mmap).
    NotMappable,
    /// The host path could not lease the file (open for writing elsewhere,
    /// not the owner, filesystem without leases).
    NoLease,
    /// The driver refused to import the memory.
    ImportFailed,
    /// The device's limits do not allow this request on this path.
    DeviceLimit,
    /// The path gives the device a copy of the file or a read-only mapping,
    /// and cannot carry the device's writes back to it.
    ReadOnlyPath,
}

impl ReasonCode {
    pub fn name(self) -> &'static str {
        match self {
            ReasonCode::ModuleAbsent => "module-absent",
            ReasonCode::ModuleUnusable => "module-unusable",
            ReasonCode::Kernel(r) => r.name(),
            ReasonCode::NoDmaHeap => "no-dma-heap",
            ReasonCode::MissingExtension => "missing-extension",
            ReasonCode::NotMappable => "not-mappable",
            ReasonCode::NoLease => "no-lease",
            ReasonCode::ImportFailed => "import-failed",
            ReasonCode::DeviceLimit => "device-limit",
            ReasonCode::ReadOnlyPath => "read-only-path",
        }
    }
}

impl Serialize for ReasonCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Unavailable {
    /// The module's refusal of `file`, as a reason to skip `path`.
    pub fn from_map_error(path: PathKind, file: &Path, e: &MapError) -> Self {
        Unavailable::new(
            path,
            ReasonCode::Kernel(e.reason),
            format!("{}: dmafile.ko refused to map it: {e}", file.display()),
        )
    }

    pub fn new(path: PathKind, code: ReasonCode, reason: impl Into<String>) -> Self {
        Unavailable {
            path,
            code,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} [{}]", self.path, self.reason, self.code.name())
    }
}

/// A faster path that `auto` skipped (or a path that failed mid-stream and
/// was replaced), recorded in every report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fallback {
    pub from: PathKind,
    pub to: PathKind,
    pub code: ReasonCode,
    pub reason: String,
    /// The file concerned, when the fallback is specific to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Machine-wide availability of each path, before any file is looked at.
#[derive(Clone, Debug, Serialize)]
pub struct PathAvailability {
    pub path: PathKind,
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<ReasonCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The device node of the kernel module.
pub const MODULE_DEVICE: &str = "/dev/dmafile";
/// The system dma-buf heap.
pub const SYSTEM_HEAP: &str = "/dev/dma_heap/system";

/// Opens /dev/dmafile for the direct path, or says why it cannot be used.
pub(crate) fn open_module() -> Result<Module, Unavailable> {
    let kind = PathKind::Direct;
    let unusable = |why: String| Unavailable::new(kind, ReasonCode::ModuleUnusable, why);
    let m = Module::open().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Unavailable::new(
                kind,
                ReasonCode::ModuleAbsent,
                format!("kernel module dmafile is not loaded ({MODULE_DEVICE} does not exist)"),
            )
        } else {
            unusable(format!("cannot open {MODULE_DEVICE}: {e}"))
        }
    })?;
    match m.query() {
        Ok(q) if q.abi_version == crate::kmod::ABI_VERSION => Ok(m),
        Ok(q) => Err(unusable(format!(
            "dmafile.ko speaks ABI {}, this runtime ABI {}",
            q.abi_version,
            crate::kmod::ABI_VERSION
        ))),
        Err(e) => Err(unusable(format!(
            "{MODULE_DEVICE} does not answer the query ioctl ({e}): not dmafile.ko?"
        ))),
    }
}

/// Why `file` cannot be memory-mapped for `kind`, if it cannot (a
/// pseudo-file's bytes exist only when read).
pub(crate) fn unmappable(kind: PathKind, file: &SourceFile) -> Option<Unavailable> {
    file.unmappable_reason()
        .map(|r| Unavailable::new(kind, ReasonCode::NotMappable, r))
}

/// Takes the read lease the host path maps a file under, or says why not.
pub(crate) fn lease_for_host(file: &SourceFile) -> Result<ReadLease, Unavailable> {
    ReadLease::take(file.fd()).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(nix::libc::EAGAIN) => {
                "it is open for writing (by another process, or by this one)".to_string()
            }
            Some(nix::libc::EACCES) => "only its owner (or CAP_LEASE) may lease it".to_string(),
            Some(nix::libc::EINVAL) => "its filesystem does not support leases".to_string(),
            _ => e.to_string(),
        };
        Unavailable::new(
            PathKind::Host,
            ReasonCode::NoLease,
            format!(
                "{}: no read lease ({why}); the host path maps a file only while a lease keeps it from being truncated",
                file.path().display()
            ),
        )
    })
}

/// Opens the system dma-buf heap for the heap path.
pub(crate) fn open_system_heap() -> Result<dma_heap::Heap, Unavailable> {
    dma_heap::Heap::new(dma_heap::HeapKind::System).map_err(|e| {
        Unavailable::new(
            PathKind::Heap,
            ReasonCode::NoDmaHeap,
            format!("cannot open {SYSTEM_HEAP}: {e}"),
        )
    })
}

/// Machine-level checks of `direct` and `heap` (device-level checks are
/// added by [`crate::Gpu::unavailable`]).
pub(crate) fn kernel_side(kind: PathKind) -> Option<Unavailable> {
    match kind {
        PathKind::Direct => open_module().err(),
        PathKind::Heap => (!Path::new(SYSTEM_HEAP).exists()).then(|| {
            Unavailable::new(
                kind,
                ReasonCode::NoDmaHeap,
                format!("no system dma-buf heap ({SYSTEM_HEAP} does not exist; kernel without CONFIG_DMABUF_HEAPS_SYSTEM)"),
            )
        }),
        PathKind::Host | PathKind::Upload => None,
    }
}
