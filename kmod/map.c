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

#include "internal.h"

/* Pages pinned per pin_user_pages_fast() call, between signal checks. */
#define DMAFILE_PIN_BATCH 512

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

static int dmafile_reason_errno(u32 reason, int err)
{
	switch (reason) {
	case DMAFILE_REASON_FILE_CHANGED:
		return -EAGAIN;
	case DMAFILE_REASON_INTERRUPTED:
		return -EINTR;
	case DMAFILE_REASON_IO_ERROR:
		return -EIO;
	}
	return err;
}

/*
 * Pins the buffer's range of its file into buf->pages, all or nothing.
 * On success buf->pages holds one pin per page.
 */
static int dmafile_pin(struct dmafile_buf *buf, loff_t offset, u32 *reason)
{
	bool write = dmafile_buf_writable(buf);
	unsigned long len = buf->npages << PAGE_SHIFT;
	unsigned int gup = FOLL_LONGTERM | (write ? FOLL_WRITE : 0);
	unsigned long addr, done = 0, i;
	pgoff_t eof_index;
	int ret = 0;

	addr = vm_mmap(buf->file, 0, len, PROT_READ | (write ? PROT_WRITE : 0),
		       MAP_SHARED, offset);
	if (IS_ERR_VALUE(addr)) {
		*reason = DMAFILE_REASON_MAP_FAILED;
		return (long)addr;
	}
	while (done < buf->npages) {
		unsigned long n = min_t(unsigned long, buf->npages - done,
					DMAFILE_PIN_BATCH);

		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		ret = pin_user_pages_fast(addr + (done << PAGE_SHIFT), n, gup,
					  buf->pages + done);
		if (ret <= 0) {
			if (!ret)
				ret = -EFAULT;
			break;
		}
		done += ret;
		ret = 0;
		cond_resched();
	}
	vm_munmap(addr, len);

	if (!ret) {
		/*
		 * The temporary mapping belonged to the caller, whose other
		 * threads could have replaced it, and the file may have been
		 * truncated meanwhile: keep only pages that are the file's.
		 */
		eof_index = dmafile_eof_index(buf);
		for (i = 0; i < done; i++) {
			if (!dmafile_page_current(buf, i, eof_index)) {
				*reason = DMAFILE_REASON_FILE_CHANGED;
				ret = -EAGAIN;
				break;
			}
		}
	} else {
		*reason = dmafile_pin_reason(buf, ret, done);
		ret = dmafile_reason_errno(*reason, ret);
	}
	if (ret)
		unpin_user_pages(buf->pages, done);
	return ret;
}

static u32 dmafile_check_file(struct file *file, u32 flags, u64 offset,
			      u64 length, int *err)
{
	struct inode *inode = file_inode(file);
	bool write = flags & DMAFILE_MAP_WRITE;

	*err = -EINVAL;
	if (!S_ISREG(inode->i_mode))
		return DMAFILE_REASON_NOT_REGULAR_FILE;
	*err = -EBADF;
	if ((file->f_mode & FMODE_PATH) || !(file->f_mode & FMODE_READ))
		return DMAFILE_REASON_FD_NOT_READABLE;
	if (write && !(file->f_mode & FMODE_WRITE))
		return DMAFILE_REASON_FD_NOT_WRITABLE;
	*err = -EOPNOTSUPP;
	if (!dmafile_fs_allowed(inode->i_sb->s_type->name))
		return DMAFILE_REASON_FS_NOT_SUPPORTED;
	if (write) {
		*err = -EPERM;
		if (IS_IMMUTABLE(inode) || IS_APPEND(inode) ||
		    IS_SWAPFILE(inode))
			return DMAFILE_REASON_IMMUTABLE;
		/* Mirrors the mm: only shmem page cache may be pinned writable. */
		*err = -EOPNOTSUPP;
		if (!shmem_mapping(file->f_mapping))
			return DMAFILE_REASON_WRITE_PIN_NOT_ALLOWED;
		*err = -EPERM;
		if (READ_ONCE(SHMEM_I(inode)->seals) &
		    (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))
			return DMAFILE_REASON_SEALED;
	}
	*err = -ENXIO;
	if (offset + length > PAGE_ALIGN(i_size_read(inode)))
		return DMAFILE_REASON_BEYOND_EOF;
	*err = 0;
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
	struct dmafile_buf *buf;
	struct dma_buf *db;
	struct file *file;
	u64 length;
	int ret;

	if (m->flags & ~DMAFILE_MAP_VALID_FLAGS) {
		m->reason = DMAFILE_REASON_FLAGS_UNSUPPORTED;
		return -EINVAL;
	}
	if (!(m->flags & DMAFILE_MAP_PIN)) {
		m->reason = DMAFILE_REASON_PIN_REQUIRED;
		return -EOPNOTSUPP;
	}
	if (!m->length || m->offset > U64_MAX - m->length ||
	    m->length > U64_MAX - PAGE_SIZE) {
		m->reason = DMAFILE_REASON_INVALID_RANGE;
		return -EINVAL;
	}
	if (!PAGE_ALIGNED(m->offset)) {
		m->reason = DMAFILE_REASON_UNALIGNED;
		return -EINVAL;
	}
	length = PAGE_ALIGN(m->length);
	if (length > dmafile_max_map_bytes ||
	    length > dmafile_max_pinned_bytes() ||
	    m->offset + length > (u64)MAX_LFS_FILESIZE) {
		m->reason = DMAFILE_REASON_TOO_LARGE;
		return -EFBIG;
	}

	/* O_PATH descriptors are refused as unreadable, not as bad. */
	file = fget_raw(m->fd);
	if (!file) {
		m->reason = DMAFILE_REASON_BAD_FD;
		return -EBADF;
	}
	m->reason = dmafile_check_file(file, m->flags, m->offset, m->length,
				       &ret);
	if (ret)
		goto err_put_file;

	ret = -ENOMEM;
	m->reason = DMAFILE_REASON_NO_MEMORY;
	buf = kzalloc(sizeof(*buf), GFP_KERNEL);
	if (!buf)
		goto err_put_file;
	buf->npages = length >> PAGE_SHIFT;
	buf->pages = kvmalloc_array(buf->npages, sizeof(*buf->pages),
				    GFP_KERNEL);
	if (!buf->pages)
		goto err_free_buf;
	buf->file = file;
	buf->index = m->offset >> PAGE_SHIFT;
	buf->flags = m->flags;
	buf->backing = DMAFILE_BACKING_PAGE_CACHE;
	mutex_init(&buf->lock);
	INIT_LIST_HEAD(&buf->attachments);

	ret = dmafile_charge(&buf->charge, buf->npages, &m->reason);
	if (ret)
		goto err_free_pages;
	ret = dmafile_pin(buf, m->offset, &m->reason);
	if (ret)
		goto err_uncharge;

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
	if (dmafile_buf_writable(buf))
		unpin_user_pages_dirty_lock(buf->pages, buf->npages, false);
	else
		unpin_user_pages(buf->pages, buf->npages);
err_uncharge:
	dmafile_uncharge(&buf->charge);
err_free_pages:
	kvfree(buf->pages);
	mutex_destroy(&buf->lock);
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
	for (i = 0; i < buf->npages; i++) {
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
