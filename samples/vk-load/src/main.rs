//! `vk-load`: what an application that owns its Vulkan device does with
//! dmafile. It creates its own instance and device (enabling what
//! `dmafile::device_requirements` lists), lends them to dmafile, loads
//! every tensor of a safetensors model into its own device-local buffers
//! through the read queue (signalled on its own timeline semaphore), then
//! runs its own compute shader over those buffers to get each tensor's
//! sum64 (little-endian u32 words mod 2^64, a trailing partial word
//! zero-padded) and checks it against a CPU sum of the file's bytes.
//!
//! `vk-load MODEL [--path auto|direct|host|heap|upload] [--json]`
//! `vk-load --generate FILE [--mib N]` writes a test model.
//! Exit codes: 0 all verified; 1 a mismatch or a failed request; 2 bad
//! input or an unusable device, with a message naming the problem.
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use ash::vk;
use dmafile::{
    BorrowedDevice, Destination, Fallback, Gpu, PathChoice, ReadQueue, ReadQueueOptions,
    ReadRequest, TimelineSignal,
};

mod bench;
mod model;
#[allow(dead_code)]
#[path = "../../safetensors-reduce/src/st.rs"]
mod st;

const SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sum64.spv"));
/// Workgroups per window, of 256 invocations: one partial sum each.
const GROUPS: u32 = 64;
const PARTIALS: u64 = GROUPS as u64 * 256;

struct Opts {
    model: PathBuf,
    path: PathChoice,
    json: bool,
    /// Create the device without the import extensions (what an app that
    /// ignored device_requirements gets: upload, with the reason).
    no_import_extensions: bool,
}

fn usage() -> String {
    "usage: vk-load MODEL [--path auto|direct|host|heap|upload] [--json] [--no-import-extensions]\n       vk-load --generate FILE [--mib N]\n       vk-load --bench FILE... [--runs N] [--json]".into()
}

enum Cmd {
    Load(Opts),
    Generate(PathBuf, u64),
    Bench(Vec<PathBuf>, usize, bool),
}

