//! Storage-direct mappings of files on DAX mounts (ext4 and xfs on the
//! guest's legacy pmem): the dma-buf's pages are the pmem that holds the
//! file's blocks, the page cache stays empty, holes are refused for
//! reading and allocated for writing, truncate waits for the mapping (and
//! can be killed while it waits), and a device's writes survive a remount.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dmafile::compute::builtin;
use dmafile::kmod::{flags, Backing, MapReason};
use dmafile::{cpu, Access, DeviceBuffer, Kernel, PathKind, ReasonCode, Region, RegionOptions};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult};
use serde_json::Value;

use crate::ensure;
use crate::util::*;
use crate::TestFn;

const MIB: u64 = 1 << 20;

/// A test run once per DAX filesystem.
type PerFs = fn(&Ctx, &str) -> TestResult;

pub fn all() -> Vec<(String, TestFn)> {
    let mut t: Vec<(String, TestFn)> = vec![(
        "dax/stream-direct".into(),
        Box::new(stream_direct) as TestFn,
    )];
    let per_fs: [(&str, PerFs); 5] = [
        ("map", map_dax),
        ("holes", holes),
        ("truncate-waits", truncate_waits),
        ("held-mapping", held_mapping),
        ("write-remount", write_remount),
    ];
    for fs in DAX_FS {
        for (name, f) in per_fs {
            t.push((
                format!("dax/{name}/{fs}"),
                Box::new(move |c: &Ctx| f(c, fs)),
            ));
        }
    }
    t.push(("dax/not-dax-same-pmem".into(), Box::new(not_dax_same_pmem)));
    t
}

/// Pages of `p` in the page cache (mincore of a fresh mapping, which
/// faults nothing in).
pub fn cached_pages(p: &Path) -> Result<usize, String> {
    let f = File::open(p).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
    if len == 0 {
        return Ok(0);
    }
    let m = Mapping::new(f.as_fd(), len, nix::sys::mman::ProtFlags::PROT_READ, 0)
        .map_err(|e| format!("mmap {}: {e}", p.display()))?;
    let mut vec = vec![0u8; len.div_ceil(4096)];
    // SAFETY: the mapping covers len bytes; vec has a byte per page.
    let r = unsafe { nix::libc::mincore(m.addr().as_ptr(), len, vec.as_mut_ptr()) };
    if r != 0 {
        return Err(format!("mincore: {}", Errno::last()));
    }
    Ok(vec.iter().filter(|&&b| b & 1 != 0).count())
}

