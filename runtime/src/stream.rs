//! Streaming files through a shader in chunks, with a queue depth.
//!
//! `depth` slots each own a command buffer, a descriptor set, an output
//! buffer and (for the upload path) a reusable staging buffer. Chunk n goes
//! to slot n % depth; before a slot is reused the CPU waits on the timeline
//! semaphore value of its last submission and folds its result. So while the
//! device runs the shader over chunk n, the CPU already reads or maps chunks
//! n+1 .. n+depth-1, and memory stays bounded by depth x chunk whatever the
//! file size.
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ash::vk;
use serde::Serialize;

use crate::error::{Error, Result, VkResultExt};
use crate::gpu::kernels::Kernels;
use crate::gpu::memory::{Buffer, DmaBufSource, Placement};
use crate::gpu::Gpu;
use crate::hostmap::{HostMapping, ReadLease};
use crate::import::{choose, cmd_external_ownership, fall_back_mid_file};
use crate::kmod::{Backing, DmaBuf, Module};
use crate::path::{Fallback, PathChoice, PathKind, Unavailable};
use crate::probe::{kernel_side, lease_for_host, open_module, open_system_heap, unmappable};
use crate::read::{fill_heap_buffer, read_into, read_parallel};
use crate::readahead::pull_in;
use crate::shader::{Accumulator, ShaderKind, ShaderResult};
use crate::source::{Content, Identity, SourceFile};
use crate::PAGE_SIZE;

/// Default chunk size: large enough to amortise a submission, small enough
/// for every device's storage-buffer range.
pub const DEFAULT_CHUNK: u64 = 16 << 20;
/// Default queue depth.
pub const DEFAULT_DEPTH: usize = 3;
/// Largest queue depth.
pub const MAX_DEPTH: usize = 32;

/// How to stream.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub path: PathChoice,
    /// Bytes per chunk: a multiple of the page size, at most the device's
    /// [`crate::DeviceInfo::max_chunk`].
    pub chunk: u64,
    /// Chunks in flight (>= 1; 2 or more overlap reading and computing).
    pub depth: usize,
    pub shader: ShaderKind,
    /// Refuse configurations whose buffers could exceed this many bytes.
    pub memory_budget: Option<u64>,
    /// Recompute the result on the CPU and compare.
    pub verify: bool,
    /// Upload through a staging buffer and a device copy even where
    /// device-local memory is host-visible: what discrete GPUs do, so the
    /// copy path can be tested on lavapipe ([`StreamConfig::from_env`]
    /// reads it from `DMAFILE_FORCE_STAGING=1`; the default does not).
    pub force_staging: bool,
    /// On the zero-copy paths (host, direct), read a chunk that is not in
    /// the page cache into it on every CPU before mapping it, instead of
    /// letting the device fault it in 128 KiB at a time
    /// (runtime/src/readahead.rs says why and what it costs). On by
    /// default; off leaves reading to the faults.
    pub readahead: bool,
    /// On the copy paths (upload, heap), read each chunk on rayon's threads
    /// in parallel 1 MiB pieces instead of with one `pread` on the calling
    /// thread: sooner done, more CPU per byte (runtime/src/read.rs). Off
    /// by default: where the device is busy with the shader, or is the CPU
    /// itself, the stream is rarely faster for it.
    pub parallel_reads: bool,
}

impl StreamConfig {
    /// The default configuration, with `force_staging` from the
    /// environment variable `DMAFILE_FORCE_STAGING` (`1`): what the `dmafile`
    /// command uses. [`StreamConfig::default`] reads no environment.
    pub fn from_env() -> Self {
        StreamConfig {
            force_staging: std::env::var_os("DMAFILE_FORCE_STAGING").is_some_and(|v| v == "1"),
            ..Default::default()
        }
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            path: PathChoice::Auto,
            chunk: DEFAULT_CHUNK,
            depth: DEFAULT_DEPTH,
            shader: ShaderKind::Crc32c,
            memory_budget: None,
            verify: false,
            force_staging: false,
            readahead: true,
            parallel_reads: false,
        }
    }
}

/// Seconds spent in each phase of a stream.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phases {
    /// Opening and checking the files.
    pub open: f64,
    /// Pipelines, pools, buffers (first run of a `Streamer` only).
    pub setup: f64,
    /// Making chunks shader-visible: reads (upload) or mappings and imports (host).
    pub fill: f64,
    /// Recording and submitting command buffers.
    pub submit: f64,
    /// Waiting for the device to finish chunks.
    pub wait: f64,
    /// Folding per-block results.
    pub fold: f64,
    /// The CPU recomputation for --verify.
    pub verify: f64,
}

/// What [`Streamer::resident_pass`] measured.
#[derive(Clone, Debug)]
pub struct ResidentPass {
    /// From the first submission to the last result folded.
    pub seconds: f64,
    /// CPU seconds this process spent in that time (`getrusage`, every
    /// thread: on a CPU device the shader's own threads).
    pub cpu_seconds: f64,
    /// The shader's result over the data it ran on.
    pub result: Option<ShaderResult>,
}

/// Per-file part of a report.
#[derive(Clone, Debug)]
pub struct FileReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub paths: BTreeMap<PathKind, u64>,
    /// Bytes of the direct path by what backed them: the page cache, or
    /// the storage itself (DAX).
    pub backing: BTreeMap<Backing, u64>,
    pub result: Option<ShaderResult>,
    pub cpu_result: Option<ShaderResult>,
    /// Set for pseudo-files read into memory: the filesystem's name.
    pub snapshot_of: Option<&'static str>,
}

/// What a stream did, measured.
#[derive(Clone, Debug)]
pub struct StreamReport {
    pub device: String,
    pub shader: ShaderKind,
    pub chunk: u64,
    pub depth: usize,
    pub bytes: u64,
    pub seconds: f64,
    /// Bytes made shader-visible per path.
    pub paths: BTreeMap<PathKind, u64>,
    /// Bytes of the direct path by backing (`page-cache`, `storage-direct`).
    pub backing: BTreeMap<Backing, u64>,
    /// Bytes the CPU copied on their way to the device (pread into device
    /// memory, copies of snapshots). Zero for the zero-copy paths.
    pub cpu_copied_bytes: u64,
    /// Bytes the device copied from staging to device-local memory.
    pub gpu_copied_bytes: u64,
    /// Most bytes in flight at once (chunks submitted, not yet finished).
    pub peak_in_flight_bytes: u64,
    pub fallbacks: Vec<Fallback>,
    pub result: Option<ShaderResult>,
    pub cpu_result: Option<ShaderResult>,
    /// None unless verification ran; then whether every result matched.
    pub verified: Option<bool>,
    pub phases: Phases,
    pub files: Vec<FileReport>,
}

