/*
 * c-load: what a C application that owns its Vulkan device does with
 * dmafile. It creates its own instance and device (enabling the
 * extensions dmafile_device_extensions() lists and timeline semaphores),
 * lends them to dmafile, loads a file range into its own buffer through
 * the read queue (signalled on its own timeline semaphore), waits on that
 * semaphore itself, and sums the buffer by mapping it.
 *
 *   c-load FILE [--offset N] [--length N] [--path auto|direct|host|heap|upload]
 *
 * prints `sum64=<decimal> path=<path> cpu_copied=<bytes>`: sum64 is the sum
 * of the range's little-endian u32 words mod 2^64, a partial last word
 * zero-padded. Exit codes: 0 loaded, 1 the read failed, 2 bad input or an
 * unusable device, with a message naming the problem on stderr.
 *
 * Build: cc -o c-load c-load.c $(pkg-config --cflags --libs dmafile)
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <dmafile.h>

static int fail(int code, const char *what, int rc, int32_t reason)
{
	fprintf(stderr, "c-load: %s: %s (errno %d, reason %d %s)\n", what,
		dmafile_last_error(), -rc, reason,
		dmafile_code_name(reason) ? dmafile_code_name(reason) : "?");
	return code;
}

static int parse_u64(const char *flag, const char *v, uint64_t *out)
{
	char *end;

	if (!v) {
		fprintf(stderr, "c-load: %s needs a value\n", flag);
		return -1;
	}
	errno = 0;
	*out = strtoull(v, &end, 0);
	if (errno || *end || *v == '-' || end == v) {
		fprintf(stderr, "c-load: %s %s: not a byte count\n", flag, v);
		return -1;
	}
	return 0;
}

static int parse_path(const char *v, uint32_t *out)
{
	for (uint32_t p = DMAFILE_PATH_AUTO; p <= DMAFILE_PATH_UPLOAD; p++) {
		if (v && !strcmp(v, dmafile_path_name(p))) {
			*out = p;
			return 0;
		}
	}
	fprintf(stderr, "c-load: --path %s: expected auto, direct, host, heap or upload\n",
		v ? v : "(nothing)");
	return -1;
}

/* The app's own Vulkan objects. */
struct app {
	VkInstance instance;
	VkPhysicalDevice pd;
	VkDevice device;
	uint32_t family;
	const char *exts[8];
	uint32_t n_exts;
	VkPhysicalDeviceMemoryProperties mem;
};

static int app_open(struct app *a)
{
	VkApplicationInfo ai = {
		.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
		.pApplicationName = "c-load",
		.apiVersion = VK_API_VERSION_1_2,
	};
	VkInstanceCreateInfo ici = {
		.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
		.pApplicationInfo = &ai,
	};
	VkPhysicalDevice pds[16];
	uint32_t n = 16;
	int32_t reason;
	int rc;

	if (vkCreateInstance(&ici, NULL, &a->instance) != VK_SUCCESS) {
		fprintf(stderr, "c-load: vkCreateInstance failed (is a Vulkan driver installed?)\n");
		return -1;
	}
	if (vkEnumeratePhysicalDevices(a->instance, &n, pds) < 0 || n == 0) {
		fprintf(stderr, "c-load: no Vulkan device\n");
		return -1;
	}
	/* The first device with a compute queue. */
	for (uint32_t i = 0; i < n && !a->pd; i++) {
		VkQueueFamilyProperties fams[16];
		uint32_t nf = 16;

		vkGetPhysicalDeviceQueueFamilyProperties(pds[i], &nf, fams);
		for (uint32_t f = 0; f < nf; f++) {
			if (fams[f].queueFlags & VK_QUEUE_COMPUTE_BIT) {
				a->pd = pds[i];
				a->family = f;
				break;
			}
		}
	}
	if (!a->pd) {
		fprintf(stderr, "c-load: no Vulkan device with a compute queue\n");
		return -1;
	}
	/* What dmafile's paths need of the device. */
	a->n_exts = sizeof(a->exts) / sizeof(a->exts[0]);
	rc = dmafile_device_extensions(vkGetInstanceProcAddr, a->instance, a->pd, &a->n_exts,
				       a->exts, &reason);
	if (rc)
		return fail(-1, "dmafile_device_extensions", rc, reason);

	float prio = 1.0f;
	VkDeviceQueueCreateInfo qci = {
		.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
		.queueFamilyIndex = a->family,
		.queueCount = 1,
		.pQueuePriorities = &prio,
	};
	VkPhysicalDeviceVulkan12Features f12 = {
		.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
		.timelineSemaphore = VK_TRUE,
	};
	VkDeviceCreateInfo dci = {
		.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
		.pNext = &f12,
		.queueCreateInfoCount = 1,
		.pQueueCreateInfos = &qci,
		.enabledExtensionCount = a->n_exts,
		.ppEnabledExtensionNames = a->exts,
	};
	if (vkCreateDevice(a->pd, &dci, NULL, &a->device) != VK_SUCCESS) {
		fprintf(stderr, "c-load: vkCreateDevice failed\n");
		return -1;
	}
	vkGetPhysicalDeviceMemoryProperties(a->pd, &a->mem);
	return 0;
}

