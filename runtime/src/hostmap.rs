//! File mappings for the `host` path, and the read lease that keeps a mapped
//! file from being truncated under the device.
use std::ffi::c_void;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use nix::libc;

use crate::PAGE_SIZE;

/// A read-only shared mapping of a file range, placed at an address aligned
/// to `align` and padded with zero pages to a multiple of `align` (what
/// VK_EXT_external_memory_host requires of pointers and sizes).
pub(crate) struct HostMapping {
    base: NonNull<c_void>,
    total: usize,
}

// SAFETY: the mapping is plain memory; the struct only unmaps it on drop.
unsafe impl Send for HostMapping {}

/// Maps `total` bytes of anonymous memory at an address aligned to `align`
/// (a power of two), by reserving `align` more and trimming both ends.
fn reserve_aligned(total: usize, align: usize, prot: i32, flags: i32) -> std::io::Result<usize> {
    let reserve = total + align;
    // SAFETY: a fresh anonymous mapping; nothing else refers to it.
    let r = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve,
            prot,
            flags | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if r == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let r = r as usize;
    let start = r.next_multiple_of(align);
    // SAFETY: trimming the parts of our own reservation outside
    // [start, start + total).
    unsafe {
        if start > r {
            libc::munmap(r as *mut c_void, start - r);
        }
        let end = start + total;
        if r + reserve > end {
            libc::munmap(end as *mut c_void, r + reserve - end);
        }
    }
    Ok(start)
}

