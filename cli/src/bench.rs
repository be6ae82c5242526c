//! `dmafile bench`: per path, time to shader-visible (to the end of a first
//! shader pass over every byte) and streaming throughput, next to a memcpy
//! and a plain pread of the same bytes measured in the same run.
use std::fmt::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use dmafile::{Gpu, PathChoice, ShaderKind, StreamConfig, Streamer};
use serde_json::json;

use crate::report::gbps;
use crate::size::{human, parse_size};
use crate::{out, CliError};

#[derive(Args)]
pub struct BenchOpts {
    /// The file to read (its page cache is warmed first; see docs/benchmarks.md).
    file: PathBuf,
    /// Bytes per chunk.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    chunk: u64,
    /// Chunks in flight.
    #[arg(long, default_value_t = dmafile::stream::DEFAULT_DEPTH)]
    depth: usize,
    /// Shader for the timed passes (every byte is read by it; `none` is
    /// refused: it would read nothing on host and direct).
    #[arg(long, default_value = "sum64", value_parser = crate::parse_shader)]
    shader: ShaderKind,
    /// Timed streaming runs per path after the first (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Plain single-threaded pread of the whole file in `chunk` pieces.
fn pread_pass(f: &std::fs::File, len: u64, buf: &mut [u8]) -> std::io::Result<f64> {
    let t = Instant::now();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], off)?;
        off += n as u64;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// memcpy of `len` bytes between two resident buffers of `chunk` bytes.
fn memcpy_pass(len: u64, src: &[u8], dst: &mut [u8]) -> f64 {
    let t = Instant::now();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(src.len() as u64) as usize;
        dst[..n].copy_from_slice(&src[..n]);
        std::hint::black_box(&mut dst[..n]);
        off += n as u64;
    }
    t.elapsed().as_secs_f64()
}

