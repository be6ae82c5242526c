// SPDX-License-Identifier: GPL-2.0
/*
 * dmafile: map ranges of regular files into dma-bufs.
 *
 * /dev/dmafile answers one question for user space: may a device map these
 * blocks of this file? When the answer is yes, it hands back a dma-buf whose
 * pages are the file's own, pinned for the dma-buf's lifetime; when it is
 * no, a reason code says why. The ABI is include/uapi/linux/dmafile.h.
 */
#include <linux/capability.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "internal.h"

static unsigned long max_pinned_bytes;
module_param(max_pinned_bytes, ulong, 0644);
MODULE_PARM_DESC(max_pinned_bytes,
		 "Most bytes all dmafile dma-bufs may pin together (default: half of RAM)");

unsigned long dmafile_max_map_bytes = ULONG_MAX;
module_param_named(max_map_bytes, dmafile_max_map_bytes, ulong, 0644);
MODULE_PARM_DESC(max_map_bytes,
		 "Largest length of one mapping (default: no limit beyond max_pinned_bytes)");

static char *extra_filesystems = "";
module_param(extra_filesystems, charp, 0444);
MODULE_PARM_DESC(extra_filesystems,
		 "Comma-separated filesystem types to allow besides ext4, xfs, btrfs and tmpfs");

/*
 * Filesystems whose page cache is known to behave under long-term pins of
 * read-only pages (and, for tmpfs, writable ones); others must be asked for.
 */
static const char *const dmafile_default_fs[] = {
	"ext4", "xfs", "btrfs", "tmpfs",
};

static bool dmafile_list_has(const char *list, const char *name)
{
	size_t len = strlen(name);

	while (*list) {
		size_t n = strcspn(list, ",");

		if (n == len && !strncmp(list, name, len))
			return true;
		list += n;
		if (*list)
			list++;
	}
	return false;
}

bool dmafile_fs_allowed(const char *fs_name)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(dmafile_default_fs); i++)
		if (!strcmp(fs_name, dmafile_default_fs[i]))
			return true;
	return dmafile_list_has(extra_filesystems, fs_name);
}

u64 dmafile_max_pinned_bytes(void)
{
	unsigned long max = READ_ONCE(max_pinned_bytes);

	return max ? max : (u64)totalram_pages() << (PAGE_SHIFT - 1);
}

/*
 * Copies a size-tolerant ioctl argument in: shorter structures than the
 * first ABI's are refused, longer ones must be zero past what we know.
 */
static int dmafile_copy_in(void *karg, size_t ksize, size_t minsize,
			   const void __user *uarg, size_t usize)
{
	if (usize < minsize)
		return -EINVAL;
	return copy_struct_from_user(karg, ksize, uarg, usize);
}

static int dmafile_copy_out(void __user *uarg, size_t usize, const void *karg,
			    size_t ksize)
{
	return copy_to_user(uarg, karg, min(usize, ksize)) ? -EFAULT : 0;
}

static long dmafile_ioctl_query(void __user *uarg, size_t usize)
{
	struct dmafile_query q;
	int ret;

	ret = dmafile_copy_in(&q, sizeof(q), offsetof(struct dmafile_query, reserved),
			      uarg, usize);
	if (ret)
		return ret;
	if (memchr_inv(&q, 0, sizeof(q)))
		return -EINVAL;
	q.abi_version = DMAFILE_ABI_VERSION;
	q.caps = DMAFILE_CAP_PAGE_CACHE | DMAFILE_CAP_WRITE | DMAFILE_CAP_STATUS;
	if (IS_ENABLED(CONFIG_FS_DAX))
		q.caps |= DMAFILE_CAP_STORAGE_DIRECT;
	q.map_flags = DMAFILE_MAP_VALID_FLAGS;
	q.page_size = PAGE_SIZE;
	q.max_map_bytes = min_t(u64, READ_ONCE(dmafile_max_map_bytes),
				dmafile_max_pinned_bytes());
	dmafile_account_query(&q);
	return dmafile_copy_out(uarg, usize, &q, sizeof(q));
}

