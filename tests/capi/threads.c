/*
 * The thread-safety dmafile.h states, exercised: one lent device used from
 * several threads at once, each with its own read queue, and two threads
 * sharing one queue (submits and redeems interleaved); every byte that
 * lands is compared with the file's. Then a race to free one handle: only
 * one thread may succeed, the other gets -EBADF/bad-handle.
 * Built and run by scripts/test-capi.sh against the installed prefix:
 *   threads DIR [READERS (0..6, default 6) [PATH (a dmafile_path number)]]
 * It found lavapipe (Mesa 25.0.7) crashing its queue thread when a read
 * queue, whose submissions then waited on the timeline they signalled,
 * was dropped while others worked (9 of 12 runs of `threads DIR 6 4`);
 * the queue's submissions no longer wait on their own timeline.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dmafile.h>

#define FILE_BYTES (256 * 1024 + 3)
#define ROUNDS 12

static VkDevice device;
static VkPhysicalDeviceMemoryProperties mem_props;
static dmafile_gpu *gpu;
static char path[4096];
static unsigned char *bytes;
static int failures;
static dmafile_queue_options qopts;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void fail(const char *msg, int rc, int32_t reason)
{
	pthread_mutex_lock(&lock);
	failures++;
	printf("FAIL %s: rc %d reason %d (%s) %s\n", msg, rc, reason,
	       dmafile_code_name(reason) ? dmafile_code_name(reason) : "?", dmafile_last_error());
	pthread_mutex_unlock(&lock);
}

struct buf {
	VkBuffer buffer;
	VkDeviceMemory memory;
	unsigned char *host;
};

static int make_buf(struct buf *b, uint64_t size)
{
	VkBufferCreateInfo bci = { .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
				   .size = size,
				   .usage = VK_BUFFER_USAGE_TRANSFER_DST_BIT };
	VkMemoryRequirements mr;
	const VkMemoryPropertyFlags want =
		VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
	uint32_t t = 0;

	if (vkCreateBuffer(device, &bci, NULL, &b->buffer))
		return -1;
	vkGetBufferMemoryRequirements(device, b->buffer, &mr);
	while (t < mem_props.memoryTypeCount &&
	       (!(mr.memoryTypeBits & 1u << t) ||
		(mem_props.memoryTypes[t].propertyFlags & want) != want))
		t++;
	VkMemoryAllocateInfo mai = { .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
				     .allocationSize = mr.size,
				     .memoryTypeIndex = t };
	if (t == mem_props.memoryTypeCount || vkAllocateMemory(device, &mai, NULL, &b->memory) ||
	    vkBindBufferMemory(device, b->buffer, b->memory, 0) ||
	    vkMapMemory(device, b->memory, 0, VK_WHOLE_SIZE, 0, (void **)&b->host))
		return -1;
	return 0;
}

static void free_buf(struct buf *b)
{
	vkDestroyBuffer(device, b->buffer, NULL);
	vkFreeMemory(device, b->memory, NULL);
}

/* ROUNDS batches of two requests on queue `q` into a fresh buffer each,
 * redeemed with a wait, the bytes compared with the file's. */
static void reads(dmafile_queue *q, unsigned seed)
{
	for (int r = 0; r < ROUNDS; r++) {
		uint64_t off = (seed * 7919u + r * 4099u) % (FILE_BYTES / 2);
		uint64_t len = 1 + (seed * 131u + r * 65537u) % (FILE_BYTES / 2 - 1);
		struct buf b;
		int32_t reason = 0;
		uint64_t ticket;
		uint32_t done = 0;
		size_t n = 0;
		dmafile_request_report rep[2];

		if (make_buf(&b, 2 * len + 8)) {
			fail("buffer", 0, 0);
			return;
		}
		dmafile_read_request req[2] = {
			{ .file = path, .offset = off, .length = len, .dst = b.buffer,
			  .dst_size = 2 * len + 8 },
			{ .file = path, .offset = FILE_BYTES - len, .length = len, .dst = b.buffer,
			  .dst_size = 2 * len + 8, .dst_offset = len + 8 },
		};
		int rc = dmafile_queue_submit(q, req, 2, NULL, &ticket, &reason);
		if (rc) {
			fail("submit", rc, reason);
		} else {
			rc = dmafile_queue_redeem(q, ticket, 1, &done, rep, 2, &n, &reason);
			if (rc || !done || n != 2 || rep[0].status || rep[1].status)
				fail("redeem", rc, reason);
			else if (memcmp(b.host, bytes + off, len) ||
				 memcmp(b.host + len + 8, bytes + FILE_BYTES - len, len))
				fail("bytes differ from the file's", 0, 0);
		}
		free_buf(&b);
	}
}

static void *own_queue(void *arg)
{
	dmafile_queue *q;
	int32_t reason;
	int rc = dmafile_queue_new(gpu, &qopts, &q, &reason);

	if (rc) {
		fail("queue_new", rc, reason);
		return NULL;
	}
	reads(q, (unsigned)(uintptr_t)arg);
	rc = dmafile_queue_free(q, &reason);
	if (rc)
		fail("queue_free", rc, reason);
	return NULL;
}

static dmafile_queue *shared;

static void *shared_queue(void *arg)
{
	reads(shared, (unsigned)(uintptr_t)arg);
	return NULL;
}

