//! dmafile.ko against real filesystems, vgem and the mm.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dmafile::kmod::{flags, raw, Backing, MapReason, Module};
use nix::errno::Errno;
use nix::sys::mman::{mprotect, MapFlags, ProtFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use crate::ensure;
use crate::util::*;
use crate::TestFn;

pub const PAGE: u64 = 4096;
const MIB: usize = 1 << 20;

fn page_align(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

pub fn all(_ctx: &Ctx) -> Vec<(String, TestFn)> {
    let mut t: Vec<(String, TestFn)> = Vec::new();
    macro_rules! add {
        ($name:expr, $f:expr) => {
            t.push(($name.to_string(), Box::new($f)));
        };
    }
    add!("query", query);
    // Refusals first: they must hold before anything maps.
    add!("refuse/invalid-argument", refuse_invalid_argument);
    add!("refuse/flags", refuse_flags);
    add!("refuse/bad-fd", refuse_bad_fd);
    add!("refuse/wrong-kind-of-fd", refuse_wrong_kind);
    add!("refuse/fd-not-readable", refuse_not_readable);
    add!("refuse/fs-not-supported", refuse_fs);
    add!("refuse/range", refuse_range);
    add!("refuse/beyond-eof", refuse_beyond_eof);
    add!("refuse/write-permissions", refuse_write);
    add!("refuse/write-pin-not-allowed", refuse_write_pin);
    add!("refuse/memlock-limit", refuse_memlock);
    add!("refuse/memlock-before-allocating", refuse_memlock_first);
    add!("refuse/global-limit", refuse_global_limit);
    add!("ioctl/size-tolerance", ioctl_abi);
    for fs in TEST_FS {
        add!(format!("content/{fs}"), move |c: &Ctx| content(c, fs));
    }
    for fs in TEST_FS {
        add!(format!("coherence/{fs}"), move |c: &Ctx| coherence(c, fs));
    }
    for fs in TEST_FS {
        add!(format!("status/{fs}"), move |c: &Ctx| status(c, fs));
    }
    add!("vgem/import", vgem_import);
    add!("write/tmpfs", write_mapping_tmpfs);
    add!("write/memfd", write_mapping_memfd);
    add!("write/tmpfs-huge", write_mapping_huge);
    add!("readonly/ext4", |c: &Ctx| readonly_mapping(c, "ext4"));
    add!("readonly/tmpfs", |c: &Ctx| readonly_mapping(c, "tmpfs"));
    add!("noexec", no_exec);
    add!("cpu-access-sync", cpu_access_sync);
    add!("lifetimes/close-orders", close_orders);
    add!("lifetimes/rmmod", rmmod_while_mapped);
    for fs in TEST_FS {
        add!(format!("races/{fs}"), move |c: &Ctx| races(c, fs));
    }
    for fs in DAX_FS {
        add!(format!("races/{fs}"), move |c: &Ctx| {
            crate::dax_tests::races(c, fs)
        });
    }
    t
}

/// Asserts that a map request is refused with this errno and reason.
fn expect_refusal(
    m: &Module,
    req: raw::Map,
    errno: Errno,
    reason: MapReason,
    what: &str,
) -> TestResult {
    let mut r = req;
    match m.map_raw(&mut r) {
        Ok(_) => Err(format!("{what}: mapped, expected {errno:?} {reason}").into()),
        Err(e) => {
            let got = MapReason::from_code(r.reason);
            ensure!(
                e == errno && got == reason,
                "{what}: got {e:?} {got}, expected {errno:?} {reason}"
            );
            ensure!(
                r.dmabuf_fd == -1,
                "{what}: dmabuf_fd {} on failure",
                r.dmabuf_fd
            );
            Ok(())
        }
    }
}

fn req(fd: i32, offset: u64, length: u64, fl: u32) -> raw::Map {
    raw::Map {
        fd,
        flags: fl | flags::PIN | flags::CLOEXEC,
        offset,
        length,
        ..Default::default()
    }
}

fn query(c: &Ctx) -> TestResult {
    let q = c.module().query()?;
    ensure!(
        q.abi_version == dmafile::kmod::ABI_VERSION,
        "abi {}",
        q.abi_version
    );
    let want =
        dmafile::kmod::caps::PAGE_CACHE | dmafile::kmod::caps::WRITE | dmafile::kmod::caps::STATUS;
    ensure!(q.caps & want == want, "caps {:#x}", q.caps);
    ensure!(q.map_flags == flags::VALID, "map_flags {:#x}", q.map_flags);
    ensure!(q.page_size as u64 == PAGE, "page size {}", q.page_size);
    let ram = nix::sys::sysinfo::sysinfo()?.ram_total();
    ensure!(
        q.max_pinned_bytes > 0 && q.max_pinned_bytes <= ram,
        "max_pinned_bytes {} with {ram} bytes of RAM",
        q.max_pinned_bytes
    );
    ensure!(
        q.max_map_bytes <= q.max_pinned_bytes,
        "max_map_bytes {}",
        q.max_map_bytes
    );
    // Root has CAP_IPC_LOCK: not charged to RLIMIT_MEMLOCK.
    ensure!(
        q.memlock_limit == u64::MAX,
        "memlock_limit {}",
        q.memlock_limit
    );
    ensure!(
        q.pinned_bytes == 0 && q.nr_buffers == 0,
        "pinned before any test: {q:?}"
    );
    Ok(())
}

fn small_file(
    c: &Ctx,
    fs: &str,
    name: &str,
    len: usize,
) -> Result<(std::path::PathBuf, Vec<u8>), String> {
    let bytes = data(len, len as u64 ^ 0x5eed);
    Ok((write_file(c.fs(fs)?, name, &bytes), bytes))
}

fn refuse_invalid_argument(c: &Ctx) -> TestResult {
    let m = c.module();
    let (p, _) = small_file(c, "tmpfs", "inval.bin", 8192)?;
    let f = open_ro(&p);
    let fd = f.as_raw_fd();
    let e = Errno::EINVAL;
    let r = MapReason::InvalidArgument;
    expect_refusal(
        &m,
        raw::Map {
            pad: 1,
            ..req(fd, 0, 4096, 0)
        },
        e,
        r,
        "pad set",
    )?;
    expect_refusal(
        &m,
        raw::Map {
            reserved: [0, 7],
            ..req(fd, 0, 4096, 0)
        },
        e,
        r,
        "reserved set",
    )?;
    expect_refusal(
        &m,
        raw::Map {
            dmabuf_fd: 3,
            ..req(fd, 0, 4096, 0)
        },
        e,
        r,
        "output fd set",
    )?;
    expect_refusal(
        &m,
        raw::Map {
            backing: 1,
            ..req(fd, 0, 4096, 0)
        },
        e,
        r,
        "output backing set",
    )?;
    expect_refusal(
        &m,
        raw::Map {
            mapped_length: 1,
            ..req(fd, 0, 4096, 0)
        },
        e,
        r,
        "output length set",
    )?;
    expect_refusal(
        &m,
        raw::Map {
            reason: 2,
            ..req(fd, 0, 4096, 0)
        },
        e,
        r,
        "output reason set",
    )?;
    Ok(())
}

fn refuse_flags(c: &Ctx) -> TestResult {
    let m = c.module();
    let (p, _) = small_file(c, "tmpfs", "flags.bin", 8192)?;
    let f = open_ro(&p);
    let fd = f.as_raw_fd();
    for bit in 4..32 {
        expect_refusal(
            &m,
            req(fd, 0, 4096, 1 << bit),
            Errno::EINVAL,
            MapReason::FlagsUnsupported,
            &format!("flag bit {bit}"),
        )?;
    }
    let no_pin = raw::Map {
        fd,
        flags: flags::CLOEXEC,
        offset: 0,
        length: 4096,
        ..Default::default()
    };
    expect_refusal(
        &m,
        no_pin,
        Errno::EOPNOTSUPP,
        MapReason::PinRequired,
        "no PIN",
    )?;
    // ATOMIC is accepted on page-cache memory, and reported back.
    let b = m.map(f.as_fd(), 0, 4096, flags::ATOMIC)?;
    ensure!(
        m.status(b.as_fd())?.flags & flags::ATOMIC != 0,
        "ATOMIC not in status"
    );
    Ok(())
}

fn refuse_bad_fd(c: &Ctx) -> TestResult {
    let m = c.module();
    for fd in [-1, 100_000, i32::MAX] {
        expect_refusal(
            &m,
            req(fd, 0, 4096, 0),
            Errno::EBADF,
            MapReason::BadFd,
            &format!("fd {fd}"),
        )?;
    }
    Ok(())
}

fn refuse_wrong_kind(c: &Ctx) -> TestResult {
    let m = c.module();
    let dir = File::open(c.fs("tmpfs")?)?;
    let (rd, _wr) = nix::unistd::pipe()?;
    let (s1, _s2) = std::os::unix::net::UnixStream::pair()?;
    let null = File::open("/dev/null")?;
    let (p, _) = small_file(c, "tmpfs", "kind.bin", 8192)?;
    let f = open_ro(&p);
    let ours = m.map(f.as_fd(), 0, 4096, 0)?;
    let heap = foreign_dmabuf(8192)?;
    let opath_dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH)
        .open(c.fs("tmpfs")?)?;
    let epoll = nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC)?;
    // SAFETY: pidfd_open of our own pid returns a new fd or -1.
    let pidfd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, std::process::id(), 0) };
    ensure!(pidfd >= 0, "pidfd_open: {}", Errno::last());
    // SAFETY: pidfd is a new descriptor nothing else owns.
    let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd as i32) };
    let cases: Vec<(&str, i32)> = vec![
        ("epoll", epoll.0.as_raw_fd()),
        ("pidfd", pidfd.as_raw_fd()),
        ("directory", dir.as_raw_fd()),
        ("O_PATH directory", opath_dir.as_raw_fd()),
        ("pipe", rd.as_raw_fd()),
        ("socket", s1.as_raw_fd()),
        ("/dev/null", null.as_raw_fd()),
        ("/dev/dmafile", m.as_fd().as_raw_fd()),
        ("dmafile dma-buf", ours.as_fd().as_raw_fd()),
        ("another exporter's dma-buf", heap.as_raw_fd()),
    ];
    for (what, fd) in cases {
        expect_refusal(
            &m,
            req(fd, 0, 4096, 0),
            Errno::EINVAL,
            MapReason::NotRegularFile,
            what,
        )?;
    }
    Ok(())
}