fn sh(cmd: &str, args: &[&str]) -> TestResult {
    let o = Command::new(cmd).args(args).output()?;
    ensure!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

fn remount(c: &Ctx, fs: &str, opts: &str) -> TestResult {
    let dir = c.fs(fs)?.to_str().unwrap().to_string();
    let dev = c.pmem(fs)?.to_str().unwrap().to_string();
    sh("umount", &[&dir])?;
    sh("mount", &["-o", opts, &dev, &dir])
}

fn stream_direct(c: &Ctx) -> TestResult {
    let mut files = vec![];
    for (i, fs) in DAX_FS.iter().enumerate() {
        let bytes = data(3 * MIB as usize + 555, 500 + i as u64);
        let p = write_file(c.fs(fs)?, "stream.bin", &bytes);
        ensure!(cached_pages(&p)? == 0, "{fs}: page cache used by write()");
        files.push(p);
    }
    let names: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = vec![
        "stream", "--path", "direct", "--verify", "--json", "--chunk", "1M",
    ];
    args.extend(&names);
    let o = dmafile(&args);
    ensure!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout)?;
    let total = v["bytes"].as_u64().unwrap_or(0);
    ensure!(v["verified"] == true, "not verified: {v}");
    ensure!(
        v["cpu_copied_bytes"] == 0,
        "cpu copied {}",
        v["cpu_copied_bytes"]
    );
    ensure!(v["paths"]["direct"] == total, "paths {}", v["paths"]);
    ensure!(
        v["backing"] == serde_json::json!({ "storage-direct": total }),
        "backing {}",
        v["backing"]
    );
    for (p, f) in files.iter().zip(v["files"].as_array().unwrap()) {
        ensure!(
            f["backing"]["storage-direct"] == f["bytes"],
            "{}: {}",
            p.display(),
            f["backing"]
        );
        let cached = cached_pages(p)?;
        ensure!(
            cached == 0,
            "{}: {cached} pages in the page cache after streaming",
            p.display()
        );
    }
    // The CLI's map says so too.
    let o = dmafile(&["map", names[0], "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout)?;
    ensure!(v["backing"] == "storage-direct", "dmafile map: {v}");
    Ok(())
}

fn map_dax(c: &Ctx, fs: &str) -> TestResult {
    let m = c.module();
    let q = m.query()?;
    ensure!(
        q.caps & dmafile::kmod::caps::STORAGE_DIRECT != 0,
        "caps {:#x}",
        q.caps
    );
    let bytes = data(2 * MIB as usize + 1000, 42);
    let p = write_file(c.fs(fs)?, "map.bin", &bytes);
    let f = open_ro(&p);
    for (off, len) in [(0, bytes.len() as u64), (MIB, 4096), (2 * MIB, 1000)] {
        let b = m.map(f.as_fd(), off, len, 0)?;
        ensure!(
            b.backing() == Backing::StorageDirect,
            "{fs}: {:?}",
            b.backing()
        );
        let got = dmabuf_bytes(b.as_fd(), b.len())?;
        ensure!(
            got == expected(&bytes, off, b.len()),
            "{fs}: bytes at {off}+{len} differ"
        );
        let st = m.status(b.as_fd())?;
        ensure!(
            st.backing() == Backing::StorageDirect && !st.stale(),
            "{fs}: status {st:?}"
        );
    }
    // A write() after mapping is seen through the mapping: it is the storage.
    let b = m.map(f.as_fd(), 0, MIB, 0)?;
    open_rw(&p).write_all_at(&[0xA5; 100], 4096)?;
    let got = dmabuf_bytes(b.as_fd(), b.len())?;
    ensure!(
        got[4096..4196].iter().all(|&x| x == 0xA5),
        "{fs}: write() not seen"
    );
    ensure!(cached_pages(&p)? == 0, "{fs}: page cache used");
    Ok(())
}

fn holes(c: &Ctx, fs: &str) -> TestResult {
    let m = c.module();
    let dir = c.fs(fs)?;
    // A sparse file: written, hole, written.
    let p = dir.join("sparse.bin");
    let _ = std::fs::remove_file(&p);
    let f = open_rw_create(&p)?;
    f.set_len(256 << 10)?;
    f.write_all_at(&data(64 << 10, 1), 0)?;
    f.write_all_at(&data(64 << 10, 2), 192 << 10)?;
    let e = m
        .map(f.as_fd(), 0, 256 << 10, 0)
        .err()
        .ok_or("a hole was mapped")?;
    ensure!(
        e.reason == MapReason::DaxUnbacked && e.errno == Errno::ENODATA,
        "{fs}: hole: {e}"
    );
    m.map(f.as_fd(), 0, 64 << 10, 0)?;
    m.map(f.as_fd(), 192 << 10, 64 << 10, 0)?;
    // The runtime's auto falls back past the refusal and reads the hole
    // as zeros: a shader's sum equals the CPU's over the file's bytes.
    let g = crate::region_tests::gpu();
    let r = Region::open(
        &g,
        &p,
        0,
        256 << 10,
        RegionOptions {
            path: "auto".parse().unwrap(),
            access: Access::Read,
        },
    )?;
    ensure!(
        r.path_kind() != PathKind::Direct
            && r.fallbacks().first().map(|f| (f.from, f.code))
                == Some((PathKind::Direct, ReasonCode::Kernel(MapReason::DaxUnbacked))),
        "{fs}: auto over a hole went {} with fallbacks {:?}",
        r.path_kind(),
        r.fallbacks()
    );
    let mut k = Kernel::new(&g, builtin::SUM64, 4)?;
    let blocks = (256usize << 10) / 4096;
    let mut out = DeviceBuffer::new(&g, blocks * 8)?;
    k.run(
        &[(&r).into(), (&mut out).into()],
        &(256u32 << 10).to_ne_bytes(),
        [blocks.div_ceil(64) as u32, 1, 1],
    )?;
    let sum = out.bytes().chunks_exact(8).fold(0u64, |a, w| {
        a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()))
    });
    let want = cpu::sum64(&std::fs::read(&p)?);
    ensure!(
        sum == want,
        "{fs}: {} over a hole: GPU {sum}, CPU {want}",
        r.path_kind()
    );
    drop(r);
    // Unwritten extents (fallocate) have no data either.
    let u = dir.join("unwritten.bin");
    let _ = std::fs::remove_file(&u);
    let uf = open_rw_create(&u)?;
    nix::fcntl::fallocate(
        uf.as_raw_fd(),
        nix::fcntl::FallocateFlags::empty(),
        0,
        128 << 10,
    )?;
    let e = m
        .map(uf.as_fd(), 0, 128 << 10, 0)
        .err()
        .ok_or("an unwritten extent was mapped")?;
    ensure!(e.reason == MapReason::DaxUnbacked, "{fs}: unwritten: {e}");
    // Mapped for writing, the hole is allocated (zeroed) and takes stores.
    let b = m.map(f.as_fd(), 0, 256 << 10, flags::WRITE)?;
    ensure!(b.backing() == Backing::StorageDirect, "{:?}", b.backing());
    let map = Mapping::new(
        b.as_fd(),
        b.len() as usize,
        nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
        0,
    )?;
    let got = map.read();
    ensure!(
        got[64 << 10..192 << 10].iter().all(|&x| x == 0),
        "{fs}: hole not zero"
    );
    map.write_at(100 << 10, b"written through a storage-direct WRITE mapping");
    drop(map);
    drop(b);
    let mut back = vec![0u8; 46];
    f.read_exact_at(&mut back, 100 << 10)?;
    ensure!(
        &back[..] == b"written through a storage-direct WRITE mapping",
        "{fs}: {back:?}"
    );
    Ok(())
}

