// SPDX-License-Identifier: GPL-2.0
/*
 * dmafile: making a dma-buf from a file range (DMAFILE_IOC_MAP), and its
 * status (DMAFILE_IOC_STATUS).
 *
 * The pages are pinned the way the kernel pins user memory for long-term
 * DMA: the range is mapped into the caller's address space for a moment and
 * pinned with pin_user_pages_fast(FOLL_LONGTERM). The mm therefore applies
 * its own rules for long-term pins (no writable pins of page cache that
 * needs writeback, no fsdax, migration out of movable zones), and the
 * filesystem and the LSMs see an ordinary mmap of the file.
 *
 * Files on DAX mounts are the exception (storage-direct backing): their
 * pages are the storage's own memory, which the mm refuses to pin
 * FOLL_LONGTERM. dax.c freezes such a file's layout instead (docs/kmod.md,
 * "Storage-direct").
 */
#include <linux/fcntl.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/pagemap.h>
#include <linux/sched/signal.h>
#include <linux/shmem_fs.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "internal.h"

/* The errno of each refusal, as documented in the uapi header. */
static const int dmafile_reason_errno[] = {
	[DMAFILE_REASON_INVALID_ARGUMENT] = EINVAL,
	[DMAFILE_REASON_FLAGS_UNSUPPORTED] = EINVAL,
	[DMAFILE_REASON_PIN_REQUIRED] = EOPNOTSUPP,
	[DMAFILE_REASON_BAD_FD] = EBADF,
	[DMAFILE_REASON_NOT_REGULAR_FILE] = EINVAL,
	[DMAFILE_REASON_FS_NOT_SUPPORTED] = EOPNOTSUPP,
	[DMAFILE_REASON_UNALIGNED] = EINVAL,
	[DMAFILE_REASON_INVALID_RANGE] = EINVAL,
	[DMAFILE_REASON_BEYOND_EOF] = ENXIO,
	[DMAFILE_REASON_TOO_LARGE] = EFBIG,
	[DMAFILE_REASON_MEMLOCK_LIMIT] = ENOMEM,
	[DMAFILE_REASON_GLOBAL_LIMIT] = ENOMEM,
	[DMAFILE_REASON_FD_NOT_READABLE] = EBADF,
	[DMAFILE_REASON_FD_NOT_WRITABLE] = EBADF,
	[DMAFILE_REASON_SEALED] = EPERM,
	[DMAFILE_REASON_IMMUTABLE] = EPERM,
	[DMAFILE_REASON_WRITE_PIN_NOT_ALLOWED] = EOPNOTSUPP,
	[DMAFILE_REASON_FILE_CHANGED] = EAGAIN,
	[DMAFILE_REASON_IO_ERROR] = EIO,
	[DMAFILE_REASON_NO_MEMORY] = ENOMEM,
	[DMAFILE_REASON_INTERRUPTED] = EINTR,
	[DMAFILE_REASON_DAX_UNBACKED] = ENODATA,
	[DMAFILE_REASON_FILE_BUSY] = ETXTBSY,
	[DMAFILE_REASON_NOT_OWNER] = EACCES,
	/* MAP_FAILED carries the errno the filesystem or LSM gave instead. */
};

/* Records why a request is refused; returns the errno that goes with it. */
int dmafile_refuse(struct dmafile_map *m, u32 reason)
{
	m->reason = reason;
	return -dmafile_reason_errno[reason];
}

/*
 * Which refusal a failed pin at page @i was. GUP turns both a read error
 * and a fault past EOF into -EFAULT; reading the page again tells which.
 */
static u32 dmafile_pin_reason(struct dmafile_buf *buf, int err,
			      unsigned long i)
{
	struct address_space *mapping = buf->file->f_mapping;
	pgoff_t index = buf->index + i;
	struct folio *folio;

	switch (err) {
	case -ENOMEM:
		return DMAFILE_REASON_NO_MEMORY;
	case -EINTR:
	case -ERESTARTSYS:
		return DMAFILE_REASON_INTERRUPTED;
	case -EOPNOTSUPP:
		return DMAFILE_REASON_FS_NOT_SUPPORTED;
	}
	if (index >= dmafile_eof_index(buf))
		return DMAFILE_REASON_FILE_CHANGED;
	/* shmem has no read_folio, and no read errors to find. */
	if (shmem_mapping(mapping))
		return DMAFILE_REASON_FILE_CHANGED;
	folio = read_mapping_folio(mapping, index, buf->file);
	if (IS_ERR(folio))
		return PTR_ERR(folio) == -EIO ? DMAFILE_REASON_IO_ERROR :
						DMAFILE_REASON_FILE_CHANGED;
	folio_put(folio);
	return DMAFILE_REASON_FILE_CHANGED;
}

