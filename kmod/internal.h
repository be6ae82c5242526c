/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dmafile: shared declarations of the module's files.
 */
#ifndef _DMAFILE_INTERNAL_H
#define _DMAFILE_INTERNAL_H

#include <linux/cred.h>
#include <linux/dma-buf.h>
#include <linux/fs.h>
#include <linux/list.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/pagemap.h>
#include <linux/types.h>
#include <uapi/linux/dmafile.h>

#include "compat.h"

/* account.c: what one dma-buf is charged, undone exactly by uncharge. */
struct dmafile_charge {
	struct user_struct *memlock_user;	/* NULL: exempt (CAP_IPC_LOCK) */
	struct dmafile_user *stats;		/* per-uid statistics entry */
	unsigned long pages;
};

/* Returns a refusal reason, or DMAFILE_REASON_NONE when charged. */
u32 dmafile_charge(struct dmafile_charge *charge, unsigned long pages);
void dmafile_uncharge(struct dmafile_charge *charge);
void dmafile_account_query(struct dmafile_query *q);
u64 dmafile_max_pinned_bytes(void);

/* One dma-buf: a pinned range of a file. */
struct dmafile_buf {
	struct file *file;	/* keeps the inode and its mapping alive */
	struct page **pages;
	struct dev_pagemap **pgmaps;	/* storage-direct: each page's, held */
	unsigned long npages;
	pgoff_t index;		/* page index of the first page in the file */
	u32 flags;
	u32 backing;
	struct dmafile_charge charge;
	struct mutex lock;	/* attachments, vaddr */
	struct list_head attachments;
	void *vaddr;
};

static inline bool dmafile_buf_writable(const struct dmafile_buf *buf)
{
	return buf->flags & DMAFILE_MAP_WRITE;
}

/*
 * Is page @i still the file's page at the index the buffer expects, and
 * inside the file? Truncation either drops pages from the page cache or,
 * for a large folio it cannot split (ours are pinned), zeroes them in place
 * past the new EOF; both leave pages that are no longer part of the file.
 */
static inline bool dmafile_page_current(const struct dmafile_buf *buf,
					unsigned long i, pgoff_t eof_index)
{
	struct page *page = buf->pages[i];
	struct folio *folio = page_folio(page);

	return buf->index + i < eof_index &&
	       READ_ONCE(folio->mapping) == buf->file->f_mapping &&
	       READ_ONCE(folio->index) + folio_page_idx(folio, page) ==
	       buf->index + i;
}

static inline pgoff_t dmafile_eof_index(const struct dmafile_buf *buf)
{
	return DIV_ROUND_UP_ULL(i_size_read(file_inode(buf->file)), PAGE_SIZE);
}

/* buf.c: the dma_buf_ops; release() frees the buffer. */
extern const struct dma_buf_ops dmafile_dmabuf_ops;
void dmafile_buf_free(struct dmafile_buf *buf);
void dmafile_buf_destroy(struct dmafile_buf *buf);

/* Pages pinned per pin_user_pages_fast() call, between signal checks. */
#define DMAFILE_PIN_BATCH 512

/* dax.c: storage-direct buffers, whose pages are a DAX file's blocks. */
int dmafile_dax_init(void);
void dmafile_dax_exit(void);
u32 dmafile_dax_map(struct dmafile_buf *buf, loff_t offset, int *mmap_err);
void dmafile_dax_release(struct dmafile_buf *buf);

/* map.c: making dma-bufs, and their status. */
int dmafile_refuse(struct dmafile_map *m, u32 reason);
int dmafile_map_file(struct dmafile_map *m, struct dma_buf **dmabuf);
int dmafile_buf_status(struct dma_buf *dmabuf, struct dmafile_status *st);

/* main.c */
bool dmafile_fs_allowed(const char *fs_name);

extern unsigned long dmafile_max_map_bytes;

#endif /* _DMAFILE_INTERNAL_H */
