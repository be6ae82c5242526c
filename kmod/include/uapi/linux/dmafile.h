/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * dmafile: map ranges of regular files into dma-bufs.
 *
 * This header is the whole user-space ABI of /dev/dmafile. Structures only
 * grow at their end; the kernel accepts both older (shorter) and newer
 * (longer) structures: a shorter one is zero-extended, a longer one must be
 * zero past the fields this kernel knows (E2BIG otherwise). Output fields and
 * reserved fields must be zero on input (EINVAL otherwise).
 *
 * CPU mappings of a dma-buf made here are shared and never executable:
 * mmap() with PROT_EXEC fails with EPERM, and mprotect(PROT_EXEC) with
 * EACCES. A buffer mapped without DMAFILE_MAP_WRITE is never writable.
 */
#ifndef _UAPI_LINUX_DMAFILE_H
#define _UAPI_LINUX_DMAFILE_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define DMAFILE_ABI_VERSION 1

/**
 * DOC: map flags
 *
 * DMAFILE_MAP_PIN: pin the range for the lifetime of the dma-buf. Required:
 *	dmafile has no unpinned (revocable) mappings yet.
 * DMAFILE_MAP_WRITE: importers may write; the pages are marked dirty when
 *	the dma-buf is released, so the writes reach the file. Needs a
 *	writable fd and a file that may be written, on a filesystem whose
 *	page cache may be pinned writable (shmem/tmpfs, in pages that are
 *	not huge). Storage-direct (DAX) mappings are read-only.
 * DMAFILE_MAP_ATOMIC: importers need atomic operations on the memory.
 * DMAFILE_MAP_CLOEXEC: the returned dma-buf fd has FD_CLOEXEC set.
 */
#define DMAFILE_MAP_PIN		(1U << 0)
#define DMAFILE_MAP_WRITE	(1U << 1)
#define DMAFILE_MAP_ATOMIC	(1U << 2)
#define DMAFILE_MAP_CLOEXEC	(1U << 3)
#define DMAFILE_MAP_VALID_FLAGS	(DMAFILE_MAP_PIN | DMAFILE_MAP_WRITE | \
				 DMAFILE_MAP_ATOMIC | DMAFILE_MAP_CLOEXEC)

/**
 * enum dmafile_backing - what the dma-buf's pages are
 * @DMAFILE_BACKING_NONE: no mapping (a refused request).
 * @DMAFILE_BACKING_PAGE_CACHE: the file's own page-cache pages, pinned.
 * @DMAFILE_BACKING_STORAGE_DIRECT: the storage's own memory that holds the
 *	file's blocks (DAX); the page cache is not used. Read-only. While
 *	the dma-buf lives, the file's block layout is frozen as a swap
 *	file's is, and it cannot be opened for writing, as a running
 *	program cannot (ETXTBSY); it cannot be unlinked or renamed over
 *	(EPERM), nor reflinked or deduplicated (ETXTBSY). Nothing waits for
 *	the dma-buf, and nothing of the caller's address space is kept.
 */
enum dmafile_backing {
	DMAFILE_BACKING_NONE = 0,
	DMAFILE_BACKING_PAGE_CACHE = 1,
	DMAFILE_BACKING_STORAGE_DIRECT = 2,
};