struct Pending {
    value: u64,
    file: usize,
    len: u64,
}

struct Slot {
    cmd: vk::CommandBuffer,
    set: vk::DescriptorSet,
    out: Buffer,
    staging: Option<Buffer>,
    device_copy: Option<Buffer>,
    input: Option<Buffer>,
    pending: Option<Pending>,
}

impl Slot {
    /// The CPU view of the slot's staging buffer, allocated (chunk bytes,
    /// [`staging_placement`]) on first use and kept for later runs.
    fn staging_bytes(
        &mut self,
        dev: &std::sync::Arc<crate::gpu::DeviceShared>,
        cfg: &StreamConfig,
    ) -> Result<&mut [u8]> {
        if self.staging.is_none() {
            self.staging = Some(Buffer::allocate(
                dev,
                cfg.chunk,
                staging_placement(dev, cfg),
            )?);
        }
        self.staging
            .as_mut()
            .and_then(|b| b.host_bytes_mut())
            .ok_or_else(|| Error::DeviceUnsuitable {
                device: dev.info().name.clone(),
                what: "upload memory is not host-visible".into(),
            })
    }
}

/// Streams files through a shader; reusable for many runs.
pub struct Streamer {
    gpu: Gpu,
    cfg: StreamConfig,
    kernels: Option<Kernels>,
    /// /dev/dmafile, open when the direct path is available.
    module: Option<Module>,
    /// The paths this machine and device cannot serve, found once.
    unavailable: Vec<Unavailable>,
    /// The system dma-buf heap, opened on first use by the heap path.
    heap: Option<dma_heap::Heap>,
    cmd_pool: vk::CommandPool,
    desc_pool: vk::DescriptorPool,
    timeline: vk::Semaphore,
    slots: Vec<Slot>,
    next_slot: usize,
    next_value: u64,
    setup_s: f64,
}

/// Checks a configuration against a device; the error names the setting.
pub fn validate_config(gpu: &Gpu, cfg: &StreamConfig) -> Result<()> {
    let info = gpu.info();
    if cfg.chunk == 0 {
        return Err(Error::Config {
            setting: "chunk",
            msg: "chunk size must be greater than 0".into(),
        });
    }
    if cfg.chunk % PAGE_SIZE != 0 {
        return Err(Error::Config {
            setting: "chunk",
            msg: format!(
                "chunk size {} is not a multiple of the page size ({PAGE_SIZE} bytes)",
                cfg.chunk
            ),
        });
    }
    let max = info.max_chunk();
    if cfg.chunk > max {
        return Err(Error::Config {
            setting: "chunk",
            msg: format!(
                "chunk size {} exceeds what {} can bind at once: {} bytes (maxStorageBufferRange {}, maxMemoryAllocationSize {})",
                cfg.chunk, info.name, max, info.max_storage_buffer_range, info.max_memory_allocation_size
            ),
        });
    }
    if cfg.depth == 0 || cfg.depth > MAX_DEPTH {
        return Err(Error::Config {
            setting: "depth",
            msg: format!("queue depth {} is out of range 1..={MAX_DEPTH}", cfg.depth),
        });
    }
    if let Some(budget) = cfg.memory_budget {
        let need = memory_need(gpu, cfg);
        if need > budget {
            return Err(Error::Config {
                setting: "memory_budget",
                msg: format!(
                    "chunk {} x depth {} needs up to {need} bytes of buffers, over the memory budget of {budget} bytes",
                    cfg.chunk, cfg.depth
                ),
            });
        }
    }
    Ok(())
}

/// Upper bound of the bytes a stream holds in buffers and mappings.
pub fn memory_need(gpu: &Gpu, cfg: &StreamConfig) -> u64 {
    // Staging of 2 MiB or more may be huge-page memory, whole 2 MiB pages
    // (HostMapping::anonymous): counted as such, an upper bound.
    let staging = if cfg.chunk >= 2 << 20 {
        cfg.chunk.next_multiple_of(2 << 20)
    } else {
        cfg.chunk
    };
    let device_copy = if copies_to_device(gpu.info(), cfg) {
        cfg.chunk
    } else {
        0
    };
    cfg.depth as u64 * (staging + device_copy + cfg.shader.output_bytes(cfg.chunk))
}