fn refuse_not_readable(c: &Ctx) -> TestResult {
    let m = c.module();
    let (p, _) = small_file(c, "ext4", "wronly.bin", 8192)?;
    let wronly = std::fs::OpenOptions::new().write(true).open(&p)?;
    let opath = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH)
        .open(&p)?;
    let e = Errno::EBADF;
    let r = MapReason::FdNotReadable;
    expect_refusal(&m, req(wronly.as_raw_fd(), 0, 4096, 0), e, r, "O_WRONLY")?;
    expect_refusal(&m, req(opath.as_raw_fd(), 0, 4096, 0), e, r, "O_PATH")?;
    Ok(())
}

fn refuse_fs(c: &Ctx) -> TestResult {
    let m = c.module();
    let (ramfs_file, _) = small_file(c, "ramfs", "ramfs.bin", 8192)?;
    let proc_file = Path::new("/proc/self/status");
    // The guest's root is the host's, over 9p.
    let ninep_file = c.ko.clone();
    for (what, p) in [
        ("ramfs", ramfs_file.as_path()),
        ("procfs", proc_file),
        ("9p", ninep_file.as_path()),
    ] {
        let f = open_ro(p);
        expect_refusal(
            &m,
            req(f.as_raw_fd(), 0, 4096, 0),
            Errno::EOPNOTSUPP,
            MapReason::FsNotSupported,
            what,
        )?;
    }
    Ok(())
}

fn refuse_range(c: &Ctx) -> TestResult {
    let m = c.module();
    let (p, _) = small_file(c, "tmpfs", "range.bin", 3 * 4096)?;
    let f = open_ro(&p);
    let fd = f.as_raw_fd();
    let (einval, efbig) = (Errno::EINVAL, Errno::EFBIG);
    for off in [1, 512, 4095, 4097] {
        expect_refusal(
            &m,
            req(fd, off, 4096, 0),
            einval,
            MapReason::Unaligned,
            &format!("offset {off}"),
        )?;
    }
    expect_refusal(
        &m,
        req(fd, 0, 0, 0),
        einval,
        MapReason::InvalidRange,
        "length 0",
    )?;
    expect_refusal(
        &m,
        req(fd, u64::MAX - 4095, 8192, 0),
        einval,
        MapReason::InvalidRange,
        "offset+length overflows",
    )?;
    expect_refusal(
        &m,
        req(fd, 0, u64::MAX, 0),
        einval,
        MapReason::InvalidRange,
        "length u64::MAX",
    )?;
    // The numbers are judged before the descriptor: a range whose end,
    // rounded up to a page, wraps is invalid whatever the fd.
    for (what, fd) in [("a file", fd), ("a closed fd", 100_000)] {
        for len in [1, 4095] {
            expect_refusal(
                &m,
                req(fd, u64::MAX - 4095, len, 0),
                einval,
                MapReason::InvalidRange,
                &format!("last page of u64 + {len} with {what}"),
            )?;
        }
    }
    expect_refusal(
        &m,
        req(fd, 0, u64::MAX - 4095, 0),
        einval,
        MapReason::InvalidRange,
        "length rounds past u64",
    )?;
    expect_refusal(
        &m,
        req(fd, 0, 1 << 62, 0),
        efbig,
        MapReason::TooLarge,
        "length 2^62",
    )?;
    let q = m.query()?;
    expect_refusal(
        &m,
        req(fd, 0, q.max_map_bytes + 1, 0),
        efbig,
        MapReason::TooLarge,
        "max_map_bytes + 1",
    )?;
    // Past 2^28 pages the page array would pass INT_MAX bytes, which the
    // kernel's allocator refuses with a warning: too large whatever the caps.
    {
        let _cap = Param::set("max_pinned_bytes", &(1u64 << 50).to_string())?;
        expect_refusal(
            &m,
            req(fd, 0, 2 << 40, 0),
            efbig,
            MapReason::TooLarge,
            "2 TiB with the cap raised",
        )?;
    }
    let past_max = (i64::MAX as u64 + 1) - 4096;
    expect_refusal(
        &m,
        req(fd, past_max, 8192, 0),
        efbig,
        MapReason::TooLarge,
        "range past the largest file",
    )?;
    Ok(())
}

