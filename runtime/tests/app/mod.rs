//! A test application's side of a borrowed device: its own loader,
//! instance, device, queue and buffers (shared by the tests that lend it).
#![allow(dead_code)]
use std::ffi::CStr;

use ash::vk;
use dmafile::{BorrowedDevice, Gpu, PathKind};

/// The application's side: its own loader, instance, device and queue.
pub struct App {
    pub entry: ash::Entry,
    pub instance: ash::Instance,
    pub pd: vk::PhysicalDevice,
    pub device: ash::Device,
    pub family: u32,
    pub exts: Vec<&'static CStr>,
}

impl App {
    pub fn new(with_imports: bool) -> App {
        // SAFETY: loading the system's Vulkan loader.
        let entry = unsafe { ash::Entry::load() }.expect("libvulkan (lavapipe in CI)");
        let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_2);
        // SAFETY: the create info outlives the call.
        let instance = unsafe {
            entry.create_instance(
                &vk::InstanceCreateInfo::default().application_info(&app),
                None,
            )
        }
        .unwrap();
        // SAFETY: instance is valid.
        let pd = unsafe { instance.enumerate_physical_devices() }.unwrap()[0];
        // SAFETY: pd is the instance's; the instance is 1.2.
        let req = unsafe { dmafile::device_requirements(&instance, pd) }.unwrap();
        assert!(req.timeline_semaphore && req.api_version == vk::API_VERSION_1_2);
        let host = req.paths.iter().find(|p| p.path == PathKind::Host).unwrap();
        assert!(
            host.supported
                && req
                    .extensions
                    .contains(&ash::ext::external_memory_host::NAME),
            "lavapipe has VK_EXT_external_memory_host: {req:?}"
        );
        let exts = if with_imports {
            req.extensions.clone()
        } else {
            vec![]
        };
        // SAFETY: pd is valid.
        let family = unsafe { instance.get_physical_device_queue_family_properties(pd) }
            .iter()
            .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
            .unwrap() as u32;
        let prio = [1.0f32];
        let qci = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(family)
            .queue_priorities(&prio)];
        let names: Vec<_> = exts.iter().map(|e| e.as_ptr()).collect();
        let mut f12 = vk::PhysicalDeviceVulkan12Features::default().timeline_semaphore(true);
        let ci = vk::DeviceCreateInfo::default()
            .queue_create_infos(&qci)
            .enabled_extension_names(&names)
            .push_next(&mut f12);
        // SAFETY: the create info and its chain outlive the call.
        let device = unsafe { instance.create_device(pd, &ci, None) }.unwrap();
        App {
            entry,
            instance,
            pd,
            device,
            family,
            exts,
        }
    }

    pub fn lend(&self) -> Gpu {
        self.lend_as(self.borrowed()).expect("Gpu::from_raw")
    }

    /// What this app truly has, to lend (tests vary a field of it).
    pub fn borrowed(&self) -> BorrowedDevice<'_> {
        BorrowedDevice {
            get_instance_proc_addr: self.entry.static_fn().get_instance_proc_addr,
            instance: self.instance.handle(),
            instance_api_version: vk::API_VERSION_1_2,
            physical_device: self.pd,
            device: self.device.handle(),
            queue_family: self.family,
            queue_index: 0,
            enabled_extensions: &self.exts,
            timeline_semaphore: true,
        }
    }

    /// Lends `b`, this app's device as described (possibly wrongly: from_raw
    /// refuses a description it can check before using anything).
    pub fn lend_as(&self, b: BorrowedDevice<'_>) -> dmafile::Result<Gpu> {
        // SAFETY: the handles are this app's, made from one another, with
        // these extensions and timelines; the app destroys its device only
        // after every dmafile value is dropped (end of each test).
        unsafe { Gpu::from_raw(b) }
    }

    /// Uses the device after dmafile is done with it: fills a host-visible
    /// buffer on the GPU and reads it back. A device dmafile had destroyed
    /// would not do this.
    pub fn still_works(&self) {
        let b = self.buffer(4096, true);
        // SAFETY: the app's own buffer, filled by its own command.
        self.run(None, |cb| unsafe {
            self.device
                .cmd_fill_buffer(cb, b.buffer, 0, 4096, 0x5eed_f00d)
        });
        let words: Vec<u32> = self
            .host_bytes(&b)
            .chunks(4)
            .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
            .collect();
        assert!(words.iter().all(|&w| w == 0x5eed_f00d));
        self.destroy(b);
    }

    /// A command buffer of the app's, begun, from a pool of its queue
    /// family that it returns (destroy the pool when done).
    pub fn begin_cmd(&self) -> (vk::CommandPool, vk::CommandBuffer) {
        let d = &self.device;
        // SAFETY: the app's own objects.
        unsafe {
            let pool = d
                .create_command_pool(
                    &vk::CommandPoolCreateInfo::default().queue_family_index(self.family),
                    None,
                )
                .unwrap();
            let cb = d
                .allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default()
                        .command_pool(pool)
                        .command_buffer_count(1),
                )
                .unwrap()[0];
            d.begin_command_buffer(cb, &vk::CommandBufferBeginInfo::default())
                .unwrap();
            (pool, cb)
        }
    }

    /// Records `record` into a command buffer of the app's, then makes its
    /// transfers visible to the host, submits it to queue 0 (under `gpu`'s
    /// queue lock when given, as an app sharing the queue with dmafile
    /// must) and waits for it.
    pub fn run(&self, gpu: Option<&Gpu>, record: impl FnOnce(vk::CommandBuffer)) {
        let d = &self.device;
        let (pool, cb) = self.begin_cmd();
        // SAFETY: the app's own objects, destroyed after the fence says
        // the GPU is done with them.
        unsafe {
            record(cb);
            let barrier = vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::HOST_READ);
            d.cmd_pipeline_barrier(
                cb,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &[barrier],
                &[],
                &[],
            );
            d.end_command_buffer(cb).unwrap();
            let fence = d
                .create_fence(&vk::FenceCreateInfo::default(), None)
                .unwrap();
            let cbs = [cb];
            let si = [vk::SubmitInfo::default().command_buffers(&cbs)];
            match gpu {
                Some(g) => {
                    let q = g.lock_queue().unwrap();
                    d.queue_submit(q.queue(), &si, fence).unwrap();
                }
                None => d
                    .queue_submit(d.get_device_queue(self.family, 0), &si, fence)
                    .unwrap(),
            }
            d.wait_for_fences(&[fence], true, u64::MAX).unwrap();
            d.destroy_fence(fence, None);
            d.destroy_command_pool(pool, None);
        }
    }

    /// Fills a host-visible buffer of the app's with `byte`.
    pub fn fill_host(&self, b: &AppBuffer, byte: u8) {
        assert!(b.host_visible);
        // SAFETY: host-visible, coherent memory no command is using.
        unsafe {
            let p = self
                .device
                .map_memory(b.memory, 0, b.size, vk::MemoryMapFlags::empty())
                .unwrap() as *mut u8;
            std::ptr::write_bytes(p, byte, b.size as usize);
            self.device.unmap_memory(b.memory);
        }
    }

    /// The bytes of a host-visible buffer of the app's.
    pub fn host_bytes(&self, b: &AppBuffer) -> Vec<u8> {
        assert!(b.host_visible);
        // SAFETY: host-visible, coherent memory no command is writing.
        unsafe {
            let p = self
                .device
                .map_memory(b.memory, 0, b.size, vk::MemoryMapFlags::empty())
                .unwrap() as *const u8;
            let v = std::slice::from_raw_parts(p, b.size as usize).to_vec();
            self.device.unmap_memory(b.memory);
            v
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // SAFETY: the app's own objects, destroyed by the app, after every
        // dmafile value made from them (the tests drop those first).
        unsafe {
            self.device.device_wait_idle().unwrap();
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

/// A buffer of the app's, with its memory.
pub struct AppBuffer {
    pub buffer: vk::Buffer,
    pub memory: vk::DeviceMemory,
    pub size: u64,
    host_visible: bool,
}

impl App {
    fn memory_type(&self, bits: u32, want: vk::MemoryPropertyFlags) -> u32 {
        // SAFETY: pd is valid.
        let props = unsafe { self.instance.get_physical_device_memory_properties(self.pd) };
        (0..props.memory_type_count)
            .find(|&i| {
                bits & (1 << i) != 0 && props.memory_types[i as usize].property_flags.contains(want)
            })
            .expect("a memory type")
    }

    /// A buffer the app owns: device-local (the read queue's destination)
    /// or host-visible (to read results back).
    pub fn buffer(&self, size: u64, host_visible: bool) -> AppBuffer {
        let d = &self.device;
        let usage = vk::BufferUsageFlags::TRANSFER_DST
            | vk::BufferUsageFlags::TRANSFER_SRC
            | vk::BufferUsageFlags::STORAGE_BUFFER;
        // SAFETY: plain creation on the app's device.
        unsafe {
            let buffer = d
                .create_buffer(
                    &vk::BufferCreateInfo::default().size(size).usage(usage),
                    None,
                )
                .unwrap();
            let req = d.get_buffer_memory_requirements(buffer);
            let want = if host_visible {
                vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT
            } else {
                vk::MemoryPropertyFlags::DEVICE_LOCAL
            };
            let memory = d
                .allocate_memory(
                    &vk::MemoryAllocateInfo::default()
                        .allocation_size(req.size)
                        .memory_type_index(self.memory_type(req.memory_type_bits, want)),
                    None,
                )
                .unwrap();
            d.bind_buffer_memory(buffer, memory, 0).unwrap();
            AppBuffer {
                buffer,
                memory,
                size,
                host_visible,
            }
        }
    }

    pub fn destroy(&self, b: AppBuffer) {
        // SAFETY: the app's buffer, idle.
        unsafe {
            self.device.destroy_buffer(b.buffer, None);
            self.device.free_memory(b.memory, None);
        }
    }

    /// A timeline semaphore of the app's, at 0.
    pub fn timeline(&self) -> vk::Semaphore {
        let mut t =
            vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE);
        // SAFETY: plain creation.
        unsafe {
            self.device
                .create_semaphore(&vk::SemaphoreCreateInfo::default().push_next(&mut t), None)
        }
        .unwrap()
    }

    pub fn value(&self, s: vk::Semaphore) -> u64 {
        // SAFETY: the app's semaphore.
        unsafe { self.device.get_semaphore_counter_value(s) }.unwrap()
    }

    /// Signals `s` to `v` from the host.
    pub fn signal(&self, s: vk::Semaphore, v: u64) {
        // SAFETY: the app's semaphore, below `v`.
        unsafe {
            self.device
                .signal_semaphore(&vk::SemaphoreSignalInfo::default().semaphore(s).value(v))
        }
        .unwrap()
    }

    /// Ends `cb` and submits it on `gpu`'s queue (under its lock),
    /// signalling `s` to `v` when it completes.
    pub fn submit_signal(&self, gpu: &Gpu, cb: vk::CommandBuffer, s: vk::Semaphore, v: u64) {
        let cbs = [cb];
        let sems = [s];
        let vals = [v];
        let mut tsi = vk::TimelineSemaphoreSubmitInfo::default().signal_semaphore_values(&vals);
        let si = [vk::SubmitInfo::default()
            .command_buffers(&cbs)
            .signal_semaphores(&sems)
            .push_next(&mut tsi)];
        // SAFETY: the app's recording command buffer and semaphore.
        unsafe {
            self.device.end_command_buffer(cb).unwrap();
            let q = gpu.lock_queue().unwrap();
            self.device
                .queue_submit(q.queue(), &si, vk::Fence::null())
                .unwrap();
        }
    }

    /// Waits (up to `secs`) for `s` to reach `v`; false on timeout.
    pub fn wait(&self, s: vk::Semaphore, v: u64, secs: u64) -> bool {
        let sems = [s];
        let vals = [v];
        // SAFETY: the app's semaphore.
        match unsafe {
            self.device.wait_semaphores(
                &vk::SemaphoreWaitInfo::default()
                    .semaphores(&sems)
                    .values(&vals),
                secs * 1_000_000_000,
            )
        } {
            Ok(()) => true,
            Err(vk::Result::TIMEOUT) => false,
            Err(e) => panic!("vkWaitSemaphores: {e}"),
        }
    }

    /// The bytes of `b` (device-local), copied by the app's own command
    /// into a host-visible buffer and read there.
    pub fn read_back(&self, b: &AppBuffer) -> Vec<u8> {
        let host = self.buffer(b.size, true);
        let region = [vk::BufferCopy::default().size(b.size)];
        // SAFETY: the app's own buffers.
        self.run(None, |cb| unsafe {
            self.device
                .cmd_copy_buffer(cb, b.buffer, host.buffer, &region)
        });
        let out = self.host_bytes(&host);
        self.destroy(host);
        out
    }
}