fn parse_args() -> Result<Cmd, String> {
    let mut args = std::env::args().skip(1);
    let mut model = None;
    let mut path = PathChoice::Auto;
    let mut json = false;
    let mut no_ext = false;
    let mut generate = None;
    let mut mib = 72u64;
    let mut bench = false;
    let mut runs = 5usize;
    let mut files = vec![];
    while let Some(a) = args.next() {
        match a.as_str() {
            "--path" => {
                let v = args.next().ok_or("--path needs a value")?;
                path = v.parse().map_err(|e| format!("--path {v}: {e}"))?;
            }
            "--json" => json = true,
            "--no-import-extensions" => no_ext = true,
            "--generate" => {
                generate = Some(PathBuf::from(args.next().ok_or("--generate needs a file")?))
            }
            "--bench" => bench = true,
            "--runs" => {
                let v = args.next().ok_or("--runs needs a value")?;
                runs = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--runs {v}: a count of at least 1"))?;
            }
            "--mib" => {
                let v = args.next().ok_or("--mib needs a value")?;
                mib = v.parse().map_err(|_| format!("--mib {v}: not a number"))?;
            }
            "-h" | "--help" => return Err(usage()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{}", usage())),
            _ if bench => files.push(PathBuf::from(a)),
            _ if model.is_none() => model = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument {a}\n{}", usage())),
        }
    }
    if let Some(f) = generate {
        return Ok(Cmd::Generate(f, mib));
    }
    if bench {
        if files.is_empty() {
            return Err(format!("--bench needs files\n{}", usage()));
        }
        return Ok(Cmd::Bench(files, runs, json));
    }
    Ok(Cmd::Load(Opts {
        model: model.ok_or_else(usage)?,
        path,
        json,
        no_import_extensions: no_ext,
    }))
}

/// The application's own Vulkan objects. Dropped after everything
/// dmafile made from them (see `run`).
struct App {
    entry: ash::Entry,
    instance: ash::Instance,
    pd: vk::PhysicalDevice,
    device: ash::Device,
    family: u32,
    queue: vk::Queue,
    exts: Vec<&'static CStr>,
    props: vk::PhysicalDeviceMemoryProperties,
    max_range: u64,
    min_offset_align: u64,
}

impl App {
    fn new(with_imports: bool) -> Result<App, String> {
        // SAFETY: loading the system's Vulkan loader.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| format!("no Vulkan loader: {e}"))?;
        let ai = vk::ApplicationInfo::default()
            .application_name(c"vk-load")
            .api_version(vk::API_VERSION_1_2);
        // SAFETY: the create info outlives the call.
        let instance = unsafe {
            entry.create_instance(
                &vk::InstanceCreateInfo::default().application_info(&ai),
                None,
            )
        }
        .map_err(|e| format!("vkCreateInstance: {e}"))?;
        let fail = |instance: &ash::Instance, e: String| {
            // SAFETY: nothing else was made from it.
            unsafe { instance.destroy_instance(None) };
            Err(e)
        };
        // SAFETY: the instance is valid.
        let pds = unsafe { instance.enumerate_physical_devices() }.unwrap_or_default();
        // The first device with a compute queue.
        let found = pds.iter().find_map(|&pd| {
            // SAFETY: pd is the instance's.
            let fams = unsafe { instance.get_physical_device_queue_family_properties(pd) };
            fams.iter()
                .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
                .map(|f| (pd, f as u32))
        });
        let Some((pd, family)) = found else {
            return fail(&instance, "no Vulkan device with a compute queue".into());
        };
        // SAFETY: pd is the instance's, which is Vulkan 1.2.
        let req = match unsafe { dmafile::device_requirements(&instance, pd) } {
            Ok(r) => r,
            Err(e) => return fail(&instance, e.to_string()),
        };
        let exts = if with_imports {
            req.extensions.clone()
        } else {
            vec![]
        };
        let names: Vec<_> = exts.iter().map(|e| e.as_ptr()).collect();
        let prio = [1.0f32];
        let qci = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(family)
            .queue_priorities(&prio)];
        let mut f12 = vk::PhysicalDeviceVulkan12Features::default().timeline_semaphore(true);
        let ci = vk::DeviceCreateInfo::default()
            .queue_create_infos(&qci)
            .enabled_extension_names(&names)
            .push_next(&mut f12);
        // SAFETY: the create info and its chain outlive the call.
        let device = match unsafe { instance.create_device(pd, &ci, None) } {
            Ok(d) => d,
            Err(e) => return fail(&instance, format!("vkCreateDevice: {e}")),
        };
        // SAFETY: queue 0 of `family` was created; pd is valid.
        let (queue, props, limits) = unsafe {
            (
                device.get_device_queue(family, 0),
                instance.get_physical_device_memory_properties(pd),
                instance.get_physical_device_properties(pd).limits,
            )
        };
        Ok(App {
            entry,
            instance,
            pd,
            device,
            family,
            queue,
            exts,
            props,
            max_range: limits.max_storage_buffer_range as u64,
            min_offset_align: limits.min_storage_buffer_offset_alignment,
        })
    }

    fn lend(&self) -> Result<Gpu, String> {
        // SAFETY: our handles, made from one another with these extensions
        // and timelines; we destroy the device only after every dmafile
        // value made from this Gpu is dropped (run() returns first).
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
        .map_err(|e| e.to_string())
    }

    fn memory_type(&self, bits: u32, want: vk::MemoryPropertyFlags) -> Option<u32> {
        (0..self.props.memory_type_count).find(|&i| {
            bits & (1 << i) != 0
                && self.props.memory_types[i as usize]
                    .property_flags
                    .contains(want)
        })
    }

    /// A buffer and its memory: device-local for tensors, host-visible for
    /// the partial sums.
    fn buffer(&self, size: u64, usage: vk::BufferUsageFlags, host: bool) -> Result<Buf, String> {
        let d = &self.device;
        // SAFETY: plain creation; freed by Buf::destroy.
        unsafe {
            let buffer = d
                .create_buffer(
                    &vk::BufferCreateInfo::default().size(size).usage(usage),
                    None,
                )
                .map_err(|e| format!("vkCreateBuffer: {e}"))?;
            let req = d.get_buffer_memory_requirements(buffer);
            let want = if host {
                vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT
            } else {
                vk::MemoryPropertyFlags::DEVICE_LOCAL
            };
            let Some(ty) = self.memory_type(req.memory_type_bits, want) else {
                d.destroy_buffer(buffer, None);
                return Err(format!("no memory type with {want:?}"));
            };
            let memory = match d.allocate_memory(
                &vk::MemoryAllocateInfo::default()
                    .allocation_size(req.size)
                    .memory_type_index(ty),
                None,
            ) {
                Ok(m) => m,
                Err(e) => {
                    d.destroy_buffer(buffer, None);
                    return Err(format!("vkAllocateMemory of {size} bytes: {e}"));
                }
            };
            d.bind_buffer_memory(buffer, memory, 0)
                .map_err(|e| format!("vkBindBufferMemory: {e}"))?;
            Ok(Buf {
                buffer,
                memory,
                size,
            })
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // SAFETY: ours; every object made from them is gone.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

struct Buf {
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    size: u64,
}

impl Buf {
    fn destroy(self, d: &ash::Device) {
        // SAFETY: idle (the caller waited for the device's work on it).
        unsafe {
            d.destroy_buffer(self.buffer, None);
            d.free_memory(self.memory, None);
        }
    }
}

#[derive(serde::Serialize)]
struct TensorOut {
    name: String,
    dtype: String,
    bytes: u64,
    path: Option<String>,
    gpu_sum64: String,
    cpu_sum64: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(serde::Serialize)]
struct Out {
    model: PathBuf,
    device: String,
    tensors: Vec<TensorOut>,
    cpu_copied_bytes: u64,
    fallbacks: Vec<Fallback>,
    seconds: f64,
    load_seconds: f64,
    verified: bool,
}

/// Records the barrier that makes `access` at `stage` visible to host
/// reads after the submission's fence.
///
/// # Safety
/// `cb` is a command buffer of `d` in the recording state.
unsafe fn to_host(
    d: &ash::Device,
    cb: vk::CommandBuffer,
    stage: vk::PipelineStageFlags,
    access: vk::AccessFlags,
) {
    let b = [vk::MemoryBarrier::default()
        .src_access_mask(access)
        .dst_access_mask(vk::AccessFlags::HOST_READ)];
    // SAFETY: per the caller.
    unsafe {
        d.cmd_pipeline_barrier(
            cb,
            stage,
            vk::PipelineStageFlags::HOST,
            vk::DependencyFlags::empty(),
            &b,
            &[],
            &[],
        )
    };
}

/// sum64 of `bytes`: little-endian u32 words mod 2^64, a trailing partial
/// word zero-padded.
fn sum64(bytes: &[u8]) -> u64 {
    bytes.chunks(4).fold(0u64, |s, w| {
        let mut b = [0u8; 4];
        b[..w.len()].copy_from_slice(w);
        s.wrapping_add(u32::from_le_bytes(b) as u64)
    })
}

/// The CPU's sum64 of `len` bytes of the file at `offset`: little-endian
/// u32 words mod 2^64, a trailing partial word zero-padded.
fn cpu_sum64(path: &Path, offset: u64, len: u64) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut sum = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], offset + done)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // Pieces are whole words but for the last one.
        sum = sum.wrapping_add(sum64(&buf[..n]));
        done += n as u64;
    }
    Ok(sum)
}

