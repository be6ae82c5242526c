// SPDX-License-Identifier: GPL-2.0
/*
 * dmafile: storage-direct dma-bufs, whose pages are the blocks of a file on
 * a DAX mount (pmem, CXL memory): the storage's own memory, not page-cache
 * copies of it. They are read-only.
 *
 * Block lifetime. A device reading a file's blocks must never see them
 * freed and handed to another file. The kernel's rule for users of fsdax
 * pages -- every layout change waits in dax_layout_busy_page() until no
 * page of the file is referenced -- does not hold in 6.12: XFS_IOC_SWAPEXT
 * and EXT4_IOC_SWAP_BOOT move blocks without waiting (xfs_swap_extents(),
 * swap_inode_boot_loader()), the wait only happens while the file is
 * mapped somewhere (mapping_mapped()), and a truncate that waits holds
 * i_rwsem, so everybody else's I/O on the file stalls behind it. So
 * dmafile does not rely on the wait. For as long as a storage-direct
 * dma-buf of a file lives, it freezes the file's layout the way swapon(2)
 * does for a swap file, whose blocks the kernel also addresses directly,
 * and takes write access away the way exec does for a running program:
 *
 * - i_writecount is negative, so nobody can open the file for writing
 *   (ETXTBSY), and no file of it is open for writing: it is made negative
 *   only if none is, the caller's descriptor included, in one atomic step
 *   with get_write_access(). Every operation that can free or move a
 *   file's blocks through the file itself needs a file open for writing:
 *   write(2), truncate (also by path: vfs_truncate() takes write access),
 *   fallocate of any mode (vfs_fallocate(), and what calls ->fallocate()
 *   directly: a loop device's discard, a SCSI target's unmap), reflink
 *   into it, copy_file_range into it, XFS_IOC_SWAPEXT and
 *   XFS_IOC_EXCHANGE_RANGE (either end), EXT4_IOC_MOVE_EXT and
 *   EXT4_IOC_SWAP_BOOT, writable shared mappings (mprotect() included),
 *   and with them copy on write of blocks shared by reflink. An operation
 *   in flight holds such a file, so none can be under way either.
 * - The inode has S_SWAPFILE, which refuses what needs no writable file:
 *   dedupe into it with a read-only descriptor the owner holds and reflink
 *   out of it (__generic_remap_file_range_prep(), ETXTBSY), unlink and
 *   rename over it (may_delete(), vfs_rename(), EPERM).
 *
 * Otherwise blocks are freed only when the inode is evicted, which the
 * dma-buf's reference to the file prevents. Both are set under i_rwsem,
 * which the filesystems' remap, truncate and extent swap paths take before
 * their checks; both are undone when the last such dma-buf goes.
 *
 * Not writable. A WRITE storage-direct mapping would need its own file to
 * stay writable, and i_writecount cannot then deny new writers without
 * also letting exec deny them (the two share one counter), so the layout
 * could not be held against a loop device's discard through a second
 * writable file. WRITE is refused (write-pin-not-allowed); the runtime
 * writes DAX files back through the page cache instead.
 *
 * No page references. With the layout frozen, the pages stay the file's
 * blocks without pins, so dmafile holds none: dax_layout_busy_page() never
 * finds them busy and no layout change ever waits for a dma-buf. It holds a
 * reference to each page's dev_pagemap instead, so that the memory stays
 * while the dma-buf lives (unbinding the pmem device waits for it).
 *
 * Finding the pages. The range is mapped read-only in the caller's address
 * space for the duration of the ioctl only and faulted in with
 * get_user_pages_remote(), holding mmap_lock and having checked that the
 * mapping at that address is the one dmafile made, so that another thread
 * of the caller cannot substitute another file's pages; the references GUP
 * takes are dropped at once. No reference to the caller's address space
 * outlives the call. A read fault of a hole or unwritten extent maps the
 * zero page, which is refused (dax-unbacked). Blocks shared by reflink are
 * mapped as they are: they are reference-counted, so they stay while this
 * file holds them, a write through the other file copies them first, and
 * nothing can write this file meanwhile.
 *
 * Who may freeze. A frozen file stops everybody, as a lease does for a
 * while: the caller must own the file or have CAP_LEASE, as for
 * vfs_setlease(). Release takes i_rwsem only if it can at once; a worker
 * does it otherwise, so that closing never sleeps unkillably.
 *
 * Costs to other users of the file, while a storage-direct dma-buf lives:
 * it cannot be opened for writing, nor unlinked or renamed over; a file
 * open for writing anywhere cannot be mapped storage-direct. Reads,
 * read-only mmaps and stat are unaffected, and nothing waits.
 */