fn open_rw_create(p: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
}

/// With `b` (a storage-direct mapping of `file`, whose content is `init`)
/// alive, a truncate waits: the blocks cannot be freed under the device,
/// and the mapping keeps the file's bytes. Releasing the mapping lets the
/// truncate finish. A task killed while it waits dies promptly.
pub fn truncate_waits_for(file: &File, b: impl AsFd, init: &[u8]) -> TestResult {
    let len = init.len() as u64;
    let mapped = len.next_multiple_of(4096);
    // A killed truncate: a forked child blocks, SIGKILL ends it.
    // SAFETY: the runner is single-threaded here; the child only truncates.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let r = file.set_len(0);
            // SAFETY: leaving the forked child without unwinding.
            unsafe { nix::libc::_exit(if r.is_ok() { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => {
            std::thread::sleep(Duration::from_millis(500));
            let st = waitpid(child, Some(WaitPidFlag::WNOHANG))?;
            ensure!(
                st == WaitStatus::StillAlive,
                "the truncate did not wait for the mapping: {st:?}"
            );
            kill(child, Signal::SIGKILL)?;
            let t = Instant::now();
            loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG))? {
                    WaitStatus::StillAlive if t.elapsed() < Duration::from_secs(10) => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    WaitStatus::Signaled(_, Signal::SIGKILL, _) => break,
                    st => {
                        return Err(
                            format!("the waiting truncate did not die of SIGKILL: {st:?}").into(),
                        )
                    }
                }
            }
        }
    }
    ensure!(
        file.metadata()?.len() == len,
        "the killed truncate changed the size"
    );
    // A truncate in a thread waits until the mapping goes.
    let done = AtomicBool::new(false);
    std::thread::scope(|s| -> TestResult {
        let h = s.spawn(|| {
            let r = file.set_len(0);
            done.store(true, Ordering::SeqCst);
            r
        });
        std::thread::sleep(Duration::from_millis(500));
        ensure!(
            !done.load(Ordering::SeqCst),
            "truncate finished under a live mapping"
        );
        ensure!(
            file.metadata()?.len() == len,
            "size changed under a live mapping"
        );
        let got = dmabuf_bytes(b.as_fd(), mapped)?;
        ensure!(got[..init.len()] == init[..], "the mapping's bytes changed");
        drop(b);
        let t = Instant::now();
        while !done.load(Ordering::SeqCst) {
            ensure!(
                t.elapsed() < Duration::from_secs(10),
                "truncate still blocked after the mapping was released"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        h.join().unwrap()?;
        Ok(())
    })?;
    ensure!(file.metadata()?.len() == 0, "truncate did not happen");
    Ok(())
}

fn truncate_waits(c: &Ctx, fs: &str) -> TestResult {
    let init = data(MIB as usize, 77);
    let p = write_file(c.fs(fs)?, "trunc.bin", &init);
    let f = open_rw(&p);
    let b = c.module().map(f.as_fd(), 0, MIB, 0)?;
    // Hole punch waits the same way (the range stays the file's).
    let done = AtomicBool::new(false);
    std::thread::scope(|s| -> TestResult {
        let h = s.spawn(|| {
            let r = nix::fcntl::fallocate(
                f.as_raw_fd(),
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                0,
                65536,
            );
            done.store(true, Ordering::SeqCst);
            r
        });
        std::thread::sleep(Duration::from_millis(500));
        ensure!(
            !done.load(Ordering::SeqCst),
            "{fs}: hole punch finished under a live mapping"
        );
        let b2 = c.module().map(f.as_fd(), MIB / 2, 4096, 0);
        drop(b2);
        let got = dmabuf_bytes(b.as_fd(), b.len())?;
        ensure!(got == init, "{fs}: the mapping's bytes changed");
        // Let the punch through by releasing the mapping, then restore.
        drop(b);
        h.join().unwrap()?;
        Ok(())
    })?;
    f.write_all_at(&init, 0)?;
    let b = c.module().map(f.as_fd(), 0, MIB, 0)?;
    truncate_waits_for(&f, b, &init)
}

/// Lines of /proc/self/maps that map `p`.
fn maps_of(p: &Path) -> Result<Vec<(usize, usize, String)>, String> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    let name = p.to_str().unwrap();
    Ok(maps
        .lines()
        .filter(|l| l.ends_with(name))
        .map(|l| {
            let mut f = l.split_whitespace();
            let (a, b) = f.next().unwrap().split_once('-').unwrap();
            let perms = f.next().unwrap().to_string();
            let a = usize::from_str_radix(a, 16).unwrap();
            (a, usize::from_str_radix(b, 16).unwrap() - a, perms)
        })
        .collect())
}

