//! scanout-play: plays a raw video file on a KMS display through dmafile's
//! scan-out (docs/scanout.md): each frame's range of the file is mapped by
//! dmafile.ko into a dma-buf and shown by the display straight from the
//! file's pages; frames the module refuses are copied, and said so.
//!
//!     scanout-play make FILE --size WxH --frames N    write a test video
//!     scanout-play play FILE --size WxH [--fps N] [--loops N] [--verify] [--device D]
//!
//! `make` writes XRGB8888 frames of moving colour bars with a white marker
//! that walks one column per frame, so a dropped or repeated frame shows.
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use dmafile::display::Format;
use dmafile::scanout::{scanout, ScanoutConfig, ScanoutPath};

#[derive(Parser)]
#[command(about = "Play a raw video file on a KMS display through dmafile's zero-copy scan-out")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a test video of XRGB8888 frames.
    Make {
        file: PathBuf,
        #[arg(long, value_parser = dmafile::display::parse_size)]
        size: (u32, u32),
        #[arg(long, default_value_t = 120)]
        frames: u32,
    },
    /// Show every frame of a raw file, paced to --fps.
    Play {
        file: PathBuf,
        #[arg(long, value_parser = dmafile::display::parse_size)]
        size: (u32, u32),
        /// XRGB8888, ARGB8888 or RGB565.
        #[arg(long, default_value = "XRGB8888")]
        format: Format,
        /// Bytes per row in the file (default: width × bytes per pixel).
        #[arg(long)]
        stride: Option<u32>,
        #[arg(long, default_value_t = 30.0)]
        fps: f64,
        /// Play the file this many times.
        #[arg(long, default_value_t = 1)]
        loops: u32,
        /// Capture every frame with the writeback connector and compare.
        #[arg(long)]
        verify: bool,
        /// DRM device (default: the first KMS device).
        #[arg(long)]
        device: Option<PathBuf>,
    },
}

/// Pixel (x, y) of test frame `f`: eight colour bars scrolling left by two
/// pixels a frame, and a white column at x = f mod width.
fn test_pixel(x: u32, y: u32, f: u32, w: u32, h: u32) -> [u8; 4] {
    const BARS: [[u8; 3]; 8] = [
        [255, 255, 255],
        [0, 255, 255],
        [255, 255, 0],
        [0, 255, 0],
        [255, 0, 255],
        [0, 0, 255],
        [255, 0, 0],
        [0, 0, 0],
    ];
    if x == f % w {
        return [255, 255, 255, 0];
    }
    let bar = ((x + 2 * f) % w) * 8 / w;
    let [b, g, r] = BARS[bar as usize];
    // Darker towards the bottom, so rows are told apart too.
    let shade = |c: u8| (c as u32 * (2 * h - y) / (2 * h)) as u8;
    [shade(b), shade(g), shade(r), 0]
}

fn make(file: &PathBuf, (w, h): (u32, u32), frames: u32) -> Result<(), String> {
    if w == 0 || h == 0 || frames == 0 {
        return Err(format!("{w}x{h}, {frames} frames: nothing to write"));
    }
    let f = std::fs::File::create(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut out = BufWriter::new(f);
    let mut row = Vec::with_capacity(w as usize * 4);
    for fi in 0..frames {
        for y in 0..h {
            row.clear();
            for x in 0..w {
                row.extend(test_pixel(x, y, fi, w, h));
            }
            out.write_all(&row)
                .map_err(|e| format!("{}: {e}", file.display()))?;
        }
    }
    out.flush()
        .map_err(|e| format!("{}: {e}", file.display()))?;
    println!(
        "{}: {frames} frames of {w}x{h} XRGB8888, {} bytes",
        file.display(),
        frames as u64 * w as u64 * h as u64 * 4
    );
    Ok(())
}

fn run() -> Result<bool, String> {
    let cmd = Cli::parse().cmd;
    let (file, cfg, loops) = match cmd {
        Cmd::Make { file, size, frames } => return make(&file, size, frames).map(|_| true),
        Cmd::Play {
            file,
            size,
            format,
            stride,
            fps,
            loops,
            verify,
            device,
        } => (
            file,
            ScanoutConfig {
                format,
                width: size.0,
                height: size.1,
                stride,
                fps: Some(fps),
                frames: None,
                path: None,
                verify,
                device,
            },
            loops,
        ),
    };
    let mut ok = true;
    for l in 0..loops {
        let mut last = Instant::now();
        let mut since = 0u64;
        let mut progress = |i: u64, path: ScanoutPath| {
            since += 1;
            if last.elapsed().as_secs_f64() >= 1.0 {
                eprintln!(
                    "loop {}: frame {i}, {:.1} fps, last frame {}",
                    l + 1,
                    since as f64 / last.elapsed().as_secs_f64(),
                    path.name()
                );
                last = Instant::now();
                since = 0;
            }
        };
        let r = scanout(&file, &cfg, &mut progress).map_err(|e| e.to_string())?;
        let paths: Vec<String> = r
            .paths
            .iter()
            .map(|(p, n)| format!("{} {n}", p.name()))
            .collect();
        println!(
            "loop {}: {} frames of {}x{} {} on {} ({}) in {:.2} s ({:.1} fps): {}; CPU copied {} bytes",
            l + 1,
            r.frames_shown,
            r.width,
            r.height,
            r.format,
            r.device.display(),
            r.driver,
            r.seconds,
            r.frames_shown as f64 / r.seconds.max(1e-9),
            paths.join(", "),
            r.cpu_copied_bytes
        );
        for f in &r.fallbacks {
            println!(
                "  {} frame(s) {} -> {} [{}]: {}",
                f.frames,
                f.from.name(),
                f.to.name(),
                f.code,
                f.reason
            );
        }
        if r.partial_tail_bytes > 0 {
            println!(
                "  the last {} bytes are less than a frame: not shown",
                r.partial_tail_bytes
            );
        }
        match r.verified {
            Some(true) => println!("  verified: every capture equals its frame"),
            Some(false) => {
                ok = false;
                for m in &r.mismatches {
                    println!(
                        "  MISMATCH frame {}: {} pixels differ, first at ({}, {})",
                        m.frame, m.pixels_differing, m.x, m.y
                    );
                }
            }
            None => {}
        }
    }
    Ok(ok)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("scanout-play: {e}");
            ExitCode::from(2)
        }
    }
}