/// The shader's pipeline: one storage window of a tensor in, the partial
/// sums out.
struct Pipeline {
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
}

impl Pipeline {
    fn new(d: &ash::Device) -> Result<Pipeline, String> {
        let words: Vec<u32> = SPIRV
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let bind = |b| {
            vk::DescriptorSetLayoutBinding::default()
                .binding(b)
                .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(1)
                .stage_flags(vk::ShaderStageFlags::COMPUTE)
        };
        let bindings = [bind(0), bind(1)];
        let push = [vk::PushConstantRange::default()
            .stage_flags(vk::ShaderStageFlags::COMPUTE)
            .size(4)];
        // SAFETY: valid create infos; the module is destroyed once the
        // pipeline exists.
        unsafe {
            let set_layout = d
                .create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings),
                    None,
                )
                .map_err(|e| e.to_string())?;
            let sls = [set_layout];
            let layout = d
                .create_pipeline_layout(
                    &vk::PipelineLayoutCreateInfo::default()
                        .set_layouts(&sls)
                        .push_constant_ranges(&push),
                    None,
                )
                .map_err(|e| e.to_string())?;
            let module = d
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&words), None)
                .map_err(|e| e.to_string())?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(module)
                .name(c"main");
            let ci = [vk::ComputePipelineCreateInfo::default()
                .stage(stage)
                .layout(layout)];
            let p = d.create_compute_pipelines(vk::PipelineCache::null(), &ci, None);
            d.destroy_shader_module(module, None);
            let pipeline = p.map_err(|(_, e)| e.to_string())?[0];
            Ok(Pipeline {
                set_layout,
                layout,
                pipeline,
            })
        }
    }

    fn destroy(self, d: &ash::Device) {
        // SAFETY: idle.
        unsafe {
            d.destroy_pipeline(self.pipeline, None);
            d.destroy_pipeline_layout(self.layout, None);
            d.destroy_descriptor_set_layout(self.set_layout, None);
        }
    }
}