fn refuse_beyond_eof(c: &Ctx) -> TestResult {
    let m = c.module();
    for fs in TEST_FS {
        let (p, _) = small_file(c, fs, "eof.bin", 10_000)?;
        let f = open_ro(&p);
        let fd = f.as_raw_fd();
        let (e, r) = (Errno::ENXIO, MapReason::BeyondEof);
        expect_refusal(
            &m,
            req(fd, 0, 12289, 0),
            e,
            r,
            &format!("{fs}: one byte past the last page"),
        )?;
        expect_refusal(
            &m,
            req(fd, 12288, 1, 0),
            e,
            r,
            &format!("{fs}: offset at rounded EOF"),
        )?;
        expect_refusal(
            &m,
            req(fd, 1 << 30, 4096, 0),
            e,
            r,
            &format!("{fs}: offset 1 GiB"),
        )?;
        // Up to EOF rounded up to a page is fine.
        let b = m.map(f.as_fd(), 8192, 12288 - 8192, 0)?;
        ensure!(b.len() == 4096, "{fs}: mapped {}", b.len());
        let empty = write_file(c.fs(fs)?, "empty.bin", &[]);
        let ef = open_ro(&empty);
        expect_refusal(
            &m,
            req(ef.as_raw_fd(), 0, 1, 0),
            e,
            r,
            &format!("{fs}: empty file"),
        )?;
    }
    Ok(())
}

const FS_IOC_GETFLAGS: u64 =
    nix::request_code_read!(b'f', 1, std::mem::size_of::<nix::libc::c_long>()) as u64;
const FS_IOC_SETFLAGS: u64 =
    nix::request_code_write!(b'f', 2, std::mem::size_of::<nix::libc::c_long>()) as u64;
const FS_IMMUTABLE_FL: i32 = 0x10;
const FS_APPEND_FL: i32 = 0x20;

fn set_inode_flags(f: &File, set: i32) -> Result<(), Errno> {
    let mut cur: i32 = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read/write one int.
    Errno::result(unsafe { nix::libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut cur) })?;
    let new = (cur & !(FS_IMMUTABLE_FL | FS_APPEND_FL)) | set;
    // SAFETY: as above.
    Errno::result(unsafe { nix::libc::ioctl(f.as_raw_fd(), FS_IOC_SETFLAGS as _, &new) })?;
    Ok(())
}

fn memfd(name: &str, bytes: &[u8]) -> Result<File, Errno> {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: plain syscall with a valid C string.
    let fd = Errno::result(unsafe {
        nix::libc::memfd_create(
            name.as_ptr(),
            nix::libc::MFD_CLOEXEC | nix::libc::MFD_ALLOW_SEALING,
        )
    })?;
    // SAFETY: a fresh fd we own.
    let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.write_all_at(bytes, 0).map_err(|_| Errno::EIO)?;
    Ok(f)
}

fn add_seals(f: &File, seals: i32) -> Result<(), Errno> {
    // SAFETY: plain fcntl.
    Errno::result(unsafe { nix::libc::fcntl(f.as_raw_fd(), nix::libc::F_ADD_SEALS, seals) })?;
    Ok(())
}

fn refuse_write(c: &Ctx) -> TestResult {
    let m = c.module();
    let (p, _) = small_file(c, "tmpfs", "w.bin", 8192)?;
    let ro = open_ro(&p);
    expect_refusal(
        &m,
        req(ro.as_raw_fd(), 0, 4096, flags::WRITE),
        Errno::EBADF,
        MapReason::FdNotWritable,
        "read-only fd",
    )?;

    let sealed = memfd("sealed", &[7u8; 8192])?;
    add_seals(&sealed, nix::libc::F_SEAL_WRITE)?;
    expect_refusal(
        &m,
        req(sealed.as_raw_fd(), 0, 4096, flags::WRITE),
        Errno::EPERM,
        MapReason::Sealed,
        "F_SEAL_WRITE",
    )?;
    // A sealed memfd still maps read-only.
    drop(m.map(sealed.as_fd(), 0, 8192, 0)?);
    // While a WRITE mapping pins a memfd's pages, F_SEAL_WRITE cannot be
    // added: the kernel waits for the pins and gives up with EBUSY.
    let pinned = memfd("pinned", &[7u8; 8192])?;
    let w = m.map(pinned.as_fd(), 0, 8192, flags::WRITE)?;
    let r = add_seals(&pinned, nix::libc::F_SEAL_WRITE);
    ensure!(
        r == Err(Errno::EBUSY),
        "F_SEAL_WRITE under a WRITE mapping: {r:?}"
    );
    drop(w);
    add_seals(&pinned, nix::libc::F_SEAL_WRITE)?;
    let future = memfd("future", &[7u8; 8192])?;
    add_seals(&future, 0x0010 /* F_SEAL_FUTURE_WRITE */)?;
    expect_refusal(
        &m,
        req(future.as_raw_fd(), 0, 4096, flags::WRITE),
        Errno::EPERM,
        MapReason::Sealed,
        "F_SEAL_FUTURE_WRITE",
    )?;

    for (what, fl) in [
        ("immutable", FS_IMMUTABLE_FL),
        ("append-only", FS_APPEND_FL),
    ] {
        let (p, _) = small_file(c, "tmpfs", &format!("{what}.bin"), 8192)?;
        let f = open_rw(&p);
        set_inode_flags(&f, fl)?;
        let r = expect_refusal(
            &m,
            req(f.as_raw_fd(), 0, 4096, flags::WRITE),
            Errno::EPERM,
            MapReason::Immutable,
            what,
        );
        set_inode_flags(&f, 0)?;
        r?;
        // Without the attribute the same request succeeds on tmpfs.
        drop(m.map(f.as_fd(), 0, 4096, flags::WRITE)?);
    }
    Ok(())
}

fn refuse_write_pin(c: &Ctx) -> TestResult {
    let m = c.module();
    // ext4-dax and xfs-dax: storage-direct mappings are read-only.
    for fs in ["ext4", "xfs", "btrfs", "ext4-dax", "xfs-dax"] {
        let (p, orig) = small_file(c, fs, "wpin.bin", 8192)?;
        let f = open_rw(&p);
        expect_refusal(
            &m,
            req(f.as_raw_fd(), 0, 8192, flags::WRITE),
            Errno::EOPNOTSUPP,
            MapReason::WritePinNotAllowed,
            fs,
        )?;
        // Read-only mappings of the same file are fine (on DAX, with the
        // file open for writing nowhere).
        drop(f);
        let b = m.map(open_ro(&p).as_fd(), 0, 8192, 0)?;
        ensure!(dmabuf_bytes(b.as_fd(), b.len())? == orig, "{fs}: content");
    }
    Ok(())
}