/* A buffer the app maps to sum: host-visible, device-local where the
 * device has such memory (lavapipe, UMA, resizable BAR). */
static int app_buffer(struct app *a, uint64_t size, VkBuffer *buf, VkDeviceMemory *mem)
{
	VkBufferCreateInfo bci = {
		.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
		.size = size,
		.usage = VK_BUFFER_USAGE_TRANSFER_DST_BIT | VK_BUFFER_USAGE_STORAGE_BUFFER_BIT,
	};
	VkMemoryRequirements req;
	const VkMemoryPropertyFlags host = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
					   VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
	uint32_t type = UINT32_MAX;

	if (vkCreateBuffer(a->device, &bci, NULL, buf) != VK_SUCCESS)
		return -1;
	vkGetBufferMemoryRequirements(a->device, *buf, &req);
	for (int pass = 0; pass < 2 && type == UINT32_MAX; pass++) {
		VkMemoryPropertyFlags want =
			pass == 0 ? host | VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT : host;
		for (uint32_t i = 0; i < a->mem.memoryTypeCount; i++) {
			if ((req.memoryTypeBits & (1u << i)) &&
			    (a->mem.memoryTypes[i].propertyFlags & want) == want) {
				type = i;
				break;
			}
		}
	}
	if (type == UINT32_MAX) {
		fprintf(stderr, "c-load: no host-visible memory for the buffer\n");
		return -1;
	}
	VkMemoryAllocateInfo mai = {
		.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
		.allocationSize = req.size,
		.memoryTypeIndex = type,
	};
	if (vkAllocateMemory(a->device, &mai, NULL, mem) != VK_SUCCESS) {
		fprintf(stderr, "c-load: vkAllocateMemory of %" PRIu64 " bytes failed\n", size);
		return -1;
	}
	return vkBindBufferMemory(a->device, *buf, *mem, 0) == VK_SUCCESS ? 0 : -1;
}

static uint64_t sum64(const uint8_t *p, uint64_t n)
{
	uint64_t s = 0;
	uint64_t i = 0;

	for (; i + 4 <= n; i += 4)
		s += (uint64_t)p[i] | (uint64_t)p[i + 1] << 8 | (uint64_t)p[i + 2] << 16 |
		     (uint64_t)p[i + 3] << 24;
	for (unsigned k = 0; i < n; i++, k++)
		s += (uint64_t)p[i] << (8 * k);
	return s;
}

