//! A wgpu device opened with dmafile's import extensions, and the dmafile
//! `Gpu` that borrows it.
use std::ffi::CStr;

use ash::vk;
use dmafile::{BorrowedDevice, Gpu, PathAvailability};
use wgpu_hal::api::Vulkan;

use crate::{Error, Result};

/// How to open a [`Device`].
#[derive(Clone, Debug, Default)]
pub struct DeviceOptions {
    /// The wgpu features the application needs.
    pub features: wgpu::Features,
    /// The limits to request; `None` requests the adapter's own limits
    /// (wgpu's defaults cap buffers at 256 MiB, too small for big files).
    pub limits: Option<wgpu::Limits>,
    pub memory_hints: wgpu::MemoryHints,
}

/// A wgpu device and queue on a Vulkan device that has every import
/// extension dmafile's paths need (where the adapter supports them), and
/// the [`dmafile::Gpu`] that borrows it.
///
/// Ownership: wgpu-hal creates and owns the Vulkan instance, device and
/// queue; dmafile borrows them ([`Gpu::from_raw`]) and never destroys
/// them. Every dmafile object made here ([`crate::ImportedBuffer`],
/// [`crate::Reader`]) holds a clone of the `wgpu::Device`, so the Vulkan
/// device outlives them whatever the drop order.
///
/// The queue: dmafile-wgpu submits its own work through wgpu wherever it
/// can ([`Device::import`]'s acquire barrier), but the read queue
/// ([`crate::Reader::read_into`]) submits to the same `VkQueue` directly.
/// Vulkan requires submissions to one queue to be externally
/// synchronized and wgpu offers no lock to share, so while a `Reader`
/// call runs, no other thread may call [`wgpu::Queue::submit`] on this
/// device (wgpu's own submissions are serialized among themselves).
pub struct Device {
    // Dropped first: dmafile's handle on the device, then wgpu's.
    gpu: Gpu,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: wgpu::Adapter,
}

