// SPDX-License-Identifier: GPL-2.0
/*
 * dmafile: dma-bufs whose pages are a file's own page-cache pages: the
 * dma_buf_ops that importers use. Making one is map.c.
 *
 * Importers never map the pages through the page-cache rmap: CPU mappings
 * are PFN mappings, so truncation can drop the pages from the file while a
 * dma-buf still holds them. Such pages are stale: they keep the bytes they
 * had and are reported by the status ioctl.
 */
#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/mm.h>
#include <linux/pagemap.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "internal.h"

struct dmafile_attachment {
	struct list_head node;
	struct device *dev;
	struct sg_table *sgt;	/* non-NULL while mapped */
	enum dma_data_direction dir;
};

static int dmafile_attach(struct dma_buf *dmabuf,
			  struct dma_buf_attachment *attach)
{
	struct dmafile_buf *buf = dmabuf->priv;
	struct dmafile_attachment *a;

	a = kzalloc(sizeof(*a), GFP_KERNEL);
	if (!a)
		return -ENOMEM;
	a->dev = attach->dev;
	attach->priv = a;
	mutex_lock(&buf->lock);
	list_add(&a->node, &buf->attachments);
	mutex_unlock(&buf->lock);
	return 0;
}

static void dmafile_detach(struct dma_buf *dmabuf,
			   struct dma_buf_attachment *attach)
{
	struct dmafile_buf *buf = dmabuf->priv;
	struct dmafile_attachment *a = attach->priv;

	mutex_lock(&buf->lock);
	list_del(&a->node);
	mutex_unlock(&buf->lock);
	WARN_ON(a->sgt);
	kfree(a);
}

static struct sg_table *dmafile_map_dma_buf(struct dma_buf_attachment *attach,
					    enum dma_data_direction dir)
{
	struct dmafile_buf *buf = attach->dmabuf->priv;
	struct dmafile_attachment *a = attach->priv;
	struct sg_table *sgt;
	int ret;

	/*
	 * A read-only buffer is mapped for the device to read whatever the
	 * importer asks for, so that an IOMMU refuses device writes.
	 */
	if (!dmafile_buf_writable(buf))
		dir = DMA_TO_DEVICE;

	sgt = kzalloc(sizeof(*sgt), GFP_KERNEL);
	if (!sgt)
		return ERR_PTR(-ENOMEM);
	ret = sg_alloc_table_from_pages(sgt, buf->pages, buf->npages, 0,
					buf->npages << PAGE_SHIFT, GFP_KERNEL);
	if (ret)
		goto err_free_sgt;
	ret = dma_map_sgtable(attach->dev, sgt, dir, 0);
	if (ret)
		goto err_free_table;

	mutex_lock(&buf->lock);
	if (a->sgt) {
		/* One mapping per attachment: the importer must unmap first. */
		mutex_unlock(&buf->lock);
		ret = -EBUSY;
		goto err_unmap;
	}
	a->sgt = sgt;
	a->dir = dir;
	mutex_unlock(&buf->lock);
	return sgt;

err_unmap:
	dma_unmap_sgtable(attach->dev, sgt, dir, 0);
err_free_table:
	sg_free_table(sgt);
err_free_sgt:
	kfree(sgt);
	return ERR_PTR(ret);
}

static void dmafile_unmap_dma_buf(struct dma_buf_attachment *attach,
				  struct sg_table *sgt,
				  enum dma_data_direction dir)
{
	struct dmafile_buf *buf = attach->dmabuf->priv;
	struct dmafile_attachment *a = attach->priv;

	mutex_lock(&buf->lock);
	if (WARN_ON(a->sgt != sgt)) {
		mutex_unlock(&buf->lock);
		return;
	}
	a->sgt = NULL;
	mutex_unlock(&buf->lock);
	dma_unmap_sgtable(attach->dev, sgt, a->dir, 0);
	sg_free_table(sgt);
	kfree(sgt);
}

/* Hands the pages to the CPU (@for_cpu) or back to the devices. */
static void dmafile_sync(struct dmafile_buf *buf, bool for_cpu)
{
	unsigned long len = buf->npages << PAGE_SHIFT;
	struct dmafile_attachment *a;

	mutex_lock(&buf->lock);
	if (buf->vaddr) {
		if (for_cpu)
			invalidate_kernel_vmap_range(buf->vaddr, len);
		else
			flush_kernel_vmap_range(buf->vaddr, len);
	}
	list_for_each_entry(a, &buf->attachments, node) {
		if (!a->sgt)
			continue;
		if (for_cpu)
			dma_sync_sgtable_for_cpu(a->dev, a->sgt, a->dir);
		else
			dma_sync_sgtable_for_device(a->dev, a->sgt, a->dir);
	}
	mutex_unlock(&buf->lock);
}