/*
 * Pins the pages mapped at @addr into buf->pages, in batches between signal
 * checks. Returns 0 when all are pinned, or an errno with *done pinned.
 */
static int dmafile_gup(struct dmafile_buf *buf, unsigned long addr,
		       unsigned int gup, unsigned long *done)
{
	long ret;

	while (*done < buf->npages) {
		unsigned long n = min_t(unsigned long, buf->npages - *done,
					DMAFILE_PIN_BATCH);

		if (fatal_signal_pending(current))
			return -EINTR;
		ret = pin_user_pages_fast(addr + (*done << PAGE_SHIFT), n, gup,
					  buf->pages + *done);
		/* -EAGAIN: a fatal signal interrupted taking mmap_lock. */
		if (ret == -EAGAIN)
			return -EINTR;
		if (ret <= 0)
			return ret ? ret : -EFAULT;
		*done += ret;
		cond_resched();
	}
	return 0;
}

/*
 * Pins the buffer's range of its file's page cache into buf->pages, all or
 * nothing. On success buf->pages holds one pin per page. Returns a refusal
 * reason; for DMAFILE_REASON_MAP_FAILED, *mmap_err is the errno vm_mmap
 * gave.
 */
static u32 dmafile_pin(struct dmafile_buf *buf, loff_t offset, int *mmap_err)
{
	bool write = dmafile_buf_writable(buf);
	unsigned long len = buf->npages << PAGE_SHIFT;
	unsigned long addr, done = 0, i;
	u32 reason = DMAFILE_REASON_NONE;
	pgoff_t eof_index;
	int ret;

	addr = vm_mmap(buf->file, 0, len, PROT_READ | (write ? PROT_WRITE : 0),
		       MAP_SHARED, offset);
	if (IS_ERR_VALUE(addr)) {
		*mmap_err = (long)addr;
		return DMAFILE_REASON_MAP_FAILED;
	}
	ret = dmafile_gup(buf, addr, FOLL_LONGTERM | (write ? FOLL_WRITE : 0),
			  &done);
	vm_munmap(addr, len);

	if (ret)
		reason = dmafile_pin_reason(buf, ret, done);
	/*
	 * The temporary mapping belonged to the caller, whose other threads
	 * could have replaced it, and the file may have been truncated
	 * meanwhile: keep only pages that are the file's.
	 */
	eof_index = dmafile_eof_index(buf);
	for (i = 0; !reason && i < done; i++) {
		if (!dmafile_page_current(buf, i, eof_index))
			reason = DMAFILE_REASON_FILE_CHANGED;
		/*
		 * A pinned large folio cannot be split: a truncation inside it
		 * zeroes its tail and leaves it in the page cache, so stores
		 * made past the new end of file would come back when the file
		 * grows again. Writable pins are of small folios only.
		 */
		else if (write && folio_test_large(page_folio(buf->pages[i])))
			reason = DMAFILE_REASON_WRITE_PIN_NOT_ALLOWED;
	}
	if (reason)
		unpin_user_pages(buf->pages, done);
	return reason;
}