impl Streamer {
    pub fn new(gpu: &Gpu, cfg: StreamConfig) -> Result<Streamer> {
        validate_config(gpu, &cfg)?;
        let t = Instant::now();
        let dev = &gpu.shared;
        let d = &dev.device;
        let mut s = Streamer {
            gpu: gpu.clone(),
            cfg,
            kernels: None,
            module: None,
            unavailable: Vec::new(),
            heap: None,
            cmd_pool: vk::CommandPool::null(),
            desc_pool: vk::DescriptorPool::null(),
            timeline: vk::Semaphore::null(),
            slots: Vec::new(),
            next_slot: 0,
            next_value: 0,
            setup_s: 0.0,
        };
        for k in PathKind::ALL {
            let u = gpu.device_unavailable(k).or_else(|| match k {
                // Keep the module open for the stream's lifetime.
                PathKind::Direct => open_module().map(|m| s.module = Some(m)).err(),
                _ => kernel_side(k),
            });
            s.unavailable.extend(u);
        }
        let kernels = Kernels::new(dev, s.cfg.shader)?;
        let pci = vk::CommandPoolCreateInfo::default()
            .queue_family_index(dev.queue_family)
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
        // SAFETY: valid create infos; every object is destroyed in Drop.
        s.cmd_pool = unsafe { d.create_command_pool(&pci, None) }.vk("vkCreateCommandPool")?;
        let depth = s.cfg.depth as u32;
        let sizes = [vk::DescriptorPoolSize::default()
            .ty(vk::DescriptorType::STORAGE_BUFFER)
            .descriptor_count(3 * depth)];
        let dci = vk::DescriptorPoolCreateInfo::default()
            .max_sets(depth)
            .pool_sizes(&sizes);
        // SAFETY: as above.
        s.desc_pool =
            unsafe { d.create_descriptor_pool(&dci, None) }.vk("vkCreateDescriptorPool")?;
        let mut tci = vk::SemaphoreTypeCreateInfo::default()
            .semaphore_type(vk::SemaphoreType::TIMELINE)
            .initial_value(0);
        let sci = vk::SemaphoreCreateInfo::default().push_next(&mut tci);
        // SAFETY: as above.
        s.timeline =
            unsafe { d.create_semaphore(&sci, None) }.vk("vkCreateSemaphore (timeline)")?;
        let cai = vk::CommandBufferAllocateInfo::default()
            .command_pool(s.cmd_pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(depth);
        // SAFETY: pool is valid; buffers are freed with the pool.
        let cmds = unsafe { d.allocate_command_buffers(&cai) }.vk("vkAllocateCommandBuffers")?;
        let layouts = vec![kernels.set_layout; depth as usize];
        let dai = vk::DescriptorSetAllocateInfo::default()
            .descriptor_pool(s.desc_pool)
            .set_layouts(&layouts);
        // SAFETY: pool sized for `depth` sets; freed with the pool.
        let sets = unsafe { d.allocate_descriptor_sets(&dai) }.vk("vkAllocateDescriptorSets")?;
        let out_bytes = s.cfg.shader.output_bytes(s.cfg.chunk);
        for (cmd, set) in cmds.into_iter().zip(sets) {
            let out = Buffer::allocate(dev, out_bytes, Placement::Readback)?;
            s.slots.push(Slot {
                cmd,
                set,
                out,
                staging: None,
                device_copy: None,
                input: None,
                pending: None,
            });
        }
        s.kernels = Some(kernels);
        s.setup_s = t.elapsed().as_secs_f64();
        Ok(s)
    }

    pub fn config(&self) -> &StreamConfig {
        &self.cfg
    }

    /// The shader's own speed, the ceiling of any stream through it: runs
    /// the shader over `bytes` bytes of data already in device memory,
    /// chunk by chunk with the configured depth, and returns the seconds
    /// from the first submission to the last completion.
    ///
    /// Before the clock starts, each slot's buffer is filled with the first
    /// chunk of `sample` (and copied to device-local memory where a stream
    /// would copy it), so the kernel reads real file bytes; inside the
    /// clock nothing is read, mapped or copied. Per-block results are
    /// folded as a stream folds them, so the result is the shader's over
    /// the first chunk (rounded down to whole 4-byte words) repeated, the
    /// last time cut to `bytes`.
    pub fn resident_pass(&mut self, sample: &SourceFile, bytes: u64) -> Result<ResidentPass> {
        if self.cfg.shader == ShaderKind::None {
            return Err(Error::Config {
                setting: "shader",
                msg: "shader none: there is no kernel to time on resident data".into(),
            });
        }
        // Whole words, so that every dispatch but the last is too.
        let n0 = self.cfg.chunk.min(sample.len()) / 4 * 4;
        if n0 == 0 || bytes == 0 {
            return Err(Error::Config {
                setting: "bytes",
                msg: format!(
                    "resident pass over {bytes} bytes of {} ({} bytes): nothing to run",
                    sample.path().display(),
                    sample.len()
                ),
            });
        }
        self.wait_idle();
        let dev = self.gpu.shared.clone();
        let d = &dev.device;
        let chunk = self.cfg.chunk;
        let staged = copies_to_device(dev.info(), &self.cfg);
        for slot in &mut self.slots {
            debug_assert!(slot.pending.is_none(), "run() completes every slot");
            slot.input = None;
            let mem = slot.staging_bytes(&dev, &self.cfg)?;
            read_parallel(sample, 0, &mut mem[..n0 as usize])?;
            mem[n0 as usize..(n0 as usize).next_multiple_of(4)].fill(0);
            if staged && slot.device_copy.is_none() {
                slot.device_copy = Some(Buffer::allocate(&dev, chunk, Placement::Device)?);
            }
        }
        if staged {
            let cmd = self.slots[0].cmd;
            // SAFETY: every slot is idle (wait_idle above); the copies'
            // buffers live in the slots.
            unsafe {
                crate::gpu::kernels::begin_one_time(d, cmd)?;
                for slot in &self.slots {
                    let (Some(src), Some(dst)) = (&slot.staging, &slot.device_copy) else {
                        continue;
                    };
                    let region = [vk::BufferCopy::default().size(n0.next_multiple_of(4))];
                    d.cmd_copy_buffer(cmd, src.buffer, dst.buffer, &region);
                }
                memory_barrier(
                    d,
                    cmd,
                    vk::AccessFlags::TRANSFER_WRITE,
                    vk::AccessFlags::SHADER_READ,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::COMPUTE_SHADER,
                );
            }
            let v = self.submit_cmd(cmd)?;
            self.wait_value(v)?;
        }
        let shader = self.cfg.shader;
        // Per slot: the timeline value and length of its last dispatch.
        let mut last: Vec<(u64, u64)> = vec![(0, 0); self.slots.len()];
        let mut acc = Accumulator::new(shader);
        let cpu0 = process_cpu_seconds();
        let t = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = n0.min(left);
            let s = self.next_slot;
            self.next_slot = (s + 1) % self.slots.len();
            let (v, len) = std::mem::take(&mut last[s]);
            self.fold_slot(s, v, len, &mut acc)?;
            let kernels = self
                .kernels
                .as_ref()
                .expect("kernels live as long as the streamer");
            // Cleared each time, so that a dispatch that did not run cannot
            // pass for one that did: every slot holds the same bytes.
            if let Some(out) = self.slots[s].out.host_bytes_mut() {
                out.fill(0);
            }
            let slot = &self.slots[s];
            let input = slot
                .device_copy
                .as_ref()
                .or(slot.staging.as_ref())
                .expect("filled above")
                .buffer;
            // SAFETY: the slot is idle (folded above); its buffers hold n0
            // bytes and outlive the submission (folded before reuse or below).
            unsafe {
                crate::gpu::kernels::begin_one_time(d, slot.cmd)?;
                record_shader(
                    d,
                    kernels,
                    shader,
                    slot.cmd,
                    slot.set,
                    slot.out.buffer,
                    input,
                    n,
                );
            }
            last[s] = (self.submit_cmd(self.slots[s].cmd)?, n);
            left -= n;
        }
        for _ in 0..self.slots.len() {
            let s = self.next_slot;
            self.next_slot = (s + 1) % self.slots.len();
            let (v, len) = std::mem::take(&mut last[s]);
            self.fold_slot(s, v, len, &mut acc)?;
        }
        Ok(ResidentPass {
            seconds: t.elapsed().as_secs_f64(),
            cpu_seconds: process_cpu_seconds() - cpu0,
            result: acc.result(),
        })
    }

