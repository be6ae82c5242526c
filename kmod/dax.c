// SPDX-License-Identifier: GPL-2.0
/*
 * dmafile: storage-direct dma-bufs, whose pages are the blocks of a file on
 * a DAX mount (pmem, CXL memory): the storage's own memory, not page-cache
 * copies of it.
 *
 * Block lifetime. A device reading or writing a file's blocks must never
 * see them freed and handed to another file. The kernel's rule for users
 * of fsdax pages -- every layout change waits in dax_layout_busy_page()
 * until no page of the file is referenced -- does not hold in 6.12:
 * XFS_IOC_SWAPEXT and EXT4_IOC_SWAP_BOOT move blocks without waiting
 * (xfs_swap_extents(), swap_inode_boot_loader()), the wait only happens
 * while the file is mapped somewhere (mapping_mapped()), and a truncate
 * that waits holds i_rwsem, so everybody else's I/O on the file stalls
 * behind it. So dmafile does not rely on the wait: it freezes the file's
 * layout for as long as a storage-direct dma-buf of it lives, the way
 * swapon(2) does for a swap file, whose blocks the kernel also addresses
 * directly, and denies opening it for writing, the way exec does for a
 * running program. The inode gets S_SWAPFILE, and every operation that can
 * free or move its blocks refuses at once (6.12 sources):
 *
 *   truncate to a smaller size	inode_newsize_ok()		ETXTBSY
 *   fallocate, any mode	vfs_fallocate()			ETXTBSY
 *   reflink, dedupe (either end) __generic_remap_file_range_prep() ETXTBSY
 *   copy_file_range into it	generic_copy_file_checks()	ETXTBSY
 *   write(2), O_DIRECT writes	generic_write_checks_count()	ETXTBSY
 *   mmap(MAP_SHARED, PROT_WRITE) do_mmap()			ETXTBSY
 *   XFS_IOC_SWAPEXT		xfs_ioc_swapext()		EINVAL
 *   XFS_IOC_EXCHANGE_RANGE	xfs_exchange_range_checks()	ETXTBSY
 *   EXT4_IOC_SWAP_BOOT		swap_inode_boot_loader()	EINVAL
 *   unlink, rename over it	may_delete(), vfs_rename()	EPERM
 *
 * and i_writecount is negative, so opening the file for writing fails with
 * ETXTBSY: that also stops what calls ->fallocate() without
 * vfs_fallocate() (a loop device's discard, a SCSI target's unmap), which
 * needs the file open for writing. Freeing blocks otherwise needs the
 * inode to be evicted, which the dma-buf's reference to the file prevents.
 * Growing the file frees nothing and is allowed to a writable file.
 *
 * Operations that checked before the flag was set. vfs_fallocate() and
 * xfs_ioc_swapext() look at S_SWAPFILE before they take i_rwsem, so one
 * that passed its check just before the flag was set would go on. Both
 * need a file open for writing. dmafile sets the flag under i_rwsem and
 * then, after a full barrier that orders it against the atomic increments
 * of opening for writing (get_write_access()) and of taking a reference to
 * a file (fget()), takes write access away in one atomic step that fails
 * if a file is open for writing: for a read-only buffer any (the caller's
 * included), for a WRITE buffer any but the caller's own, which must not
 * be shared (its only references are the caller's fd, this call and the
 * temporary mapping). Otherwise the request is refused with file-busy.
 * The operations that check under i_rwsem (truncate, remap, exchange
 * range, swap boot) are ordered by the lock itself.
 *
 * No page references. With the layout frozen, the pages stay the file's
 * blocks without pins, so dmafile holds none: dax_layout_busy_page() never
 * finds them busy and no layout change ever waits for a dma-buf. It holds a
 * reference to each page's dev_pagemap instead, so that the memory stays
 * while the dma-buf lives (unbinding the pmem device waits for it).
 *
 * Finding the pages. The range is mapped in the caller's address space for
 * the duration of the ioctl only and faulted in with
 * get_user_pages_remote(), holding mmap_lock and having checked that the
 * mapping at that address is the one dmafile made, so that another thread
 * of the caller cannot substitute another file's pages; the references GUP
 * takes are dropped at once. The mapping is gone before the ioctl returns,
 * and no reference to the caller's address space is kept. A read fault of
 * a hole or unwritten extent maps the zero page, which is refused
 * (dax-unbacked); a write fault allocates holes, converts unwritten
 * extents and copies blocks shared by reflink, so a WRITE buffer gets
 * blocks of the file's own. Blocks shared by reflink are mapped for reading
 * as they are: they are reference-counted, so they stay while this file
 * holds them, a write through the other file copies them first, and
 * nothing can write this file (which would copy them away from under the
 * buffer) while no file of it is open for writing.
 *
 * WRITE buffers need the file to themselves: their faults change the
 * layout, and their file stays writable. So one is made only while no other
 * storage-direct dma-buf of the file lives, holding i_rwsem until its
 * faults are done, and no other is made while it lives.
 *
 * Who may freeze. A frozen file stops everybody, as a lease does for a
 * while: the caller must own the file or have CAP_LEASE, as for
 * vfs_setlease(). Release takes i_rwsem only if it can at once; a worker
 * does it otherwise, so that closing never sleeps unkillably.
 *
 * Costs to other users of the file, while a storage-direct dma-buf lives:
 * it cannot be opened for writing, the operations in the table fail, it
 * cannot be unlinked; a file open for writing anywhere cannot be mapped
 * storage-direct. Reads, read-only mmaps and stat are unaffected.
 */