fn run(o: &Opts, app: &App) -> Result<Out, String> {
    let t0 = Instant::now();
    let tensors = st::read_header(&o.model)?;
    if tensors.is_empty() {
        return Err(format!("{}: no tensors", o.model.display()));
    }
    let gpu = app.lend()?;
    let d = &app.device;
    // One device-local buffer of the app's per tensor (4-byte rounded).
    let usage = vk::BufferUsageFlags::STORAGE_BUFFER | vk::BufferUsageFlags::TRANSFER_DST;
    let mut bufs = vec![];
    let mut result = (|| {
        for t in &tensors {
            bufs.push(app.buffer(t.bytes.max(1).next_multiple_of(4), usage, false)?);
        }
        // The read queue lands every tensor; the app's timeline says when.
        let mut tci =
            vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE);
        // SAFETY: plain creation; destroyed below after the device is idle.
        let timeline = unsafe {
            d.create_semaphore(
                &vk::SemaphoreCreateInfo::default().push_next(&mut tci),
                None,
            )
        }
        .map_err(|e| e.to_string())?;
        let r = load_and_sum(o, app, &gpu, &tensors, &bufs, timeline, t0);
        // SAFETY: load_and_sum waited for all work using it.
        unsafe {
            let _ = d.device_wait_idle();
            d.destroy_semaphore(timeline, None);
        }
        r
    })();
    if let Ok(out) = &mut result {
        out.seconds = t0.elapsed().as_secs_f64();
        out.device = gpu.info().name.clone();
    }
    for b in bufs {
        b.destroy(d);
    }
    result
}