    /// Waits for slot `s`'s dispatch over `len` bytes (signalling `value`)
    /// and folds its per-block results into `acc`; nothing when `len` is 0.
    fn fold_slot(&self, s: usize, value: u64, len: u64, acc: &mut Accumulator) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.wait_value(value)?;
        self.fold_out(s, len, acc)
    }

    /// Folds slot `s`'s per-block results for `len` bytes into `acc` (the
    /// device has finished with them).
    fn fold_out(&self, s: usize, len: u64, acc: &mut Accumulator) -> Result<()> {
        let words = (self.cfg.shader.output_bytes(len) / 4) as usize;
        let out = self.slots[s]
            .out
            .host_words(words)
            .ok_or_else(|| Error::DeviceUnsuitable {
                device: self.gpu.info().name.clone(),
                what: "readback memory is not host-visible".into(),
            })?;
        acc.fold_gpu(len, out);
        Ok(())
    }

    /// Ends and submits `cmd`, signalling the next timeline value.
    fn submit_cmd(&mut self, cmd: vk::CommandBuffer) -> Result<u64> {
        let dev = &self.gpu.shared;
        let value = self.next_value + 1;
        let signal = [value];
        let sems = [self.timeline];
        let cmds = [cmd];
        let mut tsi = vk::TimelineSemaphoreSubmitInfo::default().signal_semaphore_values(&signal);
        let si = [vk::SubmitInfo::default()
            .command_buffers(&cmds)
            .signal_semaphores(&sems)
            .push_next(&mut tsi)];
        // SAFETY: the caller recorded `cmd`, whose buffers live until the
        // value is waited for.
        unsafe {
            dev.device
                .end_command_buffer(cmd)
                .vk("vkEndCommandBuffer")?;
            dev.submit(&si, vk::Fence::null())?;
        }
        self.next_value = value;
        Ok(value)
    }

    /// Waits until the timeline reaches `value` (0: returns at once).
    fn wait_value(&self, value: u64) -> Result<()> {
        if value == 0 {
            return Ok(());
        }
        let sems = [self.timeline];
        let vals = [value];
        let wi = vk::SemaphoreWaitInfo::default()
            .semaphores(&sems)
            .values(&vals);
        // SAFETY: waiting on our own timeline for a submitted value.
        unsafe { self.gpu.shared.device.wait_semaphores(&wi, u64::MAX) }.vk("vkWaitSemaphores")
    }

    /// Streams `paths` in order (as one stream: `result` is over their
    /// concatenation, see docs/cli.md) and reports.
    pub fn run(
        &mut self,
        paths: &[impl AsRef<Path>],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<StreamReport> {
        let t0 = Instant::now();
        // Every input is checked before anything streams (a missing,
        // unreadable or irregular file fails at once), then closed: the
        // stream opens each again when it reaches it and closes it once
        // its chunks are done, so the number of inputs is not bounded by
        // RLIMIT_NOFILE.
        // The first ones (as many as can be open at once anyway) stay open
        // from the check, so that a stream of a few files opens each once.
        let keep = self.slots.len() + 1;
        let mut checked = Vec::with_capacity(paths.len());
        let mut files: Vec<Option<SourceFile>> = Vec::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            let f = SourceFile::open(p)?;
            checked.push(Checked {
                path: f.path().to_path_buf(),
                ident: f.identity(),
                len: f.len(),
            });
            files.push((i < keep).then_some(f));
        }
        let open_s = t0.elapsed().as_secs_f64();
        // Leases are released only after every mapping is gone (see ReadLease).
        let mut leases: Vec<Option<ReadLease>> = checked.iter().map(|_| None).collect();
        let r = self.run_files(&checked, &mut files, &mut leases, progress);
        if r.is_err() {
            self.abort();
        }
        drop(leases);
        drop(files);
        let mut report = r?;
        report.phases.open = open_s;
        // The stream's own time: the CPU recomputation is reported apart.
        report.seconds = t0.elapsed().as_secs_f64() - report.phases.verify;
        Ok(report)
    }

    /// Waits for everything in flight and forgets it (after an error).
    fn abort(&mut self) {
        self.wait_idle();
        for s in &mut self.slots {
            s.pending = None;
            s.input = None;
        }
    }

    /// Waits for this streamer's own submissions only (each signals the
    /// timeline with the next value), not for the whole device: on a
    /// device borrowed from the application, its own work goes on.
    fn wait_idle(&self) {
        if self.timeline == vk::Semaphore::null() {
            return;
        }
        // Every value up to next_value was submitted, so the wait ends (or
        // fails with the device lost, which leaves nothing to wait for).
        let _ = self.wait_value(self.next_value);
    }

    /// Why `k` cannot serve any file in this stream, if it cannot.
    fn unavailable(&self, k: PathKind) -> Option<Unavailable> {
        self.unavailable.iter().find(|u| u.path == k).cloned()
    }

    /// Picks the path for one file, recording what `auto` skipped. For
    /// `direct`, the mapping that showed the module accepts the file is its
    /// first chunk, left in `first` for [`Streamer::fill`] (pinning it twice
    /// would be wasted work).
    fn choose(
        &self,
        f: &SourceFile,
        lease: &mut Option<ReadLease>,
        first: &mut Option<DmaBuf>,
        fallbacks: &mut Vec<Fallback>,
    ) -> Result<PathKind> {
        let mut file_reason = |k: PathKind| -> Option<Unavailable> {
            if k == PathKind::Direct || k == PathKind::Host {
                if let Some(u) = unmappable(k, f) {
                    return Some(u);
                }
                if f.is_empty() {
                    return None; // nothing will be mapped
                }
            }
            match k {
                // Ask the module about a first chunk: its policy (file
                // system, permissions, memlock limit) is per file and user.
                PathKind::Direct => {
                    let m = self.module.as_ref().expect("direct is available");
                    match m.map(f.fd(), 0, f.len().min(self.cfg.chunk), 0) {
                        Ok(b) => *first = Some(b),
                        Err(e) => return Some(Unavailable::from_map_error(k, f.path(), &e)),
                    }
                }
                PathKind::Host => match lease_for_host(f) {
                    Ok(l) => *lease = Some(l),
                    Err(u) => return Some(u),
                },
                _ => {}
            }
            None
        };
        // The one chooser every consumer uses: a machine-wide reason is
        // not about this file, so its fallback names none (and is
        // recorded once per stream).
        let name = f.path().display().to_string();
        let (_, k, found) = choose(self.cfg.path, &name, &[], |k| {
            match self.unavailable(k).or_else(|| file_reason(k)) {
                Some(u) => Err(u.into()),
                None => Ok(()),
            }
        })?;
        for mut fb in found {
            if self.unavailable(fb.from).is_some() {
                fb.file = None;
            }
            if !fallbacks.contains(&fb) {
                fallbacks.push(fb);
            }
        }
        Ok(k)
    }

    fn run_files(
        &mut self,
        checked: &[Checked],
        files: &mut [Option<SourceFile>],
        leases: &mut [Option<ReadLease>],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<StreamReport> {
        let info = self.gpu.info().clone();
        let shader = self.cfg.shader;
        let chunk = self.cfg.chunk;
        let total: u64 = checked.iter().map(|f| f.len).sum();
        let mut st = RunState {
            accs: checked.iter().map(|_| Accumulator::new(shader)).collect(),
            file_paths: checked.iter().map(|_| BTreeMap::new()).collect(),
            file_backing: checked.iter().map(|_| BTreeMap::new()).collect(),
            chunks_in_flight: checked.iter().map(|_| 0).collect(),
            metas: Vec::with_capacity(checked.len()),
            phases: Phases {
                setup: std::mem::take(&mut self.setup_s),
                ..Phases::default()
            },
            fallbacks: vec![],
            first_chunk: None,
            cpu_copied: 0,
            gpu_copied: 0,
            in_flight: 0,
            peak_in_flight: 0,
            done: 0,
        };
        for fi in 0..checked.len() {
            // Files whose chunks are all done are closed before the next opens.
            self.close_finished(fi, files, leases, &mut st)?;
            let f = match files[fi].take() {
                Some(f) => f,
                None => SourceFile::open(&checked[fi].path)?,
            };
            if !matches!(f.content(), Content::Snapshot { .. }) && f.identity() != checked[fi].ident
            {
                return Err(Error::FileChanged {
                    path: checked[fi].path.clone(),
                    what: "it changed (or was replaced) between the check at the start of the stream and its turn"
                        .into(),
                });
            }
            st.metas.push(FileMeta {
                path: f.path().to_path_buf(),
                len: f.len(),
                ident: f.identity(),
                snapshot_of: match f.content() {
                    Content::Snapshot { fs, .. } => Some(fs),
                    Content::File => None,
                },
            });
            files[fi] = Some(f);
            let f = files[fi].as_ref().expect("opened above");
            let mut path =
                self.choose(f, &mut leases[fi], &mut st.first_chunk, &mut st.fallbacks)?;
            let len = f.len();
            let mut off = 0;
            while off < len {
                let n = chunk.min(len - off);
                let s = self.next_slot;
                self.next_slot = (s + 1) % self.slots.len();
                self.complete(s, files, leases, &mut st)?;
                check_lease(f, &leases[fi])?;
                let t = Instant::now();
                // An uncached chunk is read in before it is mapped, on
                // every CPU, rather than faulted in by the device.
                if self.cfg.readahead && matches!(path, PathKind::Host | PathKind::Direct) {
                    pull_in(f, off, n)?;
                }
                if let Err(e) = self.fill(s, f, off, n, path, &mut st) {
                    st.fallbacks
                        .push(fall_back_mid_file(self.cfg.path, path, e, f.path())?);
                    path = PathKind::Upload;
                    self.fill(s, f, off, n, path, &mut st)?;
                }
                st.phases.fill += t.elapsed().as_secs_f64();
                *st.file_paths[fi].entry(path).or_insert(0) += n;
                if let Some(b) = self.slots[s].input.as_ref().and_then(|i| i.module_dmabuf()) {
                    *st.file_backing[fi].entry(b.backing()).or_insert(0) += n;
                }
                let t = Instant::now();
                self.submit(s, fi, n, &mut st)?;
                st.chunks_in_flight[fi] += 1;
                st.phases.submit += t.elapsed().as_secs_f64();
                off += n;
                progress(st.done + st.in_flight, total);
            }
            // The first fill always takes it; never let it serve another file.
            st.first_chunk = None;
        }
        for _ in 0..self.slots.len() {
            let s = self.next_slot;
            self.next_slot = (s + 1) % self.slots.len();
            self.complete(s, files, leases, &mut st)?;
        }
        // Every file must be unchanged at the end of the whole stream, not
        // only when its own last chunk finished: an early file may change
        // while later ones stream (and an empty file has no chunk at all).
        // Files closed earlier are compared by path.
        for (i, (f, l)) in files.iter().zip(leases.iter_mut()).enumerate() {
            match f {
                Some(f) => {
                    check_lease(f, l)?;
                    *l = None; // nothing is mapped any more
                    f.check_unchanged()?;
                }
                None => st.metas[i].check_unchanged()?,
            }
        }
        let total: u64 = st.metas.iter().map(|m| m.len).sum();
        progress(total, total);

        let mut whole = Accumulator::new(shader);
        for a in &st.accs {
            whole.append(a);
        }
        let st_idents: Vec<_> = st.metas.iter().map(|m| m.ident).collect();
        let paths = totals(&st.file_paths);
        let backing = totals(&st.file_backing);
        let mut report = StreamReport {
            device: info.name.clone(),
            shader,
            chunk,
            depth: self.cfg.depth,
            bytes: total,
            seconds: 0.0,
            paths,
            backing,
            cpu_copied_bytes: st.cpu_copied,
            gpu_copied_bytes: st.gpu_copied,
            peak_in_flight_bytes: st.peak_in_flight,
            fallbacks: st.fallbacks,
            result: whole.result(),
            cpu_result: None,
            verified: None,
            phases: st.phases,
            files: st
                .metas
                .iter()
                .zip(&st.accs)
                .zip(st.file_paths.into_iter().zip(st.file_backing))
                .map(|((m, a), (p, b))| FileReport {
                    path: m.path.clone(),
                    bytes: m.len,
                    paths: p,
                    backing: b,
                    result: a.result(),
                    cpu_result: None,
                    snapshot_of: m.snapshot_of,
                })
                .collect(),
        };
        if self.cfg.verify && shader != ShaderKind::None {
            let t = Instant::now();
            let mut whole = Accumulator::new(shader);
            let mut ok = true;
            for (i, fr) in report.files.iter_mut().enumerate() {
                // The file the stream read: still open, or opened again
                // and checked to be the same.
                let reopened;
                let f = match files[i].as_ref() {
                    Some(f) => f,
                    None => {
                        reopened = SourceFile::open(&fr.path)?;
                        if fr.snapshot_of.is_none() && reopened.identity() != st_idents[i] {
                            return Err(Error::FileChanged {
                                path: fr.path.clone(),
                                what: "it changed before it could be verified".into(),
                            });
                        }
                        &reopened
                    }
                };
                let a = cpu_reference(f, shader)?;
                fr.cpu_result = a.result();
                ok &= fr.cpu_result == fr.result;
                whole.append(&a);
            }
            report.cpu_result = whole.result();
            ok &= report.cpu_result == report.result;
            report.verified = Some(ok);
            report.phases.verify = t.elapsed().as_secs_f64();
        }
        Ok(report)
    }

    /// Closes every file before `upto` whose chunks have all completed,
    /// after its last checks: at most the files with chunks in flight stay
    /// open.
    fn close_finished(
        &mut self,
        upto: usize,
        files: &mut [Option<SourceFile>],
        leases: &mut [Option<ReadLease>],
        st: &mut RunState,
    ) -> Result<()> {
        for i in 0..upto {
            if st.chunks_in_flight[i] != 0 {
                continue;
            }
            if let Some(f) = files[i].take() {
                check_lease(&f, &leases[i])?;
                leases[i] = None; // nothing of it is mapped any more
                f.check_unchanged()?;
            }
        }
        Ok(())
    }

    /// Makes `n` bytes of `f` at `off` shader-visible in slot `s`.
    fn fill(
        &mut self,
        s: usize,
        f: &SourceFile,
        off: u64,
        n: u64,
        path: PathKind,
        st: &mut RunState,
    ) -> Result<()> {
        let dev = self.gpu.shared.clone();
        let chunk = self.cfg.chunk;
        let slot = &mut self.slots[s];
        match path {
            PathKind::Upload => {
                let bytes = slot.staging_bytes(&dev, &self.cfg)?;
                read_into(f, off, &mut bytes[..n as usize], self.cfg.parallel_reads)?;
                let padded = (n as usize).next_multiple_of(4);
                bytes[n as usize..padded].fill(0);
                st.cpu_copied += n;
                if copies_to_device(dev.info(), &self.cfg) && slot.device_copy.is_none() {
                    slot.device_copy = Some(Buffer::allocate(&dev, chunk, Placement::Device)?);
                }
                Ok(())
            }
            PathKind::Host => {
                let align = dev.info().min_imported_host_pointer_alignment;
                let map = HostMapping::map(f.fd(), off, n, align)
                    .map_err(|e| Error::io(f.path(), "cannot mmap", e))?;
                slot.input = Some(Buffer::import_host(&dev, map)?);
                Ok(())
            }
            PathKind::Direct => {
                let b = match st.first_chunk.take() {
                    Some(b) if b.offset() == off => b,
                    _ => self
                        .module
                        .as_ref()
                        .expect("direct is chosen only with the module open")
                        .map(f.fd(), off, n, 0)
                        .map_err(|e| Unavailable::from_map_error(path, f.path(), &e))?,
                };
                let src = DmaBufSource::Module(b);
                slot.input = Some(Buffer::import_dmabuf(&dev, src, n.next_multiple_of(4))?);
                Ok(())
            }
            PathKind::Heap => {
                if self.heap.is_none() {
                    self.heap = Some(open_system_heap()?);
                }
                let heap = self.heap.as_ref().expect("opened above");
                let src = fill_heap_buffer(heap, f, off, n, self.cfg.parallel_reads)?;
                st.cpu_copied += n;
                let slot = &mut self.slots[s];
                slot.input = Some(Buffer::import_dmabuf(&dev, src, n.next_multiple_of(4))?);
                Ok(())
            }
        }
    }

    fn submit(&mut self, s: usize, file: usize, n: u64, st: &mut RunState) -> Result<()> {
        let dev = self.gpu.shared.clone();
        let d = &dev.device;
        let kernels = self
            .kernels
            .as_ref()
            .expect("kernels live as long as the streamer");
        let shader = self.cfg.shader;
        let slot = &mut self.slots[s];
        let padded = n.next_multiple_of(4);
        let cmd = slot.cmd;
        // SAFETY (of the barriers below): `cmd` is recording.
        let barrier = |src, dst, from, to| unsafe { memory_barrier(d, cmd, src, dst, from, to) };
        // SAFETY: the slot is idle (complete() waited for its last use), so
        // its command buffer and descriptor set may be reset and rewritten.
        unsafe { crate::gpu::kernels::begin_one_time(d, cmd)? };
        let input = if let Some(b) = &slot.input {
            if b.is_imported() {
                // Imported memory belongs to the external queue family
                // until acquired (released back after the shader, below).
                let (stage, read) = (
                    vk::PipelineStageFlags::COMPUTE_SHADER,
                    vk::AccessFlags::SHADER_READ,
                );
                // SAFETY: recording; the buffer is the slot's live import.
                unsafe {
                    cmd_external_ownership(d, cmd, dev.queue_family, &[b.buffer], true, stage, read)
                };
            }
            b.buffer
        } else {
            let staging = slot
                .staging
                .as_ref()
                .expect("upload fill allocates staging");
            if let Some(dc) = &slot.device_copy {
                let region = [vk::BufferCopy::default().size(padded)];
                // SAFETY: both buffers hold at least `padded` bytes.
                unsafe { d.cmd_copy_buffer(cmd, staging.buffer, dc.buffer, &region) };
                // The test-only canary build leaves this barrier out, to
                // show the validation layer reports a missing one
                // (scripts/test-validation.sh).
                #[cfg(not(feature = "validation-canary"))]
                barrier(
                    vk::AccessFlags::TRANSFER_WRITE,
                    vk::AccessFlags::SHADER_READ,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::COMPUTE_SHADER,
                );
                st.gpu_copied += padded;
                dc.buffer
            } else {
                staging.buffer
            }
        };
        // SAFETY: recording into the idle slot's command buffer; `input`
        // holds at least `padded` bytes until complete() waited.
        unsafe { record_shader(d, kernels, shader, cmd, slot.set, slot.out.buffer, input, n) };
        if let Some(b) = slot.input.as_ref().filter(|b| b.is_imported()) {
            // Back to the external family: the shader only read it.
            let (stage, none) = (
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::AccessFlags::empty(),
            );
            // SAFETY: recording; the import lives until complete() waited.
            unsafe {
                cmd_external_ownership(d, cmd, dev.queue_family, &[b.buffer], false, stage, none)
            };
        }
        let value = self.submit_cmd(cmd)?;
        self.slots[s].pending = Some(Pending {
            value,
            file,
            len: n,
        });
        st.in_flight += n;
        st.peak_in_flight = st.peak_in_flight.max(st.in_flight);
        Ok(())
    }

    /// Waits for slot `s`'s last chunk, folds its result and frees its input.
    fn complete(
        &mut self,
        s: usize,
        files: &[Option<SourceFile>],
        leases: &[Option<ReadLease>],
        st: &mut RunState,
    ) -> Result<()> {
        let Some(p) = self.slots[s].pending.take() else {
            return Ok(());
        };
        let t = Instant::now();
        self.wait_value(p.value)?;
        st.phases.wait += t.elapsed().as_secs_f64();
        st.in_flight -= p.len;
        st.done += p.len;
        st.chunks_in_flight[p.file] -= 1;
        let slot = &mut self.slots[s];
        let f = files[p.file]
            .as_ref()
            .expect("a file stays open while its chunks are in flight");
        check_lease(f, &leases[p.file])?;
        // A truncate or hole punch while the device read the chunk leaves
        // the pinned pages stale: the result would be over bytes the file
        // no longer has.
        if let (Some(b), Some(m)) = (
            slot.input.as_ref().and_then(|i| i.module_dmabuf()),
            self.module.as_ref(),
        ) {
            let stat = m
                .status(b.as_fd())
                .map_err(|e| Error::io(f.path(), "dmafile status", std::io::Error::from(e)))?;
            if stat.stale() {
                return Err(Error::FileChanged {
                    path: f.path().to_path_buf(),
                    what: format!(
                        "{} of the {} pages mapped at offset {} were truncated or punched out while the GPU read them (dmafile status: stale)",
                        stat.stale_pages,
                        stat.length / PAGE_SIZE,
                        stat.offset
                    ),
                });
            }
        }
        // The device is done with the chunk: free its import, then unmap it.
        slot.input = None;
        let t = Instant::now();
        self.fold_out(s, p.len, &mut st.accs[p.file])?;
        st.phases.fold += t.elapsed().as_secs_f64();
        f.check_unchanged()
    }
}

