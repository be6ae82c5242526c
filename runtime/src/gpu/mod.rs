//! Vulkan instance and device: enumeration, the choice of device, the
//! capability report, and the shared owner that tears everything down in
//! order (every other Vulkan object holds an `Arc<DeviceShared>`, so the
//! device and instance are destroyed last).
use std::ffi::CStr;
use std::sync::{Arc, Mutex};

use ash::vk;
use serde::Serialize;

use crate::error::{Error, Result, VkResultExt};
use crate::path::{PathAvailability, PathKind, ReasonCode, Unavailable};
use crate::probe::kernel_side;

pub(crate) mod kernels;
pub(crate) mod memory;

/// The kind of a physical device, in the order dmafile prefers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Discrete,
    Integrated,
    Virtual,
    Cpu,
    Other,
}

impl From<vk::PhysicalDeviceType> for DeviceKind {
    fn from(t: vk::PhysicalDeviceType) -> Self {
        match t {
            vk::PhysicalDeviceType::DISCRETE_GPU => DeviceKind::Discrete,
            vk::PhysicalDeviceType::INTEGRATED_GPU => DeviceKind::Integrated,
            vk::PhysicalDeviceType::VIRTUAL_GPU => DeviceKind::Virtual,
            vk::PhysicalDeviceType::CPU => DeviceKind::Cpu,
            _ => DeviceKind::Other,
        }
    }
}

/// Extensions and features that matter to dmafile.
#[derive(Clone, Debug, Serialize)]
pub struct Features {
    /// VK_KHR_external_memory_fd: import of fds (dma-bufs).
    pub external_memory_fd: bool,
    /// VK_EXT_external_memory_dma_buf: the direct and heap paths.
    pub external_memory_dma_buf: bool,
    /// VK_EXT_external_memory_host: the host path.
    pub external_memory_host: bool,
    /// Timeline semaphores (Vulkan 1.2 core): streaming with a queue depth.
    pub timeline_semaphore: bool,
}

/// One memory type of the device.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryType {
    pub heap: u32,
    pub heap_size: u64,
    pub device_local: bool,
    pub host_visible: bool,
    pub host_coherent: bool,
    pub host_cached: bool,
}

/// What dmafile knows about a Vulkan device: the capability report.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceInfo {
    pub index: usize,
    pub name: String,
    pub kind: DeviceKind,
    pub vendor_id: u32,
    pub device_id: u32,
    pub api_version: String,
    pub driver: String,
    pub features: Features,
    pub max_storage_buffer_range: u64,
    pub max_memory_allocation_size: u64,
    /// Alignment of host pointers and sizes for the host path (0 without the extension).
    pub min_imported_host_pointer_alignment: u64,
    pub max_compute_work_group_count_x: u32,
    /// Workgroups one dispatch may have in x, y and z.
    pub max_compute_work_group_count: [u32; 3],
    /// Bytes of push constants a pipeline may have.
    pub max_push_constants_size: u32,
    pub memory_types: Vec<MemoryType>,
    /// True when some memory is both device-local and host-visible (UMA,
    /// lavapipe, resizable BAR): the upload path then writes straight into
    /// the memory the shader reads; otherwise it stages and copies on the GPU.
    pub host_visible_device_local: bool,
}

impl DeviceInfo {
    /// The largest chunk a shader can see in one binding on this device.
    pub fn max_chunk(&self) -> u64 {
        let cap = self
            .max_storage_buffer_range
            .min(self.max_memory_allocation_size);
        // Whole pages, and the block count must fit the dispatch limits.
        let by_groups =
            self.max_compute_work_group_count_x as u64 * 64 * crate::shader::BLOCK_BYTES;
        cap.min(by_groups) & !(crate::PAGE_SIZE - 1)
    }
}