#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/fdtable.h>
#include <linux/fs.h>
#include <linux/hashtable.h>
#include <linux/highmem.h>
#include <linux/libnvdimm.h>
#include <linux/memremap.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/mnt_idmapping.h>
#include <linux/module.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/workqueue.h>

#include "internal.h"

/* An inode whose layout storage-direct dma-bufs hold frozen. */
struct dmafile_claim {
	struct hlist_node node;
	struct inode *inode;
	unsigned long count;	/* dma-bufs; changed under the inode's i_rwsem */
	int denied;		/* taken off i_writecount to deny write opens */
	bool write;		/* a WRITE buffer's: nobody may join it */
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
 * Denies opening the inode for writing from now on, as exec does, if no
 * operation that checks S_SWAPFILE before taking i_rwsem can be past its
 * check: each needs a file of the inode open for writing. For a read-only
 * buffer, no file may be open for writing, the caller's included (which
 * also keeps every write fault, and with it copy on write of blocks shared
 * by reflink, away from the file while it is frozen). For a WRITE buffer,
 * the caller's own file must be the only one, and nobody else may be using
 * it: its references must be exactly the caller's fd (@fd, still in the fd
 * table), this call's and the temporary mapping's at @addr. Called after
 * S_SWAPFILE is set and a full barrier: an operation that takes a
 * reference or write access later sees the flag. Returns how much was
 * taken off i_writecount (to give back when unfrozen), or 0 for refused.
 */
static int dmafile_dax_deny_writers(struct dmafile_buf *buf, int fd,
				    unsigned long addr)
{
	struct file *file = buf->file;
	struct inode *inode = file_inode(file);
	bool write = dmafile_buf_writable(buf);
	struct files_struct *files = current->files;
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	int writers, denied = write ? 2 : 1;
	bool ok;

	if (!write && (file->f_mode & FMODE_WRITER))
		return 0;
	/* Atomic with get_write_access(), which fails once it is negative. */
	writers = atomic_read(&inode->i_writecount);
	do {
		if (write ? writers != 1 : writers > 0)
			return 0;
	} while (!atomic_try_cmpxchg(&inode->i_writecount, &writers,
				     writers - denied));
	if (!write)
		return denied;
	mmap_read_lock(mm);
	vma = vma_lookup(mm, addr);
	ok = vma && vma->vm_start == addr && vma->vm_file == file;
	spin_lock(&files->file_lock);
	ok = ok && files_lookup_fd_locked(files, fd) == file &&
	     file_count(file) == 3;
	spin_unlock(&files->file_lock);
	mmap_read_unlock(mm);
	if (ok)
		return denied;
	atomic_add(denied, &inode->i_writecount);
	return 0;
}

/*
 * Freezes the layout of the buffer's inode for the life of the buffer.
 * Called with the inode's i_rwsem held for writing and the range mapped at
 * @addr from the caller's @fd. Returns a refusal reason, or
 * DMAFILE_REASON_NONE with the claim counted (*fresh used or not).
 */