fn refuse_memlock(c: &Ctx) -> TestResult {
    let m = c.module();
    let (p, _) = small_file(c, "tmpfs", "memlock.bin", 256 * 1024)?;
    let f = open_ro(&p);
    // In a child that gives up root (and with it CAP_IPC_LOCK), with a
    // 64 KiB RLIMIT_MEMLOCK. Exit codes name the step that failed.
    let st = in_child(|| {
        use nix::sys::resource::{setrlimit, Resource};
        if setrlimit(Resource::RLIMIT_MEMLOCK, 65536, 65536).is_err() {
            return 10;
        }
        if nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).is_err() {
            return 11;
        }
        match m.query() {
            Ok(q) if q.memlock_limit == 65536 && q.user_pinned_bytes == 0 => {}
            _ => return 12,
        }
        let a = match m.map(f.as_fd(), 0, 32768, 0) {
            Ok(a) => a,
            Err(_) => return 13,
        };
        match m.query() {
            Ok(q) if q.user_pinned_bytes == 32768 => {}
            _ => return 14,
        }
        match m.map(f.as_fd(), 0, 65536, 0) {
            Err(e) if e.errno == Errno::ENOMEM && e.reason == MapReason::MemlockLimit => {}
            _ => return 15,
        }
        // Exactly up to the limit is allowed.
        let b = match m.map(f.as_fd(), 32768, 32768, 0) {
            Ok(b) => b,
            Err(_) => return 16,
        };
        drop((a, b));
        match m.map(f.as_fd(), 0, 65536, 0) {
            Ok(_) => 0,
            Err(_) => 17,
        }
    });
    ensure!(matches!(st, WaitStatus::Exited(_, 0)), "child: {st:?}");
    Ok(())
}

/// RLIMIT_MEMLOCK is checked before anything is allocated: a user whose
/// limit refuses a huge mapping does not make the kernel allocate its page
/// array first (seen with the alloc_vmap_area trace event).
fn refuse_memlock_first(c: &Ctx) -> TestResult {
    let m = c.module();
    // A sparse 8 GiB file: 2M pages, a 16 MiB page array.
    let len = 8u64 << 30;
    let p = c.fs("tmpfs")?.join("sparse-huge.bin");
    let _ = std::fs::remove_file(&p);
    File::create(&p)?.set_len(len)?;
    let f = open_ro(&p);
    let _cap = Param::set("max_pinned_bytes", &(len * 2).to_string())?;
    let trace = Path::new("/sys/kernel/tracing");
    if !trace.join("events").exists() {
        nix::mount::mount(
            Some("tracefs"),
            trace,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )?;
    }
    let event = trace.join("events/vmalloc/alloc_vmap_area");
    if !event.exists() {
        crate::skip!("this kernel has no vmalloc:alloc_vmap_area trace event (6.3 added it) to watch allocations with");
    }
    std::fs::write(event.join("filter"), format!("size >= {}", len / 4096 * 8))?;
    std::fs::write(trace.join("trace"), "")?;
    std::fs::write(event.join("enable"), "1")?;
    let st = in_child(|| {
        use nix::sys::resource::{setrlimit, Resource};
        if setrlimit(Resource::RLIMIT_MEMLOCK, 65536, 65536).is_err()
            || nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).is_err()
        {
            return 10;
        }
        match m.map(f.as_fd(), 0, len, 0) {
            Err(e) if e.errno == Errno::ENOMEM && e.reason == MapReason::MemlockLimit => 0,
            Err(e) => {
                println!("     refused with {e}");
                11
            }
            Ok(_) => 12,
        }
    });
    std::fs::write(event.join("enable"), "0")?;
    std::fs::write(event.join("filter"), "0")?;
    let log = std::fs::read_to_string(trace.join("trace"))?;
    std::fs::remove_file(&p)?;
    ensure!(matches!(st, WaitStatus::Exited(_, 0)), "child: {st:?}");
    let allocs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("alloc_vmap_area:"))
        .collect();
    ensure!(
        allocs.is_empty(),
        "the refused request allocated its page array first: {allocs:?}"
    );
    Ok(())
}

/// Sets a module parameter for the test's duration.
struct Param {
    path: std::path::PathBuf,
    old: String,
}

impl Param {
    fn set(name: &str, value: &str) -> Result<Param, std::io::Error> {
        let path = Path::new("/sys/module/dmafile/parameters").join(name);
        let old = std::fs::read_to_string(&path)?.trim().to_string();
        std::fs::write(&path, value)?;
        Ok(Param { path, old })
    }
}

impl Drop for Param {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, &self.old);
    }
}

fn refuse_global_limit(c: &Ctx) -> TestResult {
    let m = c.module();
    let (p, _) = small_file(c, "tmpfs", "global.bin", 4 * MIB)?;
    let f = open_ro(&p);
    let _cap = Param::set("max_pinned_bytes", &(MIB as u64).to_string())?;
    ensure!(m.query()?.max_pinned_bytes == MIB as u64, "cap not applied");
    let a = m.map(f.as_fd(), 0, 768 * 1024, 0)?;
    let fd = f.as_raw_fd();
    expect_refusal(
        &m,
        req(fd, 0, 512 * 1024, 0),
        Errno::ENOMEM,
        MapReason::GlobalLimit,
        "over the cap",
    )?;
    expect_refusal(
        &m,
        req(fd, 0, 2 * MIB as u64, 0),
        Errno::EFBIG,
        MapReason::TooLarge,
        "larger than the cap",
    )?;
    drop(m.map(f.as_fd(), 0, 256 * 1024, 0)?);
    drop(a);
    drop(m.map(f.as_fd(), 0, MIB as u64, 0)?);
    Ok(())
}

