//! The ways file bytes become shader-visible, and why one may be unavailable.
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::kmod::{MapError, MapReason};

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
    /// The runtime's own reasons, in number order ([`ReasonCode::number`]).
    pub const RUNTIME: [ReasonCode; 9] = [
        ReasonCode::ModuleAbsent,
        ReasonCode::ModuleUnusable,
        ReasonCode::NoDmaHeap,
        ReasonCode::MissingExtension,
        ReasonCode::NotMappable,
        ReasonCode::NoLease,
        ReasonCode::ImportFailed,
        ReasonCode::DeviceLimit,
        ReasonCode::ReadOnlyPath,
    ];

    /// The first number after the kernel's range (0..=99).
    pub const FIRST_RUNTIME_NUMBER: u32 = 100;

    /// The stable number of this reason in the one table shared with the
    /// kernel module and the C ABI (`dmafile.h`): a kernel reason keeps
    /// its uapi number (`enum dmafile_reason`, below 100), a runtime
    /// reason has its own from 100. Never renumber, only add.
    pub fn number(self) -> u32 {
        match self {
            ReasonCode::Kernel(r) => r.code(),
            ReasonCode::ModuleAbsent => 100,
            ReasonCode::ModuleUnusable => 101,
            ReasonCode::NoDmaHeap => 102,
            ReasonCode::MissingExtension => 103,
            ReasonCode::NotMappable => 104,
            ReasonCode::NoLease => 105,
            ReasonCode::ImportFailed => 106,
            ReasonCode::DeviceLimit => 107,
            ReasonCode::ReadOnlyPath => 108,
        }
    }

    /// The reason `n` numbers ([`ReasonCode::number`]): below 100 a kernel
    /// reason (one newer than this crate is `Kernel(MapReason::Unknown)`),
    /// from 100 a runtime reason, or `None` for a number no reason has.
    pub fn from_number(n: u32) -> Option<ReasonCode> {
        if n < Self::FIRST_RUNTIME_NUMBER {
            return Some(ReasonCode::Kernel(MapReason::from_code(n)));
        }
        Self::RUNTIME.into_iter().find(|c| c.number() == n)
    }

    /// A sentence for users (docs/runtime.md's reason table).
    pub fn describe(self) -> &'static str {
        match self {
            ReasonCode::ModuleAbsent => "dmafile.ko is not loaded: load it for the direct path",
            ReasonCode::ModuleUnusable => {
                "/dev/dmafile exists but cannot be opened, or speaks another ABI version"
            }
            ReasonCode::Kernel(r) => r.describe(),
            ReasonCode::NoDmaHeap => {
                "the kernel has no system dma-buf heap (CONFIG_DMABUF_HEAPS_SYSTEM)"
            }
            ReasonCode::MissingExtension => {
                "the Vulkan device lacks (or the application did not enable) an extension the path needs"
            }
            ReasonCode::NotMappable => {
                "the file cannot be mapped: a pseudo-file or a filesystem without mmap"
            }
            ReasonCode::NoLease => {
                "the host path could not lease the file: open for writing elsewhere, not yours, or a filesystem without leases"
            }
            ReasonCode::ImportFailed => "the driver refused to import the memory",
            ReasonCode::DeviceLimit => "the request exceeds a device limit on this path",
            ReasonCode::ReadOnlyPath => {
                "the path cannot carry the device's writes back to the file"
            }
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_numbers_round_trip_and_do_not_overlap() {
        let mut seen = std::collections::HashSet::new();
        for &m in MapReason::ALL {
            let c = ReasonCode::Kernel(m);
            assert!(c.number() < ReasonCode::FIRST_RUNTIME_NUMBER);
            assert_eq!(ReasonCode::from_number(c.number()), Some(c));
            assert!(seen.insert(c.number()));
        }
        for (i, c) in ReasonCode::RUNTIME.into_iter().enumerate() {
            let n = c.number();
            assert_eq!(n, ReasonCode::FIRST_RUNTIME_NUMBER + i as u32, "{c}");
            assert_eq!(ReasonCode::from_number(n), Some(c));
            assert!(seen.insert(n), "{n} numbered twice");
            assert!(!c.describe().is_empty());
        }
        // Numbers nobody has yet, and the kernel's future ones.
        assert_eq!(ReasonCode::from_number(109), None);
        assert_eq!(
            ReasonCode::from_number(77),
            Some(ReasonCode::Kernel(MapReason::Unknown(77)))
        );
        assert_eq!(ReasonCode::ModuleAbsent.number(), 100);
        assert_eq!(ReasonCode::Kernel(MapReason::BeyondEof).number(), 9);
    }
}