/// The mapping a storage-direct dma-buf keeps in its maker's address
/// space (so that layout changes see the pins): sealed against munmap,
/// mprotect and MAP_FIXED, not inherited by fork, gone when the dma-buf
/// is closed. A dma-buf that outlives its maker still holds the blocks,
/// and releasing it in another process removes the dead maker's mapping.
fn held_mapping(c: &Ctx, fs: &str) -> TestResult {
    use nix::sys::mman::{mmap_anonymous, mprotect, munmap, MapFlags, ProtFlags};
    let m = c.module();
    let init = data(3 * 4096 + 100, 9);
    let p = write_file(c.fs(fs)?, "held.bin", &init);
    let f = open_ro(&p);
    ensure!(maps_of(&p)?.is_empty(), "{fs}: mapped before");
    let b = m.map(f.as_fd(), 0, init.len() as u64, 0)?;
    let held = maps_of(&p)?;
    ensure!(
        held.len() == 1 && held[0].1 == 4 * 4096 && held[0].2 == "r--s",
        "{fs}: held mappings {held:x?}"
    );
    let (addr, len) = (held[0].0, held[0].1);
    let ptr = std::ptr::NonNull::new(addr as *mut std::ffi::c_void).unwrap();
    // SAFETY: each call is expected to fail on the sealed mapping; if one
    // succeeded, the test fails and the process only lost that mapping.
    unsafe {
        ensure!(
            munmap(ptr, len) == Err(Errno::EPERM),
            "{fs}: munmap of the held mapping was not refused"
        );
        ensure!(
            mprotect(ptr, len, ProtFlags::PROT_NONE) == Err(Errno::EPERM),
            "{fs}: mprotect of the held mapping was not refused"
        );
        let fixed = mmap_anonymous(
            Some(std::num::NonZeroUsize::new(addr).unwrap()),
            std::num::NonZeroUsize::new(4096).unwrap(),
            ProtFlags::PROT_READ,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED,
        );
        ensure!(
            fixed == Err(Errno::EPERM),
            "{fs}: MAP_FIXED over the held mapping: {fixed:?}"
        );
    }
    let st = in_child(|| match maps_of(&p) {
        Ok(v) if v.is_empty() => 0,
        _ => 1,
    });
    ensure!(
        matches!(st, WaitStatus::Exited(_, 0)),
        "{fs}: a forked child inherited the held mapping: {st:?}"
    );
    drop(b);
    ensure!(
        maps_of(&p)?.is_empty(),
        "{fs}: the mapping stayed after the dma-buf was closed: {:x?}",
        maps_of(&p)?
    );

    // Made by a child that exits; received here over a unix socket.
    use nix::sys::socket::{
        recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
        SockFlag, SockType,
    };
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    let (tx, rx) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let st = in_child(|| {
        let Ok(b) = c.module().map(f.as_fd(), 0, init.len() as u64, 0) else {
            return 2;
        };
        let fds = [b.as_fd().as_raw_fd()];
        let iov = [std::io::IoSlice::new(b"x")];
        match sendmsg::<()>(
            tx.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        ) {
            Ok(_) => 0,
            Err(_) => 3,
        }
    });
    ensure!(
        matches!(st, WaitStatus::Exited(_, 0)),
        "{fs}: the child that maps: {st:?}"
    );
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(
        rx.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )?;
    let mut got = None;
    for cm in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(v) = cm {
            // SAFETY: SCM_RIGHTS gave this process a new descriptor.
            got = v.first().map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    let b = got.ok_or("no dma-buf received")?;
    // The maker is gone; its dma-buf still holds the blocks. Releasing it
    // here removes the dead maker's mapping from a worker.
    truncate_waits_for(&open_rw(&p), b, &init)
}

fn write_remount(c: &Ctx, fs: &str) -> TestResult {
    let before = data(MIB as usize + 4096, 31);
    let p = write_file(c.fs(fs)?, "write.bin", &before);
    {
        let g = crate::region_tests::gpu();
        let mut k = Kernel::new(&g, builtin::INVERT, 8)?;
        let opts = RegionOptions {
            path: "direct".parse().unwrap(),
            access: Access::ReadWrite,
        };
        let r = Region::open(&g, &p, 4096, MIB, opts)?;
        ensure!(r.path_kind() == PathKind::Direct, "{}", r.path_kind());
        ensure!(r.backing() == Backing::StorageDirect, "{:?}", r.backing());
        let count = (MIB / 4) as u32;
        let push = [0u32.to_ne_bytes(), count.to_ne_bytes()].concat();
        k.run(&[(&r).into()], &push, [count.div_ceil(64), 1, 1])?;
        let rep = r.finish()?;
        ensure!(rep.cpu_copied_bytes == 0 && !rep.written_back, "{rep:?}");
    }
    open_rw(&p).sync_all()?;
    remount(c, fs, "dax")?;
    let after = std::fs::read(&p)?;
    ensure!(
        after[..4096] == before[..4096],
        "{fs}: bytes before the range changed"
    );
    ensure!(
        after[4096 + MIB as usize..] == before[4096 + MIB as usize..],
        "{fs}: bytes after"
    );
    let bad = (4096..4096 + MIB as usize).find(|&i| after[i] != !before[i]);
    ensure!(
        bad.is_none(),
        "{fs}: after remount, byte {} is not the shader's output",
        bad.unwrap()
    );
    ensure!(cached_pages(&p)? == 0, "{fs}: page cache used");
    Ok(())
}

/// The same pmem mounted without DAX: the mapping is of the page cache,
/// and says so.
fn not_dax_same_pmem(c: &Ctx) -> TestResult {
    let fs = "ext4-dax";
    remount(c, fs, "dax=never")?;
    let r = (|| -> TestResult {
        let bytes = data(MIB as usize, 9);
        let p = write_file(c.fs(fs)?, "nodax.bin", &bytes);
        let f = open_ro(&p);
        let b = c.module().map(f.as_fd(), 0, MIB, 0)?;
        ensure!(b.backing() == Backing::PageCache, "{:?}", b.backing());
        ensure!(dmabuf_bytes(b.as_fd(), b.len())? == bytes, "bytes differ");
        let cached = cached_pages(&p)?;
        ensure!(cached == 256, "{cached} of 256 pages cached without DAX");
        Ok(())
    })();
    remount(c, fs, "dax")?;
    r
}
