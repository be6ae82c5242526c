//! A fuzzer of dmafile.ko: random sequences of everything a process can do
//! with the module and its dma-bufs, against a file that other threads and
//! processes keep changing, on every test filesystem (DAX included).
//!
//! One sequence runs in its own process (sometimes as an unprivileged user
//! with a small RLIMIT_MEMLOCK), which makes random MAP requests (every
//! flag, sizes near the limits, wrapped ranges, every kind of fd), STATUS
//! and QUERY calls, CPU mappings of the dma-bufs (mmap, munmap, mprotect,
//! madvise, mremap, stores through WRITE buffers), DMA_BUF_IOCTL_SYNC,
//! forks whose children keep, close, exec or are killed, and closes, in
//! any order. A thread and a second process meanwhile write, truncate,
//! punch, fallocate and swap extents of the file. Invariants:
//!
//! - every answer is consistent: a refusal has a known reason, the errno
//!   the header gives for it and no fd; a mapping has the right size and
//!   backing;
//! - every byte a mapping shows is the file's (one of the two patterns the
//!   writers store at that position) or zero (holes, past EOF);
//! - after the sequence, once everything is closed, nothing is pinned or
//!   charged, and the file's layout is not held (a truncate works).
//!
//! The kernel's own detectors (KASAN, lockdep, kmemleak, ...) judge the
//! rest when the guest runs the debug kernel. `DMAFILE_FUZZ_SECS` bounds
//! the run (20 s by default); `DMAFILE_FUZZ_SEED` replays one run, whose
//! sequences are printed as they fail, each with its own seed.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dmafile::kmod::{dma_buf_sync, flags, raw, Backing, MapReason, Module};
use nix::errno::Errno;
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::{fork, ForkResult, Pid};

use crate::ensure;
use crate::kmod_tests::{pattern, Rng, PAGE};
use crate::layout_ops as o;
use crate::util::*;
use crate::TestFn;

/// Pages in the fuzzed file.
const PAGES: u64 = 48;

/// What the sequences did, counted in memory shared with their processes,
/// so that a run shows it exercised something.
#[derive(Default)]
struct Counts {
    maps: std::sync::atomic::AtomicU64,
    refusals: std::sync::atomic::AtomicU64,
    bytes_checked: std::sync::atomic::AtomicU64,
    storage_direct: std::sync::atomic::AtomicU64,
}

/// The counters, in an anonymous shared mapping made once.
fn counts() -> &'static Counts {
    static COUNTS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let addr = *COUNTS.get_or_init(|| {
        let n = std::num::NonZeroUsize::new(std::mem::size_of::<Counts>()).unwrap();
        // SAFETY: a new shared anonymous mapping, zeroed by the kernel (a
        // valid Counts), never unmapped: it lives as long as the process.
        unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                n,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .expect("shared mapping for the fuzz counters")
        .as_ptr() as usize
    });
    // SAFETY: addr is a live, zero-initialized mapping of a Counts, whose
    // fields are atomics shared by design.
    unsafe { &*(addr as *const Counts) }
}

