//! `dmafile info`: devices, extensions, limits, and the paths available here.
use std::fmt::Write;
use std::process::ExitCode;

use dmafile::Gpu;
use serde_json::json;

use crate::size::human;
use crate::{out, CliError};

fn dma_heaps() -> Vec<String> {
    std::fs::read_dir("/dev/dma_heap")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// What /dev/dmafile says about itself.
enum ModuleState {
    Absent,
    /// Loaded, but this user may not open the device.
    Denied(String),
    Unusable(String),
    Loaded(dmafile::kmod::Query),
}

fn module_state() -> ModuleState {
    use dmafile::kmod::Module;
    match Module::open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ModuleState::Absent,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => ModuleState::Denied(format!(
            "{}: {e} ({})",
            dmafile::kmod::DEVICE,
            device_owner()
        )),
        Err(e) => ModuleState::Unusable(e.to_string()),
        Ok(m) => match m.query() {
            Ok(q) => ModuleState::Loaded(q),
            Err(e) => ModuleState::Unusable(format!(
                "the query ioctl failed ({e}): the loaded module does not speak ABI {}",
                dmafile::kmod::ABI_VERSION
            )),
        },
    }
}

/// `/dev/dmafile`'s mode and owner, as `ls -l` would put them.
fn device_owner() -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(dmafile::kmod::DEVICE) {
        Ok(m) => format!(
            "mode {:04o}, uid {}, gid {}",
            m.mode() & 0o7777,
            m.uid(),
            m.gid()
        ),
        Err(e) => e.to_string(),
    }
}

/// One thing about the installation that stops a path, with what to do.
#[derive(serde::Serialize)]
struct Problem {
    check: &'static str,
    problem: String,
    fix: String,
}

/// The installation checks: what stops `direct` (module, ABI, device
/// permissions, memlock for `chunk` x `depth`) and `heap` (dma-heaps).
fn installation_problems(
    module: &ModuleState,
    heaps: &[String],
    chunk: u64,
    depth: usize,
) -> Vec<Problem> {
    let mut v = Vec::new();
    let dev = dmafile::kmod::DEVICE;
    match module {
        ModuleState::Absent => v.push(Problem {
            check: "module",
            problem: format!("dmafile.ko is not loaded ({dev} does not exist): the direct path is unavailable"),
            fix: "load it: sudo modprobe dmafile (install it first with sudo make -C kmod dkms-install); \
                  at every boot: echo dmafile | sudo tee /etc/modules-load.d/dmafile.conf (docs/kmod.md)"
                .into(),
        }),
        ModuleState::Denied(e) => v.push(Problem {
            check: "permissions",
            problem: format!("you may not open {dev}: {e}"),
            fix: "the module makes it mode 0666; a local udev rule narrowed it: join the group it names, \
                  or see docs/kmod.md, \"Device permissions\""
                .into(),
        }),
        ModuleState::Unusable(e) => v.push(Problem {
            check: "module",
            problem: format!("{dev} cannot be used: {e}"),
            fix: format!(
                "install the module of this release (dmafile {}, ABI {})",
                env!("CARGO_PKG_VERSION"),
                dmafile::kmod::ABI_VERSION
            ),
        }),
        ModuleState::Loaded(q) if q.abi_version != dmafile::kmod::ABI_VERSION => v.push(Problem {
            check: "module",
            problem: format!(
                "the loaded module speaks ABI {}, this dmafile ABI {}",
                q.abi_version,
                dmafile::kmod::ABI_VERSION
            ),
            fix: "install the module of the same release as this dmafile".into(),
        }),
        ModuleState::Loaded(q) if q.memlock_limit != u64::MAX => {
            let need = chunk.saturating_mul(depth as u64);
            let free = q.memlock_limit.saturating_sub(q.user_pinned_bytes);
            if need > free {
                let fits = (free / depth.max(1) as u64) / 4096 * 4096;
                v.push(Problem {
                    check: "memlock",
                    problem: format!(
                        "your RLIMIT_MEMLOCK is {} ({} of it pinned now), and a direct stream of {} chunks with {depth} in flight pins {}: \
                         direct falls back (memlock-limit) for chunks above {}",
                        human(q.memlock_limit),
                        human(q.user_pinned_bytes),
                        human(chunk),
                        human(need),
                        human(fits)
                    ),
                    fix: format!(
                        "raise the limit to at least {}: for a login, a line `<user> - memlock {}` (KiB) in \
                         /etc/security/limits.d/dmafile.conf and a new session; for a systemd service, LimitMEMLOCK={}; \
                         for this shell, ulimit -l {} (up to the hard limit){} (docs/kmod.md)",
                        human(need),
                        need.div_ceil(1024),
                        need,
                        need.div_ceil(1024),
                        // A size --chunk accepts: fits is whole pages.
                        if fits >= 4096 {
                            format!("; or stream with --chunk {}K", fits / 1024)
                        } else {
                            String::new()
                        }
                    ),
                });
            }
        }
        ModuleState::Loaded(_) => {}
    }
    if heaps.is_empty() {
        v.push(Problem {
            check: "dma-heap",
            problem: "no dma-buf heaps (/dev/dma_heap absent): the heap path is unavailable".into(),
            fix:
                "a kernel with CONFIG_DMABUF_HEAPS_SYSTEM; the host and upload paths do not need it"
                    .into(),
        });
    } else if std::fs::File::open("/dev/dma_heap/system").is_err()
        && heaps.iter().any(|h| h == "system")
    {
        v.push(Problem {
            check: "dma-heap",
            problem: "/dev/dma_heap/system exists but you may not open it: the heap path is unavailable to you".into(),
            fix: "grant access with a udev rule (its mode is the kernel's default, 0600 root)".into(),
        });
    }
    v
}