fn ioctl_abi(c: &Ctx) -> TestResult {
    let m = c.module();
    let (p, _) = small_file(c, "tmpfs", "abi.bin", 8192)?;
    let f = open_ro(&p);
    let dev = m.as_fd().as_raw_fd();
    let size = std::mem::size_of::<raw::Map>();
    // A newer caller's larger struct: zero tail accepted, non-zero refused.
    let mut big = vec![0u8; size + 16];
    let r = req(f.as_raw_fd(), 0, 4096, 0);
    // SAFETY: raw::Map is plain old data.
    let bytes = unsafe { std::slice::from_raw_parts(&r as *const raw::Map as *const u8, size) };
    big[..size].copy_from_slice(bytes);
    let ioc = |nr: u8, len: usize| nix::request_code_readwrite!(0xDF, nr, len);
    let call = |code: u64, buf: &mut [u8]| -> Result<i32, Errno> {
        // SAFETY: buf is at least as long as the size encoded in code.
        Errno::result(unsafe { nix::libc::ioctl(dev, code as _, buf.as_mut_ptr()) })
    };
    call(ioc(1, size + 16), &mut big)?;
    let fd = i32::from_ne_bytes(big[24..28].try_into().unwrap());
    ensure!(fd > 0, "larger struct: no fd back");
    // SAFETY: the kernel gave us this fd.
    drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    big[24..28].copy_from_slice(&[0; 4]);
    big[40..48].copy_from_slice(&[0; 8]);
    big[size + 8] = 1;
    ensure!(
        call(ioc(1, size + 16), &mut big) == Err(Errno::E2BIG),
        "non-zero tail accepted"
    );
    let mut small = big[..16].to_vec();
    ensure!(
        call(ioc(1, 16), &mut small) == Err(Errno::EINVAL),
        "truncated struct accepted"
    );
    let mut q = vec![0u8; std::mem::size_of::<raw::Query>()];
    ensure!(
        call(ioc(9, q.len()), &mut q) == Err(Errno::ENOTTY),
        "unknown nr"
    );
    let wrong_magic = nix::request_code_readwrite!(b'X', 0, q.len()) as u64;
    ensure!(
        call(wrong_magic, &mut q) == Err(Errno::ENOTTY),
        "wrong magic"
    );
    let write_only = nix::request_code_write!(0xDF, 0, q.len()) as u64;
    ensure!(
        call(write_only, &mut q) == Err(Errno::ENOTTY),
        "wrong direction"
    );
    let last = q.len() - 1;
    q[last] = 1;
    ensure!(
        call(ioc(0, q.len()), &mut q) == Err(Errno::EINVAL),
        "query with reserved set"
    );
    // Status of things that are not our dma-bufs.
    let heap = foreign_dmabuf(4096)?;
    ensure!(
        m.status(heap.as_fd()) == Err(Errno::EINVAL),
        "status of a dma-heap buffer"
    );
    ensure!(
        m.status(f.as_fd()) == Err(Errno::EINVAL),
        "status of a regular file"
    );
    // SAFETY: fd 100000 is not open; the ioctl only reads the number.
    let bad = unsafe { std::os::fd::BorrowedFd::borrow_raw(100_000) };
    ensure!(m.status(bad) == Err(Errno::EBADF), "status of a closed fd");
    Ok(())
}

fn drop_caches() {
    nix::unistd::sync();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        })
        .unwrap_or(0)
}

fn first_diff(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "first difference at byte {i}: {:#04x} != {:#04x}",
            a[i], b[i]
        ),
        None => format!("lengths {} != {}", a.len(), b.len()),
    }
}

fn content(c: &Ctx, fs: &str) -> TestResult {
    let m = c.module();
    let dir = c.fs(fs)?;
    let size = if fs == "tmpfs-huge" {
        5 * MIB + 1234
    } else {
        3 * MIB + 1234
    };
    let bytes = data(size, 0xc0ffee ^ size as u64);
    let p = write_file(dir, "content.bin", &bytes);
    if fs == "tmpfs-huge" {
        ensure!(
            meminfo("ShmemHugePages:") >= 2048,
            "no huge pages on tmpfs huge=always"
        );
    } else {
        // Read back from the disk: readahead makes large folios (xfs).
        drop_caches();
    }
    let f = open_ro(&p);
    let size = size as u64;
    let last = size / PAGE * PAGE;
    let cases = [
        (0, size),
        (0, 1),
        (PAGE, PAGE),
        (3 * PAGE, 10_000),
        (last, size - last),
        (last - PAGE, page_align(size) - (last - PAGE)),
        (2 * MIB as u64 - 2 * PAGE, 4 * PAGE),
        (MIB as u64, 2 * MIB as u64 + 1),
        (0, page_align(size)),
    ];
    for (off, len) in cases {
        let b = m.map(f.as_fd(), off, len, 0)?;
        ensure!(
            b.backing() == Backing::PageCache,
            "{off}+{len}: backing {}",
            b.backing()
        );
        ensure!(
            b.len() == page_align(len),
            "{off}+{len}: mapped {}",
            b.len()
        );
        // lavapipe sizes an import with lseek(SEEK_END).
        let mut dup = File::from(b.as_fd().try_clone_to_owned()?);
        ensure!(
            dup.seek(SeekFrom::End(0))? == b.len(),
            "{off}+{len}: SEEK_END"
        );
        let got = dmabuf_bytes(b.as_fd(), b.len())?;
        let want = expected(&bytes, off, b.len());
        ensure!(got == want, "{fs} {off}+{len}: {}", first_diff(&got, &want));
        if b.len() > PAGE {
            // A mapping at a page offset into the dma-buf.
            let part =
                Mapping::new(b.as_fd(), PAGE as usize, ProtFlags::PROT_READ, PAGE as i64)?.read();
            ensure!(
                part == want[PAGE as usize..2 * PAGE as usize],
                "{off}+{len}: mapping at offset {PAGE}"
            );
        }
    }
    Ok(())
}

fn coherence(c: &Ctx, fs: &str) -> TestResult {
    let m = c.module();
    let mut bytes = data(64 * 1024 + 100, 77);
    let p = write_file(c.fs(fs)?, "coherence.bin", &bytes);
    let f = open_rw(&p);
    let b = m.map(f.as_fd(), 0, bytes.len() as u64, 0)?;
    let map = Mapping::new(b.as_fd(), b.len() as usize, ProtFlags::PROT_READ, 0)?;
    let new = data(9000, 78);
    f.write_all_at(&new, 5000)?;
    bytes[5000..14000].copy_from_slice(&new);
    let want = expected(&bytes, 0, b.len());
    let got = map.read();
    ensure!(
        got == want,
        "{fs}: existing mapping after write(): {}",
        first_diff(&got, &want)
    );
    let got = dmabuf_bytes(b.as_fd(), b.len())?;
    ensure!(
        got == want,
        "{fs}: new mapping after write(): {}",
        first_diff(&got, &want)
    );
    ensure!(
        !m.status(b.as_fd())?.stale(),
        "{fs}: stale after an in-place write"
    );
    Ok(())
}