impl Device {
    /// Opens the first Vulkan adapter wgpu finds, with an instance of its
    /// own: Vulkan backend only, no debug flags, nothing read from the
    /// environment. Applications that choose their adapter use
    /// [`Device::open`].
    pub fn open_default(opts: &DeviceOptions) -> Result<Device> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::VULKAN;
        desc.flags = wgpu::InstanceFlags::empty();
        let instance = wgpu::Instance::new(desc);
        let adapter =
            pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
                .map_err(|e| Error::Adapter(format!("no Vulkan adapter: {e}")))?;
        Device::open(&adapter, opts)
    }

    /// Opens a device on `adapter` (which must be a Vulkan adapter of
    /// wgpu-core) with wgpu's extensions for `opts.features` plus every
    /// extension of [`dmafile::device_requirements`] the adapter
    /// supports, then lends it to dmafile.
    pub fn open(adapter: &wgpu::Adapter, opts: &DeviceOptions) -> Result<Device> {
        let limits = opts.limits.clone().unwrap_or_else(|| adapter.limits());
        let info = adapter.get_info();
        let (open, enabled, borrowed_parts) = {
            // SAFETY: we destroy nothing through the guard, and drop it
            // before the adapter is used through wgpu again.
            let hal = unsafe { adapter.as_hal::<Vulkan>() }.ok_or_else(|| {
                Error::Adapter(format!(
                    "{} is a {:?} adapter; dmafile needs a Vulkan one",
                    info.name, info.backend
                ))
            })?;
            let shared = hal.shared_instance();
            let instance = shared.raw_instance();
            let pd = hal.raw_physical_device();
            if shared.instance_api_version() < vk::API_VERSION_1_2 {
                return Err(Error::Adapter(format!(
                    "wgpu created its Vulkan instance for {}.{}; dmafile needs 1.2",
                    vk::api_version_major(shared.instance_api_version()),
                    vk::api_version_minor(shared.instance_api_version())
                )));
            }
            // SAFETY: `pd` was enumerated from `instance`, made for 1.2+
            // (checked above).
            let reqs = unsafe { dmafile::device_requirements(instance, pd) }?;
            let wanted: Vec<&'static CStr> = reqs.extensions;
            let add = move |args: wgpu_hal::vulkan::CreateDeviceCallbackArgs| {
                for e in wanted {
                    if !args.extensions.contains(&e) {
                        args.extensions.push(e);
                    }
                }
            };
            // SAFETY: the callback only adds extensions the physical
            // device supports (device_requirements lists only those), as
            // open_with_callback requires; it removes nothing.
            let open = unsafe {
                hal.open_with_callback(
                    opts.features,
                    &limits,
                    &opts.memory_hints,
                    Some(Box::new(add)),
                )
            }?;
            let enabled = open.device.enabled_device_extensions().to_vec();
            // wgpu-hal turns on `timelineSemaphore` whenever the device
            // supports it (PhysicalDeviceFeatures::
            // from_extensions_and_requested_features, from
            // private_caps.timeline_semaphores), which is what dmafile
            // needs: pass the physical device's support.
            // SAFETY: `pd` is valid; the instance is 1.2+.
            let timeline = unsafe { supports_timeline(instance, pd) };
            let parts = (
                shared.entry().static_fn().get_instance_proc_addr,
                instance.handle(),
                shared.instance_api_version(),
                pd,
                open.device.raw_device().handle(),
                open.device.queue_family_index(),
                open.device.queue_index(),
                timeline,
            );
            (open, enabled, parts)
        };
        let (gipa, instance, api, pd, device, family, index, timeline) = borrowed_parts;
        let borrowed = BorrowedDevice {
            get_instance_proc_addr: gipa,
            instance,
            instance_api_version: api,
            physical_device: pd,
            device,
            queue_family: family,
            queue_index: index,
            enabled_extensions: &enabled,
            timeline_semaphore: timeline,
        };
        // SAFETY: every handle comes from wgpu-hal, made one from the
        // other with `enabled` and its own queue (family, index, no
        // flags). wgpu-hal owns them (open_with_callback passed no drop
        // callback): dmafile destroys none of them, and everything
        // dmafile makes on them is held by values that also hold the
        // wgpu::Device, so they go first. The queue rule is the one on
        // `Device`. On error `open` drops and wgpu-hal destroys the device.
        let gpu = unsafe { Gpu::from_raw(borrowed) }?;
        let desc = wgpu::DeviceDescriptor {
            label: Some("dmafile-wgpu"),
            required_features: opts.features,
            required_limits: limits,
            memory_hints: opts.memory_hints.clone(),
            ..Default::default()
        };
        // SAFETY: `open` was created from this adapter's hal adapter with
        // exactly `opts.features`.
        let (device, queue) = unsafe { adapter.create_device_from_hal(open, &desc) }?;
        Ok(Device {
            gpu,
            device,
            queue,
            adapter: adapter.clone(),
        })
    }

    /// The dmafile `Gpu` borrowing this device, for dmafile's own
    /// consumers (regions, streamers, the read queue) on it.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Whether each dmafile path can work with this device, and why not.
    pub fn path_availability(&self) -> Vec<PathAvailability> {
        self.gpu.path_availability()
    }

    /// The raw ash device behind `self.device`.
    pub(crate) fn ash_device(&self) -> Result<ash::Device> {
        // SAFETY: we only clone the function table; nothing is destroyed
        // through the guard.
        let hal = unsafe { self.device.as_hal::<Vulkan>() }
            .ok_or_else(|| Error::Adapter("the wgpu device is not a Vulkan one".into()))?;
        Ok(hal.raw_device().clone())
    }
}

/// Whether `pd` supports timeline semaphores (Vulkan 1.2 core feature).
///
/// # Safety
/// `pd` must be a physical device of `instance`, made for Vulkan 1.2+.
unsafe fn supports_timeline(instance: &ash::Instance, pd: vk::PhysicalDevice) -> bool {
    let mut f12 = vk::PhysicalDeviceVulkan12Features::default();
    let mut f2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut f12);
    // SAFETY: per the caller.
    unsafe { instance.get_physical_device_features2(pd, &mut f2) };
    f12.timeline_semaphore == vk::TRUE
}