#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/fs.h>
#include <linux/hashtable.h>
#include <linux/memremap.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/mnt_idmapping.h>
#include <linux/module.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/workqueue.h>

#include "internal.h"

/* An inode whose layout storage-direct dma-bufs hold frozen. */
struct dmafile_claim {
	struct hlist_node node;
	struct inode *inode;
	unsigned long count;	/* dma-bufs; changed under the inode's i_rwsem */
};

static DEFINE_HASHTABLE(dmafile_claims, 6);
static DEFINE_SPINLOCK(dmafile_claims_lock);
static struct workqueue_struct *dmafile_dax_wq;

int dmafile_dax_init(void)
{
	dmafile_dax_wq = alloc_workqueue("dmafile_dax", WQ_UNBOUND, 0);
	return dmafile_dax_wq ? 0 : -ENOMEM;
}

/* Runs after the last dma-buf is released: waits for deferred unclaims. */
void dmafile_dax_exit(void)
{
	destroy_workqueue(dmafile_dax_wq);
	WARN_ON(!hash_empty(dmafile_claims));
}

static struct dmafile_claim *dmafile_claim_find(struct inode *inode)
{
	struct dmafile_claim *c;

	lockdep_assert_held(&dmafile_claims_lock);
	hash_for_each_possible(dmafile_claims, c, node, (unsigned long)inode)
		if (c->inode == inode)
			return c;
	return NULL;
}

/*
 * Takes write access away from the inode, as deny_write_access() does, if
 * no file of it is open for writing. Returns false if one is.
 */
static bool dmafile_dax_deny_writers(struct inode *inode)
{
	int writers = atomic_read(&inode->i_writecount);

	/* One atomic step with get_write_access(): it fails once negative. */
	do {
		if (writers > 0)
			return false;
	} while (!atomic_try_cmpxchg(&inode->i_writecount, &writers,
				     writers - 1));
	return true;
}

/*
 * Freezes the layout of the buffer's inode for the life of the buffer.
 * Called with the inode's i_rwsem held for writing. Returns a refusal
 * reason, or DMAFILE_REASON_NONE with the claim counted (*fresh used or
 * not).
 */
static u32 dmafile_dax_claim(struct dmafile_buf *buf,
			     struct dmafile_claim **fresh)
{
	struct inode *inode = file_inode(buf->file);
	struct dmafile_claim *c;

	/*
	 * A truncate may have shrunk the file since the request was checked
	 * (it takes i_rwsem, so the size holds still now): a range no longer
	 * inside the file is refused, not faulted past EOF.
	 */
	if (buf->index + buf->npages > dmafile_eof_index(buf))
		return DMAFILE_REASON_FILE_CHANGED;
	spin_lock(&dmafile_claims_lock);
	c = dmafile_claim_find(inode);
	if (c) {
		/* Frozen, with write access denied, ever since c was made. */
		c->count++;
		spin_unlock(&dmafile_claims_lock);
		return DMAFILE_REASON_NONE;
	}
	spin_unlock(&dmafile_claims_lock);
	/* An active swap file: its blocks are the swap subsystem's. */
	if (IS_SWAPFILE(inode))
		return DMAFILE_REASON_FILE_BUSY;
	if (!dmafile_dax_deny_writers(inode))
		return DMAFILE_REASON_FILE_BUSY;
	inode->i_flags |= S_SWAPFILE;
	c = *fresh;
	*fresh = NULL;
	c->inode = inode;
	c->count = 1;
	spin_lock(&dmafile_claims_lock);
	hash_add(dmafile_claims, &c->node, (unsigned long)inode);
	spin_unlock(&dmafile_claims_lock);
	return DMAFILE_REASON_NONE;
}

/* Undoes one dmafile_dax_claim(). Called with the inode's i_rwsem held. */
static void dmafile_dax_unclaim(struct inode *inode)
{
	struct dmafile_claim *c;

	spin_lock(&dmafile_claims_lock);
	c = dmafile_claim_find(inode);
	if (WARN_ON(!c)) {
		spin_unlock(&dmafile_claims_lock);
		return;
	}
	if (!--c->count) {
		hash_del(&c->node);
		inode->i_flags &= ~S_SWAPFILE;
		/* As allow_write_access() gives back what was denied. */
		atomic_inc(&inode->i_writecount);
	} else {
		c = NULL;
	}
	spin_unlock(&dmafile_claims_lock);
	kfree(c);
}

