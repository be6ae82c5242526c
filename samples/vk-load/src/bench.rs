//! `vk-load --bench FILE... [--runs N] [--json]`: the time to land a whole
//! file in a device-local buffer the application owns, three ways, in the
//! same process and the same run:
//! - `read-queue`: dmafile's read queue (`auto`: the fastest path the
//!   machine has), and `read-queue-upload` (the queue forced to its copy
//!   path, the like-for-like peer of `pread+copy`);
//! - `pread+copy`: the application's careful do-it-yourself route:
//!   `pread` into a mapped host-visible staging buffer, two halves so the
//!   next read overlaps the device's copy of the previous one,
//!   `vkCmdCopyBuffer` into the destination;
//! - `hostptr+copy`: the application mapping the file itself, importing
//!   the mapping with VK_EXT_external_memory_host and copying from it.
//!
//! Each round runs every route once, in an order that rotates per round;
//! one warm-up round is not counted (pipeline-free, but it faults in the
//! page cache and the allocations). Figures are medians over the rounds
//! with min and max; ratios are of medians, against the faster
//! do-it-yourself route. Every landing is verified: the destination's
//! sum64 (read back by the app) must equal the file's.
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ash::vk;
use dmafile::{Destination, Gpu, PathChoice, PathKind, ReadQueue, ReadQueueOptions, ReadRequest};

use crate::{App, Buf};

const ROUTES: [&str; 4] = [
    "read-queue",
    "read-queue-upload",
    "pread+copy",
    "hostptr+copy",
];
/// The do-it-yourself staging: two halves of this many bytes.
const HALF: u64 = 32 << 20;
/// The most one host-pointer import covers.
const IMPORT_PIECE: u64 = 256 << 20;

/// One command buffer and fence of the app's, reused.
struct Submitter {
    pool: vk::CommandPool,
    cmds: [vk::CommandBuffer; 2],
    fences: [vk::Fence; 2],
}

impl Submitter {
    fn new(app: &App) -> Result<Submitter, String> {
        let d = &app.device;
        // SAFETY: plain creation; destroyed by destroy().
        unsafe {
            let pool = d
                .create_command_pool(
                    &vk::CommandPoolCreateInfo::default()
                        .queue_family_index(app.family)
                        .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
                    None,
                )
                .map_err(|e| e.to_string())?;
            let cbs = d
                .allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default()
                        .command_pool(pool)
                        .command_buffer_count(2),
                )
                .map_err(|e| e.to_string())?;
            let fci = vk::FenceCreateInfo::default().flags(vk::FenceCreateFlags::SIGNALED);
            let f0 = d.create_fence(&fci, None).map_err(|e| e.to_string())?;
            let f1 = d.create_fence(&fci, None).map_err(|e| e.to_string())?;
            Ok(Submitter {
                pool,
                cmds: [cbs[0], cbs[1]],
                fences: [f0, f1],
            })
        }
    }

    fn wait(&self, app: &App, slot: usize) -> Result<(), String> {
        // SAFETY: our fence.
        unsafe {
            app.device
                .wait_for_fences(&[self.fences[slot]], true, u64::MAX)
                .map_err(|e| e.to_string())
        }
    }

    /// Copies `regions` from `src` to `dst` on slot `slot`'s command
    /// buffer, after waiting for its previous use; returns at once.
    fn copy(
        &self,
        app: &App,
        gpu: &Gpu,
        slot: usize,
        src: vk::Buffer,
        dst: vk::Buffer,
        regions: &[vk::BufferCopy],
    ) -> Result<(), String> {
        self.wait(app, slot)?;
        let d = &app.device;
        let cb = self.cmds[slot];
        // SAFETY: the slot's fence said its last submission completed;
        // both buffers live until the caller waits for this one.
        unsafe {
            d.reset_fences(&[self.fences[slot]])
                .map_err(|e| e.to_string())?;
            d.begin_command_buffer(
                cb,
                &vk::CommandBufferBeginInfo::default()
                    .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
            )
            .map_err(|e| e.to_string())?;
            d.cmd_copy_buffer(cb, src, dst, regions);
            // What the host reads after the fence must be visible to it.
            let write = vk::AccessFlags::TRANSFER_WRITE;
            crate::to_host(d, cb, vk::PipelineStageFlags::TRANSFER, write);
            d.end_command_buffer(cb).map_err(|e| e.to_string())?;
            let cbs = [cb];
            let _q = gpu.lock_queue().map_err(|e| e.to_string())?;
            d.queue_submit(
                app.queue,
                &[vk::SubmitInfo::default().command_buffers(&cbs)],
                self.fences[slot],
            )
            .map_err(|e| e.to_string())
        }
    }

    fn destroy(self, app: &App) {
        let d = &app.device;
        // SAFETY: waited for by the caller.
        unsafe {
            for f in self.fences {
                d.destroy_fence(f, None);
            }
            d.destroy_command_pool(self.pool, None);
        }
    }
}

