// SPDX-License-Identifier: GPL-2.0
/*
 * dmafile: storage-direct dma-bufs, whose pages are the blocks of a file on
 * a DAX mount (pmem, CXL memory): the storage's own memory, not page-cache
 * copies of it.
 *
 * Layout safety. The mm refuses FOLL_LONGTERM pins of fsdax pages, because
 * truncate and hole punch must wait for every pin of a block before they
 * free it: ext4_break_layouts() and xfs_break_dax_layouts() find pinned
 * pages with dax_layout_busy_page() and wait in TASK_INTERRUPTIBLE until
 * the pins are gone. dmafile pins without FOLL_LONGTERM and relies on that
 * wait. dax_layout_busy_page() only looks for pins while the file is
 * mapped somewhere (mapping_mapped()), since without a mapping nobody
 * could have pinned a page through user memory. So the mapping dmafile
 * pins through is not unmapped: it stays in the caller's address space
 * for the life of the dma-buf, sealed (as mseal() seals: no munmap,
 * mremap, mprotect or MAP_FIXED over it), not inherited by fork() and not
 * dumped. The dma-buf keeps the caller's mm alive (mmget) so that the
 * mapping outlives the caller if the dma-buf does. Release unpins first,
 * so that waiting layout changes go on at once, and then removes the
 * mapping from a worker.
 *
 * Deadlock. A fault on a DAX file takes the file's invalidate_lock, which
 * a layout change holds while it waits for pins, and the fault holds the
 * faulting mm's mmap_lock. Pinning with faults could therefore hold some
 * pins of this dma-buf while waiting for a layout change that waits for
 * those pins. dmafile never faults while it holds pins: it faults the
 * whole range in first, holding none, then pins with FOLL_NOFAULT, and if
 * a layout change zapped a page in between, drops its pins and starts
 * again (a bounded number of times).
 */
#include <linux/kthread.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/workqueue.h>

#include "internal.h"

/* Rounds of fault-in-then-pin before a range that keeps changing is refused. */
#define DMAFILE_DAX_TRIES 8

static struct workqueue_struct *dmafile_dax_wq;

int dmafile_dax_init(void)
{
	dmafile_dax_wq = alloc_workqueue("dmafile_dax", WQ_UNBOUND, 0);
	return dmafile_dax_wq ? 0 : -ENOMEM;
}

/* Runs after the last dma-buf is released: waits for their removals. */
void dmafile_dax_exit(void)
{
	destroy_workqueue(dmafile_dax_wq);
}

/* Is @vma exactly the buffer's mapping of its range at @addr? */
static bool dmafile_dax_is_held(const struct vm_area_struct *vma,
				const struct dmafile_buf *buf,
				unsigned long addr)
{
	return vma && vma->vm_start == addr &&
	       vma->vm_end == addr + (buf->npages << PAGE_SHIFT) &&
	       vma->vm_file == buf->file;
}

/*
 * Maps the buffer's range for pinning and seals the mapping, so that it
 * stays until dmafile_dax_unhold(). The mapping is made between two guard
 * pages so that vm_mmap() cannot merge it with a neighbouring mapping of
 * the same file (the caller's own, or another thread's that is not yet
 * sealed); once sealed its flags differ from any mapping made later.
 * Returns 0, or the errno of the mmap (-EBUSY when another thread of the
 * caller replaced the mapping before it was sealed).
 */
static int dmafile_dax_hold(struct dmafile_buf *buf, loff_t offset)
{
	unsigned long len = buf->npages << PAGE_SHIFT;
	unsigned long prot = PROT_READ |
		(dmafile_buf_writable(buf) ? PROT_WRITE : 0);
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	unsigned long base, addr;
	bool ours;

	base = vm_mmap(NULL, 0, len + 2 * PAGE_SIZE, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, 0);
	if (IS_ERR_VALUE(base))
		return (long)base;
	addr = vm_mmap(buf->file, base + PAGE_SIZE, len, prot,
		       MAP_SHARED | MAP_FIXED, offset);
	if (IS_ERR_VALUE(addr)) {
		vm_munmap(base, len + 2 * PAGE_SIZE);
		return (long)addr;
	}
	if (mmap_write_lock_killable(mm)) {
		vm_munmap(base, len + 2 * PAGE_SIZE);
		return -EINTR;
	}
	vma = find_vma(mm, addr);
	ours = dmafile_dax_is_held(vma, buf, addr);
	/* VM_DONTEXPAND is one of VM_SPECIAL: never merged from now on. */
	if (ours)
		vm_flags_set(vma, VM_SEALED | VM_DONTCOPY | VM_DONTDUMP |
			     VM_DONTEXPAND);
	mmap_write_unlock(mm);
	/*
	 * The guards go either way: a sealed mapping no longer needs them,
	 * and one another thread replaced is left to whoever mapped it.
	 */
	vm_munmap(base, PAGE_SIZE);
	vm_munmap(addr + len, PAGE_SIZE);
	if (!ours)
		return -EBUSY;
	mmget(mm);
	buf->hold_mm = mm;
	buf->hold_addr = addr;
	return 0;
}

