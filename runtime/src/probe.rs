//! What each path needs of the machine and of a file, checked without
//! Vulkan: the module's device, the system heap, a file that can be mapped,
//! the host path's lease. The chooser (import.rs) and the capability report
//! (`Gpu::unavailable`) ask here.
use std::path::Path;

use crate::hostmap::ReadLease;
use crate::kmod::Module;
use crate::path::{PathKind, ReasonCode, Unavailable, MODULE_DEVICE, SYSTEM_HEAP};
use crate::source::SourceFile;

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