/**
 * enum dmafile_reason - why a map request was refused
 *
 * Returned in &dmafile_map.reason together with the ioctl's errno (given
 * in parentheses). New codes are only ever added at the end.
 *
 * @DMAFILE_REASON_NONE: the request succeeded.
 * @DMAFILE_REASON_INVALID_ARGUMENT: a reserved or output field was not
 *	zero on input (EINVAL).
 * @DMAFILE_REASON_FLAGS_UNSUPPORTED: unknown flag bits (EINVAL).
 * @DMAFILE_REASON_PIN_REQUIRED: DMAFILE_MAP_PIN was not set (EOPNOTSUPP).
 * @DMAFILE_REASON_BAD_FD: @fd is not an open file descriptor (EBADF).
 * @DMAFILE_REASON_NOT_REGULAR_FILE: @fd is not a regular file: a directory,
 *	pipe, socket, device, dma-buf or other special file (EINVAL).
 * @DMAFILE_REASON_FS_NOT_SUPPORTED: the file's filesystem is not on the
 *	module's allow-list (EOPNOTSUPP).
 * @DMAFILE_REASON_UNALIGNED: @offset is not a multiple of the page size
 *	(EINVAL).
 * @DMAFILE_REASON_INVALID_RANGE: @length is zero or @offset + @length
 *	overflows (EINVAL).
 * @DMAFILE_REASON_BEYOND_EOF: the range ends past the end of the file
 *	rounded up to a page (ENXIO).
 * @DMAFILE_REASON_TOO_LARGE: the range is larger than one mapping may ever
 *	be (EFBIG).
 * @DMAFILE_REASON_MEMLOCK_LIMIT: pinning would exceed the user's
 *	RLIMIT_MEMLOCK (ENOMEM).
 * @DMAFILE_REASON_GLOBAL_LIMIT: pinning would exceed the module-wide cap
 *	(ENOMEM).
 * @DMAFILE_REASON_FD_NOT_READABLE: @fd was not opened for reading, or is an
 *	O_PATH descriptor (EBADF).
 * @DMAFILE_REASON_FD_NOT_WRITABLE: DMAFILE_MAP_WRITE on an fd not opened
 *	for writing (EBADF).
 * @DMAFILE_REASON_SEALED: DMAFILE_MAP_WRITE on a memfd sealed against
 *	writes (EPERM).
 * @DMAFILE_REASON_IMMUTABLE: DMAFILE_MAP_WRITE on an immutable or
 *	append-only file (EPERM).
 * @DMAFILE_REASON_WRITE_PIN_NOT_ALLOWED: DMAFILE_MAP_WRITE on a filesystem
 *	with page-cache writeback: the kernel refuses writable long-term pins
 *	of such pages; or of huge pages (tmpfs huge=), which a truncation
 *	cannot split, so stores past a new end of file would come back when
 *	the file grows again; or on a DAX mount, whose storage-direct
 *	mappings are read-only (EOPNOTSUPP).
 * @DMAFILE_REASON_FILE_CHANGED: the file was truncated, hole-punched or
 *	otherwise changed while it was being mapped; retrying may succeed
 *	(EAGAIN).
 * @DMAFILE_REASON_IO_ERROR: reading the file's pages failed (EIO).
 * @DMAFILE_REASON_NO_MEMORY: the kernel ran out of memory (ENOMEM).
 * @DMAFILE_REASON_INTERRUPTED: a fatal signal arrived while pinning (EINTR).
 * @DMAFILE_REASON_MAP_FAILED: the filesystem or a security module refused to
 *	map the file (the errno it gave).
 * @DMAFILE_REASON_DAX_UNBACKED: a mapping of a file on a DAX mount whose
 *	range has holes or unwritten (preallocated) extents: they have no
 *	storage to map (ENODATA). Write the range first. Blocks shared with
 *	another file by reflink are mapped: they stay while this file holds
 *	them, and writes through the other file copy them first.
 * @DMAFILE_REASON_FILE_BUSY: storage-direct only: the file's layout cannot
 *	be frozen now (ETXTBSY): it is open for writing (@fd included: open
 *	it read-only), or it is an active swap file.
 * @DMAFILE_REASON_NOT_OWNER: storage-direct only: the caller neither owns
 *	the file nor has CAP_LEASE. A storage-direct dma-buf stops everybody
 *	from changing the file while it lives, which only the owner may ask,
 *	as for a lease (EACCES).
 */
enum dmafile_reason {
	DMAFILE_REASON_NONE = 0,
	DMAFILE_REASON_INVALID_ARGUMENT = 1,
	DMAFILE_REASON_FLAGS_UNSUPPORTED = 2,
	DMAFILE_REASON_PIN_REQUIRED = 3,
	DMAFILE_REASON_BAD_FD = 4,
	DMAFILE_REASON_NOT_REGULAR_FILE = 5,
	DMAFILE_REASON_FS_NOT_SUPPORTED = 6,
	DMAFILE_REASON_UNALIGNED = 7,
	DMAFILE_REASON_INVALID_RANGE = 8,
	DMAFILE_REASON_BEYOND_EOF = 9,
	DMAFILE_REASON_TOO_LARGE = 10,
	DMAFILE_REASON_MEMLOCK_LIMIT = 11,
	DMAFILE_REASON_GLOBAL_LIMIT = 12,
	DMAFILE_REASON_FD_NOT_READABLE = 13,
	DMAFILE_REASON_FD_NOT_WRITABLE = 14,
	DMAFILE_REASON_SEALED = 15,
	DMAFILE_REASON_IMMUTABLE = 16,
	DMAFILE_REASON_WRITE_PIN_NOT_ALLOWED = 17,
	DMAFILE_REASON_FILE_CHANGED = 18,
	DMAFILE_REASON_IO_ERROR = 19,
	DMAFILE_REASON_NO_MEMORY = 20,
	DMAFILE_REASON_INTERRUPTED = 21,
	DMAFILE_REASON_MAP_FAILED = 22,
	DMAFILE_REASON_DAX_UNBACKED = 23,
	DMAFILE_REASON_FILE_BUSY = 24,
	DMAFILE_REASON_NOT_OWNER = 25,
};

/* Capability bits of &dmafile_query.caps. */
#define DMAFILE_CAP_PAGE_CACHE		(1U << 0)
#define DMAFILE_CAP_WRITE		(1U << 1)
#define DMAFILE_CAP_STORAGE_DIRECT	(1U << 2)
#define DMAFILE_CAP_STATUS		(1U << 3)

