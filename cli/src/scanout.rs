//! `dmafile scanout`: show the frames of a raw video file on a display
//! plane, each straight from the file's pages (docs/scanout.md).
use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use dmafile::display::Format;
use dmafile::scanout::{scanout, ScanoutConfig, ScanoutPath, ScanoutReport};
use serde_json::json;

use crate::{out, CliError};

#[derive(Args)]
pub struct ScanoutOpts {
    /// A raw file of consecutive frames.
    file: PathBuf,
    /// XRGB8888, ARGB8888 or RGB565.
    #[arg(long, default_value = "XRGB8888")]
    format: Format,
    /// Frame size in pixels, WxH.
    #[arg(long, value_parser = dmafile::display::parse_size)]
    size: (u32, u32),
    /// Bytes per row in the file (default: width × bytes per pixel).
    #[arg(long)]
    stride: Option<u32>,
    /// Frames per second (default: one per display refresh).
    #[arg(long)]
    fps: Option<f64>,
    /// How many frames (default: all whole frames).
    #[arg(long)]
    frames: Option<u64>,
    /// auto (direct, else dumb), direct or dumb.
    #[arg(long, default_value = "auto", value_parser = ["auto", "direct", "dumb"])]
    path: String,
    /// Capture each frame with the writeback connector and compare it with
    /// the file; exit 1 on a difference.
    #[arg(long)]
    verify: bool,
    /// DRM device (default: the first KMS device; with --verify, the first
    /// with a writeback connector).
    #[arg(long)]
    device: Option<PathBuf>,
    /// One JSON object on stdout (docs/cli.md).
    #[arg(long)]
    json: bool,
}

fn parse_path(s: &str) -> Option<ScanoutPath> {
    match s {
        "direct" => Some(ScanoutPath::Direct),
        "dumb" => Some(ScanoutPath::Dumb),
        _ => None,
    }
}

pub fn run(o: ScanoutOpts) -> Result<ExitCode, CliError> {
    let cfg = ScanoutConfig {
        format: o.format,
        width: o.size.0,
        height: o.size.1,
        stride: o.stride,
        fps: o.fps,
        frames: o.frames,
        path: parse_path(&o.path),
        verify: o.verify,
        device: o.device,
    };
    let r = scanout(&o.file, &cfg, &mut |_, _| {})?;
    if o.json {
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&to_json(&r)).unwrap()
        ))?;
    } else {
        out(&human(&r))?;
    }
    Ok(if r.verified == Some(false) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn to_json(r: &ScanoutReport) -> serde_json::Value {
    json!({
        "file": r.file.display().to_string(),
        "device": r.device.display().to_string(),
        "driver": r.driver,
        "format": r.format,
        "width": r.width,
        "height": r.height,
        "stride": r.stride,
        "frame_bytes": r.frame_bytes,
        "frames_shown": r.frames_shown,
        "partial_tail_bytes": r.partial_tail_bytes,
        "paths": r.paths,
        "fallbacks": r.fallbacks,
        "cpu_copied_bytes": r.cpu_copied_bytes,
        "seconds": r.seconds,
        "verified": r.verified,
        "mismatches": r.mismatches,
    })
}

fn human(r: &ScanoutReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: {} frames of {}x{} {} (stride {}) on {} ({})",
        r.file.display(),
        r.frames_shown,
        r.width,
        r.height,
        r.format,
        r.stride,
        r.device.display(),
        r.driver
    );
    let paths: Vec<String> = r
        .paths
        .iter()
        .map(|(p, n)| format!("{} {n}", p.name()))
        .collect();
    let _ = writeln!(s, "  paths:        {}", paths.join(", "));
    for f in &r.fallbacks {
        let _ = writeln!(
            s,
            "  fallback:     {} -> {} [{}] for {} frame(s): {}",
            f.from.name(),
            f.to.name(),
            f.code,
            f.frames,
            f.reason
        );
    }
    let _ = writeln!(s, "  cpu copied:   {} bytes", r.cpu_copied_bytes);
    if r.partial_tail_bytes > 0 {
        let _ = writeln!(
            s,
            "  not shown:    the last {} bytes, less than a {}-byte frame",
            r.partial_tail_bytes, r.frame_bytes
        );
    }
    match r.verified {
        Some(true) => {
            let _ = writeln!(s, "  verified:     every capture equals its frame");
        }
        Some(false) => {
            for m in &r.mismatches {
                let _ = writeln!(
                    s,
                    "  MISMATCH:     frame {}: {} pixels differ; first at ({}, {}): file {:02x?}, captured {:02x?}",
                    m.frame, m.pixels_differing, m.x, m.y, m.file, m.captured
                );
            }
        }
        None => {}
    }
    let _ = writeln!(s, "  time:         {:.3} s", r.seconds);
    s
}