static int dmafile_begin_cpu_access(struct dma_buf *dmabuf,
				    enum dma_data_direction dir)
{
	dmafile_sync(dmabuf->priv, true);
	return 0;
}

static int dmafile_end_cpu_access(struct dma_buf *dmabuf,
				  enum dma_data_direction dir)
{
	dmafile_sync(dmabuf->priv, false);
	return 0;
}

static vm_fault_t dmafile_vm_fault(struct vm_fault *vmf)
{
	struct dmafile_buf *buf = vmf->vma->vm_private_data;

	if (vmf->pgoff >= buf->npages)
		return VM_FAULT_SIGBUS;
	return vmf_insert_pfn(vmf->vma, vmf->address,
			      page_to_pfn(buf->pages[vmf->pgoff]));
}

static const struct vm_operations_struct dmafile_vm_ops = {
	.fault = dmafile_vm_fault,
};

static int dmafile_mmap(struct dma_buf *dmabuf, struct vm_area_struct *vma)
{
	struct dmafile_buf *buf = dmabuf->priv;

	/* A private mapping would copy-on-write a PFN mapping: refuse it. */
	if (!(vma->vm_flags & (VM_SHARED | VM_MAYSHARE)))
		return -EINVAL;
	/*
	 * No importer executes file data, and executing it here would get
	 * around a noexec mount: no PROT_EXEC, now or by mprotect() later.
	 */
	if (vma->vm_flags & VM_EXEC)
		return -EPERM;
	vm_flags_clear(vma, VM_MAYEXEC);
	/*
	 * Importers such as Mesa map every dma-buf PROT_READ | PROT_WRITE.
	 * For a read-only buffer the mapping still succeeds, but without
	 * write permission: a store faults instead of reaching the file.
	 */
	if (!dmafile_buf_writable(buf)) {
		vm_flags_clear(vma, VM_WRITE | VM_MAYWRITE);
		vma->vm_page_prot = vm_get_page_prot(vma->vm_flags);
	}
	vma->vm_ops = &dmafile_vm_ops;
	vma->vm_private_data = buf;
	vm_flags_set(vma, VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP);
	return 0;
}

static int dmafile_vmap(struct dma_buf *dmabuf, struct iosys_map *map)
{
	struct dmafile_buf *buf = dmabuf->priv;
	pgprot_t prot = dmafile_buf_writable(buf) ? PAGE_KERNEL : PAGE_KERNEL_RO;
	void *vaddr;

	/* The dma-buf core counts vmaps: this runs once per vunmap. */
	vaddr = vmap(buf->pages, buf->npages, VM_MAP, prot);
	if (!vaddr)
		return -ENOMEM;
	mutex_lock(&buf->lock);
	buf->vaddr = vaddr;
	mutex_unlock(&buf->lock);
	iosys_map_set_vaddr(map, vaddr);
	return 0;
}

static void dmafile_vunmap(struct dma_buf *dmabuf, struct iosys_map *map)
{
	struct dmafile_buf *buf = dmabuf->priv;

	mutex_lock(&buf->lock);
	buf->vaddr = NULL;
	mutex_unlock(&buf->lock);
	vunmap(map->vaddr);
}

/* Frees what is left of a buffer once nothing is pinned or held. */
void dmafile_buf_destroy(struct dmafile_buf *buf)
{
	fput(buf->file);
	kvfree(buf->pgmaps);
	kvfree(buf->pages);
	mutex_destroy(&buf->lock);
	kfree(buf);
}

void dmafile_buf_free(struct dmafile_buf *buf)
{
	if (buf->backing == DMAFILE_BACKING_STORAGE_DIRECT) {
		/* It uncharges and frees the buffer, perhaps from a worker. */
		dmafile_dax_release(buf);
		return;
	}
	/* Dirtied, so that a WRITE buffer's data reaches the file. */
	if (dmafile_buf_writable(buf))
		unpin_user_pages_dirty_lock(buf->pages, buf->npages, true);
	else
		unpin_user_pages(buf->pages, buf->npages);
	dmafile_uncharge(&buf->charge);
	dmafile_buf_destroy(buf);
}

static void dmafile_release(struct dma_buf *dmabuf)
{
	dmafile_buf_free(dmabuf->priv);
}

const struct dma_buf_ops dmafile_dmabuf_ops = {
	.attach = dmafile_attach,
	.detach = dmafile_detach,
	.map_dma_buf = dmafile_map_dma_buf,
	.unmap_dma_buf = dmafile_unmap_dma_buf,
	.release = dmafile_release,
	.begin_cpu_access = dmafile_begin_cpu_access,
	.end_cpu_access = dmafile_end_cpu_access,
	.mmap = dmafile_mmap,
	.vmap = dmafile_vmap,
	.vunmap = dmafile_vunmap,
};