fn status(c: &Ctx, fs: &str) -> TestResult {
    let m = c.module();
    let bytes = data(8 * 4096 + 300, 99);
    let p = write_file(c.fs(fs)?, "status.bin", &bytes);
    let f = open_rw(&p);
    let b = m.map(f.as_fd(), 4096, 5 * 4096, flags::ATOMIC)?;
    let st = m.status(b.as_fd())?;
    let md = std::fs::metadata(&p)?;
    let (maj, min) = (
        nix::sys::stat::major(md.dev()) as u32,
        nix::sys::stat::minor(md.dev()) as u32,
    );
    ensure!(
        st.dev_major == maj && st.dev_minor == min,
        "{fs}: dev {}:{} != stat {maj}:{min}",
        st.dev_major,
        st.dev_minor
    );
    ensure!(st.ino == md.ino(), "{fs}: ino {} != {}", st.ino, md.ino());
    ensure!(
        st.offset == 4096 && st.length == 5 * 4096,
        "{fs}: range {}+{}",
        st.offset,
        st.length
    );
    ensure!(
        st.flags == flags::PIN | flags::CLOEXEC | flags::ATOMIC,
        "{fs}: flags {:#x}",
        st.flags
    );
    ensure!(
        st.backing() == Backing::PageCache,
        "{fs}: backing {}",
        st.backing()
    );
    ensure!(
        st.file_size == bytes.len() as u64 && st.state == 0 && st.stale_pages == 0,
        "{fs}: {st:?}"
    );
    // Truncate into the second mapped page (file page 2): mapped pages 0
    // and 1 stay the file's, page 1 zeroed past the new EOF; pages 2..4 are
    // past EOF, stale. Those keep their old bytes where the page cache
    // dropped them, or read as zeros where it zeroed a large folio it
    // could not split; never anything else.
    f.set_len(2 * 4096 + 100)?;
    let st = m.status(b.as_fd())?;
    ensure!(
        st.stale() && st.stale_pages == 3,
        "{fs}: after truncate: {st:?}"
    );
    ensure!(
        st.file_size == 2 * 4096 + 100,
        "{fs}: size {}",
        st.file_size
    );
    let got = dmabuf_bytes(b.as_fd(), b.len())?;
    let old = &bytes[4096..6 * 4096];
    let mut want = old[..2 * 4096].to_vec();
    want[4096 + 100..].fill(0);
    ensure!(
        got[..2 * 4096] == want[..],
        "{fs}: after truncate: {}",
        first_diff(&got, &want)
    );
    for pg in 2..5 {
        let r = pg * 4096..(pg + 1) * 4096;
        ensure!(
            got[r.clone()] == old[r.clone()] || got[r.clone()].iter().all(|&v| v == 0),
            "{fs}: stale page {pg} is neither its old bytes nor zeros"
        );
    }
    std::fs::remove_file(&p)?;
    ensure!(
        m.status(b.as_fd())?.unlinked(),
        "{fs}: unlinked not reported"
    );
    Ok(())
}

fn vgem_import(c: &Ctx) -> TestResult {
    use drm::control::Device as _;
    let m = c.module();
    let (p, bytes) = small_file(c, "ext4", "vgem.bin", 64 * 1024 + 100)?;
    let f = open_ro(&p);
    let b = m.map(f.as_fd(), 0, bytes.len() as u64, 0)?;
    let len = b.len();
    let vgem = Vgem::open()?;
    // attach + map_dma_buf for vgem's device happen here.
    let h = vgem.prime_fd_to_buffer(b.as_fd())?;
    let h2 = vgem.prime_fd_to_buffer(b.as_fd())?;
    ensure!(h == h2, "a second import gave another handle");
    drop(b);
    drop(f);
    let q = m.query()?;
    ensure!(
        q.pinned_bytes == len && q.nr_buffers == 1,
        "vgem's import does not hold the buffer: {q:?}"
    );
    // Exporting vgem's handle gives back our dma-buf, with our status.
    let again = vgem.buffer_to_prime_fd(h, (nix::libc::O_RDWR | nix::libc::O_CLOEXEC) as u32)?;
    let st = m.status(again.as_fd())?;
    ensure!(
        st.ino == std::fs::metadata(&p)?.ino() && st.length == len,
        "re-export: {st:?}"
    );
    let got = dmabuf_bytes(again.as_fd(), len)?;
    ensure!(
        got == expected(&bytes, 0, len),
        "content through vgem's re-export"
    );
    vgem.close_buffer(h)?;
    ensure!(
        m.query()?.nr_buffers == 1,
        "fd from vgem no longer holds the buffer"
    );
    drop(again);
    ensure!(
        m.query()?.pinned_bytes == 0,
        "pins left after vgem closed its handle"
    );
    Ok(())
}

fn write_through(c: &Ctx, f: &File, len: usize) -> TestResult {
    let m = c.module();
    let b = m.map(f.as_fd(), 0, len as u64, flags::WRITE)?;
    ensure!(b.writable(), "not writable");
    let map = Mapping::new(
        b.as_fd(),
        b.len() as usize,
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
        0,
    )?;
    map.write_at(100, b"written through the dma-buf");
    map.write_at(2 * 4096 + 5, b"tail page");
    drop(map);
    drop(b);
    Ok(())
}

fn write_mapping_tmpfs(c: &Ctx) -> TestResult {
    let len = 3 * 4096 + 10;
    let (p, mut orig) = small_file(c, "tmpfs", "write.bin", len)?;
    let f = open_rw(&p);
    write_through(c, &f, len)?;
    drop(f);
    orig[100..127].copy_from_slice(b"written through the dma-buf");
    orig[2 * 4096 + 5..2 * 4096 + 14].copy_from_slice(b"tail page");
    let now = std::fs::read(&p)?;
    ensure!(
        now == orig,
        "file after the write mapping closed: {}",
        first_diff(&now, &orig)
    );
    Ok(())
}

/// tmpfs huge=always puts the file in huge pages. A pinned huge page cannot
/// be split, so a truncation into it zeroes its tail and leaves it in the
/// page cache: stores made past the new end of file would come back when
/// the file grows again. Writable mappings of huge pages are refused; the
/// same file mapped read-only is fine, and shows the zeroed tail after a
/// truncation.
fn write_mapping_huge(c: &Ctx) -> TestResult {
    let m = c.module();
    let (p, orig) = small_file(c, "tmpfs-huge", "huge-write.bin", 4 * MIB)?;
    let f = open_rw(&p);
    expect_refusal(
        &m,
        req(f.as_raw_fd(), 0, 4 * MIB as u64, flags::WRITE),
        Errno::EOPNOTSUPP,
        MapReason::WritePinNotAllowed,
        "WRITE of huge pages",
    )?;
    let b = m.map(f.as_fd(), 0, 4 * MIB as u64, 0)?;
    ensure!(
        dmabuf_bytes(b.as_fd(), b.len())? == orig,
        "huge pages read-only"
    );
    f.set_len(MIB as u64)?;
    f.set_len(4 * MIB as u64)?;
    ensure!(
        std::fs::read(&p)?[MIB..].iter().all(|&x| x == 0),
        "the file does not read zeros where it was truncated and grown"
    );
    Ok(())
}

fn write_mapping_memfd(c: &Ctx) -> TestResult {
    let len = 3 * 4096 + 10;
    let mut orig = data(len, 5);
    let f = memfd("write", &orig)?;
    write_through(c, &f, len)?;
    orig[100..127].copy_from_slice(b"written through the dma-buf");
    orig[2 * 4096 + 5..2 * 4096 + 14].copy_from_slice(b"tail page");
    let mut now = vec![0u8; len];
    f.read_exact_at(&mut now, 0)?;
    ensure!(
        now == orig,
        "memfd after the write mapping closed: {}",
        first_diff(&now, &orig)
    );
    Ok(())
}

