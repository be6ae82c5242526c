//! One way to make a file range device-visible through a path, one rule
//! for turning a path's failure into a reason code, and one chooser that
//! runs `auto`: what regions and the read queue share (docs/runtime.md).
//! The external queue-family ownership barrier every consumer of imported
//! memory records is here too.
use std::sync::Arc;

use ash::vk;

use crate::error::{Error, Result};
use crate::gpu::memory::{Buffer, DmaBufSource, Placement};
use crate::gpu::Gpu;
use crate::hostmap::{HostMapping, ReadLease};
use crate::kmod::{flags, Module};
use crate::path::{Fallback, PathChoice, PathKind, ReasonCode, Unavailable};
use crate::probe::{kernel_side, lease_for_host, open_module, open_system_heap, unmappable};
use crate::read::{fill_heap_buffer, read_parallel};
use crate::source::SourceFile;

/// A file range made visible to the device by one path, with what keeps
/// it valid: the module (to ask STATUS of a direct mapping) and the host
/// path's lease. Dropped in field order: the import before its lease.
pub(crate) struct Imported {
    pub buffer: Buffer,
    pub module: Option<Module>,
    /// One lease per open file, shared by every import of it: dropping
    /// one piece's must not release the others'.
    pub lease: Option<Arc<ReadLease>>,
    /// Bytes the CPU copied to make it (heap, upload).
    pub cpu_copied: u64,
}

/// Makes `n` bytes of `f` from `start` (page-aligned) visible through path
/// `k` as a storage buffer of `n` rounded up to 4 bytes (zero tail), or
/// says why `k` cannot. `write`: the device will write it (direct maps it
/// writable; host refuses). `lease`: the host path's lease on `f`, taken
/// here on first use and shared by later imports of the same file.
pub(crate) fn import_range(
    gpu: &Gpu,
    f: &SourceFile,
    start: u64,
    n: u64,
    k: PathKind,
    write: bool,
    lease: &mut Option<Arc<ReadLease>>,
) -> Result<Imported> {
    if let Some(u) = gpu.device_unavailable(k) {
        return Err(u.into());
    }
    let dev = &gpu.shared;
    let size = n.next_multiple_of(4);
    if let Some(u) = unmappable(k, f).filter(|_| matches!(k, PathKind::Direct | PathKind::Host)) {
        return Err(u.into());
    }
    let done = |buffer, module, lease, cpu_copied| Imported {
        buffer,
        module,
        lease,
        cpu_copied,
    };
    match k {
        PathKind::Direct => {
            let m = open_module()?;
            let mflags = if write { flags::WRITE } else { 0 };
            let b = m
                .map(f.fd(), start, n, mflags)
                .map_err(|e| Unavailable::from_map_error(k, f.path(), &e))?;
            let buffer = Buffer::import_dmabuf(dev, DmaBufSource::Module(b), size)?;
            Ok(done(buffer, Some(m), None, 0))
        }
        PathKind::Host => {
            if write {
                return Err(Unavailable::new(
                    k,
                    ReasonCode::ReadOnlyPath,
                    "the host path maps files read-only, under a read lease that a writable open excludes",
                )
                .into());
            }
            let l = match lease {
                Some(l) => l.clone(),
                None => lease.insert(Arc::new(lease_for_host(f)?)).clone(),
            };
            let align = dev.info().min_imported_host_pointer_alignment;
            let map = HostMapping::map(f.fd(), start, n, align)
                .map_err(|e| Error::io(f.path(), "cannot mmap", e))?;
            let buffer = Buffer::import_host(dev, map)?;
            Ok(done(buffer, None, Some(l), 0))
        }
        PathKind::Heap => {
            if let Some(u) = kernel_side(k) {
                return Err(u.into());
            }
            let heap = open_system_heap()?;
            let src = fill_heap_buffer(&heap, f, start, n, true)?;
            let buffer = Buffer::import_dmabuf(dev, src, size)?;
            Ok(done(buffer, None, None, n))
        }
        PathKind::Upload => {
            let mut b = Buffer::allocate(dev, size, Placement::Upload)?;
            let bytes = b.host_bytes_mut().ok_or_else(|| Error::DeviceUnsuitable {
                device: dev.info().name.clone(),
                what: "upload memory is not host-visible".into(),
            })?;
            read_parallel(f, start, &mut bytes[..n as usize])?;
            bytes[n as usize..].fill(0);
            Ok(done(b, None, None, n))
        }
    }
}

/// The one rule that turns a path's failure into the reason `auto`
/// records: a path's own refusal keeps its code; the file failing to be
/// read or mapped for that path is `not-mappable`; anything else the
/// driver or device did is `import-failed`.
pub(crate) fn reason_for(k: PathKind, e: Error) -> Unavailable {
    match e {
        Error::PathUnavailable(u) => u,
        e @ Error::Io { .. } => Unavailable::new(k, ReasonCode::NotMappable, e.to_string()),
        e => Unavailable::new(k, ReasonCode::ImportFailed, e.to_string()),
    }
}