static long dmafile_ioctl_map(void __user *uarg, size_t usize)
{
	struct dmafile_map m;
	struct dma_buf *dmabuf;
	int ret, fd;

	ret = dmafile_copy_in(&m, sizeof(m), offsetof(struct dmafile_map, reserved),
			      uarg, usize);
	if (ret)
		return ret;
	if (m.dmabuf_fd || m.backing || m.mapped_length || m.reason || m.pad ||
	    memchr_inv(m.reserved, 0, sizeof(m.reserved))) {
		ret = dmafile_refuse(&m, DMAFILE_REASON_INVALID_ARGUMENT);
		goto err_report;
	}
	ret = dmafile_map_file(&m, &dmabuf);
	if (ret)
		goto err_report;

	fd = get_unused_fd_flags(O_RDWR |
				 (m.flags & DMAFILE_MAP_CLOEXEC ? O_CLOEXEC : 0));
	if (fd < 0) {
		ret = fd;
		goto err_put_dmabuf;
	}
	m.dmabuf_fd = fd;
	ret = dmafile_copy_out(uarg, usize, &m, sizeof(m));
	if (ret)
		goto err_put_fd;
	/* The fd table now owns the dma-buf's reference. */
	fd_install(fd, dmabuf->file);
	return 0;

err_put_fd:
	put_unused_fd(fd);
err_put_dmabuf:
	dma_buf_put(dmabuf);
	return ret;

err_report:
	m.dmabuf_fd = -1;
	m.backing = DMAFILE_BACKING_NONE;
	m.mapped_length = 0;
	/* The errno stands on its own if the reason cannot be written back. */
	dmafile_copy_out(uarg, usize, &m, sizeof(m));
	return ret;
}

static long dmafile_ioctl_status(void __user *uarg, size_t usize)
{
	struct dmafile_status st;
	struct dma_buf *dmabuf;
	int ret;

	ret = dmafile_copy_in(&st, sizeof(st), offsetof(struct dmafile_status, reserved),
			      uarg, usize);
	if (ret)
		return ret;
	if (memchr_inv((u8 *)&st + sizeof(st.dmabuf_fd), 0,
		       sizeof(st) - sizeof(st.dmabuf_fd)))
		return -EINVAL;
	dmabuf = dma_buf_get(st.dmabuf_fd);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	ret = dmafile_buf_status(dmabuf, &st);
	dma_buf_put(dmabuf);
	if (ret)
		return ret;
	return dmafile_copy_out(uarg, usize, &st, sizeof(st));
}

static long dmafile_ioctl(struct file *file, unsigned int cmd,
			  unsigned long arg)
{
	void __user *uarg = (void __user *)arg;
	size_t usize = _IOC_SIZE(cmd);

	if (_IOC_TYPE(cmd) != DMAFILE_IOC_MAGIC ||
	    _IOC_DIR(cmd) != (_IOC_READ | _IOC_WRITE))
		return -ENOTTY;
	switch (_IOC_NR(cmd)) {
	case _IOC_NR(DMAFILE_IOC_QUERY):
		return dmafile_ioctl_query(uarg, usize);
	case _IOC_NR(DMAFILE_IOC_MAP):
		return dmafile_ioctl_map(uarg, usize);
	case _IOC_NR(DMAFILE_IOC_STATUS):
		return dmafile_ioctl_status(uarg, usize);
	}
	return -ENOTTY;
}

static const struct file_operations dmafile_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = dmafile_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

/*
 * Anyone may open the device: a mapping needs a readable fd of the file
 * (a writable one to write), and pins are charged to RLIMIT_MEMLOCK.
 */
static struct miscdevice dmafile_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "dmafile",
	.fops = &dmafile_fops,
	.mode = 0666,
};

static int __init dmafile_init(void)
{
	int ret;

	ret = dmafile_dax_init();
	if (ret)
		return ret;
	ret = misc_register(&dmafile_misc);
	if (ret)
		dmafile_dax_exit();
	return ret;
}

static void __exit dmafile_exit(void)
{
	misc_deregister(&dmafile_misc);
	dmafile_dax_exit();
}

module_init(dmafile_init);
module_exit(dmafile_exit);

MODULE_DESCRIPTION("Map ranges of regular files into pinned dma-bufs");
MODULE_LICENSE("GPL");
MODULE_VERSION(DMAFILE_VERSION);
DMAFILE_IMPORT_NS_DMA_BUF();