fn readonly_mapping(c: &Ctx, fs: &str) -> TestResult {
    let m = c.module();
    let (p, orig) = small_file(c, fs, "readonly.bin", 2 * 4096)?;
    // Even with a writable fd, a mapping without WRITE never writes.
    let f = open_rw(&p);
    let b = m.map(f.as_fd(), 0, 8192, 0)?;
    // Mesa maps PROT_READ|PROT_WRITE: that must succeed.
    let map = Mapping::new(
        b.as_fd(),
        8192,
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
        0,
    )?;
    ensure!(map.read() == orig, "{fs}: content");
    let st = in_child(|| {
        map.write_at(10, b"must not land");
        0
    });
    ensure!(
        matches!(st, WaitStatus::Signaled(_, Signal::SIGSEGV, _)),
        "{fs}: store through a read-only mapping: {st:?}"
    );
    let ro = Mapping::new(b.as_fd(), 8192, ProtFlags::PROT_READ, 0)?;
    // SAFETY: changes protection of our own mapping only.
    let r = unsafe {
        mprotect(
            ro.addr(),
            ro.len(),
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
        )
    };
    ensure!(r == Err(Errno::EACCES), "{fs}: mprotect(PROT_WRITE): {r:?}");
    let private = Mapping::with_flags(
        b.as_fd(),
        8192,
        ProtFlags::PROT_READ,
        MapFlags::MAP_PRIVATE,
        0,
    );
    ensure!(
        matches!(private, Err(Errno::EINVAL)),
        "{fs}: MAP_PRIVATE mapping was not refused"
    );
    drop((map, ro, b));
    ensure!(std::fs::read(&p)? == orig, "{fs}: file changed");
    Ok(())
}

/// No importer executes file data: a dma-buf's CPU mapping is never
/// executable, so that a file on a noexec mount cannot be run through one.
fn no_exec(c: &Ctx) -> TestResult {
    let dir = Path::new("/tmp/dmafile/noexec");
    std::fs::create_dir_all(dir)?;
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOEXEC,
        Some("size=1M"),
    )?;
    let r = (|| -> TestResult {
        // x86-64 "mov eax, 42; ret": what an attacker would jump to.
        let code = [0xB8, 42, 0, 0, 0, 0xC3];
        let p = write_file(dir, "code.bin", &code);
        let f = open_ro(&p);
        ensure!(
            Mapping::new(
                f.as_fd(),
                4096,
                ProtFlags::PROT_READ | ProtFlags::PROT_EXEC,
                0
            )
            .err()
                == Some(Errno::EPERM),
            "the noexec mount itself lets the file be mapped executable"
        );
        let b = c.module().map(f.as_fd(), 0, 4096, 0)?;
        let exec = Mapping::new(
            b.as_fd(),
            4096,
            ProtFlags::PROT_READ | ProtFlags::PROT_EXEC,
            0,
        );
        ensure!(
            exec.as_ref().err() == Some(&Errno::EPERM),
            "mmap(PROT_EXEC) of the dma-buf: {:?}",
            exec.as_ref().map(|_| ())
        );
        let ro = Mapping::new(b.as_fd(), 4096, ProtFlags::PROT_READ, 0)?;
        // SAFETY: changes the protection of our own mapping; expected to fail.
        let r = unsafe { mprotect(ro.addr(), 4096, ProtFlags::PROT_READ | ProtFlags::PROT_EXEC) };
        ensure!(
            r == Err(Errno::EACCES),
            "mprotect(PROT_EXEC) of the dma-buf: {r:?}"
        );
        Ok(())
    })();
    nix::mount::umount(dir)?;
    r
}

fn cpu_access_sync(c: &Ctx) -> TestResult {
    use dmafile::kmod::{dma_buf_sync, sync};
    let m = c.module();
    let (p, bytes) = small_file(c, "ext4", "sync.bin", 3 * 4096)?;
    let f = open_ro(&p);
    let b = m.map(f.as_fd(), 0, 3 * 4096, 0)?;
    let vgem = Vgem::open()?;
    use drm::control::Device as _;
    // With an importer attached and mapped, syncs walk its mapping.
    let h = vgem.prime_fd_to_buffer(b.as_fd())?;
    for fl in [
        sync::START | sync::READ,
        sync::END | sync::READ,
        sync::START | sync::RW,
        sync::END | sync::RW,
    ] {
        dma_buf_sync(b.as_fd(), fl)?;
    }
    ensure!(
        dmabuf_bytes(b.as_fd(), b.len())? == bytes,
        "content after syncs"
    );
    vgem.close_buffer(h)?;
    Ok(())
}

fn close_orders(c: &Ctx) -> TestResult {
    use drm::control::Device as _;
    let (p, bytes) = small_file(c, "xfs", "orders.bin", 4 * 4096)?;
    // Holders of the pins: the file fd, the dma-buf fd, vgem's import
    // (closed by handle or by closing vgem's fd) and a CPU mapping.
    let perms = permutations(4);
    for by_handle in [true, false] {
        for order in &perms {
            let m = c.module();
            let f = Some(open_ro(&p));
            let b = m.map(f.as_ref().unwrap().as_fd(), 0, 4 * 4096, 0)?;
            let len = b.len();
            let vgem = Vgem::open()?;
            let h = vgem.prime_fd_to_buffer(b.as_fd())?;
            let map = Mapping::new(b.as_fd(), len as usize, ProtFlags::PROT_READ, 0)?;
            let want = expected(&bytes, 0, len);
            let mut holders: [Option<Box<dyn FnOnce()>>; 4] = [
                Some(Box::new(move || drop(f))),
                Some(Box::new(move || drop(b))),
                Some(Box::new(move || {
                    if by_handle {
                        vgem.close_buffer(h).expect("close vgem handle");
                    }
                    drop(vgem);
                })),
                Some(Box::new(move || {
                    assert_eq!(map.read(), want, "content through the CPU mapping");
                    drop(map);
                })),
            ];
            for (i, &k) in order.iter().enumerate() {
                (holders[k].take().unwrap())();
                let q = m.query()?;
                // Only the file fd does not hold the buffer.
                let left = order[i + 1..].iter().any(|&j| j != 0);
                ensure!(
                    (q.nr_buffers == 1) == left,
                    "order {order:?} (vgem closed by {}): after closing #{k}: {} buffers",
                    if by_handle { "handle" } else { "fd" },
                    q.nr_buffers
                );
            }
        }
    }
    Ok(())
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

pub fn delete_module() -> Result<(), Errno> {
    unload_module("dmafile")
}

pub fn load_module(ko: &Path, params: &str) -> Result<(), Errno> {
    let f = File::open(ko).map_err(|_| Errno::ENOENT)?;
    let params = std::ffi::CString::new(params).unwrap();
    nix::kmod::finit_module(&f, &params, nix::kmod::ModuleInitFlags::empty())?;
    // devtmpfs creates /dev/dmafile asynchronously to the load.
    for _ in 0..200 {
        if Path::new(dmafile::kmod::DEVICE).exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(Errno::ENODEV)
}

/// Reloads the module with default parameters however the test ends.
pub struct Reload<'a>(pub &'a Path);

impl Drop for Reload<'_> {
    fn drop(&mut self) {
        if !Path::new("/sys/module/dmafile").exists() {
            load_module(self.0, "").expect("reload dmafile");
        }
    }
}

