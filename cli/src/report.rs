//! Human and JSON renderings of a stream report (JSON documented in docs/cli.md).
use std::fmt::Write;

use dmafile::StreamReport;
use serde_json::{json, Value};

use crate::size::human;

pub fn gbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / 1e9
    } else {
        0.0
    }
}

/// Bytes nothing read: with no shader, the zero-copy paths map and import
/// and never touch a byte, so no read rate covers them.
pub fn unread_bytes(r: &StreamReport) -> u64 {
    if r.shader != dmafile::ShaderKind::None {
        return 0;
    }
    [dmafile::PathKind::Host, dmafile::PathKind::Direct]
        .iter()
        .filter_map(|k| r.paths.get(k))
        .sum()
}

fn rate(r: &StreamReport) -> Option<f64> {
    (unread_bytes(r) == 0).then(|| gbps(r.bytes, r.seconds))
}

pub fn stream_json(r: &StreamReport) -> Value {
    json!({
        "device": r.device,
        "shader": r.shader.name(),
        "chunk": r.chunk,
        "depth": r.depth,
        "bytes": r.bytes,
        "seconds": r.seconds,
        "gbps": rate(r),
        "unread_bytes": unread_bytes(r),
        "paths": r.paths,
        "backing": r.backing,
        "cpu_copied_bytes": r.cpu_copied_bytes,
        "gpu_copied_bytes": r.gpu_copied_bytes,
        "peak_in_flight_bytes": r.peak_in_flight_bytes,
        "fallbacks": r.fallbacks,
        "result": r.result,
        "cpu_result": r.cpu_result,
        "verified": r.verified,
        "phases": r.phases,
        "files": r.files.iter().map(|f| json!({
            "path": f.path.display().to_string(),
            "bytes": f.bytes,
            "paths": f.paths,
            "backing": f.backing,
            "result": f.result,
            "cpu_result": f.cpu_result,
            "snapshot_of": f.snapshot_of,
        })).collect::<Vec<_>>(),
    })
}

pub fn stream_human(r: &StreamReport) -> String {
    let mut s = String::new();
    match rate(r) {
        Some(g) => {
            let _ = writeln!(
                s,
                "streamed {} ({} bytes) in {:.3} s: {g:.2} GB/s on {}",
                human(r.bytes),
                r.bytes,
                r.seconds,
                r.device
            );
        }
        None => {
            let _ = writeln!(
                s,
                "made {} ({} bytes) shader-visible in {:.3} s on {}; no rate: with --shader none the {} bytes on host/direct were mapped and read by no shader",
                human(r.bytes),
                r.bytes,
                r.seconds,
                r.device,
                unread_bytes(r)
            );
        }
    }
    let _ = writeln!(
        s,
        "  paths:        {}",
        if r.paths.is_empty() {
            "(no bytes)".into()
        } else {
            counts(&r.paths)
        }
    );
    if !r.backing.is_empty() {
        let _ = writeln!(s, "  backing:      {} (direct)", counts(&r.backing));
    }
    let _ = writeln!(s, "  cpu copied:   {} bytes", r.cpu_copied_bytes);
    let _ = writeln!(s, "  gpu copied:   {} bytes", r.gpu_copied_bytes);
    let _ = writeln!(
        s,
        "  chunk/depth:  {} x {} (peak in flight {})",
        human(r.chunk),
        r.depth,
        human(r.peak_in_flight_bytes)
    );
    if r.fallbacks.is_empty() {
        let _ = writeln!(s, "  fallbacks:    none");
    }
    for f in &r.fallbacks {
        let file = f
            .file
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  fallback:     {} -> {}{}: {} [{}]",
            f.from,
            f.to,
            file,
            f.reason,
            f.code.name()
        );
    }
    for f in r.files.iter().filter(|f| f.snapshot_of.is_some()) {
        let _ = writeln!(
            s,
            "  snapshot:     {} is a pseudo-file on {}; streamed the {} bytes one read returned",
            f.path.display(),
            f.snapshot_of.unwrap_or("?"),
            f.bytes
        );
    }
    match &r.result {
        Some(res) => {
            let _ = writeln!(s, "  {:<13} {res}", format!("{}:", r.shader));
        }
        None => {
            let _ = writeln!(s, "  shader:       none");
        }
    }
    if r.files.len() > 1 {
        for f in &r.files {
            if let Some(res) = &f.result {
                let _ = writeln!(s, "    {res}  {}", f.path.display());
            }
        }
    }
    match (r.verified, &r.cpu_result) {
        (Some(true), Some(c)) => {
            let _ = writeln!(s, "  verified:     yes (CPU {c})");
        }
        (Some(false), c) => {
            let _ = writeln!(
                s,
                "  verified:     NO, CPU computed {}",
                c.as_ref().map(|c| c.to_string()).unwrap_or_default()
            );
        }
        _ => {}
    }
    let p = &r.phases;
    let _ = writeln!(
        s,
        "  phases (s):   open {:.3}, setup {:.3}, fill {:.3}, submit {:.3}, wait {:.3}, fold {:.3}, verify {:.3}",
        p.open, p.setup, p.fill, p.submit, p.wait, p.fold, p.verify
    );
    s
}

/// `name n, name n` of a per-key byte count.
fn counts<K: std::fmt::Display>(m: &std::collections::BTreeMap<K, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