fn bump(c: &std::sync::atomic::AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub fn all() -> Vec<(String, TestFn)> {
    vec![("fuzz".into(), Box::new(fuzz) as TestFn)]
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn fuzz(c: &Ctx) -> TestResult {
    let secs = env_u64("DMAFILE_FUZZ_SECS").unwrap_or(20);
    counts();
    let base = env_u64("DMAFILE_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("     fuzz: seed {base}, {secs} s (replay: DMAFILE_FUZZ_SEED={base} DMAFILE_FUZZ_SECS={secs})");
    let filesystems: Vec<&str> = TEST_FS.iter().chain(DAX_FS).copied().collect();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut runs, mut failures) = (0u64, Vec::new());
    while Instant::now() < deadline || runs < filesystems.len() as u64 {
        let seed = base ^ runs.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let fs = filesystems[(runs % filesystems.len() as u64) as usize];
        runs += 1;
        if let Err(e) = sequence(c, fs, seed) {
            println!("     fuzz: FAIL sequence seed {seed} on {fs}: {e}");
            failures.push(seed);
            if failures.len() >= 3 {
                break;
            }
        }
    }
    let n = counts();
    println!(
        "     fuzz: {runs} sequences, {} failed: {} mappings ({} storage-direct), {} refusals, {} bytes checked",
        failures.len(),
        n.maps.load(Ordering::Relaxed),
        n.storage_direct.load(Ordering::Relaxed),
        n.refusals.load(Ordering::Relaxed),
        n.bytes_checked.load(Ordering::Relaxed)
    );
    ensure!(
        failures.is_empty(),
        "fuzz: failing sequence seeds {failures:?} (base seed {base})"
    );
    Ok(())
}

/// One sequence on `fs`: returns what broke an invariant.
fn sequence(c: &Ctx, fs: &str, seed: u64) -> TestResult {
    let dir = c.fs(fs)?;
    let p = dir.join(format!("fuzz-{seed:x}.bin"));
    let init: Vec<u8> = (0..PAGES * PAGE - seed % PAGE)
        .map(|pos| pattern(pos, 0))
        .collect();
    write_file(dir, p.file_name().unwrap().to_str().unwrap(), &init);
    // The unprivileged sequences need to open it.
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    // The other process that changes the file.
    // SAFETY: see in_child; the child only makes system calls and exits.
    let disturber = match unsafe { fork() }? {
        ForkResult::Child => {
            disturb(&p, seed ^ 1, &AtomicBool::new(false));
            // SAFETY: leaving the forked child without unwinding.
            unsafe { nix::libc::_exit(0) }
        }
        ForkResult::Parent { child } => child,
    };
    let st = errno_within(Duration::from_secs(60), || {
        let stop2 = stop.clone();
        let p2 = p.clone();
        let t = std::thread::spawn(move || disturb(&p2, seed ^ 2, &stop2));
        let r = Sequence::new(&p, seed).run();
        stop.store(true, Ordering::Relaxed);
        let _ = t.join();
        r
    });
    let _ = kill(disturber, Signal::SIGKILL);
    let _ = waitpid(disturber, None);
    match st {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(format!(
                "the sequence broke an invariant (errno {e}); see its output above"
            )
            .into())
        }
        Err(e) => return Err(format!("the sequence: {e}").into()),
    }
    // Everything is closed: nothing stays pinned, charged or frozen.
    let t = Instant::now();
    loop {
        let q = c.module().query()?;
        if q.pinned_bytes == 0 && q.nr_buffers == 0 {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(10),
            "{} bytes in {} dma-bufs left after the sequence",
            q.pinned_bytes,
            q.nr_buffers
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    o::ftruncate(&p, 0).map_err(|e| format!("truncate after the sequence: {e}"))?;
    std::fs::remove_file(&p)?;
    Ok(())
}

/// Changes the file until `stop` (or until killed): writes of either
/// pattern, truncates (and regrowth), hole punches, preallocation, extent
/// swaps; each opening the file, as another process would. Errors are
/// expected (ETXTBSY while a storage-direct mapping holds the layout).
fn disturb(p: &Path, seed: u64, stop: &AtomicBool) {
    let mut r = Rng(seed | 1);
    let scratch = p.with_extension("scratch");
    while !stop.load(Ordering::Relaxed) {
        let pg = r.below(PAGES);
        let len = (1 + r.below(4)) * PAGE;
        let bytes: Vec<u8> = (pg * PAGE..pg * PAGE + len)
            .map(|pos| pattern(pos, r.below(2)))
            .collect();
        let punch = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
        let _ = match r.below(7) {
            0 | 1 => std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &bytes, pg * PAGE))
                .map_err(errno_of),
            2 => {
                o::ftruncate(p, r.below(PAGES * PAGE)).and_then(|()| o::ftruncate(p, PAGES * PAGE))
            }
            3 => o::fallocate(
                p,
                punch,
                (pg * PAGE + r.below(PAGE)) as i64,
                (r.below(3) * PAGE + 1) as i64,
            ),
            4 => o::fallocate(
                p,
                nix::fcntl::FallocateFlags::empty(),
                (pg * PAGE) as i64,
                len as i64,
            ),
            5 => std::fs::copy(p, &scratch).map_err(errno_of).and_then(|_| {
                o::xfs_swapext(p, &scratch).or_else(|_| o::ext4_move_ext(p, &scratch, PAGES * PAGE))
            }),
            _ => o::pread(p),
        };
        std::thread::sleep(Duration::from_micros(200 + r.below(800)));
    }
    let _ = std::fs::remove_file(&scratch);
}

/// A dma-buf the sequence holds: its fd, range and flags.
struct Buf {
    fd: OwnedFd,
    offset: u64,
    len: u64,
    write: bool,
}

/// A CPU mapping of one of the buffers.
struct Cpu {
    addr: *mut nix::libc::c_void,
    len: usize,
    /// The file offset of the buffer it maps.
    offset: u64,
    readable: bool,
    writable: bool,
}

struct Sequence<'a> {
    p: &'a Path,
    r: Rng,
    m: Module,
    files: Vec<OwnedFd>,
    bufs: Vec<Buf>,
    maps: Vec<Cpu>,
    children: Vec<Pid>,
    /// Other kinds of fds: directory, pipe, socket, memfd, /dev/null, ...
    others: Vec<OwnedFd>,
}