fn load_and_sum(
    o: &Opts,
    app: &App,
    gpu: &Gpu,
    tensors: &[st::Tensor],
    bufs: &[Buf],
    timeline: vk::Semaphore,
    t0: Instant,
) -> Result<Out, String> {
    let d = &app.device;
    let mut q = ReadQueue::new(
        gpu,
        ReadQueueOptions {
            path: o.path,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let reqs: Vec<ReadRequest> = tensors
        .iter()
        .zip(bufs)
        .filter(|(t, _)| t.bytes > 0)
        .map(|(t, b)| ReadRequest {
            file: o.model.clone(),
            offset: t.offset,
            len: t.bytes,
            dst: Destination {
                buffer: b.buffer,
                size: b.size,
            },
            dst_offset: 0,
        })
        .collect();
    // SAFETY: each buffer is ours, TRANSFER_DST, untouched until the
    // timeline reaches 1 (the shader's submission waits for it).
    let ticket = unsafe {
        q.submit(
            &reqs,
            Some(TimelineSignal {
                semaphore: timeline,
                value: 1,
            }),
        )
    }
    .map_err(|e| e.to_string())?;

    // The app's own shader over its own buffers, after the timeline.
    let pipe = Pipeline::new(d)?;
    // Windows of at most maxStorageBufferRange (a multiple of the
    // offset alignment); each writes PARTIALS sums.
    let step =
        (app.max_range.min(1 << 30) / app.min_offset_align.max(4)) * app.min_offset_align.max(4);
    let windows: Vec<(usize, u64, u64)> = tensors
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            let n = t.bytes;
            (0..n.div_ceil(step)).map(move |k| (i, k * step, step.min(n - k * step)))
        })
        .collect();
    let part_bytes = PARTIALS * 8;
    let partials = app.buffer(
        (windows.len() as u64 * part_bytes).max(8),
        vk::BufferUsageFlags::STORAGE_BUFFER,
        true,
    )?;
    let r = (|| -> Result<Vec<u64>, String> {
        // SAFETY: descriptor pool, sets, command pool and fence are ours,
        // used only here and destroyed after the fence is waited for.
        unsafe {
            let sizes = [vk::DescriptorPoolSize::default()
                .ty(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(2 * windows.len().max(1) as u32)];
            let dpool = d
                .create_descriptor_pool(
                    &vk::DescriptorPoolCreateInfo::default()
                        .max_sets(windows.len().max(1) as u32)
                        .pool_sizes(&sizes),
                    None,
                )
                .map_err(|e| e.to_string())?;
            let cpool = d
                .create_command_pool(
                    &vk::CommandPoolCreateInfo::default().queue_family_index(app.family),
                    None,
                )
                .map_err(|e| e.to_string())?;
            let fence = d
                .create_fence(&vk::FenceCreateInfo::default(), None)
                .map_err(|e| e.to_string())?;
            let run = (|| -> Result<(), String> {
                let layouts = vec![pipe.set_layout; windows.len()];
                let sets = if windows.is_empty() {
                    vec![]
                } else {
                    d.allocate_descriptor_sets(
                        &vk::DescriptorSetAllocateInfo::default()
                            .descriptor_pool(dpool)
                            .set_layouts(&layouts),
                    )
                    .map_err(|e| e.to_string())?
                };
                let cb = d
                    .allocate_command_buffers(
                        &vk::CommandBufferAllocateInfo::default()
                            .command_pool(cpool)
                            .command_buffer_count(1),
                    )
                    .map_err(|e| e.to_string())?[0];
                d.begin_command_buffer(cb, &vk::CommandBufferBeginInfo::default())
                    .map_err(|e| e.to_string())?;
                d.cmd_bind_pipeline(cb, vk::PipelineBindPoint::COMPUTE, pipe.pipeline);
                for (w, &(ti, off, len)) in windows.iter().enumerate() {
                    let src = [vk::DescriptorBufferInfo::default()
                        .buffer(bufs[ti].buffer)
                        .offset(off)
                        .range(len.next_multiple_of(4))];
                    let dst = [vk::DescriptorBufferInfo::default()
                        .buffer(partials.buffer)
                        .offset(w as u64 * part_bytes)
                        .range(part_bytes)];
                    let writes = [
                        vk::WriteDescriptorSet::default()
                            .dst_set(sets[w])
                            .dst_binding(0)
                            .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                            .buffer_info(&src),
                        vk::WriteDescriptorSet::default()
                            .dst_set(sets[w])
                            .dst_binding(1)
                            .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                            .buffer_info(&dst),
                    ];
                    d.update_descriptor_sets(&writes, &[]);
                    d.cmd_bind_descriptor_sets(
                        cb,
                        vk::PipelineBindPoint::COMPUTE,
                        pipe.layout,
                        0,
                        &[sets[w]],
                        &[],
                    );
                    d.cmd_push_constants(
                        cb,
                        pipe.layout,
                        vk::ShaderStageFlags::COMPUTE,
                        0,
                        &(len as u32).to_ne_bytes(),
                    );
                    d.cmd_dispatch(cb, GROUPS, 1, 1);
                }
                let shader_write = vk::AccessFlags::SHADER_WRITE;
                to_host(d, cb, vk::PipelineStageFlags::COMPUTE_SHADER, shader_write);
                d.end_command_buffer(cb).map_err(|e| e.to_string())?;
                // Wait for dmafile's signal at the stage of first use.
                let wait = [timeline];
                let vals = [1u64];
                let stages = [vk::PipelineStageFlags::COMPUTE_SHADER];
                let mut tsi =
                    vk::TimelineSemaphoreSubmitInfo::default().wait_semaphore_values(&vals);
                let cbs = [cb];
                let si = [vk::SubmitInfo::default()
                    .wait_semaphores(&wait)
                    .wait_dst_stage_mask(&stages)
                    .command_buffers(&cbs)
                    .push_next(&mut tsi)];
                {
                    // dmafile submits to the same queue: share its lock.
                    let _q = gpu.lock_queue().map_err(|e| e.to_string())?;
                    d.queue_submit(app.queue, &si, fence)
                        .map_err(|e| format!("vkQueueSubmit: {e}"))?;
                }
                d.wait_for_fences(&[fence], true, u64::MAX)
                    .map_err(|e| e.to_string())
            })();
            d.destroy_fence(fence, None);
            d.destroy_command_pool(cpool, None);
            d.destroy_descriptor_pool(dpool, None);
            run?;
            let p = d
                .map_memory(
                    partials.memory,
                    0,
                    vk::WHOLE_SIZE,
                    vk::MemoryMapFlags::empty(),
                )
                .map_err(|e| e.to_string())? as *const u32;
            let words =
                std::slice::from_raw_parts(p, (windows.len() as u64 * PARTIALS * 2) as usize);
            let mut sums = vec![0u64; tensors.len()];
            for (w, &(ti, _, _)) in windows.iter().enumerate() {
                let base = w * PARTIALS as usize * 2;
                for k in 0..PARTIALS as usize {
                    let v = words[base + 2 * k] as u64 | (words[base + 2 * k + 1] as u64) << 32;
                    sums[ti] = sums[ti].wrapping_add(v);
                }
            }
            d.unmap_memory(partials.memory);
            Ok(sums)
        }
    })();
    let report = q.wait(ticket).map_err(|e| e.to_string());
    let load_seconds = t0.elapsed().as_secs_f64();
    drop(q);
    pipe.destroy(d);
    partials.destroy(d);
    let sums = r?;
    let report = report?;
    let mut reports = report.requests.iter();
    let mut fallbacks: Vec<Fallback> = vec![];
    let mut out = vec![];
    let mut verified = true;
    for (t, &gpu_sum) in tensors.iter().zip(&sums) {
        let rr = if t.bytes > 0 { reports.next() } else { None };
        let cpu = cpu_sum64(&o.model, t.offset, t.bytes)?;
        let error = rr.and_then(|r| r.error.clone());
        verified &= error.is_none() && cpu == gpu_sum;
        if let Some(r) = rr {
            for f in &r.fallbacks {
                if !fallbacks
                    .iter()
                    .any(|g| g.from == f.from && g.code == f.code)
                {
                    fallbacks.push(f.clone());
                }
            }
        }
        out.push(TensorOut {
            name: t.name.clone(),
            dtype: t.dtype.clone(),
            bytes: t.bytes,
            path: rr.and_then(|r| r.path).map(|p| p.to_string()),
            gpu_sum64: gpu_sum.to_string(),
            cpu_sum64: cpu.to_string(),
            error,
        });
    }
    Ok(Out {
        model: o.model.clone(),
        device: String::new(),
        tensors: out,
        cpu_copied_bytes: report.cpu_copied_bytes(),
        fallbacks,
        seconds: 0.0,
        load_seconds,
        verified,
    })
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(Cmd::Generate(f, mib)) => {
            return match model::generate(&f, mib) {
                Ok(n) => {
                    println!("{}: {n} tensors", f.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vk-load: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Ok(Cmd::Bench(files, runs, json)) => {
            let r = App::new(true).and_then(|app| bench::run(&app, &files, runs, json));
            return match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vk-load: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Ok(Cmd::Load(o)) => o,
        Err(e) => {
            eprintln!("vk-load: {e}");
            return ExitCode::from(2);
        }
    };
    let app = match App::new(!o.no_import_extensions) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vk-load: {e}");
            return ExitCode::from(2);
        }
    };
    let out = match run(&o, &app) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("vk-load: {e}");
            return ExitCode::from(2);
        }
    };
    if o.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializable")
        );
    } else {
        for t in &out.tensors {
            let ok = t.error.is_none() && t.gpu_sum64 == t.cpu_sum64;
            println!(
                "{:<40} {:>5} {:>12} B  {:<7} sum64={} {}",
                t.name,
                t.dtype,
                t.bytes,
                t.path.as_deref().unwrap_or("-"),
                t.gpu_sum64,
                if ok {
                    "ok".to_string()
                } else {
                    format!(
                        "MISMATCH cpu={} {}",
                        t.cpu_sum64,
                        t.error.as_deref().unwrap_or("")
                    )
                }
            );
        }
        for f in &out.fallbacks {
            println!("fallback {} -> {} [{}]: {}", f.from, f.to, f.code, f.reason);
        }
        println!(
            "{} tensors on {} in {:.3} s, {} bytes copied by the CPU: {}",
            out.tensors.len(),
            out.device,
            out.seconds,
            out.cpu_copied_bytes,
            if out.verified { "verified" } else { "MISMATCH" }
        );
    }
    if out.verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
