//! File mappings for the `host` path, and the SIGBUS guard that makes a file
//! truncated under a mapping an error instead of a crash.
//!
//! When a mapped file shrinks, touching a page past its new end raises
//! SIGBUS. On lavapipe the "device" is a CPU thread, so a truncation while a
//! shader runs would kill the process. The guard keeps a lock-free table of
//! live mappings; its handler replaces the faulting page with a zero page,
//! marks the mapping, and returns so the access completes. The stream sees the
//! mark when the chunk finishes and reports the file as changed; the bytes the
//! shader saw are thrown away. Faults outside our mappings go to the handler
//! that was installed before ours (or the default action).
use std::ffi::c_void;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use nix::libc;

use crate::PAGE_SIZE;

const GUARD_SLOTS: usize = 256;

struct GuardSlot {
    start: AtomicUsize,
    end: AtomicUsize,
    hit: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: GuardSlot = GuardSlot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    hit: AtomicBool::new(false),
};
static GUARDS: [GuardSlot; GUARD_SLOTS] = [EMPTY; GUARD_SLOTS];
/// 1 while a slot is being claimed, so two claimers never share one.
static CLAIM: [AtomicBool; GUARD_SLOTS] = [const { AtomicBool::new(false) }; GUARD_SLOTS];
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for g in GUARDS.iter() {
        let start = g.start.load(Ordering::Acquire);
        if start != 0 && addr >= start && addr < g.end.load(Ordering::Acquire) {
            let page = addr & !(PAGE_SIZE as usize - 1);
            // SAFETY: the page lies inside a mapping we own; replacing it
            // with an anonymous zero page is what the guard is for. mmap is a
            // plain system call, safe to make from a signal handler.
            let r = unsafe {
                libc::mmap(
                    page as *mut c_void,
                    PAGE_SIZE as usize,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if r != libc::MAP_FAILED {
                g.hit.store(true, Ordering::Release);
                return;
            }
        }
    }
    // Not ours: hand the signal to whoever had it before.
    if let Some(prev) = PREVIOUS.get() {
        if prev.sa_flags & libc::SA_SIGINFO != 0 && prev.sa_sigaction > libc::SIG_IGN {
            // SAFETY: calling the previous SA_SIGINFO handler with the same arguments.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) =
                unsafe { std::mem::transmute(prev.sa_sigaction) };
            f(sig, info, ctx);
            return;
        }
        // SAFETY: restoring the previous disposition; the faulting access
        // then repeats and gets the previous (default) behaviour.
        unsafe { libc::sigaction(libc::SIGBUS, prev, std::ptr::null_mut()) };
    }
}

fn install_guard() {
    PREVIOUS.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid "no handler" value, filled below.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_sigbus as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        // SAFETY: as above.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: installing a handler that only touches atomics and mmap.
        unsafe {
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(libc::SIGBUS, &act, &mut old);
        }
        old
    });
}

fn claim_guard(start: usize, end: usize) -> Option<usize> {
    install_guard();
    for (i, c) in CLAIM.iter().enumerate() {
        if c.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            GUARDS[i].hit.store(false, Ordering::Release);
            GUARDS[i].end.store(end, Ordering::Release);
            GUARDS[i].start.store(start, Ordering::Release);
            return Some(i);
        }
    }
    None
}

fn release_guard(i: usize) {
    GUARDS[i].start.store(0, Ordering::Release);
    GUARDS[i].end.store(0, Ordering::Release);
    CLAIM[i].store(false, Ordering::Release);
}

/// A read-only shared mapping of a file range, placed at an address aligned
/// to `align` and padded with zero pages to a multiple of `align` (what
/// VK_EXT_external_memory_host requires of pointers and sizes).
pub(crate) struct HostMapping {
    base: NonNull<c_void>,
    total: usize,
    file_len: usize,
    guard: usize,
}

// SAFETY: the mapping is plain memory; the struct only unmaps it on drop.
unsafe impl Send for HostMapping {}
// SAFETY: shared access is read-only.
unsafe impl Sync for HostMapping {}

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
        let reserve = total + align - page;
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let r = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let r = r as usize;
        let start = r.next_multiple_of(align);
        // SAFETY: trimming the parts of our own reservation outside [start, start+total).
        unsafe {
            if start > r {
                libc::munmap(r as *mut c_void, start - r);
            }
            let end = start + total;
            if r + reserve > end {
                libc::munmap(end as *mut c_void, r + reserve - end);
            }
        }
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
        let Some(guard) = claim_guard(start, start + file_len) else {
            // SAFETY: our mapping.
            unsafe { libc::munmap(start as *mut c_void, total) };
            return Err(std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                "too many live host mappings",
            ));
        };
        Ok(HostMapping {
            // SAFETY: mmap never returns null on success.
            base: unsafe { NonNull::new_unchecked(start as *mut c_void) },
            total,
            file_len,
            guard,
        })
    }

    pub fn ptr(&self) -> *mut c_void {
        self.base.as_ptr()
    }

    /// Size of the whole mapping (file pages plus zero padding).
    pub fn size(&self) -> u64 {
        self.total as u64
    }

    /// Bytes backed by the file.
    #[allow(dead_code)]
    pub fn file_len(&self) -> u64 {
        self.file_len as u64
    }

    /// True if a page went missing under the mapping (the file was truncated).
    pub fn lost_pages(&self) -> bool {
        GUARDS[self.guard].hit.load(Ordering::Acquire)
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        release_guard(self.guard);
        // SAFETY: unmapping exactly what map() created; no Vulkan memory
        // imported from it outlives this (Buffer frees its memory first).
        unsafe { libc::munmap(self.base.as_ptr(), self.total) };
    }
}