int main(int argc, char **argv)
{
	const char *file = NULL;
	uint64_t offset = 0, length = 0;
	int have_length = 0;
	uint32_t path = DMAFILE_PATH_AUTO;
	struct app a = { 0 };
	struct stat st;
	int32_t reason = 0;
	int rc, status = 2;
	/* Everything `out:` frees, NULL until made. */
	dmafile_gpu *gpu = NULL;
	dmafile_queue *queue = NULL;
	VkBuffer buf = VK_NULL_HANDLE;
	VkDeviceMemory mem = VK_NULL_HANDLE;
	VkSemaphore timeline = VK_NULL_HANDLE;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--offset")) {
			if (parse_u64("--offset", i + 1 < argc ? argv[++i] : NULL, &offset))
				return 2;
		} else if (!strcmp(argv[i], "--length")) {
			if (parse_u64("--length", i + 1 < argc ? argv[++i] : NULL, &length))
				return 2;
			have_length = 1;
		} else if (!strcmp(argv[i], "--path")) {
			if (parse_path(i + 1 < argc ? argv[++i] : NULL, &path))
				return 2;
		} else if (argv[i][0] == '-' || file) {
			fprintf(stderr, "usage: c-load FILE [--offset N] [--length N] "
					"[--path auto|direct|host|heap|upload]\n");
			return 2;
		} else {
			file = argv[i];
		}
	}
	if (!file) {
		fprintf(stderr, "usage: c-load FILE [--offset N] [--length N] "
				"[--path auto|direct|host|heap|upload]\n");
		return 2;
	}
	if (stat(file, &st)) {
		fprintf(stderr, "c-load: %s: %s\n", file, strerror(errno));
		return 2;
	}
	if (!have_length)
		length = (uint64_t)st.st_size > offset ? (uint64_t)st.st_size - offset : 0;
	if (length == 0) {
		fprintf(stderr, "c-load: %s: nothing to load at offset %" PRIu64 " (%lld bytes)\n",
			file, offset, (long long)st.st_size);
		return 2;
	}
	if ((dmafile_abi_version() >> 16) != (DMAFILE_ABI_VERSION >> 16)) {
		fprintf(stderr, "c-load: libdmafile's ABI %u is not this header's %u\n",
			dmafile_abi_version(), DMAFILE_ABI_VERSION);
		return 2;
	}
	if (app_open(&a))
		goto out;

	/* Lend the device; dmafile never destroys it. */
	dmafile_borrowed_device bd = {
		.get_instance_proc_addr = vkGetInstanceProcAddr,
		.instance = a.instance,
		.instance_api_version = VK_API_VERSION_1_2,
		.physical_device = a.pd,
		.device = a.device,
		.queue_family = a.family,
		.queue_index = 0,
		.enabled_extensions = a.exts,
		.enabled_extension_count = a.n_exts,
		.timeline_semaphore = 1,
	};
	rc = dmafile_gpu_borrow(&bd, &gpu, &reason);
	if (rc) {
		fail(2, "dmafile_gpu_borrow", rc, reason);
		goto out;
	}
	if (path != DMAFILE_PATH_AUTO) {
		char why[256];

		rc = dmafile_gpu_path_available(gpu, path, &reason, why, sizeof(why));
		if (rc == 0 && reason != 0) {
			fprintf(stderr, "c-load: path %s is unavailable: %s [%s]\n",
				dmafile_path_name(path), why, dmafile_code_name(reason));
			goto out;
		}
	}
	dmafile_queue_options qo = { .path = path };

	rc = dmafile_queue_new(gpu, &qo, &queue, &reason);
	if (rc) {
		fail(2, "dmafile_queue_new", rc, reason);
		goto out;
	}
	/* Room for the range rounded up to whole words. */
	uint64_t size = (length + 3) & ~3ull;

	if (app_buffer(&a, size, &buf, &mem))
		goto out;
	VkSemaphoreTypeCreateInfo tci = {
		.sType = VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO,
		.semaphoreType = VK_SEMAPHORE_TYPE_TIMELINE,
	};
	VkSemaphoreCreateInfo sci = { .sType = VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO,
				      .pNext = &tci };
	if (vkCreateSemaphore(a.device, &sci, NULL, &timeline) != VK_SUCCESS)
		goto out;

	uint8_t *host;
	if (vkMapMemory(a.device, mem, 0, VK_WHOLE_SIZE, 0, (void **)&host) != VK_SUCCESS)
		goto out;
	memset(host, 0, size); /* the zero padding of a partial last word */

	dmafile_read_request req = {
		.file = file,
		.offset = offset,
		.length = length,
		.dst = buf,
		.dst_size = size,
		.dst_offset = 0,
	};
	dmafile_timeline signal = { .semaphore = timeline, .value = 1 };
	uint64_t ticket;

	rc = dmafile_queue_submit(queue, &req, 1, &signal, &ticket, &reason);
	if (rc) {
		status = fail(reason == DMAFILE_CODE_RANGE_PAST_EOF ? 2 : 1,
			      "dmafile_queue_submit", rc, reason);
		goto out;
	}
	/* The app waits on its own timeline, as it would before its shader. */
	uint64_t value = 1;
	VkSemaphoreWaitInfo wi = {
		.sType = VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO,
		.semaphoreCount = 1,
		.pSemaphores = &timeline,
		.pValues = &value,
	};
	if (vkWaitSemaphores(a.device, &wi, UINT64_MAX) != VK_SUCCESS) {
		fprintf(stderr, "c-load: vkWaitSemaphores failed\n");
		status = 1;
		goto out;
	}
	dmafile_request_report rep;
	uint32_t done = 0;
	size_t n = 0;

	rc = dmafile_queue_redeem(queue, ticket, 1, &done, &rep, 1, &n, &reason);
	if (rc) {
		status = fail(1, "dmafile_queue_redeem", rc, reason);
		goto out;
	}
	if (rep.status) {
		fprintf(stderr, "c-load: %s: the read failed: %s [%s]\n", file, rep.message,
			dmafile_code_name(rep.reason));
		status = 1;
		goto out;
	}
	if (rep.fallback_count)
		fprintf(stderr, "c-load: %s\n", rep.message);
	printf("sum64=%" PRIu64 " path=%s cpu_copied=%" PRIu64 "\n", sum64(host, length),
	       dmafile_path_name(rep.path), rep.cpu_copied_bytes);
	status = 0;
out:
	/* dmafile's objects first, then the app's own, device last. */
	if (queue)
		dmafile_queue_free(queue, NULL);
	if (gpu)
		dmafile_gpu_free(gpu, NULL);
	if (a.device) {
		vkDeviceWaitIdle(a.device);
		if (timeline)
			vkDestroySemaphore(a.device, timeline, NULL);
		if (buf)
			vkDestroyBuffer(a.device, buf, NULL);
		if (mem)
			vkFreeMemory(a.device, mem, NULL);
		vkDestroyDevice(a.device, NULL);
	}
	if (a.instance)
		vkDestroyInstance(a.instance, NULL);
	return status;
}