static u32 dmafile_dax_claim(struct dmafile_buf *buf, int fd,
			     unsigned long addr, struct dmafile_claim **fresh)
{
	struct inode *inode = file_inode(buf->file);
	struct dmafile_claim *c;
	int denied;

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
		/*
		 * The flag has been set, and write opens denied, ever since c
		 * was made. A WRITE buffer's faults would change the layout
		 * under c's buffers; a WRITE buffer's file, still writable,
		 * could copy blocks shared by reflink under a new buffer.
		 */
		if (dmafile_buf_writable(buf) || c->write) {
			spin_unlock(&dmafile_claims_lock);
			return DMAFILE_REASON_FILE_BUSY;
		}
		c->count++;
		spin_unlock(&dmafile_claims_lock);
		return DMAFILE_REASON_NONE;
	}
	spin_unlock(&dmafile_claims_lock);
	/* An active swap file: its blocks are the swap subsystem's. */
	if (IS_SWAPFILE(inode))
		return DMAFILE_REASON_FILE_BUSY;
	inode->i_flags |= S_SWAPFILE;
	/* Pairs with get_write_access() and fget(): see the header. */
	smp_mb();
	denied = dmafile_dax_deny_writers(buf, fd, addr);
	if (!denied) {
		inode->i_flags &= ~S_SWAPFILE;
		return DMAFILE_REASON_FILE_BUSY;
	}
	c = *fresh;
	*fresh = NULL;
	c->inode = inode;
	c->count = 1;
	c->denied = denied;
	c->write = dmafile_buf_writable(buf);
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
		atomic_add(c->denied, &inode->i_writecount);
		inode->i_flags &= ~S_SWAPFILE;
	} else {
		c = NULL;
	}
	spin_unlock(&dmafile_claims_lock);
	kfree(c);
}

/*
 * Faults in the buffer's range, mapped at @addr, and records its pages,
 * keeping no references to them. mmap_lock is held around each batch, with
 * the mapping checked first to be ours, so that the pages are this file's
 * at the buffer's offsets. Returns 0, or an errno with *done pages done.
 */
static int dmafile_dax_fault_in(struct dmafile_buf *buf, unsigned long addr,
				unsigned long *done)
{
	unsigned int gup = dmafile_buf_writable(buf) ? FOLL_WRITE : 0;
	unsigned long len = buf->npages << PAGE_SHIFT;
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	long i, ret;

	while (*done < buf->npages) {
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
		ret = get_user_pages_remote(mm, addr + (*done << PAGE_SHIFT), n,
					    gup, buf->pages + *done, NULL);
		mmap_read_unlock(mm);
		if (ret <= 0)
			return ret ? ret : -EFAULT;
		for (i = 0; i < ret; i++)
			put_page(buf->pages[*done + i]);
		*done += ret;
		cond_resched();
	}
	return 0;
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
	}
	/* A fault failed: a media error, or no space for a WRITE's holes. */
	return DMAFILE_REASON_IO_ERROR;
}

/*
 * Takes a dev_pagemap reference for each page, which must be the storage's
 * (a hole or unwritten extent read-faults the zero page). On failure
 * nothing is held.
 */
static u32 dmafile_dax_hold_pages(struct dmafile_buf *buf)
{
	struct dev_pagemap *pgmap = NULL;
	u32 reason = DMAFILE_REASON_NONE;
	unsigned long i, npages = buf->npages;

	for (i = 0; i < npages; i++) {
		struct page *page = buf->pages[i];

		if (!is_zone_device_page(page)) {
			reason = DMAFILE_REASON_DAX_UNBACKED;
			break;
		}
		if (!(i % DMAFILE_PIN_BATCH))
			cond_resched();
		/* One reference per page; put_pages drops page->pgmap's. */
		if (pgmap && pgmap == page->pgmap) {
			percpu_ref_get(&pgmap->ref);
		} else {
			pgmap = get_dev_pagemap(page_to_pfn(page), NULL);
			if (!pgmap) {
				/* The device is going away. */
				reason = DMAFILE_REASON_IO_ERROR;
				break;
			}
		}
	}
	if (reason) {
		buf->npages = i;
		dmafile_dax_put_pages(buf);
		buf->npages = npages;
	}
	return reason;
}

/*
 * A device's writes to storage-direct pages may sit in CPU caches (CPU
 * importers, or DMA that lands in the last-level cache): write them back
 * to the media, so that they are as durable as the filesystem's next
 * fsync makes the file's metadata.
 */