impl HostMapping {
    /// Maps `len` bytes of `fd` at `offset` (a multiple of the page size;
    /// `offset + len` must not pass the end of the file).
    pub fn map(fd: BorrowedFd<'_>, offset: u64, len: u64, align: u64) -> std::io::Result<Self> {
        let page = PAGE_SIZE as usize;
        let align = (align as usize).max(page);
        if len == 0 || offset % PAGE_SIZE != 0 || !align.is_power_of_two() {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        let file_len = (len as usize).next_multiple_of(page);
        let total = (len as usize).next_multiple_of(align);
        let start = reserve_aligned(total, align, libc::PROT_READ, libc::MAP_NORESERVE)?;
        // SAFETY: replaces the front of our own reservation with the file.
        let m = unsafe {
            libc::mmap(
                start as *mut c_void,
                file_len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if m == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            // SAFETY: our reservation.
            unsafe { libc::munmap(start as *mut c_void, total) };
            return Err(e);
        }
        Ok(HostMapping {
            // SAFETY: mmap never returns null on success.
            base: unsafe { NonNull::new_unchecked(start as *mut c_void) },
            total,
        })
    }

    /// Anonymous read-write memory for staging: `len` bytes rounded up to
    /// 2 MiB, at a 2 MiB-aligned address, advised for transparent huge
    /// pages and populated now. Staging written once per chunk then costs
    /// a handful of huge-page faults at creation instead of one fault per
    /// 4 KiB page on its first use, and fewer TLB misses in every copy
    /// into it. Both advices are hints: where the kernel lacks them (THP
    /// off, no MADV_POPULATE_WRITE before 5.14) the memory is ordinary and
    /// faulted on first touch.
    pub fn anonymous(len: u64) -> std::io::Result<Self> {
        const HUGE: usize = 2 << 20;
        if len == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        let total = (len as usize).next_multiple_of(HUGE);
        let start = reserve_aligned(total, HUGE, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        // SAFETY: advising our own mapping; failures change only speed.
        unsafe {
            libc::madvise(start as *mut c_void, total, libc::MADV_HUGEPAGE);
            libc::madvise(start as *mut c_void, total, libc::MADV_POPULATE_WRITE);
        }
        Ok(HostMapping {
            // SAFETY: mmap never returns null on success.
            base: unsafe { NonNull::new_unchecked(start as *mut c_void) },
            total,
        })
    }

    pub fn ptr(&self) -> *mut c_void {
        self.base.as_ptr()
    }

    /// Size of the whole mapping (file pages plus zero padding).
    pub fn size(&self) -> u64 {
        self.total as u64
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what map() created; no Vulkan memory
        // imported from it outlives this (Buffer frees its memory first).
        unsafe { libc::munmap(self.base.as_ptr(), self.total) };
    }
}

/// A read lease on an open file (fcntl F_SETLEASE, F_RDLCK) for as long as
/// the host path maps it.
///
/// Why: a file truncated under a mapping makes reads past its new end raise
/// SIGBUS, and on CPU devices (lavapipe) those reads happen in driver threads
/// that block every signal, so the kernel would kill the process. While we
/// hold the lease, any other open for writing and any truncate(2) first
/// *waits* (up to /proc/sys/fs/lease-break-time). The stream polls the lease
/// between chunks; once a break is pending it stops, waits for the device,
/// unmaps, releases the lease and reports the file as changed. Only then does
/// the writer proceed.
///
/// No signal is involved: the lease's owner is cleared, so the kernel sends
/// no break notice, and F_GETLEASE reports the pending break (it answers
/// F_UNLCK instead of F_RDLCK).
///
/// The kernel grants a read lease only to the file's owner (or CAP_LEASE),
/// only when nobody has it open for writing, and only on filesystems that
/// support leases; otherwise the host path is not used for that file.
pub(crate) struct ReadLease {
    fd: libc::c_int,
    /// The file's (st_dev, st_ino), counted in LEASED while held.
    key: (u64, u64),
}

/// The files this process holds read leases on, with how many: so that
/// dmafile itself never opens one of them for writing (the open would wait
/// for our own lease, or fail with a bare EAGAIN), but says why instead.
static LEASED: std::sync::Mutex<Vec<((u64, u64), usize)>> = std::sync::Mutex::new(Vec::new());

/// Whether this process holds a read lease (through dmafile) on the file
/// `(st_dev, st_ino)`.
pub(crate) fn leased_here(key: (u64, u64)) -> bool {
    LEASED
        .lock()
        .map(|l| l.iter().any(|(k, n)| *k == key && *n > 0))
        .unwrap_or(false)
}

fn count_lease(key: (u64, u64), up: bool) {
    if let Ok(mut l) = LEASED.lock() {
        match l.iter_mut().position(|(k, _)| *k == key) {
            Some(i) if up => l[i].1 += 1,
            Some(i) => {
                l[i].1 -= 1;
                if l[i].1 == 0 {
                    l.swap_remove(i);
                }
            }
            None if up => l.push((key, 1)),
            None => {}
        }
    }
}

impl ReadLease {
    pub fn take(fd: BorrowedFd<'_>) -> std::io::Result<ReadLease> {
        let raw = fd.as_raw_fd();
        // SAFETY: fcntl on a descriptor we borrow. Taking the lease makes us
        // its owner; clearing the owner stops the kernel from signalling us
        // (SIGIO would terminate the process) when the lease is broken.
        unsafe {
            if libc::fcntl(raw, libc::F_SETLEASE, libc::F_RDLCK) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(raw, libc::F_SETOWN, 0) < 0 {
                let e = std::io::Error::last_os_error();
                libc::fcntl(raw, libc::F_SETLEASE, libc::F_UNLCK);
                return Err(e);
            }
        }
        let st = nix::sys::stat::fstat(raw).map_err(std::io::Error::from);
        let key = match st {
            Ok(st) => (st.st_dev, st.st_ino),
            Err(e) => {
                // SAFETY: releasing the lease just taken.
                unsafe { libc::fcntl(raw, libc::F_SETLEASE, libc::F_UNLCK) };
                return Err(e);
            }
        };
        count_lease(key, true);
        Ok(ReadLease { fd: raw, key })
    }

    /// True once another opener or truncate asked for the lease back (or the
    /// kernel took it back after lease-break-time).
    pub fn broken(&self) -> bool {
        // SAFETY: fcntl on the descriptor the lease was taken on, which the
        // owner keeps open for at least as long as the lease.
        unsafe { libc::fcntl(self.fd, libc::F_GETLEASE) != libc::F_RDLCK }
    }
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        // SAFETY: releasing the lease we took on this descriptor.
        unsafe { libc::fcntl(self.fd, libc::F_SETLEASE, libc::F_UNLCK) };
        count_lease(self.key, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::PathBuf;

    fn tempfile(tag: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("dmafile-hostmap-{tag}-{}", std::process::id()));
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    #[test]
    fn maps_with_alignment_and_zero_tail() {
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        let p = tempfile("map", &data);
        let f = std::fs::File::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        for align in [4096u64, 65536] {
            let m = HostMapping::map(f.as_fd(), 4096, (data.len() - 4096) as u64, align).unwrap();
            assert_eq!(m.ptr() as usize % align as usize, 0);
            assert_eq!(m.size() % align, 0);
            // SAFETY: the mapping is m.size() readable bytes.
            let s = unsafe { std::slice::from_raw_parts(m.ptr() as *const u8, m.size() as usize) };
            assert_eq!(&s[..data.len() - 4096], &data[4096..]);
            assert!(s[data.len() - 4096..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn lease_holds_writers_off_and_reports_the_break() {
        let p = tempfile("lease", &[1u8; 8192]);
        let f = std::fs::File::open(&p).unwrap();
        let lease = ReadLease::take(f.as_fd()).unwrap();
        assert!(!lease.broken());
        let e = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p)
            .expect_err("a writer must wait for the lease");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        assert!(lease.broken(), "the writer's attempt starts the break");
        drop(lease);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("released: writers proceed");

        // With a writer open, no lease is granted.
        let _w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        let e = ReadLease::take(f.as_fd())
            .err()
            .expect("no lease while a writer is open");
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
        std::fs::remove_file(&p).unwrap();
    }
}
