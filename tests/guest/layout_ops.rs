//! Every operation we know that can free or move a file's blocks, as the
//! guest tests run them against files that storage-direct dma-bufs hold:
//! each opens the file itself, as another process would, and returns the
//! errno the kernel gave. The ioctl numbers and layouts are the kernel's
//! (`include/uapi/linux/fs.h`, `fs/xfs/libxfs/xfs_fs.h`, `fs/ext4/ext4.h`),
//! checked against xfslibs-dev's headers when they were written down.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::FallocateFlags;

use crate::util::errno_of;

pub type OpResult = Result<(), Errno>;

fn rw(p: &Path) -> Result<File, Errno> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(p)
        .map_err(errno_of)
}

fn ioctl(f: &File, req: u64, arg: *mut nix::libc::c_void) -> OpResult {
    // SAFETY: the callers pass a request number and an argument of the
    // layout that request takes, valid for the duration of the call.
    let r = unsafe { nix::libc::ioctl(f.as_raw_fd(), req as _, arg) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

pub fn pwrite(p: &Path) -> OpResult {
    rw(p)?.write_all_at(b"x", 0).map_err(errno_of)
}

pub fn pread(p: &Path) -> OpResult {
    let mut b = [0u8; 4096];
    File::open(p)
        .map_err(errno_of)?
        .read_at(&mut b, 0)
        .map_err(errno_of)?;
    Ok(())
}

pub fn ftruncate(p: &Path, len: u64) -> OpResult {
    rw(p)?.set_len(len).map_err(errno_of)
}

pub fn truncate_path(p: &Path, len: i64) -> OpResult {
    nix::unistd::truncate(p, len)
}

pub fn open_trunc(p: &Path) -> OpResult {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(p)
        .map(drop)
        .map_err(errno_of)
}

pub fn fallocate(p: &Path, mode: FallocateFlags, off: i64, len: i64) -> OpResult {
    nix::fcntl::fallocate(rw(p)?.as_raw_fd(), mode, off, len)
}

pub fn copy_into(p: &Path, src: &Path) -> OpResult {
    let (s, d) = (File::open(src).map_err(errno_of)?, rw(p)?);
    let mut off = 0i64;
    nix::fcntl::copy_file_range(s.as_fd(), None, d.as_fd(), Some(&mut off), 4096).map(drop)
}

pub fn mmap_shared_writable(p: &Path) -> OpResult {
    let f = rw(p)?;
    crate::util::Mapping::new(
        f.as_fd(),
        4096,
        nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
        0,
    )
    .map(drop)
}

pub fn unlink(p: &Path) -> OpResult {
    nix::unistd::unlink(p)
}

pub fn rename_over(p: &Path, from: &Path) -> OpResult {
    nix::fcntl::renameat(None, from, None, p)
}

const FICLONE: u64 = 0x4004_9409;
const FIDEDUPERANGE: u64 = 0xC018_9436;

/// FICLONE: `dst` becomes a reflink copy of `src`.
pub fn clone_file(dst: &Path, src: &Path) -> OpResult {
    let s = File::open(src).map_err(errno_of)?;
    ioctl(&rw(dst)?, FICLONE, s.as_raw_fd() as usize as *mut _)
}

/// FIDEDUPERANGE of `len` bytes from `src` into `dst` (same contents); the
/// errno is the one the kernel put in the per-destination status.
pub fn dedupe(dst: &Path, src: &Path, len: u64) -> OpResult {
    #[repr(C)]
    struct Range {
        src_offset: u64,
        src_length: u64,
        dest_count: u16,
        reserved1: u16,
        reserved2: u32,
        dest_fd: i64,
        dest_offset: u64,
        bytes_deduped: u64,
        status: i32,
        reserved: u32,
    }
    let (s, d) = (
        File::open(src).map_err(errno_of)?,
        File::open(dst).map_err(errno_of)?,
    );
    let mut r = Range {
        src_offset: 0,
        src_length: len,
        dest_count: 1,
        reserved1: 0,
        reserved2: 0,
        dest_fd: d.as_raw_fd() as i64,
        dest_offset: 0,
        bytes_deduped: 0,
        status: 0,
        reserved: 0,
    };
    ioctl(&s, FIDEDUPERANGE, &mut r as *mut Range as *mut _)?;
    match r.status {
        0 => Ok(()),
        s if s < 0 => Err(Errno::from_raw(-s)),
        1 => Err(Errno::EBADE), // FILE_DEDUPE_RANGE_DIFFERS
        _ => Err(Errno::EINVAL),
    }
}

const XFS_IOC_FSBULKSTAT_SINGLE: u64 = 0xC020_5866;
const XFS_IOC_SWAPEXT: u64 = 0xC0C0_586D;
const XFS_IOC_EXCHANGE_RANGE: u64 = 0x4028_5881;
const XFS_BSTAT_SIZE: usize = 136;

/// XFS_IOC_SWAPEXT (what xfs_fsr does): `target` and `donor`, of the same
/// size, exchange all their blocks. Unprivileged: two read-write fds.
pub fn xfs_swapext(target: &Path, donor: &Path) -> OpResult {
    let (t, d) = (rw(target)?, rw(donor)?);
    // The target's bulkstat, which the kernel compares to prove that the
    // file did not change since.
    let mut stat = [0u8; XFS_BSTAT_SIZE];
    let mut ino = t.metadata().map_err(errno_of)?.ino();
    let mut count = 0i32;
    #[repr(C)]
    struct BulkReq {
        lastip: *mut u64,
        icount: i32,
        ubuffer: *mut u8,
        ocount: *mut i32,
    }
    let mut req = BulkReq {
        lastip: &mut ino,
        icount: 1,
        ubuffer: stat.as_mut_ptr(),
        ocount: &mut count,
    };
    ioctl(
        &t,
        XFS_IOC_FSBULKSTAT_SINGLE,
        &mut req as *mut BulkReq as *mut _,
    )?;
    #[repr(C)]
    struct SwapExt {
        version: i64,
        fdtarget: i64,
        fdtmp: i64,
        offset: i64,
        length: i64,
        pad: [u8; 16],
        stat: [u8; XFS_BSTAT_SIZE],
    }
    let mut sx = SwapExt {
        version: 0,
        fdtarget: t.as_raw_fd() as i64,
        fdtmp: d.as_raw_fd() as i64,
        offset: 0,
        length: t.metadata().map_err(errno_of)?.len() as i64,
        pad: [0; 16],
        stat,
    };
    ioctl(&t, XFS_IOC_SWAPEXT, &mut sx as *mut SwapExt as *mut _)
}

/// XFS_IOC_EXCHANGE_RANGE (6.10): `len` bytes of `a` and `b` trade places.
pub fn xfs_exchange_range(a: &Path, b: &Path, len: u64) -> OpResult {
    let (fa, fb) = (rw(a)?, rw(b)?);
    #[repr(C)]
    struct Exch {
        file1_fd: i32,
        pad: u32,
        file1_offset: u64,
        file2_offset: u64,
        length: u64,
        flags: u64,
    }
    let mut x = Exch {
        file1_fd: fb.as_raw_fd(),
        pad: 0,
        file1_offset: 0,
        file2_offset: 0,
        length: len,
        flags: 0,
    };
    ioctl(&fa, XFS_IOC_EXCHANGE_RANGE, &mut x as *mut Exch as *mut _)
}

const EXT4_IOC_MOVE_EXT: u64 = 0xC028_660F;
const EXT4_IOC_SWAP_BOOT: u64 = 0x6611;

/// EXT4_IOC_MOVE_EXT (what e4defrag does): `len` bytes of `orig`'s blocks
/// are replaced by `donor`'s.
pub fn ext4_move_ext(orig: &Path, donor: &Path, len: u64) -> OpResult {
    #[repr(C)]
    struct MoveExtent {
        reserved: u32,
        donor_fd: u32,
        orig_start: u64,
        donor_start: u64,
        len: u64,
        moved_len: u64,
    }
    let (o, d) = (rw(orig)?, rw(donor)?);
    let mut me = MoveExtent {
        reserved: 0,
        donor_fd: d.as_raw_fd() as u32,
        orig_start: 0,
        donor_start: 0,
        len: len / 4096,
        moved_len: 0,
    };
    ioctl(&o, EXT4_IOC_MOVE_EXT, &mut me as *mut MoveExtent as *mut _)
}

/// EXT4_IOC_SWAP_BOOT (root): the file's blocks and the boot loader
/// inode's trade places.
pub fn ext4_swap_boot(p: &Path) -> OpResult {
    ioctl(&rw(p)?, EXT4_IOC_SWAP_BOOT, std::ptr::null_mut())
}
