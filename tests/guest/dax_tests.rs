//! Storage-direct mappings of files on DAX mounts (ext4 and xfs on the
//! guest's legacy pmem): the dma-buf's pages are the pmem that holds the
//! file's blocks, the page cache stays empty, holes are refused, writable
//! mappings are refused, every operation that could free or move the
//! blocks is refused at once while a mapping lives (and works after),
//! nothing of the maker's address space is kept, and a device's writes to
//! a DAX file (written back by the runtime) survive a remount.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dmafile::compute::builtin;
use dmafile::kmod::{flags, Backing, MapReason};
use dmafile::{cpu, Access, DeviceBuffer, Kernel, PathKind, ReasonCode, Region, RegionOptions};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use serde_json::Value;

use crate::ensure;
use crate::layout_ops;
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
    let per_fs: [(&str, PerFs); 9] = [
        ("map", map_dax),
        ("holes", holes),
        ("frozen", frozen),
        ("no-waiting", no_waiting),
        ("file-busy", file_busy),
        ("not-owner", not_owner),
        ("nothing-kept", nothing_kept),
        ("maker-exits", maker_exits),
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
    t.push(("dax/reflink/xfs-dax".into(), Box::new(reflink)));
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
    drop(f);
    // Storage-direct mappings are read-only (kmod/dax.c says why).
    let w = open_rw(&p);
    let e = m
        .map(w.as_fd(), 0, MIB, flags::WRITE)
        .err()
        .ok_or("mapped for writing")?;
    ensure!(
        e.reason == MapReason::WritePinNotAllowed && e.errno == Errno::EOPNOTSUPP,
        "{fs}: WRITE: {e}"
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
    // Read-only mappings need the file open for writing nowhere.
    drop(f);
    let f = open_ro(&p);
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
    drop(f);
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
    drop(uf);
    let uf = open_ro(&u);
    let e = m
        .map(uf.as_fd(), 0, 128 << 10, 0)
        .err()
        .ok_or("an unwritten extent was mapped")?;
    ensure!(e.reason == MapReason::DaxUnbacked, "{fs}: unwritten: {e}");
    drop(uf);
    // Written, the hole has storage and maps.
    open_rw(&p).write_all_at(&data(128 << 10, 3), 64 << 10)?;
    let b = m.map(open_ro(&p).as_fd(), 0, 256 << 10, 0)?;
    ensure!(b.backing() == Backing::StorageDirect, "{:?}", b.backing());
    ensure!(
        dmabuf_bytes(b.as_fd(), b.len())? == std::fs::read(&p)?,
        "{fs}: the filled hole's bytes differ"
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

/// How long a call may take before it counts as waiting for a mapping.
const PROMPT: Duration = Duration::from_secs(2);

/// An operation that can free or move a file's blocks, run on (the file,
/// another file of the same filesystem, the same size), and the errno it
/// must give, run by another process, while a storage-direct mapping of the
/// file lives: ETXTBSY from open for all that need the file open for
/// writing, and the S_SWAPFILE checks for the others.
struct LayoutOp {
    what: &'static str,
    run: fn(&Path, &Path) -> layout_ops::OpResult,
    frozen: Errno,
}

/// Every such operation on `fs`, as one table (docs/kmod.md lists them).
fn layout_changes(fs: &str) -> Vec<LayoutOp> {
    use layout_ops as o;
    use nix::fcntl::FallocateFlags as F;
    let op = |what, run, frozen| LayoutOp { what, run, frozen };
    let (busy, perm) = (Errno::ETXTBSY, Errno::EPERM);
    // The extent swaps first: they are the ones that never waited.
    let mut v = Vec::new();
    if fs == "xfs-dax" {
        v.extend([
            op(
                "XFS_IOC_SWAPEXT, it the target",
                o::xfs_swapext as fn(&Path, &Path) -> _,
                busy,
            ),
            op(
                "XFS_IOC_SWAPEXT, it the donor",
                |p, q| o::xfs_swapext(q, p),
                busy,
            ),
            op(
                "XFS_IOC_EXCHANGE_RANGE",
                |p, q| o::xfs_exchange_range(p, q, MIB),
                busy,
            ),
            op("FICLONE into it", o::clone_file, busy),
            op("FICLONE out of it", |p, q| o::clone_file(q, p), busy),
            op("FIDEDUPERANGE into it", |p, q| o::dedupe(p, q, MIB), busy),
        ]);
    } else {
        v.extend([
            op("EXT4_IOC_SWAP_BOOT", |p, _| o::ext4_swap_boot(p), busy),
            op(
                "EXT4_IOC_MOVE_EXT, it the original",
                |p, q| o::ext4_move_ext(p, q, MIB),
                busy,
            ),
            op(
                "EXT4_IOC_MOVE_EXT, it the donor",
                |p, q| o::ext4_move_ext(q, p, MIB),
                busy,
            ),
        ]);
    }
    v.extend([
        op("pwrite", |p, _| o::pwrite(p), busy),
        op(
            "ftruncate to a smaller size",
            |p, _| o::ftruncate(p, 4096),
            busy,
        ),
        op(
            "ftruncate to a larger size",
            |p, _| o::ftruncate(p, 2 * MIB),
            busy,
        ),
        op("truncate(2) by path", |p, _| o::truncate_path(p, 0), busy),
        op("open(O_TRUNC)", |p, _| o::open_trunc(p), busy),
        op(
            "punch a hole",
            |p, _| {
                o::fallocate(
                    p,
                    F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE,
                    0,
                    65536,
                )
            },
            busy,
        ),
        op(
            "collapse a range",
            |p, _| o::fallocate(p, F::FALLOC_FL_COLLAPSE_RANGE, 0, 65536),
            busy,
        ),
        op(
            "insert a range",
            |p, _| o::fallocate(p, F::FALLOC_FL_INSERT_RANGE, 0, 65536),
            busy,
        ),
        op(
            "zero a range",
            |p, _| o::fallocate(p, F::FALLOC_FL_ZERO_RANGE, 0, 65536),
            busy,
        ),
        op(
            "preallocate",
            |p, _| o::fallocate(p, F::empty(), MIB as i64, MIB as i64),
            busy,
        ),
        op("copy_file_range into it", o::copy_into, busy),
        op(
            "mmap(MAP_SHARED, PROT_WRITE)",
            |p, _| o::mmap_shared_writable(p),
            busy,
        ),
        op(
            "rename another file over it",
            |p, _| {
                let spare = p.with_extension("spare");
                std::fs::write(&spare, b"spare").map_err(errno_of)?;
                o::rename_over(p, &spare)
            },
            perm,
        ),
        op("unlink", |p, _| o::unlink(p), perm),
    ]);
    v
}

/// Runs `op` in a child: it must return `want` promptly.
fn expect_prompt(
    fs: &str,
    what: &str,
    want: layout_ops::OpResult,
    op: impl FnOnce() -> layout_ops::OpResult,
) -> TestResult {
    judge(fs, what, want, errno_within(PROMPT, op))
}

fn judge(fs: &str, what: &str, want: layout_ops::OpResult, got: ChildErrno) -> TestResult {
    match got {
        Ok(got) if got == want => Ok(()),
        Ok(got) => Err(format!("{fs}: {what}: {got:?}, expected {want:?}").into()),
        Err(e) => Err(format!("{fs}: {what}: {e}").into()),
    }
}

/// While a storage-direct mapping lives, every operation that could free
/// or move the file's blocks fails at once, from any process, on either end
/// of a two-file operation (extent swaps included: they never waited for
/// pinned DAX pages); reads and other tasks' I/O go on without waiting, and
/// the mapping and both files keep their bytes. Once the mapping is
/// released, the operations work again.
fn frozen(c: &Ctx, fs: &str) -> TestResult {
    use layout_ops as o;
    let dir = c.fs(fs)?;
    let init = data(MIB as usize, 77);
    let p = write_file(dir, "frozen.bin", &init);
    let other_bytes = data(MIB as usize, 78);
    let other = write_file(dir, "frozen-other.bin", &other_bytes);
    // The descriptor may go: the dma-buf holds the file.
    let b = c.module().map(open_ro(&p).as_fd(), 0, MIB, 0)?;
    ensure!(
        b.backing() == Backing::StorageDirect,
        "{fs}: {:?}",
        b.backing()
    );
    for op in layout_changes(fs) {
        let got = errno_within(PROMPT, || (op.run)(&p, &other));
        judge(fs, op.what, Err(op.frozen), got)?;
    }
    // Nobody else's I/O waits.
    expect_prompt(fs, "pread", Ok(()), || o::pread(&p))?;
    ensure!(
        dmabuf_bytes(b.as_fd(), b.len())? == init,
        "{fs}: the mapping's bytes changed"
    );
    ensure!(std::fs::read(&p)? == init, "{fs}: the file's bytes changed");
    ensure!(
        std::fs::read(&other)? == other_bytes,
        "{fs}: the other file's bytes changed"
    );
    drop(b);
    // Released: the same operations work again.
    o::ftruncate(&p, MIB / 2).map_err(|e| format!("{fs}: truncate after release: {e}"))?;
    o::ftruncate(&p, MIB).map_err(|e| format!("{fs}: growing after release: {e}"))?;
    o::pwrite(&p).map_err(|e| format!("{fs}: pwrite after release: {e}"))?;
    open_rw(&p).write_all_at(&init, 0)?;
    let punch = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
        | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
    o::fallocate(&p, punch, 0, 4096).map_err(|e| format!("{fs}: punch after release: {e}"))?;
    open_rw(&p).write_all_at(&init[..4096], 0)?;
    if fs == "xfs-dax" {
        // A donor of one extent, as the target has (xfs requires no more).
        let donor = write_file(dir, "frozen-donor.bin", &other_bytes);
        open_rw(&p).sync_all()?;
        open_rw(&donor).sync_all()?;
        o::xfs_swapext(&p, &donor)
            .map_err(|e| format!("{fs}: XFS_IOC_SWAPEXT after release: {e}"))?;
        ensure!(
            std::fs::read(&p)? == other_bytes && std::fs::read(&donor)? == init,
            "{fs}: XFS_IOC_SWAPEXT after release did not swap the contents"
        );
    }
    o::unlink(&p).map_err(|e| format!("{fs}: unlink after release: {e}"))?;
    Ok(())
}

/// A truncate under a live mapping does not wait for it, so it holds no
/// lock that other tasks' reads and writes of the file would then wait for
/// (unkillably) behind it: all three return at once.
fn no_waiting(c: &Ctx, fs: &str) -> TestResult {
    use layout_ops as o;
    let p = write_file(c.fs(fs)?, "nowait.bin", &data(MIB as usize, 12));
    let b = c.module().map(open_ro(&p).as_fd(), 0, MIB, 0)?;
    ensure!(
        b.backing() == Backing::StorageDirect,
        "{fs}: {:?}",
        b.backing()
    );
    let pp = p.clone();
    let truncate = std::thread::spawn(move || errno_within(PROMPT, || o::ftruncate(&pp, 0)));
    std::thread::sleep(Duration::from_millis(200));
    let (read, write) = (
        errno_within(PROMPT, || o::pread(&p)),
        errno_within(PROMPT, || o::pwrite(&p)),
    );
    let truncate = truncate.join().unwrap();
    drop(b);
    judge(
        fs,
        "truncate under a mapping",
        Err(Errno::ETXTBSY),
        truncate,
    )?;
    judge(fs, "another task's pread meanwhile", Ok(()), read)?;
    judge(
        fs,
        "another task's pwrite meanwhile",
        Err(Errno::ETXTBSY),
        write,
    )
}

/// The layout can be frozen only when nothing can change it: no file of
/// it open for writing, not even the caller's descriptor. While mappings
/// live, others join them, and nothing opens the file for writing.
fn file_busy(c: &Ctx, fs: &str) -> TestResult {
    let m = c.module();
    let len = 256u64 << 10;
    let p = write_file(c.fs(fs)?, "busy.bin", &data(len as usize, 3));
    let busy =
        |what: &str, r: Result<dmafile::kmod::DmaBuf, dmafile::kmod::MapError>| -> TestResult {
            match r {
                Err(e) if e.reason == MapReason::FileBusy && e.errno == Errno::ETXTBSY => Ok(()),
                Err(e) => Err(format!("{fs}: {what}: {e}, expected file-busy").into()),
                Ok(_) => Err(format!("{fs}: {what}: mapped, expected file-busy").into()),
            }
        };
    let open_for_writing = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(errno_of)
    };
    let w = open_rw(&p);
    busy(
        "open for writing elsewhere",
        m.map(open_ro(&p).as_fd(), 0, len, 0),
    )?;
    busy("through a writable descriptor", m.map(w.as_fd(), 0, len, 0))?;
    drop(w);
    let b = m.map(open_ro(&p).as_fd(), 0, len, 0)?;
    let b2 = m.map(open_ro(&p).as_fd(), 4096, 4096, 0)?;
    ensure!(
        open_for_writing().err() == Some(Errno::ETXTBSY),
        "{fs}: opened for writing under a mapping"
    );
    drop(b);
    ensure!(
        open_for_writing().err() == Some(Errno::ETXTBSY),
        "{fs}: opened for writing under the second mapping"
    );
    drop(b2);
    ensure!(
        open_for_writing().is_ok(),
        "{fs}: not writable after the mappings"
    );
    Ok(())
}

/// A storage-direct mapping stops everybody from changing the file, which
/// only the file's owner may ask (as for a lease): a user who may only read
/// a file gets `not-owner`, its owner gets the mapping.
fn not_owner(c: &Ctx, fs: &str) -> TestResult {
    let p = write_file(c.fs(fs)?, "owner.bin", &data(8192, 4));
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let as_nobody = |want_ok: bool| {
        in_child(|| {
            if nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).is_err() {
                return 10;
            }
            match (c.module().map(open_ro(&p).as_fd(), 0, 8192, 0), want_ok) {
                (Ok(b), true) if b.backing() == Backing::StorageDirect => 0,
                (Err(e), false) if e.reason == MapReason::NotOwner && e.errno == Errno::EACCES => 0,
                (Ok(_), _) => 11,
                (Err(e), _) => {
                    println!("     {e}");
                    12
                }
            }
        })
    };
    let st = as_nobody(false);
    ensure!(
        matches!(st, WaitStatus::Exited(_, 0)),
        "{fs}: a reader that does not own the file: {st:?}"
    );
    nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(65534)), None)?;
    let st = as_nobody(true);
    ensure!(
        matches!(st, WaitStatus::Exited(_, 0)),
        "{fs}: the owner: {st:?}"
    );
    Ok(())
}