/*
 * Unseals and unmaps the buffer's held mapping, and drops the mm. Runs in
 * the mm's own process or in a worker that has adopted the mm. Between the
 * unseal and the unmap, only the mm's own threads could replace the
 * mapping, and they would unmap their own.
 */
static void dmafile_dax_unhold(struct dmafile_buf *buf)
{
	unsigned long len = buf->npages << PAGE_SHIFT;
	struct mm_struct *mm = buf->hold_mm;
	struct vm_area_struct *vma;
	bool ours;

	mmap_write_lock(mm);
	vma = find_vma(mm, buf->hold_addr);
	ours = dmafile_dax_is_held(vma, buf, buf->hold_addr) &&
	       (vma->vm_flags & VM_SEALED);
	if (ours)
		vm_flags_clear(vma, VM_SEALED);
	mmap_write_unlock(mm);
	if (ours)
		vm_munmap(buf->hold_addr, len);
	buf->hold_mm = NULL;
	mmput(mm);
}

/*
 * Maps and pins the storage-direct buffer's range at file @offset into
 * buf->pages, holding the mapping on success. Returns 0, or an errno with
 * *done pages still pinned for dmafile_pin() to judge and drop: -EAGAIN
 * when the range changed under every try. When nothing could be mapped
 * (nothing is held), the errno is the mmap's.
 */
int dmafile_dax_pin(struct dmafile_buf *buf, loff_t offset,
		    unsigned long *done)
{
	unsigned int gup = dmafile_buf_writable(buf) ? FOLL_WRITE : 0;
	unsigned long addr;
	int tries, ret;

	ret = dmafile_dax_hold(buf, offset);
	if (ret)
		return ret;
	addr = buf->hold_addr;
	for (tries = 1;; tries++) {
		struct inode *inode = file_inode(buf->file);
		struct timespec64 ctime = inode_get_ctime(inode), now;
		loff_t size = i_size_read(inode);
		unsigned long faulted = 0;

		ret = dmafile_gup(buf, addr, gup, true, &faulted);
		if (!ret) {
			ret = dmafile_gup(buf, addr, gup | FOLL_NOFAULT, false,
					  done);
			/* -EFAULT: a layout change zapped a page since. */
			if (ret != -EFAULT)
				return ret;
			unpin_user_pages(buf->pages, *done);
			*done = 0;
		} else if (ret == -EFAULT) {
			/*
			 * A fault fails past EOF: after a truncate (and
			 * re-extension) try again; with the file unchanged
			 * it is the storage's error.
			 */
			now = inode_get_ctime(inode);
			if (timespec64_equal(&ctime, &now) &&
			    size == i_size_read(inode))
				return ret;
		} else {
			return ret;
		}
		if (tries == DMAFILE_DAX_TRIES)
			return -EAGAIN;
	}
}

/* Undoes a dmafile_dax_pin() that left nothing pinned, in the caller. */
void dmafile_dax_pin_failed(struct dmafile_buf *buf)
{
	if (buf->hold_mm)
		dmafile_dax_unhold(buf);
}

static void dmafile_dax_free_work(struct work_struct *work)
{
	struct dmafile_buf *buf = container_of(work, struct dmafile_buf,
					       free_work);
	struct mm_struct *mm = buf->hold_mm;

	/* The mm cannot have gone: the buffer holds a user of it. */
	kthread_use_mm(mm);
	dmafile_dax_unhold(buf);
	kthread_unuse_mm(mm);
	dmafile_buf_destroy(buf);
}

/*
 * The rest of releasing a storage-direct buffer whose pages are unpinned.
 * dma-buf release runs from __fput(), holding no locks: in the process
 * that owns the mm, the mapping goes at once, so that the file is not
 * busy once the dma-buf is closed. Anywhere else (another process, an
 * exiting task, which has dropped its mm, a kernel thread) a worker
 * adopts the mm to remove it.
 */
void dmafile_dax_release(struct dmafile_buf *buf)
{
	if (current->mm == buf->hold_mm) {
		dmafile_dax_unhold(buf);
		dmafile_buf_destroy(buf);
		return;
	}
	INIT_WORK(&buf->free_work, dmafile_dax_free_work);
	queue_work(dmafile_dax_wq, &buf->free_work);
}