/// Whether `auto` may try another path after `e`: not when the file
/// changed (every path would read the changed file) or the device is lost
/// (no path would work).
fn may_fall_back(e: &Error) -> bool {
    !matches!(
        e,
        Error::FileChanged { .. }
            | Error::Vulkan {
                result: vk::Result::ERROR_DEVICE_LOST,
                ..
            }
    )
}

/// A path that failed part way through a file (`k` served its first
/// pieces): under `auto` the rest goes through upload, and this is the
/// fallback to record; a named path, upload itself, or an error no path
/// can avoid is returned as the error.
pub(crate) fn fall_back_mid_file(
    choice: PathChoice,
    k: PathKind,
    e: Error,
    file: &std::path::Path,
) -> Result<Fallback> {
    if choice != PathChoice::Auto || k == PathKind::Upload || !may_fall_back(&e) {
        return Err(e);
    }
    let u = reason_for(k, e);
    Ok(Fallback {
        from: k,
        to: PathKind::Upload,
        code: u.code,
        reason: u.reason,
        file: Some(file.display().to_string()),
    })
}

/// Runs `choice` over `attempt`: a named path's failure is the error;
/// `auto` tries every path in order, records each one it skipped as a
/// fallback to the one that served (`file` names the file), and fails only
/// if the last one fails, or on an error no other path could avoid (a
/// file that changed, a lost device). `skip` lists paths `auto` does not
/// try here.
pub(crate) fn choose<T>(
    choice: PathChoice,
    file: &str,
    skip: &[PathKind],
    mut attempt: impl FnMut(PathKind) -> Result<T>,
) -> Result<(T, PathKind, Vec<Fallback>)> {
    let candidates: Vec<PathKind> = match choice {
        PathChoice::Only(k) => vec![k],
        PathChoice::Auto => PathKind::ALL
            .into_iter()
            .filter(|k| !skip.contains(k))
            .collect(),
    };
    let mut skipped: Vec<Unavailable> = vec![];
    let last = candidates.len() - 1;
    for (i, k) in candidates.into_iter().enumerate() {
        match attempt(k) {
            Ok(t) => {
                let fallbacks = skipped
                    .into_iter()
                    .map(|u| Fallback {
                        from: u.path,
                        to: k,
                        code: u.code,
                        reason: u.reason,
                        file: Some(file.to_string()),
                    })
                    .collect();
                return Ok((t, k, fallbacks));
            }
            Err(e) if i < last && may_fall_back(&e) => skipped.push(reason_for(k, e)),
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last candidate returns")
}

/// The barrier that moves `buffers`, bound to imported (external) memory,
/// between the external queue family and `family`: `acquire` before the
/// device accesses them with `access`, release after it did. The Vulkan
/// spec requires it for memory another device or the CPU owns, so every
/// consumer of an import records it (the source of the ownership rules:
/// "Queue Family Ownership Transfer" and VK_QUEUE_FAMILY_EXTERNAL).
pub(crate) fn external_ownership(
    family: u32,
    buffers: &[vk::Buffer],
    acquire: bool,
    access: vk::AccessFlags,
) -> Vec<vk::BufferMemoryBarrier<'static>> {
    let (src, dst) = if acquire {
        (vk::QUEUE_FAMILY_EXTERNAL, family)
    } else {
        (family, vk::QUEUE_FAMILY_EXTERNAL)
    };
    buffers
        .iter()
        .map(|&b| {
            let (src_access, dst_access) = if acquire {
                (vk::AccessFlags::empty(), access)
            } else {
                (access, vk::AccessFlags::empty())
            };
            vk::BufferMemoryBarrier::default()
                .src_access_mask(src_access)
                .dst_access_mask(dst_access)
                .src_queue_family_index(src)
                .dst_queue_family_index(dst)
                .buffer(b)
                .offset(0)
                .size(vk::WHOLE_SIZE)
        })
        .collect()
}

/// Records [`external_ownership`]'s barrier for `buffers` into `cmd`: the
/// acquire before `stage` accesses them with `access`, or the release
/// after `stage` accessed them with `access`.
///
/// # Safety
/// `cmd` is a command buffer of `d` in the recording state, to be
/// submitted on `family`; the buffers live until it completes.
pub(crate) unsafe fn cmd_external_ownership(
    d: &ash::Device,
    cmd: vk::CommandBuffer,
    family: u32,
    buffers: &[vk::Buffer],
    acquire: bool,
    stage: vk::PipelineStageFlags,
    access: vk::AccessFlags,
) {
    let barriers = external_ownership(family, buffers, acquire, access);
    let (from, to) = if acquire {
        (vk::PipelineStageFlags::TOP_OF_PIPE, stage)
    } else {
        (stage, vk::PipelineStageFlags::BOTTOM_OF_PIPE)
    };
    // SAFETY: per the caller.
    unsafe {
        d.cmd_pipeline_barrier(
            cmd,
            from,
            to,
            vk::DependencyFlags::empty(),
            &[],
            &barriers,
            &[],
        )
    };
}
