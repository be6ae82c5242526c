// SPDX-License-Identifier: GPL-2.0
/*
 * dmafile: accounting of pinned memory.
 *
 * Every pinned page is charged twice: to a module-wide cap, so that the
 * module as a whole can never pin more than the administrator allows, and,
 * unless the caller has CAP_IPC_LOCK, to the user's locked_vm against
 * RLIMIT_MEMLOCK, the same counter io_uring and iommufd charge. The user is
 * charged rather than the mm because a dma-buf outlives the process that
 * made it when it is passed on.
 */
#include <linux/atomic.h>
#include <linux/capability.h>
#include <linux/list.h>
#include <linux/mm.h>
#include <linux/sched/signal.h>
#include <linux/sched/user.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

#include "internal.h"

/* Pages pinned by this user's dma-bufs, for the query ioctl. */
struct dmafile_user {
	struct list_head node;
	kuid_t uid;
	unsigned long pages;
	unsigned long nr_buffers;
};

static LIST_HEAD(dmafile_users);
static DEFINE_SPINLOCK(dmafile_users_lock);
static atomic_long_t dmafile_pinned_pages = ATOMIC_LONG_INIT(0);
static atomic_long_t dmafile_nr_buffers = ATOMIC_LONG_INIT(0);

static struct dmafile_user *dmafile_user_find(kuid_t uid)
{
	struct dmafile_user *u;

	lockdep_assert_held(&dmafile_users_lock);
	list_for_each_entry(u, &dmafile_users, node)
		if (uid_eq(u->uid, uid))
			return u;
	return NULL;
}

static bool dmafile_charge_global(unsigned long pages)
{
	unsigned long limit = dmafile_max_pinned_bytes() >> PAGE_SHIFT;
	long cur = atomic_long_read(&dmafile_pinned_pages);

	do {
		if (pages > limit || cur > limit - pages)
			return false;
	} while (!atomic_long_try_cmpxchg(&dmafile_pinned_pages, &cur,
					  cur + pages));
	return true;
}

static bool dmafile_charge_memlock(struct user_struct *user,
				   unsigned long pages)
{
	unsigned long limit = rlimit(RLIMIT_MEMLOCK);
	long cur = atomic_long_read(&user->locked_vm);

	if (limit != RLIM_INFINITY)
		limit >>= PAGE_SHIFT;
	else
		limit = ULONG_MAX;
	do {
		if (pages > limit || cur > limit - pages)
			return false;
	} while (!atomic_long_try_cmpxchg(&user->locked_vm, &cur,
					  cur + pages));
	return true;
}

u32 dmafile_charge(struct dmafile_charge *charge, unsigned long pages)
{
	struct dmafile_user *fresh, *u;
	kuid_t uid = current_uid();

	fresh = kzalloc(sizeof(*fresh), GFP_KERNEL);
	if (!fresh)
		return DMAFILE_REASON_NO_MEMORY;
	if (!dmafile_charge_global(pages)) {
		kfree(fresh);
		return DMAFILE_REASON_GLOBAL_LIMIT;
	}
	charge->memlock_user = NULL;
	if (!capable(CAP_IPC_LOCK)) {
		struct user_struct *user = get_uid(current_user());

		if (!dmafile_charge_memlock(user, pages)) {
			free_uid(user);
			atomic_long_sub(pages, &dmafile_pinned_pages);
			kfree(fresh);
			return DMAFILE_REASON_MEMLOCK_LIMIT;
		}
		charge->memlock_user = user;
	}

	spin_lock(&dmafile_users_lock);
	u = dmafile_user_find(uid);
	if (!u) {
		u = fresh;
		fresh = NULL;
		u->uid = uid;
		list_add(&u->node, &dmafile_users);
	}
	u->pages += pages;
	u->nr_buffers++;
	spin_unlock(&dmafile_users_lock);
	kfree(fresh);

	charge->stats = u;
	charge->pages = pages;
	atomic_long_inc(&dmafile_nr_buffers);
	return DMAFILE_REASON_NONE;
}

void dmafile_uncharge(struct dmafile_charge *charge)
{
	struct dmafile_user *u = charge->stats;

	spin_lock(&dmafile_users_lock);
	u->pages -= charge->pages;
	if (!--u->nr_buffers)
		list_del(&u->node);
	else
		u = NULL;
	spin_unlock(&dmafile_users_lock);
	kfree(u);

	if (charge->memlock_user) {
		atomic_long_sub(charge->pages, &charge->memlock_user->locked_vm);
		free_uid(charge->memlock_user);
	}
	atomic_long_sub(charge->pages, &dmafile_pinned_pages);
	atomic_long_dec(&dmafile_nr_buffers);
}

void dmafile_account_query(struct dmafile_query *q)
{
	unsigned long limit = rlimit(RLIMIT_MEMLOCK);
	struct dmafile_user *u;

	q->max_pinned_bytes = dmafile_max_pinned_bytes();
	q->pinned_bytes = (u64)atomic_long_read(&dmafile_pinned_pages) << PAGE_SHIFT;
	q->nr_buffers = atomic_long_read(&dmafile_nr_buffers);
	spin_lock(&dmafile_users_lock);
	u = dmafile_user_find(current_uid());
	q->user_pinned_bytes = u ? (u64)u->pages << PAGE_SHIFT : 0;
	spin_unlock(&dmafile_users_lock);
	if (ns_capable_noaudit(&init_user_ns, CAP_IPC_LOCK) ||
	    limit == RLIM_INFINITY)
		q->memlock_limit = U64_MAX;
	else
		q->memlock_limit = limit;
}