fn cap_names(caps: u32) -> Vec<&'static str> {
    use dmafile::kmod::caps::*;
    [
        (PAGE_CACHE, "page-cache"),
        (WRITE, "write"),
        (STORAGE_DIRECT, "storage-direct"),
        (STATUS, "status"),
    ]
    .into_iter()
    .filter(|(b, _)| caps & b != 0)
    .map(|(_, n)| n)
    .collect()
}

fn module_json(m: &ModuleState) -> serde_json::Value {
    let dev = dmafile::kmod::DEVICE;
    match m {
        ModuleState::Absent => json!({ "device": dev, "loaded": false }),
        ModuleState::Denied(e) | ModuleState::Unusable(e) => {
            json!({ "device": dev, "loaded": true, "error": e })
        }
        ModuleState::Loaded(q) => json!({
            "device": dev,
            "loaded": true,
            "abi_version": q.abi_version,
            "caps": cap_names(q.caps),
            "page_size": q.page_size,
            "max_pinned_bytes": q.max_pinned_bytes,
            "pinned_bytes": q.pinned_bytes,
            "user_pinned_bytes": q.user_pinned_bytes,
            "memlock_limit": q.memlock_limit,
            "max_map_bytes": q.max_map_bytes,
            "buffers": q.nr_buffers,
        }),
    }
}