static dmafile_region *racing;
static int freed_ok, freed_bad;

static void *free_race(void *arg)
{
	int32_t reason;
	int rc = dmafile_region_free(racing, &reason);

	(void)arg;
	pthread_mutex_lock(&lock);
	if (rc == 0)
		freed_ok++;
	else if (rc == -EBADF && reason == DMAFILE_CODE_BAD_HANDLE)
		freed_bad++;
	pthread_mutex_unlock(&lock);
	return NULL;
}

int main(int argc, char **argv)
{
	VkApplicationInfo ai = { .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
				 .apiVersion = VK_API_VERSION_1_2 };
	VkInstanceCreateInfo ici = { .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
				     .pApplicationInfo = &ai };
	VkInstance inst;
	VkPhysicalDevice pd;
	uint32_t one = 1, n_exts = 8;
	const char *exts[8];
	float prio = 1;
	int32_t reason;
	pthread_t t[6];

	snprintf(path, sizeof(path), "%s/threads.bin", argc > 1 ? argv[1] : "/tmp");
	bytes = malloc(FILE_BYTES);
	FILE *f = fopen(path, "wb");
	for (uint32_t i = 0; i < FILE_BYTES; i++)
		bytes[i] = (unsigned char)((i * 2654435761u) >> 13);
	if (!f || fwrite(bytes, 1, FILE_BYTES, f) != FILE_BYTES || fclose(f)) {
		printf("FAIL cannot write %s\n", path);
		return 1;
	}
	if (vkCreateInstance(&ici, NULL, &inst) || vkEnumeratePhysicalDevices(inst, &one, &pd) < 0 ||
	    dmafile_device_extensions(vkGetInstanceProcAddr, inst, pd, &n_exts, exts, &reason)) {
		printf("FAIL no Vulkan device: %s\n", dmafile_last_error());
		return 1;
	}
	VkDeviceQueueCreateInfo qci = { .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
					.queueCount = 1,
					.pQueuePriorities = &prio };
	VkPhysicalDeviceVulkan12Features f12 = {
		.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
		.timelineSemaphore = VK_TRUE
	};
	VkDeviceCreateInfo dci = { .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
				   .pNext = &f12,
				   .queueCreateInfoCount = 1,
				   .pQueueCreateInfos = &qci,
				   .enabledExtensionCount = n_exts,
				   .ppEnabledExtensionNames = exts };
	if (vkCreateDevice(pd, &dci, NULL, &device)) {
		printf("FAIL vkCreateDevice\n");
		return 1;
	}
	vkGetPhysicalDeviceMemoryProperties(pd, &mem_props);
	dmafile_borrowed_device bd = { .get_instance_proc_addr = vkGetInstanceProcAddr,
				       .instance = inst,
				       .instance_api_version = VK_API_VERSION_1_2,
				       .physical_device = pd,
				       .device = device,
				       .enabled_extensions = exts,
				       .enabled_extension_count = n_exts,
				       .timeline_semaphore = 1 };
	qopts.path = argc > 3 ? (uint32_t)atoi(argv[3]) : 0;
	if (dmafile_gpu_borrow(&bd, &gpu, &reason) ||
	    dmafile_queue_new(gpu, &qopts, &shared, &reason)) {
		printf("FAIL borrow: %s\n", dmafile_last_error());
		return 1;
	}

	/* Four threads with a queue each, two sharing one, all at once. */
	int nt = argc > 2 ? atoi(argv[2]) : 6;
	if (nt < 0 || nt > 6) {
		printf("FAIL threads: READERS must be 0..6\n");
		return 2;
	}
	for (uintptr_t i = 0; i < (uintptr_t)nt; i++)
		pthread_create(&t[i], NULL, i < 4 ? own_queue : shared_queue, (void *)i);
	for (int i = 0; i < nt; i++)
		pthread_join(t[i], NULL);
	printf("%s  %d threads x %d batches of 2 reads (threads 0-3 a queue each, 4-5 sharing one), path %s\n",
	       failures ? "FAIL" : "ok  ", nt, ROUNDS, dmafile_path_name(qopts.path));
	fflush(stdout);
	dmafile_queue_free(shared, NULL);

	/* Two threads free one region at once: one wins, one gets bad-handle. */
	for (int round = 0; round < 20; round++) {
		if (dmafile_region_open(gpu, path, 0, 4096, DMAFILE_PATH_AUTO, &racing, &reason)) {
			fail("region_open", -1, reason);
			break;
		}
		pthread_create(&t[0], NULL, free_race, NULL);
		pthread_create(&t[1], NULL, free_race, NULL);
		pthread_join(t[0], NULL);
		pthread_join(t[1], NULL);
	}
	if (freed_ok != 20 || freed_bad != 20) {
		printf("FAIL free race: %d freed, %d bad-handle (want 20 and 20)\n", freed_ok,
		       freed_bad);
		failures++;
	} else {
		printf("ok    20 races to free one region: 20 freed, 20 bad-handle\n");
	}

	dmafile_gpu_free(gpu, NULL);
	vkDestroyDevice(device, NULL);
	vkDestroyInstance(inst, NULL);
	free(bytes);
	return failures ? 1 : 0;
}
