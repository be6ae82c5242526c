/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dmafile: shared declarations of the module's files.
 */
#ifndef _DMAFILE_INTERNAL_H
#define _DMAFILE_INTERNAL_H

#include <linux/cred.h>
#include <linux/dma-buf.h>
#include <linux/types.h>
#include <uapi/linux/dmafile.h>

/* account.c: what one dma-buf is charged, undone exactly by uncharge. */
struct dmafile_charge {
	struct user_struct *memlock_user;	/* NULL: exempt (CAP_IPC_LOCK) */
	struct dmafile_user *stats;		/* per-uid statistics entry */
	unsigned long pages;
};

int dmafile_charge(struct dmafile_charge *charge, unsigned long pages,
		   u32 *reason);
void dmafile_uncharge(struct dmafile_charge *charge);
void dmafile_account_query(struct dmafile_query *q);
u64 dmafile_max_pinned_bytes(void);

/* buf.c: the dma-bufs. */
int dmafile_map_file(struct dmafile_map *m, struct dma_buf **dmabuf);
int dmafile_buf_status(struct dma_buf *dmabuf, struct dmafile_status *st);
bool dmafile_fs_allowed(const char *fs_name);

/* main.c: module parameters. */
extern unsigned long dmafile_max_map_bytes;

#endif /* _DMAFILE_INTERNAL_H */