pub fn run(as_json: bool, chunk: u64, depth: usize) -> Result<ExitCode, CliError> {
    let wanted = std::env::var(dmafile::DEVICE_ENV).ok();
    let gpu = Gpu::open_from_env()?;
    let (devices, chosen) = (gpu.devices(), gpu.chosen());
    let paths = gpu.path_availability();
    let module = module_state();
    let heaps = dma_heaps();
    let problems = installation_problems(&module, &heaps, chunk, depth);
    if as_json {
        let v = json!({
            "devices": devices,
            "chosen": chosen,
            "device_env": wanted,
            "max_chunk": gpu.info().max_chunk(),
            "paths": paths,
            "module": module_json(&module),
            "dma_heaps": heaps,
            "checks": { "chunk": chunk, "depth": depth, "problems": problems },
        });
        return out(&format!("{v}\n")).map(|_| ExitCode::SUCCESS);
    }
    let mut s = String::new();
    for d in devices {
        let mark = if d.index == devices[chosen].index {
            "*"
        } else {
            " "
        };
        let _ = writeln!(
            s,
            "{mark} device {}: {} ({:?}, Vulkan {}, {})",
            d.index, d.name, d.kind, d.api_version, d.driver
        );
        let f = &d.features;
        let yn = |b: bool| if b { "yes" } else { "no" };
        let _ = writeln!(
            s,
            "    external_memory_fd {}  external_memory_dma_buf {}  external_memory_host {}  timeline_semaphore {}",
            yn(f.external_memory_fd),
            yn(f.external_memory_dma_buf),
            yn(f.external_memory_host),
            yn(f.timeline_semaphore)
        );
        let _ = writeln!(
            s,
            "    maxStorageBufferRange {}  maxMemoryAllocationSize {}  minImportedHostPointerAlignment {}  max chunk {}",
            human(d.max_storage_buffer_range),
            human(d.max_memory_allocation_size),
            d.min_imported_host_pointer_alignment,
            human(d.max_chunk())
        );
        let mems: Vec<String> = d
            .memory_types
            .iter()
            .map(|m| {
                let mut fl = vec![];
                if m.device_local {
                    fl.push("device-local");
                }
                if m.host_visible {
                    fl.push("host-visible");
                }
                if m.host_coherent {
                    fl.push("coherent");
                }
                if m.host_cached {
                    fl.push("cached");
                }
                format!("heap {} ({}): {}", m.heap, human(m.heap_size), fl.join("+"))
            })
            .collect();
        let _ = writeln!(s, "    memory types: {}", mems.join("; "));
    }
    if let Some(w) = &wanted {
        let _ = writeln!(s, "  (DMAFILE_DEVICE={w})");
    }
    let _ = writeln!(s, "paths on this machine (auto tries them in this order):");
    for p in &paths {
        if p.available {
            let _ = writeln!(s, "  {:<7} available", p.path.name());
        } else {
            let _ = writeln!(
                s,
                "  {:<7} unavailable: {} [{}]",
                p.path.name(),
                p.reason.as_deref().unwrap_or(""),
                p.code.map(|c| c.name()).unwrap_or("")
            );
        }
    }
    let dev = dmafile::kmod::DEVICE;
    let _ = match &module {
        ModuleState::Absent => writeln!(s, "kernel module: not loaded ({dev} absent)"),
        ModuleState::Denied(e) | ModuleState::Unusable(e) => {
            writeln!(s, "kernel module: {dev} present but unusable: {e}")
        }
        ModuleState::Loaded(q) => {
            let limit = |v: u64| {
                if v == u64::MAX {
                    "unlimited".to_string()
                } else {
                    human(v)
                }
            };
            writeln!(
                s,
                "kernel module: dmafile ABI {} ({})\n    pinned {} of {} (yours {}, memlock limit {}), {} dma-bufs, max mapping {}",
                q.abi_version,
                cap_names(q.caps).join(", "),
                human(q.pinned_bytes),
                human(q.max_pinned_bytes),
                human(q.user_pinned_bytes),
                limit(q.memlock_limit),
                q.nr_buffers,
                human(q.max_map_bytes),
            )
        }
    };
    let _ = writeln!(
        s,
        "dma-buf heaps: {}",
        if heaps.is_empty() {
            "none (/dev/dma_heap absent)".to_string()
        } else {
            heaps.join(", ")
        }
    );
    if problems.is_empty() {
        let _ = writeln!(
            s,
            "installation: no problems found (for {} chunks, {depth} in flight)",
            human(chunk)
        );
    } else {
        let _ = writeln!(s, "installation: {} problem(s):", problems.len());
        for p in &problems {
            let _ = writeln!(s, "  [{}] {}\n      fix: {}", p.check, p.problem, p.fix);
        }
    }
    out(&s).map(|_| ExitCode::SUCCESS)
}