/// Lines of /proc/self/maps that map `p`.
fn maps_of(p: &Path) -> Result<Vec<String>, String> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    let name = p.to_str().unwrap();
    Ok(maps
        .lines()
        .filter(|l| l.ends_with(name))
        .map(str::to_string)
        .collect())
}

/// Nothing of the caller's address space outlives the map call: no
/// mapping of the file stays behind (to be inherited, split or sealed).
fn nothing_kept(c: &Ctx, fs: &str) -> TestResult {
    let p = write_file(c.fs(fs)?, "kept.bin", &data(3 * 4096 + 100, 9));
    let before = std::fs::read_to_string("/proc/self/maps")?.lines().count();
    let b = c.module().map(open_ro(&p).as_fd(), 0, 4 * 4096, 0)?;
    ensure!(
        b.backing() == Backing::StorageDirect,
        "{fs}: {:?}",
        b.backing()
    );
    let kept = maps_of(&p)?;
    ensure!(
        kept.is_empty(),
        "{fs}: mappings of the file stayed: {kept:?}"
    );
    let after = std::fs::read_to_string("/proc/self/maps")?.lines().count();
    ensure!(
        after == before,
        "{fs}: {before} mappings before, {after} after"
    );
    Ok(())
}

/// A maker that maps its own storage-direct dma-buf (as lavapipe does) and
/// then exits, is killed, execs, or closes the fd first leaves nothing
/// behind: the buffer is released, the file can be truncated and the
/// filesystem unmounted.
fn maker_exits(c: &Ctx, fs: &str) -> TestResult {
    use nix::sys::mman::ProtFlags;
    let init = data(MIB as usize, 21);
    let p = write_file(c.fs(fs)?, "maker.bin", &init);
    for how in ["exit", "close-then-exit", "exec", "SIGKILL", "SIGTERM"] {
        let (rx, tx) = nix::unistd::pipe()?;
        // SAFETY: the child maps, signals and ends; see in_child.
        let child = match unsafe { fork() }? {
            ForkResult::Child => {
                let code = (|| -> Option<i32> {
                    let b = c.module().map(open_ro(&p).as_fd(), 0, MIB, 0).ok()?;
                    let map = Mapping::new(
                        b.as_fd(),
                        MIB as usize,
                        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                        0,
                    )
                    .ok()?;
                    if map.read()[..4096] != init[..4096] {
                        return Some(3);
                    }
                    if how == "close-then-exit" {
                        drop(b);
                        std::mem::forget(map);
                        return Some(0);
                    }
                    std::mem::forget((b, map));
                    if how == "exit" {
                        return Some(0);
                    }
                    if how == "exec" {
                        let _ = nix::unistd::execv(c"/bin/true", &[c"true"]);
                        return Some(4);
                    }
                    let _ = nix::unistd::write(&tx, b"r");
                    loop {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                })()
                .unwrap_or(2);
                // SAFETY: leaving the forked child without unwinding.
                unsafe { nix::libc::_exit(code) }
            }
            ForkResult::Parent { child } => child,
        };
        drop(tx);
        if how.starts_with("SIG") {
            let mut byte = [0u8; 1];
            ensure!(
                nix::unistd::read(rx.as_raw_fd(), &mut byte) == Ok(1),
                "{fs}: {how}: the child did not map"
            );
            let sig = if how == "SIGKILL" {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            kill(child, sig)?;
        }
        let st = waitpid(child, None)?;
        ensure!(
            matches!(st, WaitStatus::Exited(_, 0) | WaitStatus::Signaled(..)),
            "{fs}: {how}: the child ended {st:?}"
        );
        // Release may go through a worker when the maker was killed.
        let t = Instant::now();
        while c.module().query()?.nr_buffers != 0 {
            ensure!(
                t.elapsed() < PROMPT,
                "{fs}: {how}: {} dma-bufs left after the maker ended",
                c.module().query()?.nr_buffers
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        expect_prompt(fs, &format!("{how}: truncate"), Ok(()), || {
            layout_ops::ftruncate(&p, MIB / 2)
        })?;
        open_rw(&p).write_all_at(&init, 0)?;
    }
    // Nothing holds the filesystem either.
    remount(c, fs, "dax")
}

/// Blocks shared by reflink (xfs) are mapped as they are: they stay while
/// this file holds them, whatever the other file does, and nothing can write
/// (and so copy them away from under the mapping) through this file.
fn reflink(c: &Ctx) -> TestResult {
    use layout_ops as o;
    let fs = "xfs-dax";
    let dir = c.fs(fs)?;
    let m = c.module();
    let bytes = data(MIB as usize, 5);
    let src = write_file(dir, "rl-src.bin", &bytes);
    let clone = write_file(dir, "rl-clone.bin", b"");
    match o::clone_file(&clone, &src) {
        Ok(()) => {}
        Err(Errno::EOPNOTSUPP) => crate::skip!("this {fs} has no reflink (inside.sh makes it without on kernels that refuse DAX with it)"),
        Err(e) => return Err(format!("FICLONE: {e}").into()),
    }
    let b = m.map(open_ro(&clone).as_fd(), 0, MIB, 0)?;
    ensure!(b.backing() == Backing::StorageDirect, "{:?}", b.backing());
    ensure!(
        dmabuf_bytes(b.as_fd(), b.len())? == bytes,
        "the clone's mapping differs"
    );
    // Nothing may write the clone, which would copy a shared block away
    // from under the mapping (a growing truncate zeroes the last block's
    // tail; a write fault through a writable mapping): both need it open
    // for writing.
    ensure!(
        o::truncate_path(&clone, 2 * MIB as i64) == Err(Errno::ETXTBSY)
            && o::mmap_shared_writable(&clone) == Err(Errno::ETXTBSY),
        "the clone could be written under a mapping"
    );
    // The source is rewritten (copy on write), then deleted, and its freed
    // blocks are written over by a new file: the mapping keeps its bytes.
    open_rw(&src).write_all_at(&data(MIB as usize, 6), 0)?;
    std::fs::remove_file(&src)?;
    let filler = write_file(dir, "rl-filler.bin", &vec![0xEE; 8 * MIB as usize]);
    ensure!(
        dmabuf_bytes(b.as_fd(), b.len())? == bytes,
        "the clone's mapping changed"
    );
    drop(b);
    std::fs::remove_file(&filler)?;
    Ok(())
}

/// Writers, truncates and hole punches (each opening the file, as other
/// processes do) against mappers: a mapping is made only while nothing can
/// change the layout, and then nothing does; every
/// byte a mapping shows is the file's (one of its two generations) or
/// zero. Afterwards a truncate fails at once under a mapping and works
/// after it.
pub fn races(c: &Ctx, fs: &str) -> TestResult {
    use crate::kmod_tests::{page_of, pattern, race_duration, Rng, PAGE};
    use layout_ops as o;
    const PAGES: u64 = 64;
    let dur = race_duration();
    let p = c.fs(fs)?.join("races.bin");
    let _ = std::fs::remove_file(&p);
    let init: Vec<u8> = (0..PAGES).flat_map(|pg| page_of(pg, 0)).collect();
    std::fs::write(&p, &init)?;
    let m = c.module();
    let stop = AtomicBool::new(false);
    let (maps, refusals, changes) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let failure = std::sync::Mutex::new(None::<String>);
    let fail = |msg: String| {
        failure.lock().unwrap().get_or_insert(msg);
        stop.store(true, Ordering::Relaxed);
    };
    let started = Instant::now();
    let deadline = started + dur;
    // Past the deadline only until both sides have happened at least once
    // (under the debug kernel the changer can win every race for seconds;
    // 0 of 415 maps in 3 s once), and never past ten times the race time.
    let cap = Instant::now() + dur * 10;
    let running = || {
        let now = Instant::now();
        let both = maps.load(Ordering::Relaxed) > 0 && changes.load(Ordering::Relaxed) > 0;
        !stop.load(Ordering::Relaxed) && (now < deadline || !both && now < cap)
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut r = Rng(1);
            while running() {
                let pg = r.below(PAGES);
                let done = match r.below(4) {
                    0 | 1 => std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .and_then(|f| f.write_all_at(&page_of(pg, r.below(2)), pg * PAGE))
                        .map_err(errno_of),
                    2 => o::ftruncate(&p, r.below(PAGES * PAGE))
                        .and_then(|()| o::ftruncate(&p, PAGES * PAGE)),
                    _ => {
                        let punch = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
                        o::fallocate(
                            &p,
                            punch,
                            (pg * PAGE + r.below(2) * 100) as i64,
                            (r.below(4) * PAGE + 1) as i64,
                        )
                    }
                };
                match done {
                    Ok(()) => {
                        changes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Errno::ETXTBSY) => {}
                    Err(e) => return fail(format!("a layout change failed with {e}, not ETXTBSY")),
                }
            }
        });
        for seed in [3, 4] {
            let (m, p, maps, refusals, fail) = (&m, &p, &maps, &refusals, &fail);
            s.spawn(move || {
                let mut r = Rng(seed);
                while running() {
                    let off = r.below(PAGES) * PAGE;
                    let len = (1 + r.below(16)) * PAGE - r.below(PAGE);
                    let f = open_ro(p);
                    let b = match m.map(f.as_fd(), off, len, 0) {
                        Ok(b) => b,
                        Err(e)
                            if matches!(
                                e.reason,
                                MapReason::BeyondEof
                                    | MapReason::FileChanged
                                    | MapReason::DaxUnbacked
                                    | MapReason::FileBusy
                            ) =>
                        {
                            refusals.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Err(e) => return fail(format!("map {off}+{len}: {e}")),
                    };
                    drop(f);
                    maps.fetch_add(1, Ordering::Relaxed);
                    let prot = nix::sys::mman::ProtFlags::PROT_READ;
                    let w = match Mapping::new(b.as_fd(), b.len() as usize, prot, 0) {
                        Ok(w) => w,
                        Err(e) => return fail(format!("mmap of a dma-buf: {e}")),
                    };
                    for (i, &v) in w.read().iter().enumerate() {
                        let pos = off + i as u64;
                        if v != 0 && v != pattern(pos, 0) && v != pattern(pos, 1) {
                            return fail(format!(
                                "byte {v:#04x} at file offset {pos} is not the file's"
                            ));
                        }
                    }
                    match m.status(b.as_fd()) {
                        Ok(st) if !st.stale() => {}
                        other => {
                            return fail(format!("status of a storage-direct mapping: {other:?}"))
                        }
                    }
                }
            });
        }
    });
    if let Some(msg) = failure.into_inner().unwrap() {
        return Err(format!("{fs}: {msg}").into());
    }
    let (maps, refusals, changes) = (
        maps.into_inner(),
        refusals.into_inner(),
        changes.into_inner(),
    );
    println!(
        "     {fs}: {maps} mappings checked, {refusals} refused, {changes} layout changes made in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        maps > 0 && changes > 0,
        "{fs}: the race made no mapping or no change in {:?}",
        dur * 10
    );
    o::ftruncate(&p, PAGES * PAGE)?;
    open_rw(&p).write_all_at(&init, 0)?;
    let b = m.map(open_ro(&p).as_fd(), 0, PAGES * PAGE, 0)?;
    ensure!(
        b.backing() == Backing::StorageDirect,
        "{fs}: {:?}",
        b.backing()
    );
    expect_prompt(fs, "truncate under a mapping", Err(Errno::ETXTBSY), || {
        o::ftruncate(&p, 0)
    })?;
    ensure!(
        dmabuf_bytes(b.as_fd(), b.len())? == init,
        "{fs}: the mapping's bytes changed"
    );
    drop(b);
    expect_prompt(fs, "truncate after release", Ok(()), || o::ftruncate(&p, 0))
}

/// A shader's writes to a region of a DAX file: direct is refused (the
/// mappings are read-only), auto writes the device's copy back, and the
/// bytes survive sync, unmount and mount.
fn write_remount(c: &Ctx, fs: &str) -> TestResult {
    let before = data(MIB as usize + 4096, 31);
    let p = write_file(c.fs(fs)?, "write.bin", &before);
    {
        let g = crate::region_tests::gpu();
        let mut k = Kernel::new(&g, builtin::INVERT, 8)?;
        let opts = |path: &str| RegionOptions {
            path: path.parse().unwrap(),
            access: Access::ReadWrite,
        };
        // Storage-direct mappings are read-only: direct refuses, and auto
        // writes the device's copy back.
        let e = Region::open(&g, &p, 4096, MIB, opts("direct"))
            .err()
            .ok_or("direct wrote DAX")?;
        ensure!(
            e.to_string().contains("write-pin-not-allowed"),
            "{fs}: direct: {e}"
        );
        let r = Region::open(&g, &p, 4096, MIB, opts("auto"))?;
        ensure!(
            r.path_kind() != PathKind::Direct
                && r.fallbacks().first().map(|f| (f.from, f.code))
                    == Some((
                        PathKind::Direct,
                        ReasonCode::Kernel(MapReason::WritePinNotAllowed)
                    )),
            "{fs}: auto went {} with fallbacks {:?}",
            r.path_kind(),
            r.fallbacks()
        );
        let count = (MIB / 4) as u32;
        let push = [0u32.to_ne_bytes(), count.to_ne_bytes()].concat();
        k.run(&[(&r).into()], &push, [count.div_ceil(64), 1, 1])?;
        let rep = r.finish()?;
        ensure!(rep.written_back, "{rep:?}");
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