static u32 dmafile_check_file(struct file *file, u32 flags, u64 offset,
			      u64 length)
{
	struct inode *inode = file_inode(file);
	bool write = flags & DMAFILE_MAP_WRITE;

	/*
	 * Kernel-private inodes (pidfds, epoll and other anonymous inodes,
	 * secretmem) may claim S_IFREG, but nothing of theirs is file data.
	 */
	if (!S_ISREG(inode->i_mode) || IS_PRIVATE(inode))
		return DMAFILE_REASON_NOT_REGULAR_FILE;
	if ((file->f_mode & FMODE_PATH) || !(file->f_mode & FMODE_READ))
		return DMAFILE_REASON_FD_NOT_READABLE;
	if (write && !(file->f_mode & FMODE_WRITE))
		return DMAFILE_REASON_FD_NOT_WRITABLE;
	if (!dmafile_fs_allowed(inode->i_sb->s_type->name))
		return DMAFILE_REASON_FS_NOT_SUPPORTED;
	/* dax.c's layout freeze is established for these two only. */
	if (IS_DAX(inode) && strcmp(inode->i_sb->s_type->name, "ext4") &&
	    strcmp(inode->i_sb->s_type->name, "xfs"))
		return DMAFILE_REASON_FS_NOT_SUPPORTED;
	if (write) {
		if (IS_IMMUTABLE(inode) || IS_APPEND(inode))
			return DMAFILE_REASON_IMMUTABLE;
		/* A swap file, or a DAX file whose layout dax.c holds. */
		if (IS_SWAPFILE(inode))
			return DMAFILE_REASON_FILE_BUSY;
		/*
		 * Mirrors the mm: only shmem page cache may be pinned
		 * writable. Storage-direct mappings are read-only (dax.c).
		 */
		if (!shmem_mapping(file->f_mapping))
			return DMAFILE_REASON_WRITE_PIN_NOT_ALLOWED;
		if (shmem_mapping(file->f_mapping) &&
		    READ_ONCE(SHMEM_I(inode)->seals) &
		    (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))
			return DMAFILE_REASON_SEALED;
	}
	if (offset + length > PAGE_ALIGN(i_size_read(inode)))
		return DMAFILE_REASON_BEYOND_EOF;
	return DMAFILE_REASON_NONE;
}

/* The checks of a request that need nothing but its numbers. */
static u32 dmafile_check_args(const struct dmafile_map *m)
{
	if (m->flags & ~DMAFILE_MAP_VALID_FLAGS)
		return DMAFILE_REASON_FLAGS_UNSUPPORTED;
	if (!(m->flags & DMAFILE_MAP_PIN))
		return DMAFILE_REASON_PIN_REQUIRED;
	/* The range's end, the length rounded up to a page, must not wrap. */
	if (!m->length || m->length > U64_MAX - PAGE_SIZE ||
	    m->offset > U64_MAX - PAGE_ALIGN(m->length))
		return DMAFILE_REASON_INVALID_RANGE;
	if (!PAGE_ALIGNED(m->offset))
		return DMAFILE_REASON_UNALIGNED;
	/* kvmalloc() warns and fails past INT_MAX bytes of page array. */
	if (PAGE_ALIGN(m->length) >> PAGE_SHIFT >
	    INT_MAX / sizeof(struct page *) ||
	    PAGE_ALIGN(m->length) > dmafile_max_map_bytes ||
	    PAGE_ALIGN(m->length) > dmafile_max_pinned_bytes() ||
	    m->offset + PAGE_ALIGN(m->length) > (u64)MAX_LFS_FILESIZE)
		return DMAFILE_REASON_TOO_LARGE;
	return DMAFILE_REASON_NONE;
}

/*
 * The core of DMAFILE_IOC_MAP. @m has been checked for reserved fields;
 * everything else is checked here before anything is acquired. On failure
 * m->reason says why.
 */