pub fn run(o: BenchOpts) -> Result<ExitCode, CliError> {
    if o.runs == 0 {
        return Err(CliError {
            msg: "--runs must be at least 1".into(),
            code: 2,
        });
    }
    if o.shader == ShaderKind::None {
        // With no shader the host and direct paths map the file and never
        // read it: the figure would be the cost of a mapping, reported as
        // a read of every byte.
        return Err(CliError {
            msg: "--shader none: bench times reads of every byte, and with no shader the host and direct paths read none (the mapping alone would be timed); use crc32c, sum64 or histogram".into(),
            code: 2,
        });
    }
    let src = dmafile::SourceFile::open(&o.file)?;
    let len = src.len();
    if len == 0 {
        return Err(CliError {
            msg: format!("{}: file is empty, nothing to time", o.file.display()),
            code: 2,
        });
    }
    let gpu = Gpu::open_from_env()?;
    let base_cfg = StreamConfig {
        chunk: o.chunk,
        depth: o.depth,
        shader: o.shader,
        ..StreamConfig::from_env()
    };
    dmafile::stream::validate_config(&gpu, &base_cfg)?;

    // Baselines, measured now, on the same bytes with a warm page cache.
    let piece = o.chunk.min(len) as usize;
    let mut buf = vec![0u8; piece];
    let mut buf2 = vec![1u8; piece];
    pread_pass(src.file(), len, &mut buf)?; // warm the page cache
    let pread_s = median(
        (0..o.runs)
            .map(|_| pread_pass(src.file(), len, &mut buf))
            .collect::<Result<_, _>>()?,
    );
    let memcpy_s = median(
        (0..o.runs)
            .map(|_| memcpy_pass(len, &buf, &mut buf2))
            .collect(),
    );
    drop((buf, buf2));
    let pread_gbps = gbps(len, pread_s);
    let memcpy_gbps = gbps(len, memcpy_s);

    let mut rows = vec![];
    let mut skipped = vec![];
    for p in gpu.path_availability() {
        if !p.available {
            skipped.push(json!({"path": p.path.name(), "code": p.code.map(|c| c.name()), "reason": p.reason}));
            continue;
        }
        let cfg = StreamConfig {
            path: PathChoice::Only(p.path),
            ..base_cfg.clone()
        };
        let mut s = match Streamer::new(&gpu, cfg) {
            Ok(s) => s,
            Err(e) => {
                skipped.push(json!({"path": p.path.name(), "reason": e.to_string()}));
                continue;
            }
        };
        let first = match s.run(&[&o.file], &mut |_, _| {}) {
            Ok(r) => r,
            Err(e) => {
                skipped.push(json!({"path": p.path.name(), "reason": e.to_string()}));
                continue;
            }
        };
        // Time to shader-visible: open, map or read, and the first shader pass
        // over every byte (pipeline creation is excluded: a one-time cost per
        // process, reported as setup).
        let visible_s = first.seconds - first.phases.setup;
        let mut times = vec![];
        for _ in 0..o.runs {
            let r = s.run(&[&o.file], &mut |_, _| {})?;
            times.push(r.seconds);
        }
        let stream_s = median(times);
        let g = gbps(len, stream_s);
        rows.push(json!({
            "path": p.path.name(),
            "setup_seconds": first.phases.setup,
            "visible_seconds": visible_s,
            "stream_seconds": stream_s,
            "stream_gbps": g,
            "vs_pread": g / pread_gbps,
            "vs_memcpy": g / memcpy_gbps,
            "visible_vs_pread": visible_s / pread_s,
            "cpu_copied_bytes": first.cpu_copied_bytes,
            "gpu_copied_bytes": first.gpu_copied_bytes,
            "result": first.result.as_ref().map(|r| r.to_string()),
        }));
    }
    let v = json!({
        "file": o.file.display().to_string(),
        "bytes": len,
        "device": gpu.info().name,
        "shader": o.shader.name(),
        "chunk": o.chunk,
        "depth": o.depth,
        "runs": o.runs,
        "baselines": {
            "pread_seconds": pread_s, "pread_gbps": pread_gbps,
            "memcpy_seconds": memcpy_s, "memcpy_gbps": memcpy_gbps,
        },
        "paths": rows,
        "skipped": skipped,
    });
    if o.json {
        return out(&format!("{v}\n")).map(|_| ExitCode::SUCCESS);
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "bench {} ({}) on {}, shader {}, chunk {} x depth {}, median of {} runs, warm page cache",
        o.file.display(),
        human(len),
        gpu.info().name,
        o.shader,
        human(o.chunk),
        o.depth,
        o.runs
    );
    let _ = writeln!(s, "baselines: pread {pread_gbps:.2} GB/s ({pread_s:.3} s), memcpy {memcpy_gbps:.2} GB/s ({memcpy_s:.3} s)");
    let _ = writeln!(
        s,
        "{:<8} {:>11} {:>12} {:>11} {:>9} {:>10} {:>14}",
        "path", "visible s", "vis/pread", "stream GB/s", "vs pread", "vs memcpy", "cpu copied"
    );
    for r in &rows {
        let _ = writeln!(
            s,
            "{:<8} {:>11.3} {:>11.2}x {:>11.2} {:>8.2}x {:>9.2}x {:>14}",
            r["path"].as_str().unwrap_or(""),
            r["visible_seconds"].as_f64().unwrap_or(0.0),
            r["visible_vs_pread"].as_f64().unwrap_or(0.0),
            r["stream_gbps"].as_f64().unwrap_or(0.0),
            r["vs_pread"].as_f64().unwrap_or(0.0),
            r["vs_memcpy"].as_f64().unwrap_or(0.0),
            r["cpu_copied_bytes"].as_u64().unwrap_or(0),
        );
    }
    for k in &skipped {
        let _ = writeln!(
            s,
            "{:<8} skipped: {}",
            k["path"].as_str().unwrap_or(""),
            k["reason"].as_str().unwrap_or("")
        );
    }
    out(&s).map(|_| ExitCode::SUCCESS)
}