fn rmmod_while_mapped(c: &Ctx) -> TestResult {
    let _reload = Reload(&c.ko);
    let (p, bytes) = small_file(c, "btrfs", "rmmod.bin", 3 * 4096)?;
    let f = open_ro(&p);
    let m = c.module();
    let b = m.map(f.as_fd(), 0, 3 * 4096, 0)?;
    drop(m);
    // The module is in use while a dma-buf lives: the kernel says
    // EWOULDBLOCK.
    let r = delete_module();
    ensure!(
        r == Err(Errno::EWOULDBLOCK),
        "rmmod with a live dma-buf: {r:?}"
    );
    ensure!(
        dmabuf_bytes(b.as_fd(), b.len())? == bytes,
        "content after a refused rmmod"
    );
    // An open /dev/dmafile holds the module too.
    let m = c.module();
    drop(b);
    let r = delete_module();
    ensure!(
        r == Err(Errno::EWOULDBLOCK),
        "rmmod with /dev/dmafile open: {r:?}"
    );
    drop(m);
    delete_module()?;
    ensure!(
        !Path::new(dmafile::kmod::DEVICE).exists(),
        "/dev/dmafile after rmmod"
    );

    // extra_filesystems widens the allow-list.
    load_module(&c.ko, "extra_filesystems=ramfs,vfat")?;
    let (rp, rbytes) = small_file(c, "ramfs", "widened.bin", 5000)?;
    let rf = open_ro(&rp);
    let m = c.module();
    let b = m.map(rf.as_fd(), 0, 5000, 0)?;
    ensure!(
        dmabuf_bytes(b.as_fd(), b.len())? == expected(&rbytes, 0, b.len()),
        "ramfs content"
    );
    drop((b, m));
    delete_module()?;
    load_module(&c.ko, "")?;
    let m = c.module();
    expect_refusal(
        &m,
        req(rf.as_raw_fd(), 0, 4096, 0),
        Errno::EOPNOTSUPP,
        MapReason::FsNotSupported,
        "ramfs after reload",
    )?;
    Ok(())
}

/// The two contents the race writer stores at each byte position; the
/// reader accepts these or zero (holes, past EOF), nothing else.
pub fn pattern(pos: u64, gen: u64) -> u8 {
    let mut x = pos.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ gen.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    (x as u8) | 1 // never zero, so a zero is always a hole
}

pub fn page_of(page: u64, gen: u64) -> Vec<u8> {
    (page * PAGE..(page + 1) * PAGE)
        .map(|pos| pattern(pos, gen))
        .collect()
}

pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How long each race test runs: `DMAFILE_RACE_MS`, 3 s by default.
pub fn race_duration() -> Duration {
    Duration::from_millis(
        std::env::var("DMAFILE_RACE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000),
    )
}

/// Writes, truncates and hole punches against page-cache mappings (DAX
/// mounts: dax_tests::races).
pub fn races(c: &Ctx, fs: &str) -> TestResult {
    const PAGES: u64 = 64;
    let dur = race_duration();
    let p = c.fs(fs)?.join("races.bin");
    let _ = std::fs::remove_file(&p);
    let mut init = Vec::new();
    for pg in 0..PAGES {
        init.extend(page_of(pg, 0));
    }
    std::fs::write(&p, &init)?;
    let file = open_rw(&p);
    let m = c.module();
    let stop = AtomicBool::new(false);
    let (maps, refusals) = (AtomicU64::new(0), AtomicU64::new(0));
    let failure = std::sync::Mutex::new(None::<String>);
    let fail = |msg: String| {
        failure.lock().unwrap().get_or_insert(msg);
        stop.store(true, Ordering::Relaxed);
    };
    let deadline = Instant::now() + dur;
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut r = Rng(1);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let pg = r.below(PAGES);
                let _ = file.write_all_at(&page_of(pg, r.below(2)), pg * PAGE);
            }
        });
        s.spawn(|| {
            let mut r = Rng(2);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if r.below(2) == 0 {
                    let _ = file.set_len(r.below(PAGES * PAGE));
                    std::thread::sleep(Duration::from_millis(1));
                    let _ = file.set_len(PAGES * PAGE);
                } else {
                    let off = r.below(PAGES) * PAGE + r.below(2) * 100;
                    let _ = nix::fcntl::fallocate(
                        file.as_raw_fd(),
                        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                        off as i64,
                        (r.below(4) * PAGE + 1) as i64,
                    );
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        for seed in [3, 4] {
            let (m, file, stop, maps, refusals, fail) = (&m, &file, &stop, &maps, &refusals, &fail);
            s.spawn(move || {
                let mut r = Rng(seed);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let off = r.below(PAGES) * PAGE;
                    let len = (1 + r.below(16)) * PAGE - r.below(PAGE);
                    match m.map(file.as_fd(), off, len, 0) {
                        Ok(b) => {
                            maps.fetch_add(1, Ordering::Relaxed);
                            let got = match dmabuf_bytes(b.as_fd(), b.len()) {
                                Ok(g) => g,
                                Err(e) => return fail(format!("mmap of a dma-buf: {e}")),
                            };
                            for (i, &v) in got.iter().enumerate() {
                                let pos = off + i as u64;
                                if v != 0 && v != pattern(pos, 0) && v != pattern(pos, 1) {
                                    return fail(format!(
                                        "byte {v:#04x} at file offset {pos} is not the file's"
                                    ));
                                }
                            }
                            if let Err(e) = m.status(b.as_fd()) {
                                return fail(format!("status: {e}"));
                            }
                        }
                        Err(e)
                            if matches!(
                                e.reason,
                                MapReason::BeyondEof | MapReason::FileChanged
                            ) =>
                        {
                            refusals.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => return fail(format!("map {off}+{len}: {e}")),
                    }
                }
            });
        }
    });
    if let Some(msg) = failure.into_inner().unwrap() {
        return Err(format!("{fs}: {msg}").into());
    }
    let (maps, refusals) = (maps.into_inner(), refusals.into_inner());
    println!("     {fs}: {maps} mappings checked, {refusals} refused (beyond-eof, file-changed) in {dur:?}");
    ensure!(maps > 0, "{fs}: no mapping succeeded during the race");
    // After the race: a mapping goes stale when its file is truncated.
    file.set_len(PAGES * PAGE)?;
    let b = m.map(file.as_fd(), 0, PAGES * PAGE, 0)?;
    file.set_len(0)?;
    let st = m.status(b.as_fd())?;
    ensure!(
        st.stale() && st.stale_pages == PAGES,
        "{fs}: after truncate to 0: {st:?}"
    );
    Ok(())
}