/// Holds the loader, instance and device; destroys the device and the
/// instance last, and only when dmafile created them (`owned`).
pub(crate) struct DeviceShared {
    _entry: ash::Entry,
    /// False for a device borrowed from the application
    /// ([`Gpu::from_raw`]): the app destroys it and its instance.
    owned: bool,
    pub instance: ash::Instance,
    pub device: ash::Device,
    /// Shared by every `Gpu` on this queue in the process ([`queue_lock`]).
    pub queue: Arc<Mutex<vk::Queue>>,
    pub queue_family: u32,
    pub host_ext: Option<ash::ext::external_memory_host::Device>,
    /// VK_KHR_external_memory_fd, loaded when dma-buf import is enabled.
    pub fd_ext: Option<ash::khr::external_memory_fd::Device>,
    pub mem_props: vk::PhysicalDeviceMemoryProperties,
    /// Every device the instance sees, and which one is open.
    pub devices: Vec<DeviceInfo>,
    pub chosen: usize,
}

impl DeviceShared {
    pub fn info(&self) -> &DeviceInfo {
        &self.devices[self.chosen]
    }

    /// Submits to the one queue, serialised by its lock.
    ///
    /// # Safety
    /// The command buffers must be recorded, and everything they use must
    /// live until the submission completes.
    pub unsafe fn submit(&self, si: &[vk::SubmitInfo<'_>], fence: vk::Fence) -> Result<()> {
        let q = self
            .queue
            .lock()
            .map_err(|_| Error::NoVulkan("queue lock poisoned".into()))?;
        // SAFETY: per the caller; queue access is serialised by the lock.
        unsafe { self.device.queue_submit(*q, si, fence) }.vk("vkQueueSubmit")
    }
}

/// The lock of `queue` of `device`, one per queue in the process: two
/// `Gpu`s lent the same queue (two libraries, or one lent twice) serialize
/// their submissions on it, as Vulkan requires.
fn queue_lock(device: vk::Device, queue: vk::Queue) -> Arc<Mutex<vk::Queue>> {
    use ash::vk::Handle;
    type Locks = Vec<((u64, u64), std::sync::Weak<Mutex<vk::Queue>>)>;
    static LOCKS: Mutex<Locks> = Mutex::new(Vec::new());
    let key = (device.as_raw(), queue.as_raw());
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    locks.retain(|(_, w)| w.strong_count() > 0);
    if let Some(l) = locks
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, w)| w.upgrade())
    {
        return l;
    }
    let l = Arc::new(Mutex::new(queue));
    locks.push((key, Arc::downgrade(&l)));
    l
}

/// What `open_device` made, handed to `DeviceShared` by `Gpu::open`.
struct Opened {
    device: ash::Device,
    queue_family: u32,
    host_ext: Option<ash::ext::external_memory_host::Device>,
    fd_ext: Option<ash::khr::external_memory_fd::Device>,
    mem_props: vk::PhysicalDeviceMemoryProperties,
    devices: Vec<DeviceInfo>,
    chosen: usize,
}