int dmafile_map_file(struct dmafile_map *m, struct dma_buf **dmabuf)
{
	DEFINE_DMA_BUF_EXPORT_INFO(exp_info);
	u64 length = PAGE_ALIGN(m->length);
	struct dmafile_buf *buf;
	struct dma_buf *db;
	struct file *file;
	u32 reason;
	int ret;

	reason = dmafile_check_args(m);
	if (reason)
		return dmafile_refuse(m, reason);
	/* O_PATH descriptors are refused as unreadable, not as bad. */
	file = fget_raw(m->fd);
	if (!file)
		return dmafile_refuse(m, DMAFILE_REASON_BAD_FD);
	reason = dmafile_check_file(file, m->flags, m->offset, m->length);
	if (reason) {
		ret = dmafile_refuse(m, reason);
		goto err_put_file;
	}

	ret = dmafile_refuse(m, DMAFILE_REASON_NO_MEMORY);
	buf = kzalloc(sizeof(*buf), GFP_KERNEL);
	if (!buf)
		goto err_put_file;
	buf->npages = length >> PAGE_SHIFT;
	/* Charged before the page array: a refusal costs no memory. */
	reason = dmafile_charge(&buf->charge, buf->npages);
	if (reason) {
		ret = dmafile_refuse(m, reason);
		goto err_free_buf;
	}
	buf->pages = kvmalloc_array(buf->npages, sizeof(*buf->pages),
				    GFP_KERNEL);
	if (!buf->pages)
		goto err_uncharge;
	buf->file = file;
	buf->index = m->offset >> PAGE_SHIFT;
	buf->flags = m->flags;
	buf->backing = IS_DAX(file_inode(file)) ?
		DMAFILE_BACKING_STORAGE_DIRECT : DMAFILE_BACKING_PAGE_CACHE;
	mutex_init(&buf->lock);
	INIT_LIST_HEAD(&buf->attachments);

	if (buf->backing == DMAFILE_BACKING_STORAGE_DIRECT)
		reason = dmafile_dax_map(buf, m->offset, &ret);
	else
		reason = dmafile_pin(buf, m->offset, &ret);
	if (reason) {
		if (reason != DMAFILE_REASON_MAP_FAILED)
			ret = dmafile_refuse(m, reason);
		else
			m->reason = reason;
		goto err_free_pages;
	}

	exp_info.ops = &dmafile_dmabuf_ops;
	exp_info.size = length;
	exp_info.flags = O_RDWR;
	exp_info.priv = buf;
	db = dma_buf_export(&exp_info);
	if (IS_ERR(db)) {
		ret = PTR_ERR(db);
		m->reason = DMAFILE_REASON_NO_MEMORY;
		goto err_unpin;
	}
	/* From here the dma-buf owns buf (and the file): release() frees it. */
	m->backing = buf->backing;
	m->mapped_length = length;
	m->reason = DMAFILE_REASON_NONE;
	*dmabuf = db;
	return 0;

err_unpin:
	if (buf->backing == DMAFILE_BACKING_STORAGE_DIRECT) {
		/* It uncharges, frees buf and drops the file. */
		dmafile_dax_release(buf);
		return ret;
	}
	/* Nothing has written through the pages yet: no need to dirty them. */
	unpin_user_pages(buf->pages, buf->npages);
err_free_pages:
	kvfree(buf->pgmaps);
	kvfree(buf->pages);
	mutex_destroy(&buf->lock);
err_uncharge:
	dmafile_uncharge(&buf->charge);
err_free_buf:
	kfree(buf);
err_put_file:
	fput(file);
	return ret;
}

int dmafile_buf_status(struct dma_buf *dmabuf, struct dmafile_status *st)
{
	struct dmafile_buf *buf;
	struct kstat stat;
	pgoff_t eof_index;
	unsigned long i;
	int ret;

	if (dmabuf->ops != &dmafile_dmabuf_ops)
		return -EINVAL;
	buf = dmabuf->priv;
	/* stat()'s view: btrfs reports a per-subvolume st_dev, not s_dev. */
	ret = vfs_getattr(&buf->file->f_path, &stat,
			  STATX_INO | STATX_SIZE | STATX_NLINK,
			  AT_STATX_SYNC_AS_STAT);
	if (ret)
		return ret;
	st->flags = buf->flags;
	st->backing = buf->backing;
	st->dev_major = MAJOR(stat.dev);
	st->dev_minor = MINOR(stat.dev);
	st->ino = stat.ino;
	st->offset = (u64)buf->index << PAGE_SHIFT;
	st->length = (u64)buf->npages << PAGE_SHIFT;
	st->file_size = stat.size;
	st->stale_pages = 0;
	eof_index = DIV_ROUND_UP_ULL(stat.size, PAGE_SIZE);
	/* A storage-direct buffer's file keeps its layout (dax.c). */
	for (i = 0; buf->backing == DMAFILE_BACKING_PAGE_CACHE &&
	     i < buf->npages; i++) {
		if (!dmafile_page_current(buf, i, eof_index))
			st->stale_pages++;
		if (!(i % DMAFILE_PIN_BATCH)) {
			if (fatal_signal_pending(current))
				return -EINTR;
			cond_resched();
		}
	}
	st->state = 0;
	if (st->stale_pages)
		st->state |= DMAFILE_STATE_STALE;
	if (!stat.nlink)
		st->state |= DMAFILE_STATE_UNLINKED;
	return 0;
}