impl<'a> Sequence<'a> {
    fn new(p: &'a Path, seed: u64) -> Self {
        Sequence {
            p,
            r: Rng(seed | 1),
            m: Module::open().expect("/dev/dmafile"),
            files: vec![],
            bufs: vec![],
            maps: vec![],
            children: vec![],
            others: vec![],
        }
    }

    /// Runs the sequence; an Err is an invariant broken (printed).
    fn run(mut self) -> Result<(), Errno> {
        // Opened while still root: vgem's /dev/dri/card* is not for
        // everyone, and the unprivileged sequences need the fds too.
        self.other_fds();
        if self.r.below(4) == 0 {
            // Unprivileged, with a small memlock limit.
            use nix::sys::resource::{setrlimit, Resource};
            let lim = (1 + self.r.below(64)) * PAGE;
            setrlimit(Resource::RLIMIT_MEMLOCK, lim, lim)?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(65534))?;
        }
        let steps = 20 + self.r.below(60);
        for _ in 0..steps {
            if let Err(msg) = self.step() {
                println!("     fuzz: {msg}");
                return Err(Errno::EBADMSG);
            }
        }
        // Close in a random order: buffers, mappings, files, children.
        while !self.bufs.is_empty() || !self.maps.is_empty() || !self.files.is_empty() {
            match self.r.below(3) {
                0 if !self.bufs.is_empty() => drop(self.take_buf()),
                1 if !self.maps.is_empty() => self.unmap_one(),
                _ if !self.files.is_empty() => drop(self.files.swap_remove(0)),
                _ => {}
            }
        }
        for child in self.children.drain(..) {
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
        }
        Ok(())
    }

    fn other_fds(&mut self) {
        let dir = std::fs::File::open(self.p.parent().unwrap()).map(OwnedFd::from);
        let null = std::fs::File::open("/dev/null").map(OwnedFd::from);
        let (rd, wr) = nix::unistd::pipe().unwrap();
        let (s1, s2) = std::os::unix::net::UnixStream::pair().unwrap();
        self.others.extend(dir.into_iter().chain(null));
        self.others.extend([rd, wr, s1.into(), s2.into()]);
        if let Ok(e) = nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::empty()) {
            self.others.push(e.0);
        }
        if let Ok(f) =
            nix::sys::memfd::memfd_create(c"fuzz", nix::sys::memfd::MemFdCreateFlag::empty())
        {
            let _ = nix::unistd::ftruncate(&f, 8192);
            self.others.push(f);
        }
        if let Ok(h) = foreign_dmabuf(8192) {
            self.others.push(h);
        }
    }

    fn take_buf(&mut self) -> Buf {
        let i = self.r.below(self.bufs.len() as u64) as usize;
        self.bufs.swap_remove(i)
    }

    fn unmap_one(&mut self) {
        let i = self.r.below(self.maps.len() as u64) as usize;
        let m = self.maps.swap_remove(i);
        // SAFETY: addr/len is a mapping this sequence made and still owns.
        let _ = unsafe { nix::libc::munmap(m.addr, m.len) };
    }

    /// Any fd: mostly the file, opened in some mode; sometimes another kind.
    fn some_fd(&mut self) -> RawFd {
        match self.r.below(10) {
            0 => self
                .others
                .get(self.r.below(self.others.len().max(1) as u64) as usize)
                .map_or(-1, |f| f.as_raw_fd()),
            1 => self.bufs.first().map_or(100_000, |b| b.fd.as_raw_fd()),
            2 => [-1, 100_000, i32::MAX][self.r.below(3) as usize],
            _ => {
                if self.files.is_empty() || self.r.below(3) == 0 {
                    let flags = [
                        nix::libc::O_RDONLY,
                        nix::libc::O_RDWR,
                        nix::libc::O_WRONLY,
                        nix::libc::O_PATH,
                        nix::libc::O_RDONLY | nix::libc::O_DIRECT,
                    ][self.r.below(5) as usize];
                    if let Ok(f) = std::fs::OpenOptions::new()
                        .read(flags & nix::libc::O_ACCMODE != nix::libc::O_WRONLY)
                        .write(flags & nix::libc::O_ACCMODE != nix::libc::O_RDONLY)
                        .custom_flags(flags & !nix::libc::O_ACCMODE)
                        .open(self.p)
                    {
                        self.files.push(f.into());
                    }
                }
                let i = self.r.below(self.files.len().max(1) as u64) as usize;
                self.files.get(i).map_or(-1, |f| f.as_raw_fd())
            }
        }
    }

    /// A descriptor of the file open for reading (and writing with `write`),
    /// reused or opened now.
    fn file_fd(&mut self, write: bool) -> RawFd {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(self.p);
        match f {
            Ok(f) => {
                self.files.push(f.into());
                self.files.last().unwrap().as_raw_fd()
            }
            Err(_) => -1,
        }
    }

    fn some_length(&mut self, q: &raw::Query) -> u64 {
        let size = PAGES * PAGE;
        match self.r.below(12) {
            0 => 0,
            1 => u64::MAX - self.r.below(2 * PAGE),
            2 => q.max_map_bytes + self.r.below(2),
            3 => q.memlock_limit.saturating_add(self.r.below(2) * PAGE),
            4 => size + self.r.below(2),
            5 => 1 << (12 + self.r.below(40)),
            _ => 1 + self.r.below(size),
        }
    }

    fn some_offset(&mut self) -> u64 {
        match self.r.below(10) {
            0 => u64::MAX - 4095,
            1 => 1 + self.r.below(PAGE - 1),
            2 => 1 << (40 + self.r.below(23)),
            _ => self.r.below(PAGES) * PAGE,
        }
    }

    fn step(&mut self) -> Result<(), String> {
        match self.r.below(16) {
            0..=4 => self.map(),
            5 => {
                let fd = self.some_fd();
                // SAFETY: F_GETFD only asks whether fd is open.
                if fd >= 0 && unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } >= 0 {
                    // SAFETY: fd is open, and stays open for this call.
                    let _ = self.m.status(unsafe { BorrowedFd::borrow_raw(fd) });
                }
                Ok(())
            }
            6 => self
                .m
                .query()
                .map(drop)
                .map_err(|e| format!("QUERY failed: {e}")),
            7 | 8 => self.cpu_map(),
            9 => self.check_maps(),
            10 => {
                self.mm_op();
                Ok(())
            }
            11 => {
                self.sync();
                Ok(())
            }
            12 => {
                self.spawn_holder();
                Ok(())
            }
            13 if !self.bufs.is_empty() => {
                drop(self.take_buf());
                Ok(())
            }
            14 if !self.files.is_empty() => {
                let i = self.r.below(self.files.len() as u64) as usize;
                drop(self.files.swap_remove(i));
                Ok(())
            }
            15 if !self.children.is_empty() => {
                let child = self.children.swap_remove(0);
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn map(&mut self) -> Result<(), String> {
        let q = self.m.query().map_err(|e| format!("QUERY: {e}"))?;
        let mut fl = flags::PIN | flags::CLOEXEC;
        for (bit, odds) in [(flags::WRITE, 3), (flags::ATOMIC, 4), (flags::PIN, 10)] {
            if self.r.below(odds) == 0 {
                fl ^= bit;
            }
        }
        if self.r.below(12) == 0 {
            fl |= 1 << (4 + self.r.below(28));
        }
        let (fd, offset, length);
        if self.r.below(2) == 0 {
            // Well-formed: a readable fd of the file, a range inside it.
            fl &= flags::PIN | flags::WRITE | flags::ATOMIC | flags::CLOEXEC;
            fl |= flags::PIN;
            fd = self.file_fd(fl & flags::WRITE != 0);
            offset = self.r.below(PAGES / 2) * PAGE;
            length = 1 + self.r.below((PAGES / 2) * PAGE);
        } else {
            (fd, offset) = (self.some_fd(), self.some_offset());
            length = self.some_length(&q);
        }
        let mut req = raw::Map {
            fd,
            flags: fl,
            offset,
            length,
            ..Default::default()
        };
        match self.m.map_raw(&mut req) {
            Ok(dmabuf) => {
                let want = length.div_ceil(PAGE) * PAGE;
                if req.mapped_length != want || req.reason != 0 {
                    return Err(format!(
                        "MAP {offset}+{length}: mapped_length {} reason {}",
                        req.mapped_length, req.reason
                    ));
                }
                let dax = Backing::from_code(req.backing) == Backing::StorageDirect;
                if !dax && Backing::from_code(req.backing) != Backing::PageCache {
                    return Err(format!("MAP: backing {}", req.backing));
                }
                self.bufs.push(Buf {
                    fd: dmabuf,
                    offset,
                    len: want,
                    write: fl & flags::WRITE != 0,
                });
                bump(&counts().maps, 1);
                bump(&counts().storage_direct, dax as u64);
                Ok(())
            }
            Err(errno) => {
                let reason = MapReason::from_code(req.reason);
                if matches!(reason, MapReason::Unknown(_) | MapReason::None) || req.dmabuf_fd != -1
                {
                    return Err(format!(
                        "MAP {offset}+{length} flags {fl:#x}: {errno} with reason {} fd {}",
                        req.reason, req.dmabuf_fd
                    ));
                }
                if let Some(want) = reason_errno(reason) {
                    if errno != want {
                        return Err(format!(
                            "MAP: {reason} came with {errno}, the header says {want}"
                        ));
                    }
                }
                bump(&counts().refusals, 1);
                Ok(())
            }
        }
    }

    fn cpu_map(&mut self) -> Result<(), String> {
        if self.bufs.is_empty() {
            return Ok(());
        }
        let i = self.r.below(self.bufs.len() as u64) as usize;
        let (offset, len, write) = (self.bufs[i].offset, self.bufs[i].len, self.bufs[i].write);
        let pages = 1 + self.r.below(len / PAGE);
        let mut prot = ProtFlags::PROT_READ;
        if self.r.below(2) == 0 {
            prot |= ProtFlags::PROT_WRITE;
        }
        if self.r.below(8) == 0 {
            prot |= ProtFlags::PROT_EXEC;
        }
        let private = self.r.below(8) == 0;
        let mflags = if private {
            MapFlags::MAP_PRIVATE
        } else {
            MapFlags::MAP_SHARED
        };
        let n = std::num::NonZeroUsize::new((pages * PAGE) as usize).unwrap();
        let fd = self.bufs[i].fd.as_fd();
        // SAFETY: a new mapping at an address the kernel picks.
        let got = unsafe { nix::sys::mman::mmap(None, n, prot, mflags, fd, 0) };
        match got {
            Ok(a) if private || prot.contains(ProtFlags::PROT_EXEC) => {
                // SAFETY: the mapping just made.
                let _ = unsafe { nix::sys::mman::munmap(a, n.get()) };
                Err(format!(
                    "mmap of a dma-buf with {prot:?} {mflags:?} succeeded"
                ))
            }
            Ok(a) => {
                self.maps.push(Cpu {
                    addr: a.as_ptr(),
                    len: n.get(),
                    offset,
                    readable: true,
                    writable: write && prot.contains(ProtFlags::PROT_WRITE),
                });
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    /// Reads every live mapping (stores the file's pattern through a WRITE
    /// one first): each byte is the file's or zero.
    fn check_maps(&mut self) -> Result<(), String> {
        for m in &self.maps {
            if m.writable && self.r.below(2) == 0 {
                let at = self.r.below(m.len as u64);
                let v = pattern(m.offset + at, 1);
                // SAFETY: in bounds of a mapping of a WRITE dma-buf made writable.
                unsafe { (m.addr as *mut u8).add(at as usize).write_volatile(v) };
            }
            if !m.readable {
                continue;
            }
            for i in 0..m.len {
                // SAFETY: in bounds of a readable mapping this sequence owns.
                let v = unsafe { (m.addr as *const u8).add(i).read_volatile() };
                let pos = m.offset + i as u64;
                if v != 0 && v != pattern(pos, 0) && v != pattern(pos, 1) {
                    return Err(format!(
                        "byte {v:#04x} at file offset {pos} through a mapping is not the file's"
                    ));
                }
            }
            bump(&counts().bytes_checked, m.len as u64);
        }
        Ok(())
    }

    fn mm_op(&mut self) {
        if self.maps.is_empty() {
            return;
        }
        let i = self.r.below(self.maps.len() as u64) as usize;
        let (addr, len) = (self.maps[i].addr, self.maps[i].len);
        match self.r.below(5) {
            0 => self.unmap_one(),
            1 => {
                let prot = [
                    ProtFlags::PROT_NONE,
                    ProtFlags::PROT_READ,
                    ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                    ProtFlags::PROT_READ | ProtFlags::PROT_EXEC,
                ][self.r.below(4) as usize];
                // SAFETY: our mapping; a refusal leaves it as it was.
                if unsafe { nix::libc::mprotect(addr, len, prot.bits()) } == 0 {
                    self.maps[i].readable = prot.contains(ProtFlags::PROT_READ);
                    self.maps[i].writable &= prot.contains(ProtFlags::PROT_WRITE);
                }
            }
            2 => {
                let adv = [
                    MmapAdvise::MADV_DONTNEED,
                    MmapAdvise::MADV_DOFORK,
                    MmapAdvise::MADV_DONTFORK,
                    MmapAdvise::MADV_RANDOM,
                    MmapAdvise::MADV_NOHUGEPAGE,
                    MmapAdvise::MADV_WILLNEED,
                ][self.r.below(6) as usize];
                let part = PAGE as usize
                    * (1 + self.r.below((len as u64 / PAGE).max(1)) as usize)
                        .min(len / PAGE as usize);
                // SAFETY: advice on our own mapping.
                let _ = unsafe { nix::libc::madvise(addr, part, adv as i32) };
            }
            3 => {
                // Shrink in place, or try to grow (a dma-buf mapping cannot).
                let new = if self.r.below(2) == 0 {
                    (len / 2).max(PAGE as usize) / PAGE as usize * PAGE as usize
                } else {
                    len + PAGE as usize
                };
                // SAFETY: remapping our own mapping; on success we track the new size.
                let r = unsafe { nix::libc::mremap(addr, len, new, nix::libc::MREMAP_MAYMOVE) };
                if r != nix::libc::MAP_FAILED {
                    self.maps[i].addr = r;
                    self.maps[i].len = new;
                }
            }
            _ => {
                // SAFETY: advice on our own mapping.
                let _ = unsafe { nix::libc::madvise(addr, len, nix::libc::MADV_PAGEOUT) };
            }
        }
    }

    fn sync(&mut self) {
        if self.bufs.is_empty() {
            return;
        }
        let i = self.r.below(self.bufs.len() as u64) as usize;
        // START/END with READ, WRITE or both, and invalid combinations.
        let f = [1u64, 2, 3, 5, 6, 7, 0x10][self.r.below(7) as usize];
        let _ = dma_buf_sync(self.bufs[i].fd.as_fd(), f);
    }

    /// A child that inherits everything, then exits, execs, or waits to be
    /// killed (mappings with MADV_DONTFORK are not inherited).
    fn spawn_holder(&mut self) {
        let how = self.r.below(4);
        // SAFETY: the child only makes system calls and exits.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                match how {
                    0 => {}
                    1 => {
                        let _ = nix::unistd::execv(c"/bin/true", &[c"true"]);
                    }
                    2 => std::thread::sleep(Duration::from_millis(5)),
                    _ => loop {
                        std::thread::sleep(Duration::from_secs(1));
                    },
                }
                // SAFETY: leaving the forked child without unwinding.
                unsafe { nix::libc::_exit(0) }
            }
            Ok(ForkResult::Parent { child }) => {
                if how == 3 {
                    self.children.push(child);
                } else {
                    let _ = waitpid(child, Some(WaitPidFlag::empty()));
                }
            }
            Err(_) => {}
        }
    }
}

/// The errno the uapi header gives each reason (none for map-failed, which
/// carries the filesystem's).
fn reason_errno(r: MapReason) -> Option<Errno> {
    use MapReason as R;
    Some(match r {
        R::InvalidArgument
        | R::FlagsUnsupported
        | R::NotRegularFile
        | R::Unaligned
        | R::InvalidRange => Errno::EINVAL,
        R::PinRequired | R::FsNotSupported | R::WritePinNotAllowed => Errno::EOPNOTSUPP,
        R::BadFd | R::FdNotReadable | R::FdNotWritable => Errno::EBADF,
        R::BeyondEof => Errno::ENXIO,
        R::TooLarge => Errno::EFBIG,
        R::MemlockLimit | R::GlobalLimit | R::NoMemory => Errno::ENOMEM,
        R::Sealed | R::Immutable => Errno::EPERM,
        R::FileChanged => Errno::EAGAIN,
        R::IoError => Errno::EIO,
        R::Interrupted => Errno::EINTR,
        R::DaxUnbacked => Errno::ENODATA,
        R::FileBusy => Errno::ETXTBSY,
        R::NotOwner => Errno::EACCES,
        _ => return None,
    })
}
