//! Helpers of the guest tests: the environment, files, mappings, children.

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::ptr::NonNull;

use dmafile::kmod::Module;
use nix::errno::Errno;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

#[path = "../common/mod.rs"]
mod common;
pub use common::data;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A test that cannot apply here (this kernel lacks what it needs), with why:
/// the runner reports it as skipped, never as passed.
#[derive(Debug)]
pub struct Skip(pub String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

/// Ends the test as skipped, saying why.
#[macro_export]
macro_rules! skip {
    ($($fmt:tt)+) => {
        return Err(Box::new($crate::util::Skip(format!($($fmt)+))))
    };
}

/// Fails the test with a formatted message unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+).into());
        }
    };
}

/// The filesystems the content, coherence and race tests run on.
pub const TEST_FS: &[&str] = &["ext4", "xfs", "btrfs", "tmpfs", "tmpfs-huge"];
/// The DAX mounts on the guest's pmem (tests/guest/inside.sh).
pub const DAX_FS: &[&str] = &["ext4-dax", "xfs-dax"];

pub struct Ctx {
    pub ko: PathBuf,
    mounts: Vec<(String, PathBuf)>,
    pmem: Vec<(String, PathBuf)>,
}

fn lookup<'a>(list: &'a [(String, PathBuf)], name: &str) -> Option<&'a Path> {
    list.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_path())
}

impl Ctx {
    pub fn from_env() -> Result<Ctx, String> {
        let ko = std::env::var_os("DMAFILE_KO").ok_or("DMAFILE_KO is not set")?;
        let list = |var: &str| -> Result<Vec<(String, PathBuf)>, String> {
            std::env::var(var)
                .map_err(|_| format!("{var} is not set"))?
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|kv| {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or(format!("bad {var} entry {kv:?}"))?;
                    Ok((k.to_string(), PathBuf::from(v)))
                })
                .collect()
        };
        Ok(Ctx {
            ko: PathBuf::from(ko),
            mounts: list("DMAFILE_MOUNTS")?,
            pmem: list("DMAFILE_PMEM")?,
        })
    }

    /// The mount point of a test filesystem; a missing one is a failure.
    pub fn fs(&self, name: &str) -> Result<&Path, String> {
        lookup(&self.mounts, name).ok_or_else(|| format!("test filesystem {name} is not mounted"))
    }

    /// The pmem block device under a DAX mount.
    pub fn pmem(&self, name: &str) -> Result<&Path, String> {
        lookup(&self.pmem, name).ok_or_else(|| format!("no pmem device for {name}"))
    }

    pub fn module(&self) -> Module {
        Module::open().expect("open /dev/dmafile")
    }

    /// Run after every test: nothing may stay pinned.
    pub fn check_nothing_pinned(&self) -> TestResult {
        let q = self.module().query()?;
        ensure!(
            q.pinned_bytes == 0 && q.nr_buffers == 0 && q.user_pinned_bytes == 0,
            "left behind: {} pinned bytes in {} dma-bufs ({} for this user)",
            q.pinned_bytes,
            q.nr_buffers,
            q.user_pinned_bytes
        );
        Ok(())
    }
}

/// Writes `bytes` to `dir/name` (replacing it) and returns the path.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

pub fn open_ro(p: &Path) -> File {
    File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

pub fn open_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

/// A shared mapping of an fd, unmapped on drop.
pub struct Mapping {
    ptr: NonNull<c_void>,
    len: usize,
}

impl Mapping {
    pub fn new(
        fd: BorrowedFd<'_>,
        len: usize,
        prot: ProtFlags,
        offset: i64,
    ) -> Result<Mapping, Errno> {
        Self::with_flags(fd, len, prot, MapFlags::MAP_SHARED, offset)
    }

    pub fn with_flags(
        fd: BorrowedFd<'_>,
        len: usize,
        prot: ProtFlags,
        flags: MapFlags,
        offset: i64,
    ) -> Result<Mapping, Errno> {
        let n = NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
        // SAFETY: a new mapping at an address the kernel picks; it aliases
        // no Rust object and is only reached through this struct.
        let ptr = unsafe { mmap(None, n, prot, flags, fd, offset) }?;
        Ok(Mapping { ptr, len })
    }

    /// The mapped bytes, read with volatile loads (others may write them).
    pub fn read(&self) -> Vec<u8> {
        let p = self.ptr.as_ptr() as *const u8;
        // SAFETY: p..p+len is mapped readable for the lifetime of self.
        (0..self.len)
            .map(|i| unsafe { p.add(i).read_volatile() })
            .collect()
    }

    /// Stores through the mapping (it must be writable).
    pub fn write_at(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len);
        let p = self.ptr.as_ptr() as *mut u8;
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: in bounds of the mapping, which the caller made
            // writable; a fault here is what some tests look for.
            unsafe { p.add(off + i).write_volatile(*b) };
        }
    }

    pub fn addr(&self) -> NonNull<c_void> {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len is exactly the mapping made in new().
        unsafe { munmap(self.ptr, self.len) }.expect("munmap");
    }
}

/// Maps a whole dma-buf read-only the way Mesa does (PROT_READ|PROT_WRITE
/// is what lavapipe asks for; read-only buffers still map) and copies it.
pub fn dmabuf_bytes(fd: BorrowedFd<'_>, len: u64) -> Result<Vec<u8>, Errno> {
    Ok(Mapping::new(fd, len as usize, ProtFlags::PROT_READ, 0)?.read())
}