/// Records a global memory barrier into `cmd`.
///
/// # Safety
/// `cmd` is recording.
unsafe fn memory_barrier(
    d: &ash::Device,
    cmd: vk::CommandBuffer,
    src: vk::AccessFlags,
    dst: vk::AccessFlags,
    from: vk::PipelineStageFlags,
    to: vk::PipelineStageFlags,
) {
    let mb = [vk::MemoryBarrier::default()
        .src_access_mask(src)
        .dst_access_mask(dst)];
    // SAFETY: per the caller.
    unsafe { d.cmd_pipeline_barrier(cmd, from, to, vk::DependencyFlags::empty(), &mb, &[], &[]) };
}

/// Records `shader` over `n` bytes of `input` into `cmd` (descriptors in
/// `set`, per-block results in `out`), then a barrier that makes the
/// results visible to the host. Records nothing for [`ShaderKind::None`].
///
/// # Safety
/// `cmd` is recording; `set` is not used by any pending command buffer;
/// `input` holds at least `n` rounded up to 4 bytes and `out` the shader's
/// output for `n` bytes, both alive until the submission finished.
#[allow(clippy::too_many_arguments)]
unsafe fn record_shader(
    d: &ash::Device,
    kernels: &Kernels,
    shader: ShaderKind,
    cmd: vk::CommandBuffer,
    set: vk::DescriptorSet,
    out: vk::Buffer,
    input: vk::Buffer,
    n: u64,
) {
    let padded = n.next_multiple_of(4);
    // SAFETY (of the barriers below): the caller's `cmd` is recording.
    let barrier = |src, dst, from, to| unsafe { memory_barrier(d, cmd, src, dst, from, to) };
    if let Some(pipeline) = kernels.pipeline() {
        let out_bytes = shader.output_bytes(n);
        let infos = [
            vk::DescriptorBufferInfo::default()
                .buffer(input)
                .offset(0)
                .range(padded),
            vk::DescriptorBufferInfo::default()
                .buffer(out)
                .offset(0)
                .range(out_bytes),
            vk::DescriptorBufferInfo::default()
                .buffer(kernels.tables.buffer)
                .offset(0)
                .range(4096),
        ];
        let writes: Vec<_> = (0..3)
            .map(|i| {
                vk::WriteDescriptorSet::default()
                    .dst_set(set)
                    .dst_binding(i as u32)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(std::slice::from_ref(&infos[i]))
            })
            .collect();
        // SAFETY: the set is not in use by any pending command buffer.
        unsafe { d.update_descriptor_sets(&writes, &[]) };
        if shader == ShaderKind::Histogram {
            // SAFETY: recording; the output buffer holds 1 KiB.
            unsafe { d.cmd_fill_buffer(cmd, out, 0, 1024, 0) };
            barrier(
                vk::AccessFlags::TRANSFER_WRITE,
                vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::COMPUTE_SHADER,
            );
        }
        // SAFETY: recording with a pipeline and set of the same layout.
        unsafe {
            d.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, pipeline);
            d.cmd_bind_descriptor_sets(
                cmd,
                vk::PipelineBindPoint::COMPUTE,
                kernels.layout,
                0,
                &[set],
                &[],
            );
            d.cmd_push_constants(
                cmd,
                kernels.layout,
                vk::ShaderStageFlags::COMPUTE,
                0,
                &(n as u32).to_ne_bytes(),
            );
            d.cmd_dispatch(cmd, Kernels::groups(n), 1, 1);
        }
        barrier(
            vk::AccessFlags::SHADER_WRITE,
            vk::AccessFlags::HOST_READ,
            vk::PipelineStageFlags::COMPUTE_SHADER,
            vk::PipelineStageFlags::HOST,
        );
    }
}