/// The app's pread into two halves of mapped staging, each copied to
/// `dst` while the other is read.
#[allow(clippy::too_many_arguments)]
fn pread_copy(
    app: &App,
    gpu: &Gpu,
    sub: &Submitter,
    staging: &Buf,
    mapped: *mut u8,
    file: &Path,
    len: u64,
    dst: &Buf,
) -> Result<(), String> {
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut off = 0u64;
    let mut slot = 0usize;
    while off < len {
        let n = HALF.min(len - off);
        // The slot's previous copy out of this half must be done.
        sub.wait(app, slot)?;
        // SAFETY: this half is HALF bytes of mapped memory no copy reads now.
        let buf =
            unsafe { std::slice::from_raw_parts_mut(mapped.add(slot * HALF as usize), n as usize) };
        f.read_exact_at(buf, off)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let region = [vk::BufferCopy::default()
            .src_offset(slot as u64 * HALF)
            .dst_offset(off)
            .size(n)];
        sub.copy(app, gpu, slot, staging.buffer, dst.buffer, &region)?;
        off += n;
        slot ^= 1;
    }
    sub.wait(app, 0)?;
    sub.wait(app, 1)
}

/// The app's own mmap + host-pointer import + copy, in pieces.
fn hostptr_copy(
    app: &App,
    gpu: &Gpu,
    sub: &Submitter,
    host: &ash::ext::external_memory_host::Device,
    file: &Path,
    len: u64,
    dst: &Buf,
) -> Result<(), String> {
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let d = &app.device;
    let ht = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;
    let mut off = 0u64;
    while off < len {
        let n = IMPORT_PIECE.min(len - off);
        let size = n.next_multiple_of(4096);
        // SAFETY: a private read-only mapping of the file, unmapped below
        // after the copy from it completed.
        let ptr = unsafe {
            nix::libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                nix::libc::PROT_READ,
                nix::libc::MAP_SHARED,
                f.as_raw_fd(),
                off as i64,
            )
        };
        if ptr == nix::libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: Vulkan objects of the app's, destroyed before the
        // mapping goes; the copy is waited for.
        let r = unsafe {
            (|| -> Result<(), String> {
                let mut hp = vk::MemoryHostPointerPropertiesEXT::default();
                (host.fp().get_memory_host_pointer_properties_ext)(host.device(), ht, ptr, &mut hp)
                    .result()
                    .map_err(|e| format!("vkGetMemoryHostPointerPropertiesEXT: {e}"))?;
                let mut ext = vk::ExternalMemoryBufferCreateInfo::default().handle_types(ht);
                let buffer = d
                    .create_buffer(
                        &vk::BufferCreateInfo::default()
                            .size(size)
                            .usage(vk::BufferUsageFlags::TRANSFER_SRC)
                            .push_next(&mut ext),
                        None,
                    )
                    .map_err(|e| e.to_string())?;
                let req = d.get_buffer_memory_requirements(buffer);
                let ty = app
                    .memory_type(
                        req.memory_type_bits & hp.memory_type_bits,
                        vk::MemoryPropertyFlags::empty(),
                    )
                    .ok_or("no memory type for the host pointer")?;
                let mut import = vk::ImportMemoryHostPointerInfoEXT::default()
                    .handle_type(ht)
                    .host_pointer(ptr);
                let mem = d
                    .allocate_memory(
                        &vk::MemoryAllocateInfo::default()
                            .allocation_size(size)
                            .memory_type_index(ty)
                            .push_next(&mut import),
                        None,
                    )
                    .map_err(|e| format!("host pointer import: {e}"))?;
                d.bind_buffer_memory(buffer, mem, 0)
                    .map_err(|e| e.to_string())?;
                let region = [vk::BufferCopy::default().dst_offset(off).size(n)];
                let r = sub
                    .copy(app, gpu, 0, buffer, dst.buffer, &region)
                    .and_then(|()| sub.wait(app, 0));
                d.destroy_buffer(buffer, None);
                d.free_memory(mem, None);
                r
            })()
        };
        // SAFETY: the mapping made above, no longer used.
        unsafe { nix::libc::munmap(ptr, size as usize) };
        r?;
        off += n;
    }
    Ok(())
}