/// Runs `f` in a forked child and returns how it ended. The child exits
/// with f's return value and never returns into the test runner.
pub fn in_child(f: impl FnOnce() -> i32) -> WaitStatus {
    // SAFETY: the runner is single-threaded when this is called (tests join
    // their threads), so the child may run arbitrary code.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
            // SAFETY: _exit skips destructors and atexit handlers that
            // belong to the parent.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => waitpid(child, None).expect("waitpid"),
    }
}

/// The file's bytes expected through a dma-buf mapping of
/// `offset..offset+len` (rounded up to a page): file bytes, then zeros.
pub fn expected(file: &[u8], offset: u64, mapped_len: u64) -> Vec<u8> {
    let mut v = vec![0u8; mapped_len as usize];
    let start = (offset as usize).min(file.len());
    let end = ((offset + mapped_len) as usize).min(file.len());
    v[..end - start].copy_from_slice(&file[start..end]);
    v
}

/// Opens the vgem device (a DRM driver without hardware) as a PRIME importer.
pub struct Vgem(File);

impl AsFd for Vgem {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
impl drm::Device for Vgem {}
impl drm::control::Device for Vgem {}

impl Vgem {
    pub fn open() -> Result<Vgem, String> {
        use drm::Device;
        for e in std::fs::read_dir("/dev/dri").map_err(|e| format!("/dev/dri: {e}"))? {
            let p = e.map_err(|e| e.to_string())?.path();
            if !p.file_name().unwrap().to_string_lossy().starts_with("card") {
                continue;
            }
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(nix::libc::O_CLOEXEC)
                .open(&p)
                .map_err(|e| format!("open {}: {e}", p.display()))?;
            let v = Vgem(f);
            if v.get_driver().map(|d| d.name() == "vgem").unwrap_or(false) {
                return Ok(v);
            }
        }
        Err("no vgem device in /dev/dri (is the vgem module loaded?)".into())
    }
}

/// Allocates a dma-buf from /dev/dma_heap/system: another exporter's.
pub fn heap_dmabuf(len: u64) -> Result<OwnedFd, String> {
    dma_heap::Heap::new(dma_heap::HeapKind::System)
        .and_then(|h| h.allocate(len as usize))
        .map_err(|e| format!("dma-heap alloc: {e}"))
}

/// Another exporter's dma-buf of at least `len` bytes: dma-heap's, or, on
/// kernels without dma-heaps (Debian's 6.1), a vgem buffer exported with
/// PRIME.
pub fn foreign_dmabuf(len: u64) -> Result<OwnedFd, String> {
    use drm::buffer::Buffer;
    use drm::control::Device;
    if std::path::Path::new("/dev/dma_heap/system").exists() {
        return heap_dmabuf(len);
    }
    let v = Vgem::open()?;
    let rows = len.div_ceil(4096).max(1) as u32;
    let b = v
        .create_dumb_buffer((1024, rows), drm::buffer::DrmFourcc::Xrgb8888, 32)
        .map_err(|e| format!("vgem dumb buffer: {e}"))?;
    let flags = (nix::libc::O_RDWR | nix::libc::O_CLOEXEC) as u32;
    // The dma-buf holds the buffer once vgem's handle and fd are gone.
    v.buffer_to_prime_fd(b.handle(), flags)
        .map_err(|e| format!("vgem PRIME export: {e}"))
}

/// `rmmod NAME` without waiting: EWOULDBLOCK while the module is in use.
pub fn unload_module(name: &str) -> Result<(), Errno> {
    let name = std::ffi::CString::new(name).unwrap();
    nix::kmod::delete_module(&name, nix::kmod::DeleteModuleFlags::O_NONBLOCK)
}

/// A binary built next to the test runner (the CLI, the samples).
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .expect("the test runner's path")
        .with_file_name(name)
}

/// Runs the `dmafile` CLI, without its progress bar.
pub fn dmafile(args: &[&str]) -> Output {
    Command::new(sibling("dmafile"))
        .args(args)
        .env("DMAFILE_NO_PROGRESS", "1")
        .output()
        .expect("run dmafile")
}

/// How a call that ran in a child ended when [`errno_within`] waited for it.
pub type ChildErrno = Result<Result<(), Errno>, String>;

/// Runs `f` in a forked child and waits at most `limit` for it: its result,
/// or why there is none. A child still running after `limit` (blocked in
/// the kernel) is sent SIGKILL and reaped by a thread whenever it dies, so
/// that a test fails instead of hanging when a call waits.
pub fn errno_within(
    limit: std::time::Duration,
    f: impl FnOnce() -> Result<(), Errno>,
) -> ChildErrno {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::WaitPidFlag;
    let t = std::time::Instant::now();
    // SAFETY: see in_child; the child only makes system calls and exits.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => e as i32,
                Err(_) => 255,
            };
            // SAFETY: leaving the forked child without unwinding.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if t.elapsed() < limit => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Ok(WaitStatus::StillAlive) => {
                    let _ = kill(child, Signal::SIGKILL);
                    std::thread::spawn(move || waitpid(child, None));
                    return Err(format!("still blocked after {limit:?}"));
                }
                Ok(WaitStatus::Exited(_, 0)) => return Ok(Ok(())),
                Ok(WaitStatus::Exited(_, 255)) => return Err("the child panicked".into()),
                Ok(WaitStatus::Exited(_, c)) => return Ok(Err(Errno::from_raw(c))),
                other => return Err(format!("the child ended {other:?}")),
            }
        },
    }
}

/// The errno of an I/O error (EIO when it has none).
pub fn errno_of(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO))
}