/// CPU seconds (user and system) of this process so far, every thread.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: nix::libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { nix::libc::getrusage(nix::libc::RUSAGE_SELF, &mut u) };
    let t = |v: nix::libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Whether the upload path copies staging into a device-local buffer for
/// the shader (no host-visible device-local memory, or `force_staging`).
fn copies_to_device(info: &crate::DeviceInfo, cfg: &StreamConfig) -> bool {
    !info.host_visible_device_local || cfg.force_staging
}

/// Where upload staging lives: our own huge-page host memory when the
/// device copies it to device-local memory or is the CPU itself; the
/// driver's host-visible (preferably device-local) memory when a GPU's
/// shader reads it in place.
fn staging_placement(dev: &crate::gpu::DeviceShared, cfg: &StreamConfig) -> Placement {
    let info = dev.info();
    if copies_to_device(info, cfg) || info.kind == crate::DeviceKind::Cpu {
        Placement::Staging
    } else {
        Placement::Upload
    }
}

fn check_lease(f: &SourceFile, l: &Option<ReadLease>) -> Result<()> {
    if l.as_ref().is_some_and(|l| l.broken()) {
        return Err(Error::FileChanged {
            path: f.path().to_path_buf(),
            what: "it was opened for writing or truncated, by another process or by this one outside dmafile (its read lease was broken); stopped before it could change under the mapping".into(),
        });
    }
    Ok(())
}