/*
 * Takes a reference to the dev_pagemap of @page, which GUP holds, so that
 * the page cannot be split meanwhile (large DAX folios are, from 6.15, when
 * their entries go): the pointer is kept in buf->pgmaps rather than read
 * from the page again at release. -ENODATA: not the storage's page (a hole
 * or unwritten extent read-faults the zero page); -ENXIO: the device is
 * going away.
 */
static int dmafile_dax_hold_page(struct dmafile_buf *buf, unsigned long i)
{
	struct page *page = buf->pages[i];
	struct dev_pagemap *pgmap;

	if (!is_zone_device_page(page))
		return -ENODATA;
	pgmap = dmafile_page_pgmap(page);
	if (!percpu_ref_tryget_live(&pgmap->ref))
		return -ENXIO;
	buf->pgmaps[i] = pgmap;
	return 0;
}

/*
 * Faults in the buffer's range, mapped at @addr, records its pages and
 * holds their pagemaps, keeping no references to the pages themselves.
 * mmap_lock is held around each batch, with the mapping checked first to be
 * ours, so that the pages are this file's at the buffer's offsets. Returns
 * 0, or an errno with *done pages held.
 */
static int dmafile_dax_fault_in(struct dmafile_buf *buf, unsigned long addr,
				unsigned long *done)
{
	unsigned long len = buf->npages << PAGE_SHIFT;
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	unsigned long base;
	long i, got;
	int ret = 0;

	while (!ret && *done < buf->npages) {
		unsigned long n = min_t(unsigned long, buf->npages - *done,
					DMAFILE_PIN_BATCH);

		if (fatal_signal_pending(current))
			return -EINTR;
		if (mmap_read_lock_killable(mm))
			return -EINTR;
		vma = vma_lookup(mm, addr);
		if (!vma || vma->vm_start != addr || vma->vm_end != addr + len ||
		    vma->vm_file != buf->file || vma->vm_pgoff != buf->index) {
			mmap_read_unlock(mm);
			return -EBUSY;
		}
		/* No @locked: GUP keeps mmap_lock, so the mapping stays ours. */
		got = dmafile_gup_remote(mm, addr + (*done << PAGE_SHIFT), n, 0,
					 buf->pages + *done);
		mmap_read_unlock(mm);
		if (got <= 0)
			return got ? got : -EFAULT;
		base = *done;
		for (i = 0; i < got; i++) {
			if (!ret)
				ret = dmafile_dax_hold_page(buf, base + i);
			if (!ret)
				(*done)++;
			put_page(buf->pages[base + i]);
		}
		cond_resched();
	}
	return ret;
}

/* The refusal for an errno of dmafile_dax_fault_in(). */
static u32 dmafile_dax_fault_reason(int err)
{
	switch (err) {
	case -EINTR:
		return DMAFILE_REASON_INTERRUPTED;
	case -ENOMEM:
		return DMAFILE_REASON_NO_MEMORY;
	case -EBUSY:
		/* Another thread of the caller replaced the mapping. */
		return DMAFILE_REASON_FILE_CHANGED;
	case -ENODATA:
		return DMAFILE_REASON_DAX_UNBACKED;
	}
	/* A fault failed on the media, or the device is going away. */
	return DMAFILE_REASON_IO_ERROR;
}

/* Drops the pagemap references of the buffer's first @n pages. */
static void dmafile_dax_put_pages(struct dmafile_buf *buf, unsigned long n)
{
	unsigned long i;

	for (i = 0; i < n; i++) {
		put_dev_pagemap(buf->pgmaps[i]);
		if (!(i % DMAFILE_PIN_BATCH))
			cond_resched();
	}
}

/* A claim to drop once the inode's i_rwsem can be taken. */
struct dmafile_unclaim {
	struct work_struct work;
	struct file *file;		/* the worker's own reference */
	struct dmafile_buf *buf;	/* to finish releasing, or NULL */
};

static void dmafile_dax_unclaim_work(struct work_struct *work)
{
	struct dmafile_unclaim *u = container_of(work, struct dmafile_unclaim,
						 work);
	struct inode *inode = file_inode(u->file);

	inode_lock(inode);
	dmafile_dax_unclaim(inode);
	inode_unlock(inode);
	if (u->buf) {
		dmafile_uncharge(&u->buf->charge);
		dmafile_buf_destroy(u->buf);
	}
	fput(u->file);
	kfree(u);
	/*
	 * Taken when the work was queued, so that rmmod fails rather than
	 * waits while a claim is pending. The rest of this function runs
	 * before destroy_workqueue() in module exit can return.
	 */
	module_put(THIS_MODULE);
}