fn read_queue(q: &mut ReadQueue, file: &Path, len: u64, dst: &Buf) -> Result<u64, String> {
    let req = [ReadRequest {
        file: file.to_path_buf(),
        offset: 0,
        len,
        dst: Destination {
            buffer: dst.buffer,
            size: dst.size,
        },
        dst_offset: 0,
    }];
    // SAFETY: dst is the app's TRANSFER_DST buffer, untouched until wait().
    let t = unsafe { q.submit(&req, None) }.map_err(|e| e.to_string())?;
    let r = q.wait(t).map_err(|e| e.to_string())?;
    let rq = &r.requests[0];
    if let Some(e) = &rq.error {
        return Err(e.clone());
    }
    Ok(rq.cpu_copied_bytes)
}

#[derive(serde::Serialize)]
struct RouteResult {
    route: &'static str,
    path: Option<String>,
    median_s: f64,
    min_s: f64,
    max_s: f64,
    gb_per_s: f64,
    /// Median time of the faster do-it-yourself route over this one's.
    vs_best_diy: f64,
    cpu_copied_bytes: u64,
}

#[derive(serde::Serialize)]
struct FileResult {
    file: PathBuf,
    bytes: u64,
    runs: usize,
    device: String,
    routes: Vec<RouteResult>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(app: &App, files: &[PathBuf], runs: usize, json: bool) -> Result<(), String> {
    let gpu = app.lend()?;
    let host = (app.exts.contains(&ash::ext::external_memory_host::NAME))
        .then(|| ash::ext::external_memory_host::Device::new(&app.instance, &app.device))
        .ok_or("the device lacks VK_EXT_external_memory_host, which hostptr+copy needs")?;
    let sub = Submitter::new(app)?;
    let staging = app.buffer(2 * HALF, vk::BufferUsageFlags::TRANSFER_SRC, true)?;
    // SAFETY: host-visible memory of ours, mapped for the whole run.
    let mapped = unsafe {
        app.device.map_memory(
            staging.memory,
            0,
            vk::WHOLE_SIZE,
            vk::MemoryMapFlags::empty(),
        )
    }
    .map_err(|e| e.to_string())? as *mut u8;
    let mut q = ReadQueue::new(&gpu, ReadQueueOptions::default()).map_err(|e| e.to_string())?;
    let mut qu = ReadQueue::new(
        &gpu,
        ReadQueueOptions {
            path: PathChoice::Only(PathKind::Upload),
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let mut out = vec![];
    let result = (|| -> Result<(), String> {
        for file in files {
            let len = std::fs::metadata(file)
                .map_err(|e| format!("{}: {e}", file.display()))?
                .len();
            if len == 0 {
                return Err(format!("{}: empty", file.display()));
            }
            let want = crate::cpu_sum64(file, 0, len)?;
            let dst = app.buffer(
                len.next_multiple_of(4),
                vk::BufferUsageFlags::TRANSFER_DST | vk::BufferUsageFlags::TRANSFER_SRC,
                false,
            )?;
            let mut times: Vec<Vec<f64>> = vec![vec![]; ROUTES.len()];
            let mut copied = [0u64; ROUTES.len()];
            let mut path = None;
            let r = (|| -> Result<(), String> {
                for round in 0..=runs {
                    for k in 0..ROUTES.len() {
                        let i = (k + round) % ROUTES.len();
                        let t = Instant::now();
                        match ROUTES[i] {
                            "read-queue" => copied[i] = read_queue(&mut q, file, len, &dst)?,
                            "read-queue-upload" => {
                                copied[i] = read_queue(&mut qu, file, len, &dst)?
                            }
                            "pread+copy" => {
                                pread_copy(app, &gpu, &sub, &staging, mapped, file, len, &dst)?;
                                copied[i] = len;
                            }
                            _ => hostptr_copy(app, &gpu, &sub, &host, file, len, &dst)?,
                        }
                        let s = t.elapsed().as_secs_f64();
                        // Verified outside the clock: the app reads its
                        // buffer back and sums it.
                        let got = sum_buffer(app, &gpu, &sub, &dst, len)?;
                        if got != want {
                            return Err(format!(
                                "{}: {} landed wrong bytes (sum64 {got}, file {want})",
                                file.display(),
                                ROUTES[i]
                            ));
                        }
                        if round > 0 {
                            times[i].push(s);
                        }
                    }
                }
                path = Some(
                    gpu.path_availability()
                        .into_iter()
                        .find(|p| p.available)
                        .map(|p| p.path.to_string())
                        .unwrap_or_default(),
                );
                Ok(())
            })();
            dst.destroy(&app.device);
            r?;
            let meds: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
            let best_diy = meds[2].min(meds[3]);
            let routes = (0..ROUTES.len())
                .map(|i| RouteResult {
                    route: ROUTES[i],
                    path: match i {
                        0 => path.clone(),
                        1 => Some("upload".into()),
                        _ => None,
                    },
                    median_s: meds[i],
                    min_s: times[i].iter().copied().fold(f64::INFINITY, f64::min),
                    max_s: times[i].iter().copied().fold(0.0, f64::max),
                    gb_per_s: len as f64 / meds[i] / 1e9,
                    vs_best_diy: best_diy / meds[i],
                    cpu_copied_bytes: copied[i],
                })
                .collect();
            out.push(FileResult {
                file: file.clone(),
                bytes: len,
                runs,
                device: gpu.info().name.clone(),
                routes,
            });
        }
        Ok(())
    })();
    drop(q);
    drop(qu);
    // SAFETY: every copy was waited for.
    unsafe { app.device.unmap_memory(staging.memory) };
    staging.destroy(&app.device);
    sub.destroy(app);
    result?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializable")
        );
        return Ok(());
    }
    for f in &out {
        println!(
            "{} ({} MiB) on {}: medians of {} rounds (routes alternated; 1 warm-up round not counted), min..max",
            f.file.display(),
            f.bytes >> 20,
            f.device,
            f.runs
        );
        println!(
            "  {:<18} {:>9} {:>19} {:>8} {:>12} {:>12}",
            "route", "median s", "min..max s", "GB/s", "vs best DIY", "CPU copied"
        );
        for r in &f.routes {
            let name = match &r.path {
                Some(p) if r.route == "read-queue" => format!("{} ({p})", r.route),
                _ => r.route.to_string(),
            };
            println!(
                "  {:<18} {:>9.4} {:>9.4}..{:<9.4} {:>8.2} {:>11.2}x {:>12}",
                name, r.median_s, r.min_s, r.max_s, r.gb_per_s, r.vs_best_diy, r.cpu_copied_bytes
            );
        }
    }
    Ok(())
}

/// The app reads `dst` back (its own copy into host-visible memory) and
/// sums it as the CPU sums the file.
fn sum_buffer(app: &App, gpu: &Gpu, sub: &Submitter, dst: &Buf, len: u64) -> Result<u64, String> {
    let host = app.buffer(dst.size, vk::BufferUsageFlags::TRANSFER_DST, true)?;
    let r = (|| {
        sub.copy(
            app,
            gpu,
            0,
            dst.buffer,
            host.buffer,
            &[vk::BufferCopy::default().size(dst.size)],
        )?;
        sub.wait(app, 0)?;
        // SAFETY: host-visible, coherent, the copy into it completed.
        unsafe {
            let p = app
                .device
                .map_memory(host.memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
                .map_err(|e| e.to_string())? as *const u8;
            let bytes = std::slice::from_raw_parts(p, len as usize);
            let sum = crate::sum64(bytes);
            app.device.unmap_memory(host.memory);
            Ok(sum)
        }
    })();
    host.destroy(&app.device);
    r
}