static void dmafile_dax_flush(struct dmafile_buf *buf)
{
#ifdef CONFIG_ARCH_HAS_PMEM_API
	unsigned long i;

	for (i = 0; i < buf->npages; i++) {
		void *addr = kmap_local_page(buf->pages[i]);

		arch_wb_cache_pmem(addr, PAGE_SIZE);
		kunmap_local(addr);
		if (!(i % DMAFILE_PIN_BATCH))
			cond_resched();
	}
#endif
}

void dmafile_dax_put_pages(struct dmafile_buf *buf)
{
	unsigned long i;

	for (i = 0; i < buf->npages; i++) {
		put_dev_pagemap(buf->pages[i]->pgmap);
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
 * Fills buf->pages with the storage's pages of the range at file @offset,
 * which the caller passed as @fd, and freezes the file's layout until
 * dmafile_dax_release(). Returns a refusal reason; for
 * DMAFILE_REASON_MAP_FAILED, *mmap_err is the errno of the mmap. On failure
 * nothing is held.
 */
u32 dmafile_dax_map(struct dmafile_buf *buf, int fd, loff_t offset,
		    int *mmap_err)
{
	struct inode *inode = file_inode(buf->file);
	bool write = dmafile_buf_writable(buf);
	unsigned long len = buf->npages << PAGE_SHIFT;
	struct dmafile_claim *fresh;
	unsigned long addr, done = 0;
	u32 reason;
	int ret;

	/*
	 * Freezing the file stops everybody from changing it, as a lease
	 * does for a while: ask what vfs_setlease() asks.
	 */
	if (!vfsuid_eq_kuid(i_uid_into_vfsuid(file_mnt_idmap(buf->file), inode),
			    current_fsuid()) && !capable(CAP_LEASE))
		return DMAFILE_REASON_NOT_OWNER;
	fresh = kzalloc(sizeof(*fresh), GFP_KERNEL);
	if (!fresh)
		return DMAFILE_REASON_NO_MEMORY;
	/* Before the claim: mmap refuses PROT_WRITE once the flag is set. */
	addr = vm_mmap(buf->file, 0, len, PROT_READ | (write ? PROT_WRITE : 0),
		       MAP_SHARED, offset);
	if (IS_ERR_VALUE(addr)) {
		kfree(fresh);
		if ((long)addr == -ETXTBSY)
			return DMAFILE_REASON_FILE_BUSY;
		*mmap_err = (long)addr;
		return DMAFILE_REASON_MAP_FAILED;
	}
	if (down_write_killable(&inode->i_rwsem)) {
		reason = DMAFILE_REASON_INTERRUPTED;
		goto out_unmap;
	}
	reason = dmafile_dax_claim(buf, fd, addr, &fresh);
	if (reason) {
		inode_unlock(inode);
		goto out_unmap;
	}
	/* A WRITE's faults change the layout: no other claim meanwhile. */
	if (!write)
		inode_unlock(inode);
	ret = dmafile_dax_fault_in(buf, addr, &done);
	reason = ret ? dmafile_dax_fault_reason(ret) :
		       dmafile_dax_hold_pages(buf);
	if (write) {
		if (reason)
			dmafile_dax_unclaim(inode);
		inode_unlock(inode);
	} else if (reason) {
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
 * no locks) or a failed export: drops the pagemap references, writes the
 * CPU caches back to the media for a WRITE buffer, unfreezes the file's
 * layout, uncharges and frees the buffer. It never sleeps on i_rwsem: a
 * closing or exiting task must not wait, unkillably, for whoever holds it
 * (a DAX read into a buffer that faults slowly holds it shared); when the
 * lock is taken, a worker finishes, and until then the buffer still counts
 * in QUERY's nr_buffers.
 */
void dmafile_dax_release(struct dmafile_buf *buf)
{
	struct inode *inode = file_inode(buf->file);

	if (dmafile_buf_writable(buf))
		dmafile_dax_flush(buf);
	dmafile_dax_put_pages(buf);
	if (down_write_trylock(&inode->i_rwsem)) {
		dmafile_dax_unclaim(inode);
		inode_unlock(inode);
		dmafile_uncharge(&buf->charge);
		dmafile_buf_destroy(buf);
		return;
	}
	dmafile_dax_defer_unclaim(buf->file, buf);
}