/*
 * Drops a claim of @file's inode from a worker, which waits for i_rwsem as
 * long as it takes; then finishes releasing @buf if it is not NULL.
 */
static void dmafile_dax_defer_unclaim(struct file *file,
				      struct dmafile_buf *buf)
{
	struct dmafile_unclaim *u;

	u = kmalloc(sizeof(*u), GFP_KERNEL | __GFP_NOFAIL);
	u->file = get_file(file);
	u->buf = buf;
	__module_get(THIS_MODULE);
	INIT_WORK(&u->work, dmafile_dax_unclaim_work);
	queue_work(dmafile_dax_wq, &u->work);
}

/*
 * Fills buf->pages with the storage's pages of the range at file @offset
 * and freezes the file's layout until dmafile_dax_release(). Returns a
 * refusal reason; for DMAFILE_REASON_MAP_FAILED, *mmap_err is the errno of
 * the mmap. On failure nothing is held.
 */
u32 dmafile_dax_map(struct dmafile_buf *buf, loff_t offset, int *mmap_err)
{
	struct inode *inode = file_inode(buf->file);
	unsigned long len = buf->npages << PAGE_SHIFT;
	struct dmafile_claim *fresh = NULL;
	unsigned long addr, done = 0;
	u32 reason;
	int ret;

	/*
	 * Freezing the file stops everybody from changing it, as a lease
	 * does for a while: ask what vfs_setlease() asks.
	 */
	if (!vfsuid_eq_kuid(i_uid_into_vfsuid(dmafile_file_idmap(buf->file),
					      inode),
			    current_fsuid()) && !capable(CAP_LEASE))
		return DMAFILE_REASON_NOT_OWNER;
	/* The caller's own file must not be open for writing either. */
	if (buf->file->f_mode & FMODE_WRITER)
		return DMAFILE_REASON_FILE_BUSY;
	/* Freed with the buffer (dmafile_buf_destroy()). */
	buf->pgmaps = kvmalloc_array(buf->npages, sizeof(*buf->pgmaps),
				     GFP_KERNEL);
	fresh = kzalloc(sizeof(*fresh), GFP_KERNEL);
	if (!buf->pgmaps || !fresh) {
		kfree(fresh);
		return DMAFILE_REASON_NO_MEMORY;
	}
	addr = vm_mmap(buf->file, 0, len, PROT_READ, MAP_SHARED, offset);
	if (IS_ERR_VALUE(addr)) {
		kfree(fresh);
		*mmap_err = (long)addr;
		return DMAFILE_REASON_MAP_FAILED;
	}
	if (down_write_killable(&inode->i_rwsem)) {
		reason = DMAFILE_REASON_INTERRUPTED;
		goto out_unmap;
	}
	reason = dmafile_dax_claim(buf, &fresh);
	inode_unlock(inode);
	if (reason)
		goto out_unmap;
	ret = dmafile_dax_fault_in(buf, addr, &done);
	if (ret) {
		reason = dmafile_dax_fault_reason(ret);
		dmafile_dax_put_pages(buf, done);
		if (!down_write_killable(&inode->i_rwsem)) {
			dmafile_dax_unclaim(inode);
			inode_unlock(inode);
		} else {
			dmafile_dax_defer_unclaim(buf->file, NULL);
		}
	}
out_unmap:
	vm_munmap(addr, len);
	kfree(fresh);
	return reason;
}

/*
 * Releases a storage-direct buffer, from dma-buf release (__fput(), holding
 * no locks) or a failed export: drops the pagemap references, unfreezes the
 * file's layout, uncharges and frees the buffer. It never sleeps on
 * i_rwsem: a closing or exiting task must not wait, unkillably, for whoever
 * holds it (a DAX read into a buffer that faults slowly holds it shared);
 * when the lock is taken, a worker finishes, and until then the buffer
 * still counts in QUERY's nr_buffers.
 */
void dmafile_dax_release(struct dmafile_buf *buf)
{
	struct inode *inode = file_inode(buf->file);

	dmafile_dax_put_pages(buf, buf->npages);
	if (down_write_trylock(&inode->i_rwsem)) {
		dmafile_dax_unclaim(inode);
		inode_unlock(inode);
		dmafile_uncharge(&buf->charge);
		dmafile_buf_destroy(buf);
		return;
	}
	dmafile_dax_defer_unclaim(buf->file, buf);
}
