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
