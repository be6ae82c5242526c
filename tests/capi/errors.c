/*
 * Every error return of the C ABI, each checked for its errno, its reason
 * number and that number's name, on a device of the test's own (lavapipe
 * here): bad handles (NULL, made up, freed, of another kind), NULL
 * arguments, out-of-range arguments, a missing file, a directory, a range
 * past EOF, a destination too small, an output array too small, an
 * unknown ticket, a path this machine cannot serve (direct without the
 * module) and a path the device was not given the extensions for.
 * Built and run by scripts/test-capi.sh against the installed prefix:
 *   errors DIR   (DIR: a scratch directory)
 * Prints one line per check and exits 1 if any failed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <linux/dmafile.h> /* the kernel's reason numbers, for the table check */
#include <dmafile.h>

static int failures, checks;

#define CHECK(cond, ...)                                                   \
	do {                                                               \
		checks++;                                                  \
		if (!(cond)) {                                             \
			failures++;                                        \
			printf("FAIL %s:%d: ", __FILE__, __LINE__);        \
			printf(__VA_ARGS__);                               \
			printf(" [last error: %s]\n", dmafile_last_error()); \
		}                                                          \
	} while (0)

/* rc and reason as expected, and the reason's name too. */
static void expect(const char *what, int rc, int32_t reason, int want_rc, int32_t want_reason,
		   const char *want_name)
{
	const char *name = dmafile_code_name(reason);

	CHECK(rc == want_rc && reason == want_reason && name && !strcmp(name, want_name),
	      "%s: rc %d reason %d (%s); want rc %d reason %d (%s)", what, rc, reason,
	      name ? name : "NULL", want_rc, want_reason, want_name);
	if (rc == want_rc && reason == want_reason)
		printf("ok   %-44s rc=%d reason=%d %s\n", what, rc, reason, name);
	CHECK(rc == 0 || strlen(dmafile_last_error()) > 0, "%s: no message", what);
}

struct dev {
	VkInstance instance;
	VkPhysicalDevice pd;
	VkDevice device;
	VkPhysicalDeviceMemoryProperties mem;
};

static int dev_open(struct dev *d, const char *const *exts, uint32_t n)
{
	VkApplicationInfo ai = { .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
				 .apiVersion = VK_API_VERSION_1_2 };
	VkInstanceCreateInfo ici = { .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
				     .pApplicationInfo = &ai };
	uint32_t one = 1;
	float prio = 1.0f;

	if (vkCreateInstance(&ici, NULL, &d->instance) != VK_SUCCESS)
		return -1;
	if (vkEnumeratePhysicalDevices(d->instance, &one, &d->pd) < 0 || !d->pd)
		return -1;
	VkDeviceQueueCreateInfo qci = { .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
					.queueFamilyIndex = 0,
					.queueCount = 1,
					.pQueuePriorities = &prio };
	VkPhysicalDeviceVulkan12Features f12 = {
		.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
		.timelineSemaphore = VK_TRUE,
	};
	VkDeviceCreateInfo dci = { .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
				   .pNext = &f12,
				   .queueCreateInfoCount = 1,
				   .pQueueCreateInfos = &qci,
				   .enabledExtensionCount = n,
				   .ppEnabledExtensionNames = exts };
	if (vkCreateDevice(d->pd, &dci, NULL, &d->device) != VK_SUCCESS)
		return -1;
	vkGetPhysicalDeviceMemoryProperties(d->pd, &d->mem);
	return 0;
}

static void dev_close(struct dev *d)
{
	vkDestroyDevice(d->device, NULL);
	vkDestroyInstance(d->instance, NULL);
}

