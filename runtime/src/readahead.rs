//! Read-ahead for files that are not in the page cache.
//!
//! The kernel's own read-ahead follows a sequential reader with a window of
//! the block device's `read_ahead_kb` (often 128 KiB): one small read in
//! flight behind the reader. A stream knows its next chunks, so it asks for
//! them early: before chunk n is made visible, `posix_fadvise(WILLNEED)` is
//! issued for every step of the window [n, n + depth) not asked for yet, and
//! the device's reads of those ranges run while the shader works on earlier
//! chunks. The kernel caps one WILLNEED at the device's largest I/O
//! (`max_sectors_kb`), hence the steps of [`STEP`] bytes.
//!
//! Asking for cached pages costs a page-cache walk per page (about 14 ms
//! per GiB here), so each step is first probed: a one-byte `preadv2` with
//! `RWF_NOWAIT` at its start returns at once from the cache and fails with
//! `EAGAIN` when the page would need I/O; only then is the hint given. Hints
//! are advice: a failed one changes nothing but speed, and is ignored.
use std::os::fd::AsRawFd;

use nix::libc;

use crate::source::{Content, SourceFile};

/// Bytes per hint: at most what one WILLNEED reads (`max_sectors_kb`,
/// commonly 1–4 MiB or more).
pub(crate) const STEP: u64 = 1 << 20;

/// How far a file has been hinted.
#[derive(Default)]
pub(crate) struct Readahead {
    hinted: u64,
}

impl Readahead {
    /// Hints every step of `f` below `to` not hinted yet.
    pub fn ahead(&mut self, f: &SourceFile, to: u64) {
        if !matches!(f.content(), Content::File) {
            return; // a snapshot is already in memory
        }
        let to = to.min(f.len());
        while self.hinted < to {
            let off = self.hinted;
            let n = STEP.min(f.len() - off);
            if !cached(f, off) {
                // SAFETY: plain syscall on an open fd; advice only.
                unsafe {
                    libc::posix_fadvise(
                        f.fd().as_raw_fd(),
                        off as libc::off_t,
                        n as libc::off_t,
                        libc::POSIX_FADV_WILLNEED,
                    )
                };
            }
            self.hinted = off + n;
        }
    }
}

/// Whether the page at `off` is in the page cache (true where it cannot be
/// told: no hint is better than a wrong one).
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
    fn hints_bring_uncached_steps_in_and_skip_cached_ones() {
        let len = 8 * STEP as usize;
        let p = std::env::temp_dir().join(format!("dmafile-ra-{}", std::process::id()));
        let mut w = std::fs::File::create(&p).unwrap();
        w.write_all(&vec![7u8; len]).unwrap();
        w.sync_all().unwrap();
        let f = SourceFile::open(&p).unwrap();
        let raw = f.file();
        // SAFETY: advice on our own file.
        unsafe { libc::posix_fadvise(raw.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if resident(raw, len) * 100 > len / 4096 {
            std::fs::remove_file(&p).unwrap();
            eprintln!("skip: the page cache keeps this file (tmpfs?), nothing to hint");
            return;
        }
        assert!(!cached(&f, 0), "evicted, yet the probe saw it cached");
        let mut ra = Readahead::default();
        ra.ahead(&f, 4 * STEP);
        assert_eq!(ra.hinted, 4 * STEP);
        // The reads are asynchronous: wait for them to land.
        let t = std::time::Instant::now();
        while resident(raw, len) < 4 * STEP as usize / 4096 && t.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let r = resident(raw, len);
        assert!(
            (4 * STEP as usize / 4096..len / 4096).contains(&r),
            "{r} pages resident after hinting 4 of 8 MiB"
        );
        assert!(cached(&f, 0));
        // Hinting again below the mark does nothing; past the end stops there.
        ra.ahead(&f, 2 * STEP);
        assert_eq!(ra.hinted, 4 * STEP);
        ra.ahead(&f, 100 * STEP);
        assert_eq!(ra.hinted, len as u64);
        std::fs::remove_file(&p).unwrap();
    }
}