/**
 * struct dmafile_query - DMAFILE_IOC_QUERY: what this module can do
 * @abi_version: out: DMAFILE_ABI_VERSION of the running module.
 * @caps: out: DMAFILE_CAP_* bits.
 * @map_flags: out: the DMAFILE_MAP_* bits this module accepts.
 * @page_size: out: the page size; offsets must be multiples of it.
 * @max_pinned_bytes: out: the module-wide cap on pinned bytes.
 * @pinned_bytes: out: bytes pinned now by all live dma-bufs.
 * @user_pinned_bytes: out: bytes pinned now by dma-bufs that the caller's
 *	user (real uid) created.
 * @memlock_limit: out: the caller's RLIMIT_MEMLOCK in bytes that pins are
 *	charged against; ~0 when unlimited or when the caller has
 *	CAP_IPC_LOCK and is not charged.
 * @max_map_bytes: out: the largest length one mapping may have.
 * @nr_buffers: out: number of live dma-bufs made by this module.
 * @reserved: must be zero.
 */
struct dmafile_query {
	__u32 abi_version;
	__u32 caps;
	__u32 map_flags;
	__u32 page_size;
	__u64 max_pinned_bytes;
	__u64 pinned_bytes;
	__u64 user_pinned_bytes;
	__u64 memlock_limit;
	__u64 max_map_bytes;
	__u64 nr_buffers;
	__u64 reserved[4];
};

/**
 * struct dmafile_map - DMAFILE_IOC_MAP: map a file range into a dma-buf
 * @fd: in: the file; must be open for reading (and for writing with
 *	DMAFILE_MAP_WRITE).
 * @flags: in: DMAFILE_MAP_* bits.
 * @offset: in: start of the range in the file; a multiple of the page size.
 * @length: in: length of the range; it may end anywhere up to the end of
 *	the file rounded up to a page. The dma-buf covers the range rounded up
 *	to whole pages; bytes past the end of the file read as a shared mmap
 *	of the file shows them: zeros, unless a writer stored there through
 *	one.
 * @dmabuf_fd: out: the new dma-buf's fd.
 * @backing: out: an &enum dmafile_backing value.
 * @mapped_length: out: the dma-buf's size (@length rounded up to a page).
 * @reason: out: an &enum dmafile_reason value; set on failure as well, when
 *	the ioctl fails with the errno documented for that reason.
 * @pad: must be zero.
 * @reserved: must be zero.
 */
struct dmafile_map {
	__s32 fd;
	__u32 flags;
	__u64 offset;
	__u64 length;
	__s32 dmabuf_fd;
	__u32 backing;
	__u64 mapped_length;
	__u32 reason;
	__u32 pad;
	__u64 reserved[2];
};

/* Bits of &dmafile_status.state. */
#define DMAFILE_STATE_STALE	(1U << 0)
#define DMAFILE_STATE_UNLINKED	(1U << 1)

/**
 * struct dmafile_status - DMAFILE_IOC_STATUS: describe one of our dma-bufs
 * @dmabuf_fd: in: a dma-buf fd made by DMAFILE_IOC_MAP.
 * @flags: out: the DMAFILE_MAP_* flags it was made with.
 * @backing: out: an &enum dmafile_backing value.
 * @state: out: DMAFILE_STATE_* bits. STALE: some of its pages are no longer
 *	the file's (the file was truncated or a hole punched over them since
 *	mapping); they keep the bytes they had. Never set for storage-direct
 *	buffers, whose file's layout is frozen. UNLINKED: the file has no
 *	names left.
 * @dev_major: out: major number of the file's device (st_dev).
 * @dev_minor: out: minor number of the file's device (st_dev).
 * @pad: must be zero.
 * @ino: out: the file's inode number (st_ino).
 * @offset: out: start of the mapped range in the file.
 * @length: out: the dma-buf's size.
 * @file_size: out: the file's size now.
 * @stale_pages: out: how many of its pages are no longer the file's.
 * @reserved: must be zero.
 */
struct dmafile_status {
	__s32 dmabuf_fd;
	__u32 flags;
	__u32 backing;
	__u32 state;
	__u32 dev_major;
	__u32 dev_minor;
	__u64 ino;
	__u64 offset;
	__u64 length;
	__u64 file_size;
	__u64 stale_pages;
	__u64 reserved[2];
};

#define DMAFILE_IOC_MAGIC	0xDF
#define DMAFILE_IOC_QUERY	_IOWR(DMAFILE_IOC_MAGIC, 0x0, struct dmafile_query)
#define DMAFILE_IOC_MAP		_IOWR(DMAFILE_IOC_MAGIC, 0x1, struct dmafile_map)
#define DMAFILE_IOC_STATUS	_IOWR(DMAFILE_IOC_MAGIC, 0x2, struct dmafile_status)

#endif /* _UAPI_LINUX_DMAFILE_H */