static dmafile_gpu *lend(struct dev *d, const char *const *exts, uint32_t n)
{
	dmafile_borrowed_device bd = {
		.get_instance_proc_addr = vkGetInstanceProcAddr,
		.instance = d->instance,
		.instance_api_version = VK_API_VERSION_1_2,
		.physical_device = d->pd,
		.device = d->device,
		.queue_family = 0,
		.enabled_extensions = exts,
		.enabled_extension_count = n,
		.timeline_semaphore = 1,
	};
	dmafile_gpu *g = NULL;
	int32_t reason = -1;
	int rc = dmafile_gpu_borrow(&bd, &g, &reason);

	CHECK(rc == 0 && reason == 0 && g, "borrow: rc %d reason %d", rc, reason);
	return g;
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : "/tmp";
	char file[4096], missing[4096];
	const char *exts[8];
	uint32_t n_exts = 8;
	struct dev d = { 0 };
	int32_t reason;
	int rc;

	/* The table: kernel numbers are the uapi header's. */
	_Static_assert((int)DMAFILE_CODE_BEYOND_EOF == (int)DMAFILE_REASON_BEYOND_EOF, "uapi numbers");
	_Static_assert((int)DMAFILE_CODE_NOT_OWNER == (int)DMAFILE_REASON_NOT_OWNER, "uapi numbers");
	_Static_assert((int)DMAFILE_CODE_FS_NOT_SUPPORTED == (int)DMAFILE_REASON_FS_NOT_SUPPORTED,
		       "uapi numbers");
	CHECK(!strcmp(dmafile_code_name(DMAFILE_CODE_BEYOND_EOF), "beyond-eof"), "name 9");
	CHECK(!strcmp(dmafile_code_name(DMAFILE_CODE_MODULE_ABSENT), "module-absent"), "name 100");
	CHECK(!strcmp(dmafile_code_name(DMAFILE_CODE_BAD_HANDLE), "bad-handle"), "name 200");
	CHECK(dmafile_code_name(99) == NULL && dmafile_code_name(-1) == NULL, "unknown numbers");
	CHECK(dmafile_path_name(5) == NULL && !strcmp(dmafile_path_name(1), "direct"), "paths");
	CHECK(dmafile_abi_version() >> 16 == DMAFILE_ABI_VERSION >> 16, "abi");

	snprintf(file, sizeof(file), "%s/errors-4097.bin", dir);
	snprintf(missing, sizeof(missing), "%s/no-such-file", dir);
	FILE *f = fopen(file, "wb");
	for (int i = 0; f && i < 4097; i++)
		fputc(i * 7, f);
	if (!f || fclose(f)) {
		printf("FAIL cannot write %s\n", file);
		return 1;
	}

	/* Before any device: NULL arguments. */
	rc = dmafile_gpu_borrow(NULL, NULL, &reason);
	expect("borrow(NULL device)", rc, reason, -EINVAL, DMAFILE_CODE_NULL_ARGUMENT,
	       "null-argument");
	rc = dmafile_device_extensions(NULL, VK_NULL_HANDLE, VK_NULL_HANDLE, &n_exts, exts,
				       &reason);
	expect("device_extensions(NULL proc addr)", rc, reason, -EINVAL,
	       DMAFILE_CODE_NULL_ARGUMENT, "null-argument");

	if (dev_open(&d, NULL, 0)) {
		printf("FAIL no Vulkan device\n");
		return 1;
	}
	/* Output array too small, then the count, then the names. */
	uint32_t cap = 0;
	rc = dmafile_device_extensions(vkGetInstanceProcAddr, d.instance, d.pd, &cap, exts,
				       &reason);
	if (cap > 0)
		expect("device_extensions(capacity 0)", rc, reason, -ENOSPC,
		       DMAFILE_CODE_DESTINATION_TOO_SMALL, "destination-too-small");
	rc = dmafile_device_extensions(vkGetInstanceProcAddr, d.instance, d.pd, &n_exts, exts,
				       &reason);
	CHECK(rc == 0 && reason == 0 && n_exts == cap, "device_extensions: rc %d n %u cap %u", rc,
	      n_exts, cap);
	dev_close(&d);
	memset(&d, 0, sizeof(d));
	if (dev_open(&d, exts, n_exts)) {
		printf("FAIL vkCreateDevice with dmafile's extensions\n");
		return 1;
	}
	dmafile_gpu *gpu = lend(&d, exts, n_exts);
	dmafile_queue *q = NULL;
	dmafile_region *region = NULL;

	/* Bad handles: NULL, made up, of another kind, freed. */
	rc = dmafile_queue_new(NULL, NULL, &q, &reason);
	expect("queue_new(NULL gpu)", rc, reason, -EBADF, DMAFILE_CODE_BAD_HANDLE, "bad-handle");
	rc = dmafile_queue_new((dmafile_gpu *)(uintptr_t)0x4242420, NULL, &q, &reason);
	expect("queue_new(made-up gpu)", rc, reason, -EBADF, DMAFILE_CODE_BAD_HANDLE,
	       "bad-handle");
	rc = dmafile_queue_new(gpu, NULL, &q, &reason);
	CHECK(rc == 0 && q, "queue_new: rc %d", rc);
	rc = dmafile_region_free((dmafile_region *)q, &reason);
	expect("region_free(a queue handle)", rc, reason, -EBADF, DMAFILE_CODE_BAD_HANDLE,
	       "bad-handle");

	/* Bad arguments. */
	char why[256];
	rc = dmafile_gpu_path_available(gpu, 9, &reason, why, sizeof(why));
	expect("path_available(path 9)", rc, reason, -EINVAL, DMAFILE_CODE_BAD_ARGUMENT,
	       "bad-argument");
	rc = dmafile_region_open(gpu, file, 0, 1, 9, &region, &reason);
	expect("region_open(path 9)", rc, reason, -EINVAL, DMAFILE_CODE_BAD_ARGUMENT,
	       "bad-argument");
	rc = dmafile_region_open(gpu, NULL, 0, 1, 0, &region, &reason);
	expect("region_open(NULL file)", rc, reason, -EINVAL, DMAFILE_CODE_NULL_ARGUMENT,
	       "null-argument");

	/* Files: missing, a directory, a range past EOF. */
	rc = dmafile_region_open(gpu, missing, 0, 1, 0, &region, &reason);
	expect("region_open(missing file)", rc, reason, -ENOENT, DMAFILE_CODE_FILE_IO,
	       "file-io");
	rc = dmafile_region_open(gpu, dir, 0, 1, 0, &region, &reason);
	expect("region_open(a directory)", rc, reason, -EINVAL, DMAFILE_CODE_BAD_INPUT,
	       "bad-input");
	rc = dmafile_region_open(gpu, file, 4000, 98, 0, &region, &reason);
	expect("region_open(range past EOF)", rc, reason, -EINVAL, DMAFILE_CODE_RANGE_PAST_EOF,
	       "range-past-eof");

	/* The read queue: past EOF, destination too small, unknown ticket. */
	VkBufferCreateInfo bci = { .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
				   .size = 8192,
				   .usage = VK_BUFFER_USAGE_TRANSFER_DST_BIT };
	VkBuffer buf;
	VkMemoryRequirements mr;
	VkDeviceMemory mem;

	vkCreateBuffer(d.device, &bci, NULL, &buf);
	vkGetBufferMemoryRequirements(d.device, buf, &mr);
	uint32_t type = 0;
	while (!(mr.memoryTypeBits & (1u << type)))
		type++;
	VkMemoryAllocateInfo mai = { .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
				     .allocationSize = mr.size,
				     .memoryTypeIndex = type };
	vkAllocateMemory(d.device, &mai, NULL, &mem);
	vkBindBufferMemory(d.device, buf, mem, 0);

	dmafile_read_request req = { .file = file, .offset = 1, .length = 4097, .dst = buf,
				     .dst_size = 8192 };
	uint64_t ticket = 0;
	rc = dmafile_queue_submit(q, &req, 1, NULL, &ticket, &reason);
	expect("queue_submit(range past EOF)", rc, reason, -EINVAL, DMAFILE_CODE_RANGE_PAST_EOF,
	       "range-past-eof");
	req.offset = 0;
	req.dst_offset = 4096;
	rc = dmafile_queue_submit(q, &req, 1, NULL, &ticket, &reason);
	expect("queue_submit(destination too small)", rc, reason, -EINVAL,
	       DMAFILE_CODE_DESTINATION_TOO_SMALL, "destination-too-small");
	req.dst_offset = 0;
	req.file = missing;
	rc = dmafile_queue_submit(q, &req, 1, NULL, &ticket, &reason);
	expect("queue_submit(missing file)", rc, reason, -ENOENT, DMAFILE_CODE_FILE_IO,
	       "file-io");
	req.file = file;
	rc = dmafile_queue_submit_after(q, &req, 1, NULL, 1, NULL, &ticket, &reason);
	expect("queue_submit_after(waits NULL, wait_count 1)", rc, reason, -EINVAL,
	       DMAFILE_CODE_NULL_ARGUMENT, "null-argument");
	req.file = missing;
	uint32_t done;
	rc = dmafile_queue_redeem(q, 12345, 1, &done, NULL, 0, NULL, &reason);
	expect("queue_redeem(unknown ticket)", rc, reason, -EINVAL, DMAFILE_CODE_BAD_ARGUMENT,
	       "bad-argument");
	/* And a good one, to show the queue still works after all that. */
	req.file = file;
	rc = dmafile_queue_submit(q, &req, 1, NULL, &ticket, &reason);
	CHECK(rc == 0 && reason == 0, "queue_submit(good): rc %d reason %d", rc, reason);
	dmafile_request_report rep;
	size_t n = 0;
	rc = dmafile_queue_redeem(q, ticket, 1, &done, &rep, 1, &n, &reason);
	CHECK(rc == 0 && done == 1 && n == 1 && rep.status == 0 && rep.path != 0 &&
		      rep.gpu_copied_bytes == 4097,
	      "queue_redeem(good): rc %d done %u n %zu status %d path %u gpu %llu", rc, done, n,
	      rep.status, rep.path, (unsigned long long)rep.gpu_copied_bytes);
	rc = dmafile_queue_redeem(q, ticket, 1, &done, NULL, 0, NULL, &reason);
	expect("queue_redeem(ticket redeemed already)", rc, reason, -EINVAL,
	       DMAFILE_CODE_BAD_ARGUMENT, "bad-argument");

	/* A path this machine cannot serve: the first one that says so
	 * (direct on a host without dmafile.ko). */
	for (uint32_t p = DMAFILE_PATH_DIRECT; p <= DMAFILE_PATH_UPLOAD; p++) {
		int32_t why_code;

		rc = dmafile_gpu_path_available(gpu, p, &why_code, why, sizeof(why));
		CHECK(rc == 0, "path_available(%u): rc %d", p, rc);
		if (why_code == 0)
			continue;
		CHECK(strlen(why) > 0, "path_available(%u): no sentence", p);
		rc = dmafile_region_open(gpu, file, 0, 4097, p, &region, &reason);
		char what[64];
		snprintf(what, sizeof(what), "region_open(%s, unavailable)", dmafile_path_name(p));
		expect(what, rc, reason, -EOPNOTSUPP, why_code, dmafile_code_name(why_code));
		break;
	}
	CHECK(dmafile_gpu_path_available(gpu, DMAFILE_PATH_UPLOAD, &reason, NULL, 0) == 0 &&
		      reason == 0,
	      "upload is always available");

	/* A region that opens: its raw objects and barrier fields. */
	rc = dmafile_region_open(gpu, file, 4096, 1, DMAFILE_PATH_AUTO, &region, &reason);
	CHECK(rc == 0 && reason == 0 && region, "region_open(auto): rc %d reason %d", rc, reason);
	dmafile_raw_range raw = { 0 };
	rc = dmafile_region_raw(region, &raw, &reason);
	CHECK(rc == 0 && raw.buffer && raw.memory && raw.skew == 0 && raw.len == 1 &&
		      raw.size >= 4 && raw.path != 0 &&
		      (raw.path == DMAFILE_PATH_UPLOAD ||
		       raw.src_queue_family == VK_QUEUE_FAMILY_EXTERNAL),
	      "region_raw: rc %d skew %llu len %llu size %llu path %u src family %u", rc,
	      (unsigned long long)raw.skew, (unsigned long long)raw.len,
	      (unsigned long long)raw.size, raw.path, raw.src_queue_family);
	rc = dmafile_region_raw(region, NULL, &reason);
	expect("region_raw(NULL out)", rc, reason, -EINVAL, DMAFILE_CODE_NULL_ARGUMENT,
	       "null-argument");
	rc = dmafile_region_cmd_barrier(region, VK_NULL_HANDLE, 0, 0, 0, &reason);
	expect("region_cmd_barrier(NULL cmd)", rc, reason, -EINVAL, DMAFILE_CODE_NULL_ARGUMENT,
	       "null-argument");
	CHECK(dmafile_region_free(region, &reason) == 0, "region_free");
	rc = dmafile_region_raw(region, &raw, &reason);
	expect("region_raw(freed)", rc, reason, -EBADF, DMAFILE_CODE_BAD_HANDLE, "bad-handle");

	/* Freed handles are bad handles. */
	CHECK(dmafile_queue_free(q, &reason) == 0, "queue_free");
	rc = dmafile_queue_free(q, &reason);
	expect("queue_free(freed)", rc, reason, -EBADF, DMAFILE_CODE_BAD_HANDLE, "bad-handle");
	CHECK(dmafile_gpu_free(gpu, &reason) == 0, "gpu_free");
	rc = dmafile_queue_new(gpu, NULL, &q, &reason);
	expect("queue_new(freed gpu)", rc, reason, -EBADF, DMAFILE_CODE_BAD_HANDLE,
	       "bad-handle");

	/* A device lent without the import extensions: host is missing one. */
	gpu = lend(&d, NULL, 0);
	rc = dmafile_gpu_path_available(gpu, DMAFILE_PATH_HOST, &reason, why, sizeof(why));
	expect("path_available(host, no extensions)", rc, reason, 0,
	       DMAFILE_CODE_MISSING_EXTENSION, "missing-extension");
	rc = dmafile_region_open(gpu, file, 0, 4097, DMAFILE_PATH_HOST, &region, &reason);
	expect("region_open(host, no extensions)", rc, reason, -EOPNOTSUPP,
	       DMAFILE_CODE_MISSING_EXTENSION, "missing-extension");
	dmafile_gpu_free(gpu, NULL);

	vkDestroyBuffer(d.device, buf, NULL);
	vkFreeMemory(d.device, mem, NULL);
	dev_close(&d);
	printf("%d checks, %d failed\n", checks, failures);
	return failures ? 1 : 0;
}
