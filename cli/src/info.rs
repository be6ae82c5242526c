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

pub fn run(as_json: bool) -> Result<ExitCode, CliError> {
    let wanted = std::env::var("DMAFILE_DEVICE").ok();
    let gpu = Gpu::open(wanted.as_deref())?;
    let (devices, chosen) = (gpu.devices(), gpu.chosen());
    let paths = gpu.path_availability();
    let module = std::path::Path::new(dmafile::path::MODULE_DEVICE).exists();
    let heaps = dma_heaps();
    if as_json {
        let v = json!({
            "devices": devices,
            "chosen": chosen,
            "device_env": wanted,
            "max_chunk": gpu.info().max_chunk(),
            "paths": paths,
            "module": { "device": dmafile::path::MODULE_DEVICE, "loaded": module },
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
    let _ = writeln!(
        s,
        "kernel module: {}",
        if module {
            "loaded (/dev/dmafile)"
        } else {
            "not loaded (/dev/dmafile absent)"
        }
    );
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