/// An input as checked at the start of a stream.
struct Checked {
    path: PathBuf,
    ident: Identity,
    len: u64,
}

/// An input as the stream opened it, kept after it is closed.
struct FileMeta {
    path: PathBuf,
    len: u64,
    ident: Identity,
    snapshot_of: Option<&'static str>,
}

impl FileMeta {
    /// The end-of-stream check of a file already closed: the path still
    /// names the same, unchanged file.
    fn check_unchanged(&self) -> Result<()> {
        if self.snapshot_of.is_some() {
            return Ok(()); // a snapshot cannot change
        }
        let now = std::fs::metadata(&self.path)
            .map(|m| Identity::of(&m))
            .map_err(|e| Error::FileChanged {
                path: self.path.clone(),
                what: format!("it can no longer be found ({e})"),
            })?;
        if now != self.ident {
            return Err(Error::FileChanged {
                path: self.path.clone(),
                what: if now.size != self.ident.size {
                    format!("size went from {} to {} bytes", self.ident.size, now.size)
                } else if (now.dev, now.ino) != (self.ident.dev, self.ident.ino) {
                    "it was replaced by another file".into()
                } else {
                    "modified (its change time moved)".into()
                },
            });
        }
        Ok(())
    }
}

struct RunState {
    /// Chunks of each file submitted and not yet completed.
    chunks_in_flight: Vec<usize>,
    /// The files opened so far, in order.
    metas: Vec<FileMeta>,
    accs: Vec<Accumulator>,
    file_paths: Vec<BTreeMap<PathKind, u64>>,
    file_backing: Vec<BTreeMap<Backing, u64>>,
    phases: Phases,
    fallbacks: Vec<Fallback>,
    /// The direct path's first chunk of the current file, mapped by
    /// `choose` when it asked the module, used by the first `fill`.
    first_chunk: Option<DmaBuf>,
    cpu_copied: u64,
    gpu_copied: u64,
    in_flight: u64,
    peak_in_flight: u64,
    done: u64,
}

