/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dmafile: the kernel API changes between 6.1 (the oldest longterm kernel
 * Debian ships) and current mainline that the module meets, each behind a
 * version check that cites the upstream change. Built against 6.1 and 6.12
 * by scripts/kmod-check.sh; the newer ones were read, not built.
 */
#ifndef _DMAFILE_COMPAT_H
#define _DMAFILE_COMPAT_H

#include <linux/memremap.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/version.h>

/*
 * v6.13, cdd30ebb1b9f ("module: Convert symbol namespace to string
 * literal"): MODULE_IMPORT_NS() takes a string.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 13, 0)
#define DMAFILE_IMPORT_NS_DMA_BUF() MODULE_IMPORT_NS("DMA_BUF")
#else
#define DMAFILE_IMPORT_NS_DMA_BUF() MODULE_IMPORT_NS(DMA_BUF)
#endif

/*
 * v6.3, bc292ab00f6c ("mm: introduce vma->vm_flags wrapper functions"):
 * vm_flags became read-only outside the wrappers.
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 3, 0)
static inline void vm_flags_set(struct vm_area_struct *vma,
				unsigned long flags)
{
	vma->vm_flags |= flags;
}

static inline void vm_flags_clear(struct vm_area_struct *vma,
				  unsigned long flags)
{
	vma->vm_flags &= ~flags;
}
#endif

/*
 * v6.3, e67fe63341b8 ("fs: port i_{g,u}id_into_vfs{g,u}id() to
 * mnt_idmap"): the idmapping of a file's mount is a struct mnt_idmap.
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 3, 0)
#define dmafile_file_idmap(file) file_mnt_user_ns(file)
#else
#define dmafile_file_idmap(file) file_mnt_idmap(file)
#endif

/*
 * v6.5, ca5e863233e8 ("mm/gup: remove vmas parameter from
 * get_user_pages_remote()").
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 5, 0)
#define dmafile_gup_remote(mm, start, n, flags, pages) \
	get_user_pages_remote(mm, start, n, flags, pages, NULL, NULL)
#else
#define dmafile_gup_remote(mm, start, n, flags, pages) \
	get_user_pages_remote(mm, start, n, flags, pages, NULL)
#endif

/*
 * v6.15, 82ba975e4c43 ("mm: allow compound zone device pages"): a
 * ZONE_DEVICE page's pagemap is read with page_pgmap().
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 15, 0)
static inline struct dev_pagemap *dmafile_page_pgmap(struct page *page)
{
	return page->pgmap;
}
#else
#define dmafile_page_pgmap(page) page_pgmap(page)
#endif

#endif /* _DMAFILE_COMPAT_H */
