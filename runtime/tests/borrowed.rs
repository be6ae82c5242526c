//! An application's own Vulkan device lent to dmafile (`Gpu::from_raw`):
//! created with what `device_requirements` lists, dmafile streams files
//! on it through every path it enabled, checked against the CPU; created
//! without the import extensions, those paths are unavailable with the
//! reason and `auto` falls back to upload. Afterwards the app's device
//! still works (dmafile destroyed nothing of the app's), and the app
//! destroys it itself.
use std::ffi::CStr;

use ash::vk;

#[path = "../../tests/common/mod.rs"]
mod common;
use common::{data, TempDir};

use dmafile::{
    cpu, BorrowedDevice, Gpu, PathChoice, PathKind, ReasonCode, ShaderKind, ShaderResult,
    StreamConfig, Streamer,
};

/// The application's side: its own loader, instance, device and queue.
struct App {
    entry: ash::Entry,
    instance: ash::Instance,
    pd: vk::PhysicalDevice,
    device: ash::Device,
    family: u32,
    exts: Vec<&'static CStr>,
}

impl App {
    fn new(with_imports: bool) -> App {
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

    fn lend(&self) -> Gpu {
        // SAFETY: the handles are this app's, made from one another, with
        // these extensions and timelines; the app destroys its device only
        // after every dmafile value is dropped (end of each test).
        unsafe {
            Gpu::from_raw(BorrowedDevice {
                get_instance_proc_addr: self.entry.static_fn().get_instance_proc_addr,
                instance: self.instance.handle(),
                instance_api_version: vk::API_VERSION_1_2,
                physical_device: self.pd,
                device: self.device.handle(),
                queue_family: self.family,
                queue_index: 0,
                enabled_extensions: &self.exts,
                timeline_semaphore: true,
            })
        }
        .expect("Gpu::from_raw")
    }

    /// Uses the device after dmafile is done with it: fills a host-visible
    /// buffer on the GPU and reads it back. A device dmafile had destroyed
    /// would not do this.
    fn still_works(&self) {
        let d = &self.device;
        // SAFETY: plain use of the app's own valid device; every object is
        // destroyed before returning, after the fence says the GPU is done.
        unsafe {
            let buf = d
                .create_buffer(
                    &vk::BufferCreateInfo::default()
                        .size(4096)
                        .usage(vk::BufferUsageFlags::TRANSFER_DST),
                    None,
                )
                .unwrap();
            let req = d.get_buffer_memory_requirements(buf);
            let props = self.instance.get_physical_device_memory_properties(self.pd);
            let ty = (0..props.memory_type_count)
                .find(|&i| {
                    req.memory_type_bits & (1 << i) != 0
                        && props.memory_types[i as usize].property_flags.contains(
                            vk::MemoryPropertyFlags::HOST_VISIBLE
                                | vk::MemoryPropertyFlags::HOST_COHERENT,
                        )
                })
                .unwrap();
            let mem = d
                .allocate_memory(
                    &vk::MemoryAllocateInfo::default()
                        .allocation_size(req.size)
                        .memory_type_index(ty),
                    None,
                )
                .unwrap();
            d.bind_buffer_memory(buf, mem, 0).unwrap();
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
            d.cmd_fill_buffer(cb, buf, 0, 4096, 0x5eed_f00d);
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
            let q = d.get_device_queue(self.family, 0);
            let cbs = [cb];
            d.queue_submit(q, &[vk::SubmitInfo::default().command_buffers(&cbs)], fence)
                .unwrap();
            d.wait_for_fences(&[fence], true, u64::MAX).unwrap();
            let p = d
                .map_memory(mem, 0, 4096, vk::MemoryMapFlags::empty())
                .unwrap() as *const u32;
            let words = std::slice::from_raw_parts(p, 1024);
            assert!(words.iter().all(|&w| w == 0x5eed_f00d));
            d.unmap_memory(mem);
            d.destroy_fence(fence, None);
            d.destroy_command_pool(pool, None);
            d.destroy_buffer(buf, None);
            d.free_memory(mem, None);
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

fn stream(g: &Gpu, path: PathChoice, file: &std::path::Path) -> dmafile::StreamReport {
    let cfg = StreamConfig {
        path,
        chunk: 64 << 10,
        shader: ShaderKind::Crc32c,
        verify: true,
        ..Default::default()
    };
    Streamer::new(g, cfg)
        .unwrap()
        .run(&[file], &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

#[test]
fn borrowed_device_with_the_import_extensions() {
    let dir = TempDir::new("borrowed");
    let bytes = data(300_001, 7);
    let file = dir.path("f.bin");
    std::fs::write(&file, &bytes).unwrap();
    let app = App::new(true);
    {
        let g = app.lend();
        assert!(g.is_borrowed());
        assert_eq!(g.raw_device(), app.device.handle());
        assert_eq!(g.queue_family(), app.family);
        let host = g.unavailable(PathKind::Host);
        assert!(
            host.is_none(),
            "host on a device with the extension: {host:?}"
        );
        for p in [PathKind::Host, PathKind::Upload] {
            let r = stream(&g, PathChoice::Only(p), &file);
            assert_eq!(r.verified, Some(true));
            assert_eq!(r.result, Some(ShaderResult::Crc32c(cpu::crc32c(&bytes))));
            assert_eq!(r.paths.get(&p), Some(&(bytes.len() as u64)), "{p:?}");
        }
        let r = stream(&g, PathChoice::Only(PathKind::Host), &file);
        assert_eq!(r.cpu_copied_bytes, 0);
        // A clone outlives the original; dropping both leaves the device.
        let g2 = g.clone();
        drop(g);
        assert!(g2.path_availability().iter().any(|p| p.available));
    }
    app.still_works();
}

#[test]
fn borrowed_device_without_the_import_extensions_falls_back_with_the_reason() {
    let dir = TempDir::new("borrowed-bare");
    let bytes = data(200_003, 9);
    let file = dir.path("f.bin");
    std::fs::write(&file, &bytes).unwrap();
    let app = App::new(false);
    {
        let g = app.lend();
        for k in [PathKind::Direct, PathKind::Host, PathKind::Heap] {
            let u = g
                .unavailable(k)
                .unwrap_or_else(|| panic!("{k:?} available"));
            // direct and heap may also lack the kernel side; the device
            // side is checked first, so the reason is the extension.
            assert_eq!(u.code, ReasonCode::MissingExtension, "{k:?}: {u:?}");
            assert!(
                u.reason.contains("not enabled on the application's device"),
                "{}",
                u.reason
            );
        }
        let r = stream(&g, PathChoice::Auto, &file);
        assert_eq!(r.verified, Some(true));
        assert_eq!(r.result, Some(ShaderResult::Crc32c(cpu::crc32c(&bytes))));
        assert_eq!(
            r.paths.keys().copied().collect::<Vec<_>>(),
            vec![PathKind::Upload]
        );
        assert!(
            r.fallbacks
                .iter()
                .any(|f| f.from == PathKind::Host && f.code == ReasonCode::MissingExtension),
            "{:?}",
            r.fallbacks
        );
        // Naming a path the app did not enable is an error with the reason.
        let e = Streamer::new(
            &g,
            StreamConfig {
                path: PathChoice::Only(PathKind::Host),
                ..Default::default()
            },
        )
        .and_then(|mut s| s.run(&[&file], &mut |_, _| {}))
        .expect_err("host refused");
        assert!(e.to_string().contains("VK_EXT_external_memory_host"), "{e}");
    }
    app.still_works();
}

#[test]
fn a_borrowed_device_must_have_timelines_and_a_compute_queue() {
    let app = App::new(true);
    let lend = |timeline: bool, family: u32| {
        // SAFETY: as in App::lend; only the declared facts vary, and
        // from_raw refuses before using anything they would make wrong.
        unsafe {
            Gpu::from_raw(BorrowedDevice {
                get_instance_proc_addr: app.entry.static_fn().get_instance_proc_addr,
                instance: app.instance.handle(),
                instance_api_version: vk::API_VERSION_1_2,
                physical_device: app.pd,
                device: app.device.handle(),
                queue_family: family,
                queue_index: 0,
                enabled_extensions: &app.exts,
                timeline_semaphore: timeline,
            })
        }
    };
    let e = lend(false, app.family).err().expect("no timelines refused");
    assert!(e.to_string().contains("timelineSemaphore"), "{e}");
    let e = lend(true, 99).err().expect("family 99 refused");
    assert!(e.to_string().contains("family 99"), "{e}");
    app.still_works();
}
