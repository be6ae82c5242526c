//! sum64 of a whole file with a WGSL shader, on a buffer dmafile-wgpu
//! imported (default) or read into through the read queue (`--read`):
//!
//!     cargo run -p dmafile-wgpu --example sum -- FILE [--path P] [--read]
//!     cargo run -p dmafile-wgpu --example sum -- --list-paths
//!
//! Prints `sum64=<decimal> path=<path>` on stdout, each fallback on
//! stderr. `--list-paths` prints, for the device it opens, one line per
//! path: `<path> available` or `<path> unavailable <code>: <reason>`.
//! Exit 1 on error, 2 on bad usage.
#[path = "common/sum64.rs"]
mod sum64;

use dmafile::{PathChoice, ReadQueueOptions};
use dmafile_wgpu::{Device, DeviceOptions};

struct Args {
    file: Option<String>,
    list: bool,
    path: PathChoice,
    read: bool,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut file, mut path, mut read, mut list) = (None, PathChoice::Auto, false, false);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--path" => {
                let v = it.next().ok_or("--path needs a value")?;
                path = v.parse().map_err(|e| format!("--path: {e}"))?;
            }
            "--read" => read = true,
            "--list-paths" => list = true,
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ if file.is_some() => return Err(format!("one file only (got another: {a})")),
            _ => file = Some(a),
        }
    }
    if file.is_none() && !list {
        return Err(
            "usage: sum FILE [--path auto|direct|host|heap|upload] [--read] | sum --list-paths"
                .into(),
        );
    }
    Ok(Args {
        file,
        list,
        path,
        read,
    })
}

fn list_paths() -> Result<(), String> {
    let dev = Device::open_default(&DeviceOptions::default()).map_err(|e| e.to_string())?;
    for p in dev.path_availability() {
        match (p.code, p.reason) {
            (Some(code), Some(reason)) => println!("{} unavailable {code}: {reason}", p.path),
            _ => println!("{} available", p.path),
        }
    }
    Ok(())
}

fn run(a: &Args, file: &str) -> Result<(u64, String), String> {
    let dev = Device::open_default(&DeviceOptions::default()).map_err(|e| e.to_string())?;
    let len = std::fs::metadata(file)
        .map_err(|e| format!("{file}: {e}"))?
        .len();
    let sum = sum64::Sum64::new(&dev.device);
    if a.read {
        let mut reader = dev
            .reader(ReadQueueOptions {
                path: a.path,
                ..Default::default()
            })
            .map_err(|e| e.to_string())?;
        let dst = dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("destination"),
            size: len.next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let pending = reader
            .read_into(file, 0, len, &dst, 0)
            .map_err(|e| e.to_string())?;
        let s = sum.run(&dev.device, &dev.queue, &dst, 0, len)?;
        let report = reader.wait(pending).map_err(|e| e.to_string())?;
        for f in &report.fallbacks {
            eprintln!("fallback {} -> {}: {} [{}]", f.from, f.to, f.reason, f.code);
        }
        let path = report.path.map_or("none".into(), |p| p.to_string());
        eprintln!(
            "read: cpu_copied={} gpu_copied={}",
            report.cpu_copied_bytes, report.gpu_copied_bytes
        );
        Ok((s, path))
    } else {
        let imported = dev
            .import(file, 0, len, a.path)
            .map_err(|e| e.to_string())?;
        for f in imported.fallbacks() {
            eprintln!("fallback {} -> {}: {} [{}]", f.from, f.to, f.reason, f.code);
        }
        let s = sum.run(
            &dev.device,
            &dev.queue,
            &imported.buffer,
            imported.skew(),
            len,
        )?;
        imported.check().map_err(|e| e.to_string())?;
        Ok((s, imported.path().to_string()))
    }
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sum: {e}");
            std::process::exit(2);
        }
    };
    let result = match &args.file {
        _ if args.list => list_paths().map(|()| None),
        Some(file) => run(&args, file).map(Some),
        None => unreachable!("parse requires a file without --list-paths"),
    };
    match result {
        Ok(None) => {}
        Ok(Some((s, path))) => println!("sum64={s} path={path}"),
        Err(e) => {
            eprintln!("sum: {e}");
            std::process::exit(1);
        }
    }
}