const LEASE_SLOTS: usize = 256;
/// fcntl(2) F_SETSIG (Linux; not exported by the libc crate).
const F_SETSIG: libc::c_int = 10;
static LEASE_FD: [AtomicUsize; LEASE_SLOTS] = [const { AtomicUsize::new(0) }; LEASE_SLOTS];
static LEASE_BROKEN: [AtomicBool; LEASE_SLOTS] = [const { AtomicBool::new(false) }; LEASE_SLOTS];
static LEASE_SIGNAL: OnceLock<libc::c_int> = OnceLock::new();

extern "C" fn on_lease_break(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut c_void) {
    // SAFETY: SA_SIGINFO handler; for F_SETSIG signals the kernel fills si_fd
    // (glibc's siginfo_t has it right after si_band in the _sigpoll member).
    let fd = unsafe {
        let p = info as *const u8;
        // si_signo, si_errno, si_code (3 x int), pad to 8, then si_band (long), si_fd (int).
        *(p.add(16 + std::mem::size_of::<libc::c_long>()) as *const libc::c_int)
    };
    for (i, f) in LEASE_FD.iter().enumerate() {
        if f.load(Ordering::Acquire) == fd as usize + 1 {
            LEASE_BROKEN[i].store(true, Ordering::Release);
        }
    }
}

fn lease_signal() -> libc::c_int {
    *LEASE_SIGNAL.get_or_init(|| {
        let sig = libc::SIGRTMIN() + 3;
        // SAFETY: installing a handler that only touches atomics.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_lease_break as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
        sig
    })
}

/// A read lease on an open file (fcntl F_SETLEASE, F_RDLCK) for as long as
/// the host path maps it.
///
/// Why: a file truncated under a mapping makes reads past its new end raise
/// SIGBUS, and on CPU devices (lavapipe) those reads happen in driver threads
/// that block every signal, so the kernel would kill the process. While we
/// hold the lease, any other open for writing and any truncate(2) first
/// *waits* (up to /proc/sys/fs/lease-break-time) and we are told; the stream
/// then stops, waits for the device, unmaps, releases the lease, and reports
/// the file as changed. Only then does the writer proceed.
///
/// The kernel grants a read lease only to the file's owner (or CAP_LEASE),
/// only when nobody has it open for writing, and only on filesystems that
/// support leases; otherwise the host path is not used for that file.
pub(crate) struct ReadLease {
    fd: libc::c_int,
    slot: usize,
}

impl ReadLease {
    pub fn take(fd: BorrowedFd<'_>) -> std::io::Result<ReadLease> {
        let sig = lease_signal();
        let raw = fd.as_raw_fd();
        let slot = LEASE_FD
            .iter()
            .position(|f| {
                f.compare_exchange(0, raw as usize + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::OutOfMemory, "too many leases")
            })?;
        LEASE_BROKEN[slot].store(false, Ordering::Release);
        // SAFETY: fcntl on a descriptor we borrow; F_SETSIG/F_SETOWN route the
        // break notice to our handler with si_fd set.
        let r = unsafe {
            if libc::fcntl(raw, F_SETSIG, sig) < 0
                || libc::fcntl(raw, libc::F_SETOWN, libc::getpid()) < 0
            {
                -1
            } else {
                libc::fcntl(raw, libc::F_SETLEASE, libc::F_RDLCK)
            }
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            LEASE_FD[slot].store(0, Ordering::Release);
            return Err(e);
        }
        Ok(ReadLease { fd: raw, slot })
    }

    /// True once another opener or truncate asked for the lease back.
    pub fn broken(&self) -> bool {
        LEASE_BROKEN[self.slot].load(Ordering::Acquire)
    }
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        // SAFETY: releasing the lease we took on this descriptor, which the
        // owner keeps open for at least as long as the lease.
        unsafe { libc::fcntl(self.fd, libc::F_SETLEASE, libc::F_UNLCK) };
        LEASE_FD[self.slot].store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn maps_with_alignment_and_zero_tail() {
        let mut f = tempfile();
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
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
    fn truncation_becomes_zero_pages_and_a_mark() {
        let mut f = tempfile();
        f.write_all(&vec![7u8; 8 * 4096]).unwrap();
        let m = HostMapping::map(f.as_fd(), 0, 8 * 4096, 4096).unwrap();
        f.set_len(4096).unwrap();
        // SAFETY: reading our own mapping; the guard turns SIGBUS into zeros.
        let s = unsafe { std::slice::from_raw_parts(m.ptr() as *const u8, m.size() as usize) };
        assert_eq!(s[0], 7);
        let v = unsafe { std::ptr::read_volatile(&s[5 * 4096]) };
        assert_eq!(v, 0);
        assert!(m.lost_pages());
    }

    fn tempfile() -> std::fs::File {
        let dir = std::env::temp_dir();
        let p = dir.join(format!(
            "dmafile-hostmap-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }
}