/// The shader's result for one file, computed on the CPU from a fresh read
/// (or the snapshot for pseudo-files).
pub fn cpu_reference(f: &SourceFile, shader: ShaderKind) -> Result<Accumulator> {
    let mut acc = Accumulator::new(shader);
    match f.content() {
        Content::Snapshot { data, .. } => acc.update_cpu(data),
        Content::File => {
            let mut buf = vec![0u8; 8 << 20];
            let mut off = 0;
            while off < f.len() {
                let n = (f.len() - off).min(buf.len() as u64) as usize;
                f.read_exact_at(&mut buf[..n], off)?;
                acc.update_cpu(&buf[..n]);
                off += n as u64;
            }
            f.check_unchanged()?;
        }
    }
    Ok(acc)
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.wait_idle();
        self.slots.clear();
        self.kernels = None;
        let d = &self.gpu.shared.device;
        // SAFETY: the device is idle and nothing refers to these any more.
        unsafe {
            d.destroy_semaphore(self.timeline, None);
            d.destroy_descriptor_pool(self.desc_pool, None);
            d.destroy_command_pool(self.cmd_pool, None);
        }
    }
}

/// Byte counts summed over files, key by key.
fn totals<K: Ord + Copy>(per_file: &[BTreeMap<K, u64>]) -> BTreeMap<K, u64> {
    let mut all = BTreeMap::new();
    for m in per_file {
        for (k, v) in m {
            *all.entry(*k).or_insert(0) += v;
        }
    }
    all
}
