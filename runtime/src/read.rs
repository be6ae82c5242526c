//! The copy paths' exporters, Vulkan-free: a file range read into a slice
//! the caller supplies (upload: host-visible memory, staging), or into a
//! fresh system-heap dma-buf (heap).
use std::os::fd::AsFd;
use std::path::Path;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::gpu::memory::DmaBufSource;
use crate::kmod::{dma_buf_sync, sync};
use crate::path::SYSTEM_HEAP;
use crate::source::SourceFile;
use crate::PAGE_SIZE;

/// Bytes per parallel read.
pub(crate) const READ_PIECE: usize = 1 << 20;

/// Reads `dst.len()` bytes of `f` at `off`: in parallel 1 MiB pieces on
/// rayon's threads, or with one `pread` on this thread. Parallel copies
/// out of the page cache finish sooner and cost more CPU per byte (on the
/// development machine 0.13-0.15 CPU-s per GiB on two threads against
/// 0.10-0.11 on one, and `cat`'s 0.11; docs/benchmarks.md).
pub(crate) fn read_into(f: &SourceFile, off: u64, dst: &mut [u8], parallel: bool) -> Result<()> {
    if parallel {
        read_parallel(f, off, dst)
    } else {
        f.read_exact_at(dst, off)
    }
}

/// Reads `dst.len()` bytes of `f` at `off` in parallel pieces.
pub(crate) fn read_parallel(f: &SourceFile, off: u64, dst: &mut [u8]) -> Result<()> {
    dst.par_chunks_mut(READ_PIECE)
        .enumerate()
        .try_for_each(|(i, piece)| f.read_exact_at(piece, off + (i * READ_PIECE) as u64))
}

/// A system-heap dma-buf holding `n` bytes of `f` at `off` (zero tail),
/// written through its CPU mapping between DMA_BUF_IOCTL_SYNC calls.
pub(crate) fn fill_heap_buffer(
    heap: &dma_heap::Heap,
    f: &SourceFile,
    off: u64,
    n: u64,
    parallel: bool,
) -> Result<DmaBufSource> {
    let len = n.next_multiple_of(PAGE_SIZE);
    let heap_err =
        |what: &'static str, e: std::io::Error| Error::io(Path::new(SYSTEM_HEAP), what, e);
    let fd = heap
        .allocate(len as usize)
        .map_err(|e| heap_err("cannot allocate", e))?;
    // SAFETY: a fresh buffer nobody else maps or writes.
    let mut map = unsafe { memmap2::MmapOptions::new().len(len as usize).map_mut(&fd) }
        .map_err(|e| heap_err("cannot mmap a heap buffer", e))?;
    let sync = |flags| {
        dma_buf_sync(fd.as_fd(), flags).map_err(|e| heap_err("DMA_BUF_IOCTL_SYNC", e.into()))
    };
    sync(sync::START | sync::WRITE)?;
    let r = read_into(f, off, &mut map[..n as usize], parallel);
    map[n as usize..].fill(0);
    sync(sync::END | sync::WRITE)?;
    drop(map);
    r?;
    Ok(DmaBufSource::Heap { fd, len })
}
