//! Reading ahead for the zero-copy paths, when a file is not in the page
//! cache.
//!
//! The host and direct paths hand the device the file's page-cache pages.
//! When a chunk is not cached, lavapipe's shader threads (or the module's
//! map) fault the pages in, each fault reading what the kernel's
//! read-around gives (`read_ahead_kb`, often 128 KiB), synchronously. So
//! before such a chunk is mapped, [`pull_in`] reads it on every CPU into
//! scratch buffers that are thrown away. On this development machine's
//! noisy virtio disk that made a cold 1 GiB first pass on host 1.6–1.7
//! GB/s instead of 1.0 in one run, 1.96 instead of 1.83 in another, and
//! 1.25 instead of 1.78 in a third (docs/benchmarks.md, "Cold": six of
//! eight comparisons favour it). It costs one CPU copy of the bytes,
//! only for chunks that were not cached, which one-byte `preadv2` calls
//! with `RWF_NOWAIT` at the chunk's first and last pages tell without
//! waiting (they fail with `EAGAIN` when a page would need I/O).
//!
//! Tried and not kept: `posix_fadvise(WILLNEED)` on the next `depth`
//! chunks in 1 and 4 MiB steps. It made cold upload slower here (1.4–1.5
//! against 1.8–2.0 GB/s without) and did not speed up host.
use std::os::fd::AsRawFd;

use nix::libc;

use crate::source::{Content, SourceFile};

/// Brings `n` bytes of `f` at `off` into the page cache when its first or
/// last page is not there, by reading them on every CPU into scratch buffers that are
/// thrown away: the zero-copy paths (host, direct) then map pages that are
/// already read, instead of the device faulting them in 128 KiB at a time.
/// Costs a copy of the bytes on the CPU, only for uncached chunks. Returns
/// whether it read.
pub(crate) fn pull_in(f: &SourceFile, off: u64, n: u64) -> crate::error::Result<bool> {
    use rayon::prelude::*;
    // Its first and last pages: the kernel's own read-ahead after the
    // previous chunk may have brought in the start of this one.
    let last = (off + n - 1) / 4096 * 4096;
    if !matches!(f.content(), Content::File) || n == 0 || cached(f, off) && cached(f, last) {
        return Ok(false);
    }
    const PIECE: u64 = crate::read::READ_PIECE as u64;
    (0..n.div_ceil(PIECE)).into_par_iter().try_for_each_init(
        || vec![0u8; PIECE as usize],
        |buf, i| {
            let at = i * PIECE;
            let len = PIECE.min(n - at) as usize;
            f.read_exact_at(&mut buf[..len], off + at)
        },
    )?;
    Ok(true)
}

/// Whether the page at `off` is in the page cache (true where it cannot be
/// told: then nothing is read ahead). `RWF_NOWAIT` does not forbid I/O, it
/// only refuses to wait: the kernel may start its usual small read-ahead
/// at `off` before answering `EAGAIN`.
fn cached(f: &SourceFile, off: u64) -> bool {
    let mut b = [0u8; 1];
    let iov = libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: one iovec over a live local buffer.
    let r = unsafe {
        libc::preadv2(
            f.fd().as_raw_fd(),
            &iov,
            1,
            off as libc::off_t,
            libc::RWF_NOWAIT,
        )
    };
    r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Pages of `f` in the page cache, by mincore over a fresh mapping.
    fn resident(f: &std::fs::File, len: usize) -> usize {
        // SAFETY: a mapping only looked at by mincore, unmapped below.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let mut v = vec![0u8; len.div_ceil(4096)];
            assert_eq!(libc::mincore(p, len, v.as_mut_ptr()), 0);
            libc::munmap(p, len);
            v.iter().filter(|&&b| b & 1 != 0).count()
        }
    }

    #[test]
    fn pull_in_reads_uncached_chunks_only() {
        let mib = 1usize << 20;
        let len = 8 * mib + 4097;
        // In the checkout's target directory: /tmp may be tmpfs, whose
        // pages cannot be evicted, and this test needs a file that can.
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../target/dmafile-ra-{}", std::process::id()));
        let mut w = std::fs::File::create(&p).unwrap();
        w.write_all(&vec![7u8; len]).unwrap();
        w.sync_all().unwrap();
        let f = SourceFile::open(&p).unwrap();
        let raw = f.file();
        // SAFETY: advice on our own file.
        unsafe { libc::posix_fadvise(raw.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let kept = resident(raw, len);
        if kept * 100 > len / 4096 {
            std::fs::remove_file(&p).unwrap();
            panic!(
                "{}: {kept} pages stayed in the page cache after POSIX_FADV_DONTNEED; the checkout must be on a filesystem that can evict them",
                p.display()
            );
        }
        assert!(!cached(&f, 0), "evicted, yet the probe saw it cached");
        // The tail chunk, not page-aligned at its end: read to the end.
        assert!(pull_in(&f, 4 * mib as u64, (len - 4 * mib) as u64).unwrap());
        let r = resident(raw, len);
        assert!(
            r >= (len - 4 * mib).div_ceil(4096) && r < len / 4096,
            "{r} pages resident after pulling in the last {} bytes",
            len - 4 * mib
        );
        assert!(cached(&f, 4 * mib as u64));
        // Cached now: a second call reads nothing.
        assert!(!pull_in(&f, 4 * mib as u64, mib as u64).unwrap());
        std::fs::remove_file(&p).unwrap();
    }
}