impl Drop for DeviceShared {
    fn drop(&mut self) {
        if !self.owned {
            // The application's: every object dmafile made from it is
            // gone (each holds an Arc to this struct), and the device and
            // instance stay the app's to destroy.
            return;
        }
        // SAFETY: every object created from the device holds an Arc to this
        // struct, so none is alive any more; the device goes before the
        // instance it was made from.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

fn load_entry() -> Result<ash::Entry> {
    // SAFETY: loading libvulkan runs its initialisers; we trust the system loader.
    unsafe { ash::Entry::load() }
        .map_err(|e| Error::NoVulkan(format!("cannot load the Vulkan loader libvulkan.so.1 ({e}); install libvulkan1 and a driver (`make setup`)")))
}

fn create_instance(entry: &ash::Entry) -> Result<ash::Instance> {
    let app = vk::ApplicationInfo::default()
        .application_name(c"dmafile")
        .application_version(1)
        .engine_name(c"dmafile")
        .api_version(vk::API_VERSION_1_2);
    let exts = [ash::khr::get_physical_device_properties2::NAME.as_ptr()];
    let ci = vk::InstanceCreateInfo::default()
        .application_info(&app)
        .enabled_extension_names(&exts);
    // SAFETY: the create info and everything it points to outlive the call.
    unsafe { entry.create_instance(&ci, None) }.vk("vkCreateInstance")
}

fn cstr_field(raw: &[std::ffi::c_char]) -> String {
    // SAFETY: Vulkan guarantees these fixed arrays are NUL-terminated.
    unsafe { CStr::from_ptr(raw.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn describe(instance: &ash::Instance, index: usize, pd: vk::PhysicalDevice) -> Result<DeviceInfo> {
    // SAFETY: pd was enumerated from this instance.
    let exts = unsafe { instance.enumerate_device_extension_properties(pd) }
        .vk("vkEnumerateDeviceExtensionProperties")?;
    let has = |name: &CStr| {
        exts.iter()
            .any(|e| e.extension_name_as_c_str().ok() == Some(name))
    };

    let mut driver = vk::PhysicalDeviceDriverProperties::default();
    let mut maint3 = vk::PhysicalDeviceMaintenance3Properties::default();
    let mut host_props = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
    let host = has(ash::ext::external_memory_host::NAME);
    let mut props2 = vk::PhysicalDeviceProperties2::default()
        .push_next(&mut driver)
        .push_next(&mut maint3);
    if host {
        props2 = props2.push_next(&mut host_props);
    }
    // SAFETY: the chained structs live until the call returns.
    unsafe { instance.get_physical_device_properties2(pd, &mut props2) };
    let p = props2.properties;

    let mut timeline = vk::PhysicalDeviceTimelineSemaphoreFeatures::default();
    let mut feats2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut timeline);
    // SAFETY: as above.
    unsafe { instance.get_physical_device_features2(pd, &mut feats2) };
    let timeline_ok =
        timeline.timeline_semaphore == vk::TRUE && p.api_version >= vk::API_VERSION_1_2;

    // SAFETY: pd is valid.
    let mp = unsafe { instance.get_physical_device_memory_properties(pd) };
    let memory_types: Vec<MemoryType> = mp.memory_types[..mp.memory_type_count as usize]
        .iter()
        .map(|t| {
            let has = |f| t.property_flags.contains(f);
            MemoryType {
                heap: t.heap_index,
                heap_size: mp.memory_heaps[t.heap_index as usize].size,
                device_local: has(vk::MemoryPropertyFlags::DEVICE_LOCAL),
                host_visible: has(vk::MemoryPropertyFlags::HOST_VISIBLE),
                host_coherent: has(vk::MemoryPropertyFlags::HOST_COHERENT),
                host_cached: has(vk::MemoryPropertyFlags::HOST_CACHED),
            }
        })
        .collect();
    let host_visible_device_local = memory_types
        .iter()
        .any(|t| t.device_local && t.host_visible && t.host_coherent);
    let v = p.api_version;
    Ok(DeviceInfo {
        index,
        name: cstr_field(&p.device_name),
        kind: p.device_type.into(),
        vendor_id: p.vendor_id,
        device_id: p.device_id,
        api_version: format!(
            "{}.{}.{}",
            vk::api_version_major(v),
            vk::api_version_minor(v),
            vk::api_version_patch(v)
        ),
        driver: format!(
            "{} ({})",
            cstr_field(&driver.driver_name),
            cstr_field(&driver.driver_info)
        ),
        features: Features {
            external_memory_fd: has(ash::khr::external_memory_fd::NAME),
            external_memory_dma_buf: has(ash::ext::external_memory_dma_buf::NAME)
                && has(ash::khr::external_memory_fd::NAME),
            external_memory_host: host,
            timeline_semaphore: timeline_ok,
        },
        max_storage_buffer_range: p.limits.max_storage_buffer_range as u64,
        max_memory_allocation_size: maint3.max_memory_allocation_size,
        min_imported_host_pointer_alignment: if host {
            host_props.min_imported_host_pointer_alignment
        } else {
            0
        },
        max_compute_work_group_count_x: p.limits.max_compute_work_group_count[0],
        max_compute_work_group_count: p.limits.max_compute_work_group_count,
        max_push_constants_size: p.limits.max_push_constants_size,
        memory_types,
        host_visible_device_local,
    })
}

/// The environment variable [`Gpu::open_from_env`] reads.
pub const DEVICE_ENV: &str = "DMAFILE_DEVICE";

/// Picks a device: `wanted` is an index or a substring of
/// the name; without it, discrete > integrated > virtual > CPU.
pub fn choose_device(devices: &[DeviceInfo], wanted: Option<&str>) -> Result<usize> {
    if devices.is_empty() {
        return Err(Error::NoVulkan(
            "no Vulkan device found (is a driver installed? lavapipe: mesa-vulkan-drivers)".into(),
        ));
    }
    let have = || {
        devices
            .iter()
            .map(|d| format!("{}: {}", d.index, d.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(w) = wanted.map(str::trim).filter(|w| !w.is_empty()) {
        if let Ok(i) = w.parse::<usize>() {
            return devices
                .iter()
                .position(|d| d.index == i)
                .ok_or_else(|| Error::NoSuchDevice {
                    wanted: w.into(),
                    have: have(),
                });
        }
        let lw = w.to_lowercase();
        return devices
            .iter()
            .position(|d| d.name.to_lowercase().contains(&lw))
            .ok_or_else(|| Error::NoSuchDevice {
                wanted: w.into(),
                have: have(),
            });
    }
    Ok(devices
        .iter()
        .enumerate()
        .min_by_key(|(_, d)| (d.kind, d.index))
        .map(|(i, _)| i)
        .unwrap_or(0))
}

/// An open Vulkan device ready for dmafile's work.
#[derive(Clone)]
pub struct Gpu {
    pub(crate) shared: Arc<DeviceShared>,
}

impl Gpu {
    /// Opens the best device: discrete > integrated > virtual > CPU. It
    /// reads no environment variable (see [`Gpu::open_from_env`]).
    pub fn open_default() -> Result<Gpu> {
        Gpu::open(None)
    }

    /// Opens the device the environment variable `DMAFILE_DEVICE` names
    /// (an index or a substring of the name, as [`choose_device`] takes
    /// it), or the best one when it is unset: what the `dmafile` command
    /// and the samples do. A library that links dmafile should pass its
    /// own choice to [`Gpu::open`] instead.
    pub fn open_from_env() -> Result<Gpu> {
        Gpu::open(std::env::var(DEVICE_ENV).ok().as_deref())
    }

    /// Opens the device `wanted` selects (see [`choose_device`]).
    pub fn open(wanted: Option<&str>) -> Result<Gpu> {
        let entry = load_entry()?;
        let instance = create_instance(&entry)?;
        match Self::open_device(&instance, wanted) {
            Ok(o) => {
                // SAFETY: queue family `queue_family` with one queue was requested.
                let queue = unsafe { o.device.get_device_queue(o.queue_family, 0) };
                let queue = queue_lock(o.device.handle(), queue);
                Ok(Gpu {
                    shared: Arc::new(DeviceShared {
                        _entry: entry,
                        owned: true,
                        instance,
                        device: o.device,
                        queue,
                        queue_family: o.queue_family,
                        host_ext: o.host_ext,
                        fd_ext: o.fd_ext,
                        mem_props: o.mem_props,
                        devices: o.devices,
                        chosen: o.chosen,
                    }),
                })
            }
            Err(e) => {
                // SAFETY: nothing else was created from the instance.
                unsafe { instance.destroy_instance(None) };
                Err(e)
            }
        }
    }

    fn open_device(instance: &ash::Instance, wanted: Option<&str>) -> Result<Opened> {
        // SAFETY: instance is valid.
        let pds =
            unsafe { instance.enumerate_physical_devices() }.vk("vkEnumeratePhysicalDevices")?;
        let infos = pds
            .iter()
            .enumerate()
            .map(|(i, &pd)| describe(instance, i, pd))
            .collect::<Result<Vec<_>>>()?;
        let idx = choose_device(&infos, wanted)?;
        let pd = pds[idx];
        let info = &infos[idx];
        if !info.features.timeline_semaphore {
            return Err(Error::DeviceUnsuitable {
                device: info.name.clone(),
                what: "no timeline semaphores (Vulkan 1.2 needed)".into(),
            });
        }
        // SAFETY: pd is valid.
        let families = unsafe { instance.get_physical_device_queue_family_properties(pd) };
        let family = families
            .iter()
            .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
            .ok_or_else(|| Error::DeviceUnsuitable {
                device: info.name.clone(),
                what: "no compute queue".into(),
            })? as u32;
        let mut exts = vec![];
        if info.features.external_memory_fd {
            exts.push(ash::khr::external_memory_fd::NAME.as_ptr());
        }
        if info.features.external_memory_dma_buf {
            exts.push(ash::ext::external_memory_dma_buf::NAME.as_ptr());
        }
        if info.features.external_memory_host {
            exts.push(ash::ext::external_memory_host::NAME.as_ptr());
        }
        let prio = [1.0f32];
        let qci = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(family)
            .queue_priorities(&prio)];
        let mut f12 = vk::PhysicalDeviceVulkan12Features::default().timeline_semaphore(true);
        let ci = vk::DeviceCreateInfo::default()
            .queue_create_infos(&qci)
            .enabled_extension_names(&exts)
            .push_next(&mut f12);
        // SAFETY: the create info and its chain outlive the call; pd is valid.
        let device = unsafe { instance.create_device(pd, &ci, None) }.vk("vkCreateDevice")?;
        let host_ext = info
            .features
            .external_memory_host
            .then(|| ash::ext::external_memory_host::Device::new(instance, &device));
        let fd_ext = info
            .features
            .external_memory_dma_buf
            .then(|| ash::khr::external_memory_fd::Device::new(instance, &device));
        // SAFETY: pd is valid.
        let mem_props = unsafe { instance.get_physical_device_memory_properties(pd) };
        Ok(Opened {
            device,
            queue_family: family,
            host_ext,
            fd_ext,
            mem_props,
            devices: infos,
            chosen: idx,
        })
    }

    /// The capability report of the open device.
    pub fn info(&self) -> &DeviceInfo {
        self.shared.info()
    }

    /// Every Vulkan device the instance sees (the open one is
    /// `devices()[chosen()]`).
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.shared.devices
    }

    /// Position of the open device in [`Gpu::devices`].
    pub fn chosen(&self) -> usize {
        self.shared.chosen
    }

    /// Whether each path can work on this machine with this device, and why not.
    pub fn path_availability(&self) -> Vec<PathAvailability> {
        PathKind::ALL
            .into_iter()
            .map(|k| match self.unavailable(k) {
                None => PathAvailability {
                    path: k,
                    available: true,
                    code: None,
                    reason: None,
                },
                Some(u) => PathAvailability {
                    path: k,
                    available: false,
                    code: Some(u.code),
                    reason: Some(u.reason),
                },
            })
            .collect()
    }

    /// Why `kind` cannot be used at all on this machine, if it cannot.
    pub fn unavailable(&self, kind: PathKind) -> Option<Unavailable> {
        self.device_unavailable(kind).or_else(|| kernel_side(kind))
    }

    /// The device-level half of [`Gpu::unavailable`]: missing extensions.
    pub(crate) fn device_unavailable(&self, kind: PathKind) -> Option<Unavailable> {
        let f = &self.shared.info().features;
        let name = &self.shared.info().name;
        let (has, ext) = match kind {
            PathKind::Direct | PathKind::Heap => {
                (f.external_memory_dma_buf, "VK_EXT_external_memory_dma_buf")
            }
            PathKind::Host => (f.external_memory_host, "VK_EXT_external_memory_host"),
            PathKind::Upload => return None,
        };
        (!has).then(|| {
            let why = if self.shared.owned {
                format!("{name} lacks {ext}")
            } else {
                format!("{ext} is not enabled on the application's device ({name}) or not supported by it")
            };
            Unavailable::new(kind, ReasonCode::MissingExtension, why)
        })
    }
}

/// The device extensions, features and API version each path needs, for
/// an application that creates its own device and lends it to dmafile
/// ([`Gpu::from_raw`]): call [`device_requirements`] before
/// `vkCreateDevice` and enable what it lists.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceRequirements {
    /// Device extensions to enable: every one below that this physical
    /// device supports (`VK_KHR_external_memory_fd`,
    /// `VK_EXT_external_memory_dma_buf`, `VK_EXT_external_memory_host`).
    #[serde(serialize_with = "ser_cstrs")]
    pub extensions: Vec<&'static CStr>,
    /// `VkPhysicalDeviceVulkan12Features::timelineSemaphore`: required by
    /// every path (streaming and the read queue wait on timelines).
    pub timeline_semaphore: bool,
    /// The instance's `apiVersion` must be at least this (Vulkan 1.2).
    pub api_version: u32,
    /// Per path: what it needs, and whether this physical device has it.
    pub paths: Vec<PathRequirement>,
}

/// What one path needs of the device.
#[derive(Clone, Debug, Serialize)]
pub struct PathRequirement {
    pub path: PathKind,
    #[serde(serialize_with = "ser_cstrs")]
    pub extensions: Vec<&'static CStr>,
    /// Whether the physical device supports all of them (the kernel side,
    /// the module or dma-heaps, is reported by [`Gpu::unavailable`]).
    pub supported: bool,
}

fn ser_cstrs<S: serde::Serializer>(
    v: &[&'static CStr],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|c| c.to_string_lossy()))
}

/// The extensions each path needs, in [`PathKind::ALL`] order.
fn path_extensions(kind: PathKind) -> Vec<&'static CStr> {
    match kind {
        PathKind::Direct | PathKind::Heap => vec![
            ash::khr::external_memory_fd::NAME,
            ash::ext::external_memory_dma_buf::NAME,
        ],
        PathKind::Host => vec![ash::ext::external_memory_host::NAME],
        PathKind::Upload => vec![],
    }
}

/// What an application must enable on `physical_device` for each dmafile
/// path (see [`DeviceRequirements`]). Call it before creating the device
/// you will lend with [`Gpu::from_raw`].
///
/// # Safety
/// `physical_device` must have been enumerated from `instance`, which must
/// have been created with an `apiVersion` of Vulkan 1.2 or later (the
/// properties and features asked for are 1.2 structures).
pub unsafe fn device_requirements(
    instance: &ash::Instance,
    physical_device: vk::PhysicalDevice,
) -> Result<DeviceRequirements> {
    let info = describe(instance, 0, physical_device)?;
    let supported = |e: &CStr| match e.to_bytes() {
        b"VK_KHR_external_memory_fd" => info.features.external_memory_fd,
        b"VK_EXT_external_memory_dma_buf" => info.features.external_memory_dma_buf,
        b"VK_EXT_external_memory_host" => info.features.external_memory_host,
        _ => false,
    };
    let paths: Vec<PathRequirement> = PathKind::ALL
        .into_iter()
        .map(|path| {
            let extensions = path_extensions(path);
            let ok = extensions.iter().all(|e| supported(e));
            PathRequirement {
                path,
                extensions,
                supported: ok,
            }
        })
        .collect();
    let mut extensions: Vec<&'static CStr> = vec![];
    for p in paths.iter().filter(|p| p.supported) {
        for e in &p.extensions {
            if !extensions.contains(e) {
                extensions.push(e);
            }
        }
    }
    Ok(DeviceRequirements {
        extensions,
        timeline_semaphore: true,
        api_version: vk::API_VERSION_1_2,
        paths,
    })
}

/// The Vulkan objects an application lends dmafile ([`Gpu::from_raw`]).
#[derive(Clone, Copy, Debug)]
pub struct BorrowedDevice<'a> {
    /// The loader's `vkGetInstanceProcAddr` the app uses
    /// (`entry.static_fn().get_instance_proc_addr` with ash).
    pub get_instance_proc_addr: vk::PFN_vkGetInstanceProcAddr,
    pub instance: vk::Instance,
    /// The `apiVersion` the instance was created with (at least 1.2).
    pub instance_api_version: u32,
    pub physical_device: vk::PhysicalDevice,
    pub device: vk::Device,
    /// A family with `COMPUTE`, and a queue of it the device was created with.
    pub queue_family: u32,
    pub queue_index: u32,
    /// The device extensions the app enabled: dmafile uses a path only
    /// when everything it needs is among them.
    pub enabled_extensions: &'a [&'a CStr],
    /// Whether the app enabled the `timelineSemaphore` feature.
    pub timeline_semaphore: bool,
}

impl Gpu {
    /// Adopts a Vulkan device the application created and owns: dmafile
    /// works on the app's device and queue, and never destroys them.
    /// Paths whose extensions the app did not enable (see
    /// [`device_requirements`]) are unavailable, with the reason
    /// [`ReasonCode::MissingExtension`].
    ///
    /// # Safety
    /// - Every handle in `b` must be valid and made from the one before it
    ///   (device from physical device from instance), with
    ///   `get_instance_proc_addr` the loader's that made the instance, and
    ///   the device created with the extensions in `enabled_extensions`,
    ///   the `timelineSemaphore` feature if `timeline_semaphore`, and a
    ///   queue `queue_index` of `queue_family` created with no flags
    ///   (dmafile gets it with `vkGetDeviceQueue`).
    /// - Ownership: the application keeps owning the instance, the device
    ///   and the queue. dmafile destroys only the objects it creates on
    ///   them, each when the Rust value that holds it drops. The
    ///   application must destroy its device only after every
    ///   dmafile value made from this `Gpu` (the `Gpu` clones, streamers,
    ///   regions, kernels, buffers) has been dropped.
    /// - The queue: Vulkan requires submissions to a queue to be
    ///   externally synchronized. dmafile submits to it while holding
    ///   [`Gpu::lock_queue`]'s lock; if the application submits to the same
    ///   queue from a thread that may run while a dmafile call does, it
    ///   must hold that lock too (or lend dmafile a queue of its own).
    pub unsafe fn from_raw(b: BorrowedDevice<'_>) -> Result<Gpu> {
        let static_fn = ash::StaticFn {
            get_instance_proc_addr: b.get_instance_proc_addr,
        };
        // SAFETY: per the caller, the function is the loader's that made
        // the instance, and the device was made from the instance.
        let (entry, instance, device) = unsafe {
            let entry = ash::Entry::from_static_fn(static_fn.clone());
            let instance = ash::Instance::load(&static_fn, b.instance);
            let device = ash::Device::load(instance.fp_v1_0(), b.device);
            (entry, instance, device)
        };
        if b.instance_api_version < vk::API_VERSION_1_2 {
            return Err(Error::DeviceUnsuitable {
                device: "the application's device".into(),
                what: "its instance was created for Vulkan below 1.2 (dmafile needs 1.2)".into(),
            });
        }
        // SAFETY: instance is valid (caller).
        let pds =
            unsafe { instance.enumerate_physical_devices() }.vk("vkEnumeratePhysicalDevices")?;
        let index = pds
            .iter()
            .position(|&p| p == b.physical_device)
            .ok_or_else(|| Error::DeviceUnsuitable {
                device: "the application's device".into(),
                what: "its physical device is not one of its instance's".into(),
            })?;
        let mut info = describe(&instance, index, b.physical_device)?;
        let enabled = |e: &CStr| b.enabled_extensions.contains(&e);
        // What the device supports and the app enabled.
        let f = &mut info.features;
        f.external_memory_fd &= enabled(ash::khr::external_memory_fd::NAME);
        f.external_memory_dma_buf &=
            f.external_memory_fd && enabled(ash::ext::external_memory_dma_buf::NAME);
        f.external_memory_host &= enabled(ash::ext::external_memory_host::NAME);
        f.timeline_semaphore &= b.timeline_semaphore;
        if !f.timeline_semaphore {
            return Err(Error::DeviceUnsuitable {
                device: info.name.clone(),
                what: "the timelineSemaphore feature is not enabled on the application's device"
                    .into(),
            });
        }
        // SAFETY: the physical device is valid.
        let families =
            unsafe { instance.get_physical_device_queue_family_properties(b.physical_device) };
        if !families.get(b.queue_family as usize).is_some_and(|q| {
            q.queue_flags.contains(vk::QueueFlags::COMPUTE) && b.queue_index < q.queue_count
        }) {
            return Err(Error::DeviceUnsuitable {
                device: info.name.clone(),
                what: format!(
                    "queue {} of family {} is not a compute queue the device has",
                    b.queue_index, b.queue_family
                ),
            });
        }
        let host_ext = info
            .features
            .external_memory_host
            .then(|| ash::ext::external_memory_host::Device::new(&instance, &device));
        let fd_ext = info
            .features
            .external_memory_dma_buf
            .then(|| ash::khr::external_memory_fd::Device::new(&instance, &device));
        // SAFETY: the device was created with this queue (caller).
        let queue = unsafe { device.get_device_queue(b.queue_family, b.queue_index) };
        let queue = queue_lock(device.handle(), queue);
        // SAFETY: the physical device is valid.
        let mem_props =
            unsafe { instance.get_physical_device_memory_properties(b.physical_device) };
        Ok(Gpu {
            shared: Arc::new(DeviceShared {
                _entry: entry,
                owned: false,
                instance,
                device,
                queue,
                queue_family: b.queue_family,
                host_ext,
                fd_ext,
                mem_props,
                devices: vec![info],
                chosen: 0,
            }),
        })
    }

    /// Whether dmafile created this device ([`Gpu::open`]) or borrows the
    /// application's ([`Gpu::from_raw`]).
    pub fn is_borrowed(&self) -> bool {
        !self.shared.owned
    }

    /// The raw handles of the device dmafile works on, for an app that
    /// shares it: valid while this `Gpu` (or any clone) lives.
    pub fn raw_device(&self) -> vk::Device {
        self.shared.device.handle()
    }

    /// The queue family dmafile submits to.
    pub fn queue_family(&self) -> u32 {
        self.shared.queue_family
    }

    /// Locks the queue dmafile submits to and returns it: an application
    /// that submits to the same queue must do so while holding this (see
    /// the queue rules of [`Gpu::from_raw`]). dmafile's own calls that
    /// submit block until it is released.
    pub fn lock_queue(&self) -> Result<QueueGuard<'_>> {
        let g = self
            .shared
            .queue
            .lock()
            .map_err(|_| Error::NoVulkan("queue lock poisoned".into()))?;
        Ok(QueueGuard(g))
    }
}

/// The queue dmafile submits to, locked ([`Gpu::lock_queue`]).
pub struct QueueGuard<'a>(std::sync::MutexGuard<'a, vk::Queue>);

impl QueueGuard<'_> {
    pub fn queue(&self) -> vk::Queue {
        *self.0
    }
}
