//! `dmafile`: inspect the machine, stream files through GPU shaders, benchmark paths.
//!
//! Exit codes: 0 success; 1 a `--verify` mismatch; 2 an error (bad input,
//! unavailable path, device failure). Output formats are in docs/cli.md.
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use dmafile::{Gpu, PathChoice, ShaderKind, StreamConfig, Streamer};

mod bench;
mod info;
mod map;
mod report;
mod scanout;
mod size;

#[derive(Parser)]
#[command(
    name = "dmafile",
    version,
    about = "File bytes into GPU shaders, zero-copy where the machine allows, and always saying how"
)]
struct Opts {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Vulkan devices, the extensions that matter, and which paths work here (and why not).
    Info {
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// The chunk size the installation checks judge memlock against.
        #[arg(long, default_value = "16M", value_parser = size::parse_size)]
        chunk: u64,
        /// The chunks in flight the installation checks judge memlock against.
        #[arg(long, default_value_t = dmafile::stream::DEFAULT_DEPTH)]
        depth: usize,
    },
    /// Stream files through a shader in chunks and print a summary.
    Stream(StreamOpts),
    /// Time each available path against memcpy and pread of the same bytes.
    Bench(bench::BenchOpts),
    /// Map a file range through dmafile.ko and print the dma-buf's status.
    Map(map::MapOpts),
    /// Show a raw video file's frames on a display plane, each read from the file's pages.
    Scanout(scanout::ScanoutOpts),
}

#[derive(Args)]
struct StreamOpts {
    /// Files to stream, in order (one stream: the result covers their concatenation).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// auto, direct, host, heap or upload.
    #[arg(long, default_value = "auto", value_parser = parse_path_choice)]
    path: PathChoice,
    /// Bytes per chunk (units: K, M, G); a multiple of 4 KiB within the device's limit.
    #[arg(long, default_value = "16M", value_parser = size::parse_size)]
    chunk: u64,
    /// Chunks in flight (reading chunk n+1 overlaps the shader on chunk n).
    #[arg(long, default_value_t = dmafile::stream::DEFAULT_DEPTH)]
    depth: usize,
    /// crc32c, sum64, histogram or none.
    #[arg(long, default_value = "crc32c", value_parser = parse_shader)]
    shader: ShaderKind,
    /// Refuse a chunk/depth whose buffers could exceed this many bytes.
    #[arg(long, value_parser = size::parse_size)]
    memory_budget: Option<u64>,
    /// Recompute on the CPU; exit 1 on a mismatch.
    #[arg(long)]
    verify: bool,
    /// host and direct: let the device fault uncached chunks in, instead
    /// of reading them into the page cache on every CPU first.
    #[arg(long)]
    no_readahead: bool,
    /// upload and heap: read each chunk on every CPU in parallel (sooner
    /// done, more CPU per byte) instead of with one read.
    #[arg(long)]
    parallel_reads: bool,
    /// One JSON object on stdout (docs/cli.md).
    #[arg(long)]
    json: bool,
}

fn parse_path_choice(s: &str) -> Result<PathChoice, String> {
    s.parse()
}

fn parse_shader(s: &str) -> Result<ShaderKind, String> {
    s.parse()
}

/// An error the CLI prints, with its exit code.
pub struct CliError {
    pub msg: String,
    pub code: u8,
}

impl From<dmafile::Error> for CliError {
    fn from(e: dmafile::Error) -> Self {
        let msg = match e {
            // Name the flag, not the library's field.
            dmafile::Error::Config { setting, msg } => {
                format!("invalid --{}: {msg}", setting.replace('_', "-"))
            }
            // The CLI's only source of a wanted device.
            dmafile::Error::NoSuchDevice { wanted, have } => format!(
                "{}={wanted:?} matches no Vulkan device (have: {have})",
                dmafile::DEVICE_ENV
            ),
            e => e.to_string(),
        };
        CliError { msg, code: 2 }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError {
            msg: e.to_string(),
            code: 2,
        }
    }
}

/// Writes to stdout, treating a closed pipe as success (like ripgrep).
pub fn out(s: &str) -> Result<(), CliError> {
    let mut o = std::io::stdout().lock();
    match o.write_all(s.as_bytes()).and_then(|_| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// A progress bar on stderr, hidden off a terminal or with DMAFILE_NO_PROGRESS.
fn progress_bar(total: u64, label: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() || std::env::var_os("DMAFILE_NO_PROGRESS").is_some() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(label.to_string());
    pb
}

fn stream(o: StreamOpts) -> Result<ExitCode, CliError> {
    let gpu = Gpu::open_from_env()?;
    let cfg = StreamConfig {
        path: o.path,
        chunk: o.chunk,
        depth: o.depth,
        shader: o.shader,
        memory_budget: o.memory_budget,
        verify: o.verify,
        readahead: !o.no_readahead,
        parallel_reads: o.parallel_reads,
        ..StreamConfig::from_env()
    };
    let mut s = Streamer::new(&gpu, cfg)?;
    let mut pb: Option<indicatif::ProgressBar> = None;
    let label = if o.files.len() == 1 {
        o.files[0].display().to_string()
    } else {
        format!("{} files", o.files.len())
    };
    let rep = s.run(&o.files, &mut |done, total| {
        let bar = pb.get_or_insert_with(|| progress_bar(total, &label));
        bar.set_position(done);
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    if o.json {
        out(&format!("{}\n", report::stream_json(&rep)))?;
    } else {
        out(&report::stream_human(&rep))?;
    }
    if rep.verified == Some(false) {
        eprintln!("dmafile: verification FAILED: the GPU result differs from the CPU's");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The runtime's log records at warning level and above, on stderr: the
/// library never prints, the command decides to.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let level = r.level().as_str().to_lowercase();
            eprintln!("dmafile: {level}: {}", r.args());
        }
    }

    fn flush(&self) {}
}

fn main() -> ExitCode {
    let _ = log::set_logger(&StderrLog).map(|()| log::set_max_level(log::LevelFilter::Warn));
    let opts = Opts::parse();
    let r = match opts.cmd {
        Cmd::Info { json, chunk, depth } => info::run(json, chunk, depth),
        Cmd::Stream(o) => stream(o),
        Cmd::Bench(o) => bench::run(o),
        Cmd::Map(o) => map::run(o),
        Cmd::Scanout(o) => scanout::run(o),
    };
    match r {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dmafile: error: {}", e.msg);
            ExitCode::from(e.code)
        }
    }
}
