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
    Unusable(String),
    Loaded(dmafile::kmod::Query),
}

fn module_state() -> ModuleState {
    use dmafile::kmod::Module;
    match Module::open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ModuleState::Absent,
        Err(e) => ModuleState::Unusable(e.to_string()),
        Ok(m) => match m.query() {
            Ok(q) => ModuleState::Loaded(q),
            Err(e) => ModuleState::Unusable(format!("query ioctl: {e}")),
        },
    }
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
        ModuleState::Unusable(e) => json!({ "device": dev, "loaded": true, "error": e }),
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

pub fn run(as_json: bool) -> Result<ExitCode, CliError> {
    let wanted = std::env::var("DMAFILE_DEVICE").ok();
    let gpu = Gpu::open(wanted.as_deref())?;
    let (devices, chosen) = (gpu.devices(), gpu.chosen());
    let paths = gpu.path_availability();
    let module = module_state();
    let heaps = dma_heaps();
    if as_json {
        let v = json!({
            "devices": devices,
            "chosen": chosen,
            "device_env": wanted,
            "max_chunk": gpu.info().max_chunk(),
            "paths": paths,
            "module": module_json(&module),
            "dma_heaps": heaps,
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
        ModuleState::Unusable(e) => {
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
    out(&s).map(|_| ExitCode::SUCCESS)
}
