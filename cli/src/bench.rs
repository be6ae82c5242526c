//! `dmafile bench`: every available path against reading the same bytes,
//! measured in the same run, in alternation, as medians with their spread.
//!
//! A round runs every route once, in an order rotated by one each round;
//! one warm-up round is not counted. Routes:
//! - baselines that read the files: `cat` (a child process), `pread` (one
//!   thread), `pread xN` (one thread per CPU), and with `--cold` `dd
//!   iflag=direct bs=1M` (the storage without the page cache);
//! - the read bound (warm only): `memcpy xN`, the bytes copied out of the
//!   page cache by every CPU: nothing can read them faster;
//! - the shader on resident data: the same kernel over bytes already in
//!   device memory, the ceiling of any stream through it;
//! - each path: a fresh `Streamer` (its setup timed apart), its first run
//!   (`first`: everything a new streamer pays, lazy driver work included)
//!   and a second run of the same streamer (`stream`).
//!
//! Every path run's result must equal the CPU's, or the bench fails. CPU
//! time is the process's (`getrusage`; lavapipe's threads included) or the
//! child's for `cat` and `dd`. The JSON is documented in docs/cli.md.
use std::ffi::c_void;
use std::fmt::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use clap::Args;
use dmafile::source::Content;
use dmafile::{
    Accumulator, Gpu, PathChoice, PathKind, ShaderKind, SourceFile, StreamConfig, Streamer,
};
use nix::libc;
use serde_json::{json, Value};

use crate::report::gbps;
use crate::size::{human, parse_size};
use crate::{out, CliError};

const GIB: f64 = (1u64 << 30) as f64;
/// Bytes per read of the reading baselines (cat reads 128 KiB).
const PIECE: usize = 1 << 20;

#[derive(Args)]
pub struct BenchOpts {
    /// The files to read, as one stream (many small files: time-to-visible
    /// of the set).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Bytes per chunk.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    chunk: u64,
    /// Chunks in flight.
    #[arg(long, default_value_t = dmafile::stream::DEFAULT_DEPTH)]
    depth: usize,
    /// Shader for the timed passes; it reads every byte (`none` is refused:
    /// on host and direct it would read none).
    #[arg(long, default_value = "sum64", value_parser = crate::parse_shader)]
    shader: ShaderKind,
    /// Counted rounds (each runs every route once; one more warm-up round
    /// runs first and is not counted).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Only these paths (comma-separated: direct, host, heap, upload).
    #[arg(long, value_delimiter = ',', value_parser = parse_path)]
    paths: Vec<PathKind>,
    /// Evict the files from the page cache before every timed run
    /// (posix_fadvise DONTNEED, checked with mincore), and add
    /// `dd iflag=direct` to the baselines.
    #[arg(long)]
    cold: bool,
    /// host and direct: let the device fault uncached chunks in, instead
    /// of reading them into the page cache first (to measure what that
    /// buys; with --cold).
    #[arg(long)]
    no_readahead: bool,
    /// upload and heap: read each chunk on every CPU in parallel (as for
    /// `stream`), to measure what it costs and buys.
    #[arg(long)]
    parallel_reads: bool,
    /// One JSON object on stdout (docs/cli.md).
    #[arg(long)]
    json: bool,
}

fn parse_path(s: &str) -> Result<PathKind, String> {
    match s.parse::<PathChoice>()? {
        PathChoice::Only(k) => Ok(k),
        _ => Err(format!("{s}: name a path (direct, host, heap, upload)")),
    }
}

fn usage(msg: String) -> CliError {
    CliError { msg, code: 2 }
}

/// Process CPU seconds (user + system) of `who`.
fn cpu_seconds(who: i32) -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// One timed run: wall seconds and CPU seconds.
#[derive(Clone, Copy)]
struct Sample {
    wall: f64,
    cpu: f64,
}

#[derive(Default)]
struct Series(Vec<Sample>);

/// (median, min, max) of `v`; zeros when empty.
fn stat(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

/// `{median, min, max, samples}` of some seconds.
fn spread(v: &[f64]) -> Value {
    let (med, min, max) = stat(v.to_vec());
    json!({"median": med, "min": min, "max": max, "samples": v})
}

impl Series {
    fn walls(&self) -> Vec<f64> {
        self.0.iter().map(|s| s.wall).collect()
    }
    fn median(&self) -> f64 {
        stat(self.walls()).0
    }
    fn cpu_median(&self) -> f64 {
        stat(self.0.iter().map(|s| s.cpu).collect()).0
    }
    fn json(&self, bytes: u64) -> Value {
        let mut v = spread(&self.walls());
        v["gbps"] = json!(gbps(bytes, self.median()));
        v["cpu_seconds_per_gib"] = json!(self.cpu_median() / (bytes as f64 / GIB));
        v
    }
}

/// A read-only mapping of a whole file, populated (the memcpy bound).
struct Mapped {
    ptr: *mut c_void,
    len: usize,
}

impl Mapped {
    fn new(f: &Input) -> std::io::Result<Mapped> {
        let file = std::fs::File::open(&f.path)?;
        let len = f.len as usize;
        // SAFETY: a fresh shared read-only mapping of an open file (the
        // mapping outlives the descriptor, closed on return).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: mapped for len bytes while self lives; nobody writes the
        // files while the bench runs (results are checked each run).
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr, self.len.max(1)) };
    }
}

// SAFETY: read-only memory, shared by reading threads only.
unsafe impl Sync for Mapped {}

/// A piece of the files: (file index, offset, length).
type Piece = (usize, u64, usize);
/// What a reader thread does with a piece and its own buffer.
type PieceWork<'a> = dyn Fn(Piece, &mut [u8]) -> std::io::Result<()> + Sync + 'a;

/// The 1 MiB pieces of all files.
fn pieces(files: &[Input]) -> Vec<Piece> {
    let mut v = vec![];
    for (i, f) in files.iter().enumerate() {
        let mut off = 0;
        while off < f.len {
            let n = (f.len - off).min(PIECE as u64) as usize;
            v.push((i, off, n));
            off += n as u64;
        }
    }
    v
}

/// Runs `work(piece, buffer)` over every piece on `threads` threads, each
/// with its own 1 MiB buffer.
fn on_threads(threads: usize, pieces: &[Piece], work: &PieceWork<'_>) -> std::io::Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                sc.spawn(|| {
                    let mut buf = vec![0u8; PIECE];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&p) = pieces.get(i) else {
                            return Ok(());
                        };
                        work(p, &mut buf)?;
                        std::hint::black_box(&mut buf);
                    }
                })
            })
            .collect();
        hs.into_iter()
            .try_for_each(|h| h.join().expect("reader thread panicked"))
    })
}

/// A file of the bench, by name: opened by each route as it reads, like
/// `cat` and the streamer do (no route keeps a descriptor across runs).
struct Input {
    path: PathBuf,
    len: u64,
}

/// Pages of `file` (`len` bytes) in the page cache: cachestat(2) where the
/// kernel has it (6.5+); else mincore(2) over a mapping, which since Linux
/// 5.0 tells the truth only to the file's owner or a process that may write
/// it, so anyone else gets `None`.
fn cached_pages(
    file: &std::fs::File,
    path: &std::path::Path,
    len: u64,
) -> std::io::Result<Option<u64>> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    /// cachestat's number, the same on every architecture.
    const SYS_CACHESTAT: libc::c_long = 451;
    let fd = file.as_raw_fd();
    let range = Range { off: 0, len };
    let mut st = Stat::default();
    // SAFETY: cachestat reads `range` and fills `st`.
    let r = unsafe { libc::syscall(SYS_CACHESTAT, fd, &range, &mut st, 0) };
    if r == 0 {
        return Ok(Some(st.nr_cache));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    let meta = file.metadata()?;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: plain queries on a NUL-terminated path.
    let trusted = unsafe {
        std::os::unix::fs::MetadataExt::uid(&meta) == libc::geteuid()
            || libc::geteuid() == 0
            || libc::access(c_path.as_ptr(), libc::W_OK) == 0
    };
    if !trusted || len == 0 {
        return Ok(if len == 0 { Some(0) } else { None });
    }
    // SAFETY: plain query.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    // SAFETY: a mapping only looked at by mincore, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let mut vec = vec![0u8; len.div_ceil(page) as usize];
    // SAFETY: vec holds one byte per page of the mapping.
    let r = unsafe { libc::mincore(p, len as usize, vec.as_mut_ptr()) };
    let e = std::io::Error::last_os_error();
    // SAFETY: our mapping.
    unsafe { libc::munmap(p, len as usize) };
    if r != 0 {
        return Err(e);
    }
    Ok(Some(vec.iter().filter(|&&b| b & 1 != 0).count() as u64))
}

/// The share of the files' pages in the page cache (`None` where that
/// cannot be told: no cachestat, and mincore would not answer).
fn resident_share(files: &[Input]) -> Option<f64> {
    // SAFETY: plain query.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let (mut cached, mut pages) = (0u64, 0u64);
    for f in files {
        let file = std::fs::File::open(&f.path).ok()?;
        cached += cached_pages(&file, &f.path, f.len).ok()??;
        pages += f.len.div_ceil(page);
    }
    Some(if pages == 0 {
        1.0
    } else {
        cached as f64 / pages as f64
    })
}

/// Evicts every file from the page cache and checks that it left: a file
/// the kernel keeps (tmpfs, pages mapped or locked elsewhere), or whose
/// residency cannot be told, cannot be read cold, and the bench says so
/// rather than time the cache.
fn evict(files: &[Input]) -> Result<(), CliError> {
    // SAFETY: plain query.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    for f in files {
        let name = f.path.display();
        let file = std::fs::File::open(&f.path)
            .map_err(|e| usage(format!("--cold: {name}: cannot open: {e}")))?;
        let fd = file.as_raw_fd();
        // SAFETY: plain syscalls on an open fd; dirty pages are written
        // first, since DONTNEED leaves them.
        unsafe {
            libc::fdatasync(fd);
            libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
        }
        let pages = f.len.div_ceil(page);
        match cached_pages(&file, &f.path, f.len) {
            Err(e) => return Err(usage(format!("--cold: {name}: cannot tell what of it is cached: {e}"))),
            Ok(None) => return Err(usage(format!(
                "--cold: {name}: cannot tell whether it left the page cache: this kernel has no cachestat(2) and mincore(2) answers only the file's owner or root"
            ))),
            Ok(Some(resident)) if resident * 100 > pages => return Err(usage(format!(
                "--cold: {name}: {resident} of its {pages} pages stayed in the page cache after posix_fadvise(DONTNEED): the file cannot be read cold (tmpfs and ramfs hold files only in memory; pages another process maps or locks stay)"
            ))),
            Ok(Some(_)) => {}
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Route {
    Cat,
    Pread,
    PreadPar,
    Dd,
    Memcpy,
    Resident,
    Path(usize),
}

struct PathRow {
    kind: PathKind,
    setup: Vec<f64>,
    first: Series,
    stream: Series,
    /// New `dmafile stream` processes (Bench::new_process).
    process: Series,
    last: Option<dmafile::StreamReport>,
    /// Failed on these files (reported in `skipped`).
    dropped: bool,
    /// Copy paths only: a streamer with no shader, kept across rounds; its
    /// runs time making every byte visible, which here is reading every
    /// byte (into staging or a heap buffer), so the CPU it costs compares
    /// with `cat`'s.
    visible: Option<(Streamer, Series)>,
}

struct Bench<'a> {
    o: &'a BenchOpts,
    gpu: Gpu,
    cfg: StreamConfig,
    files: Vec<Input>,
    bytes: u64,
    threads: usize,
    expected: Option<dmafile::ShaderResult>,
    resident: Option<(Streamer, usize)>,
    /// The CPU's result for the resident pass, computed at its first run.
    resident_expected: Option<Option<dmafile::ShaderResult>>,
}

impl Bench<'_> {
    fn cold(&self) -> Result<(), CliError> {
        if self.o.cold {
            evict(&self.files)?;
        }
        Ok(())
    }

    /// Times `f` in this process.
    fn timed(&self, f: impl FnOnce() -> Result<(), CliError>) -> Result<Sample, CliError> {
        self.cold()?;
        let c = cpu_seconds(libc::RUSAGE_SELF);
        let t = Instant::now();
        f()?;
        Ok(Sample {
            wall: t.elapsed().as_secs_f64(),
            cpu: cpu_seconds(libc::RUSAGE_SELF) - c,
        })
    }

    /// Times child processes (their CPU is theirs, from RUSAGE_CHILDREN).
    fn child(&self, cmds: Vec<Command>) -> Result<Sample, CliError> {
        self.cold()?;
        let c = cpu_seconds(libc::RUSAGE_CHILDREN);
        let t = Instant::now();
        for mut cmd in cmds {
            let name = format!("{cmd:?}");
            let st = cmd
                .stdout(Stdio::null())
                .status()
                .map_err(|e| usage(format!("bench: cannot run {name}: {e}")))?;
            if !st.success() {
                return Err(CliError {
                    msg: format!("bench: baseline {name} failed: {st}"),
                    code: 1,
                });
            }
        }
        Ok(Sample {
            wall: t.elapsed().as_secs_f64(),
            cpu: cpu_seconds(libc::RUSAGE_CHILDREN) - c,
        })
    }

    fn baseline(&mut self, r: Route) -> Result<Sample, CliError> {
        let files = &self.files;
        match r {
            Route::Cat => {
                // In batches, to stay far below the kernel's argument limit.
                let cmds = files
                    .chunks(1000)
                    .map(|b| {
                        let mut c = Command::new("cat");
                        c.arg("--").args(b.iter().map(|f| &f.path));
                        c
                    })
                    .collect();
                self.child(cmds)
            }
            Route::Dd => self.child(
                files
                    .iter()
                    .map(|f| {
                        let mut c = Command::new("dd");
                        let mut arg = std::ffi::OsString::from("if=");
                        arg.push(&f.path);
                        c.arg(arg)
                            .args(["of=/dev/null", "bs=1M", "iflag=direct", "status=none"]);
                        c
                    })
                    .collect(),
            ),
            Route::Pread | Route::PreadPar => {
                let p = pieces(files);
                let threads = if r == Route::Pread { 1 } else { self.threads };
                // Each piece opens its file, as cat and the streamer pay an
                // open per file per run.
                self.timed(|| {
                    Ok(on_threads(threads, &p, &|(i, off, n), buf| {
                        std::fs::File::open(&files[i].path)?.read_exact_at(&mut buf[..n], off)
                    })?)
                })
            }
            Route::Memcpy => {
                let p = pieces(files);
                // Mapped and populated before the clock: only the copy is timed.
                let maps: Vec<Mapped> = files.iter().map(Mapped::new).collect::<Result<_, _>>()?;
                let maps = &maps;
                self.timed(|| {
                    Ok(on_threads(self.threads, &p, &|(i, off, n), buf| {
                        let o = off as usize;
                        buf[..n].copy_from_slice(&maps[i].bytes()[o..o + n]);
                        Ok(())
                    })?)
                })
            }
            Route::Resident => {
                // Nothing is read inside its clock: no eviction; its CPU
                // is the timed loop's (filling the slots is outside).
                let bytes = self.bytes;
                let (s, sample) = self.resident.as_mut().expect("built with the routes");
                let f = &SourceFile::open(&self.files[*sample].path)?;
                let r = s.resident_pass(f, bytes)?;
                let cpu = r.cpu_seconds;
                if self.resident_expected.is_none() {
                    self.resident_expected = Some(repeated_reference(f, self.o, bytes)?);
                }
                if self.resident_expected.as_ref() != Some(&r.result) {
                    return Err(CliError {
                        msg: format!(
                            "bench: the shader on resident data gave {} where the CPU computed {}",
                            show(&r.result),
                            show(self.resident_expected.as_ref().expect("set above"))
                        ),
                        code: 1,
                    });
                }
                Ok(Sample {
                    wall: r.seconds,
                    cpu,
                })
            }
            Route::Path(_) => unreachable!("paths are run by run_path"),
        }
    }

    /// A new `dmafile stream` process over the files on path `k`: its wall
    /// time from spawn to exit is a new process's time-to-visible, start-up
    /// and everything lazy included. Its result must be the CPU's.
    fn new_process(&self, k: PathKind) -> Result<Sample, CliError> {
        let exe = std::env::current_exe()
            .map_err(|e| usage(format!("bench: cannot find its own executable: {e}")))?;
        let mut c = Command::new(exe);
        c.arg("stream")
            .args(["--path", k.name(), "--shader", self.o.shader.name()])
            .args(["--chunk", &self.o.chunk.to_string()])
            .args(["--depth", &self.o.depth.to_string(), "--json"]);
        if self.o.no_readahead {
            c.arg("--no-readahead");
        }
        if self.o.parallel_reads {
            c.arg("--parallel-reads");
        }
        c.arg("--").args(self.files.iter().map(|f| &f.path));
        self.cold()?;
        let cpu = cpu_seconds(libc::RUSAGE_CHILDREN);
        let t = Instant::now();
        let out = c
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| usage(format!("bench: cannot run dmafile stream: {e}")))?;
        let wall = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds(libc::RUSAGE_CHILDREN) - cpu;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let want = serde_json::to_value(&self.expected).unwrap_or(Value::Null);
        if !out.status.success() || v["result"] != want {
            return Err(CliError {
                msg: format!(
                    "bench: a new `dmafile stream --path {}` process gave {} ({}) where the CPU computed {want}: {}",
                    k.name(),
                    v["result"],
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                code: 1,
            });
        }
        Ok(Sample { wall, cpu })
    }

    /// One `run` of `s` over the files (the files evicted first with
    /// `--cold`): its report and sample. The outer error ends the bench,
    /// the inner one (the stream's own) drops the path.
    #[allow(clippy::type_complexity)]
    fn stream_once(
        &self,
        s: &mut Streamer,
        paths: &[&PathBuf],
    ) -> Result<Result<(dmafile::StreamReport, Sample), CliError>, CliError> {
        self.cold()?;
        let c = cpu_seconds(libc::RUSAGE_SELF);
        Ok(match s.run(paths, &mut |_, _| {}) {
            Ok(r) => {
                let sample = Sample {
                    wall: r.seconds,
                    cpu: cpu_seconds(libc::RUSAGE_SELF) - c,
                };
                Ok((r, sample))
            }
            Err(e) => Err(e.into()),
        })
    }

    /// A fresh streamer's setup, first run and second run. The outer error
    /// ends the bench (a wrong result); the inner one drops the path.
    fn run_path(&self, row: &mut PathRow, counted: bool) -> Result<Result<(), CliError>, CliError> {
        let cfg = StreamConfig {
            path: PathChoice::Only(row.kind),
            ..self.cfg.clone()
        };
        let t = Instant::now();
        let mut s = match Streamer::new(&self.gpu, cfg) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e.into())),
        };
        let setup = t.elapsed().as_secs_f64();
        let paths: Vec<_> = self.files.iter().map(|f| &f.path).collect();
        let mut samples = [Sample {
            wall: 0.0,
            cpu: 0.0,
        }; 2];
        for sample in &mut samples {
            let r = match self.stream_once(&mut s, &paths)? {
                Ok((r, x)) => {
                    *sample = x;
                    r
                }
                Err(e) => return Ok(Err(e)),
            };
            if r.result != self.expected {
                return Err(CliError {
                    msg: format!(
                        "bench: {} gave {} where the CPU computed {}",
                        row.kind.name(),
                        show(&r.result),
                        show(&self.expected)
                    ),
                    code: 1,
                });
            }
            row.last = Some(r);
        }
        if counted {
            row.setup.push(setup);
            row.first.0.push(samples[0]);
            row.stream.0.push(samples[1]);
        }
        drop(s);
        let p = self.new_process(row.kind)?;
        if counted {
            row.process.0.push(p);
        }
        if !matches!(row.kind, PathKind::Upload | PathKind::Heap) {
            return Ok(Ok(()));
        }
        if row.visible.is_none() {
            let cfg = StreamConfig {
                path: PathChoice::Only(row.kind),
                shader: ShaderKind::None,
                ..self.cfg.clone()
            };
            match Streamer::new(&self.gpu, cfg) {
                Ok(s) => row.visible = Some((s, Series::default())),
                Err(e) => return Ok(Err(e.into())),
            }
        }
        let (s, series) = row.visible.as_mut().expect("made above");
        let (r, sample) = match self.stream_once(s, &paths)? {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        if r.cpu_copied_bytes != self.bytes {
            return Err(CliError {
                msg: format!(
                    "bench: {} with no shader copied {} of {} bytes",
                    row.kind.name(),
                    r.cpu_copied_bytes,
                    self.bytes
                ),
                code: 1,
            });
        }
        if counted {
            series.0.push(sample);
        }
        Ok(Ok(()))
    }
}

/// What the resident pass computes: the shader over the first chunk of `f`
/// (whole words) repeated to `bytes` (Streamer::resident_pass).
fn repeated_reference(
    f: &SourceFile,
    o: &BenchOpts,
    bytes: u64,
) -> Result<Option<dmafile::ShaderResult>, CliError> {
    let n0 = (o.chunk.min(f.len()) / 4 * 4) as usize;
    let mut buf = vec![0u8; n0];
    f.read_exact_at(&mut buf, 0)?;
    let mut acc = Accumulator::new(o.shader);
    let mut left = bytes as usize;
    while left > 0 {
        let n = n0.min(left);
        acc.update_cpu(&buf[..n]);
        left -= n;
    }
    Ok(acc.result())
}

fn show(r: &Option<dmafile::ShaderResult>) -> String {
    r.as_ref().map_or("nothing".into(), |r| r.to_string())
}

fn route_name(r: Route, threads: usize) -> String {
    match r {
        Route::Cat => "cat".into(),
        Route::Pread => "pread".into(),
        Route::PreadPar => format!("pread x{threads}"),
        Route::Dd => "dd iflag=direct".into(),
        Route::Memcpy => format!("memcpy x{threads}"),
        Route::Resident => "shader, resident".into(),
        Route::Path(_) => "path".into(),
    }
}

pub fn run(o: BenchOpts) -> Result<ExitCode, CliError> {
    if o.runs == 0 {
        return Err(usage("--runs must be at least 1".into()));
    }
    if o.shader == ShaderKind::None {
        // With no shader the host and direct paths map the file and never
        // read it: the figure would be the cost of a mapping, reported as
        // a read of every byte.
        return Err(usage("--shader none: bench times reads of every byte, and with no shader the host and direct paths read none (the mapping alone would be timed); use crc32c, sum64 or histogram".into()));
    }
    let mut files = vec![];
    for p in &o.files {
        // Checked, then closed: no route keeps a file open across runs.
        let f = SourceFile::open(p)?;
        if let Content::Snapshot { fs, .. } = f.content() {
            return Err(usage(format!(
                "{}: a pseudo-file on {fs}, generated on each read: nothing to time against storage",
                p.display()
            )));
        }
        files.push(Input {
            path: p.clone(),
            len: f.len(),
        });
    }
    let bytes: u64 = files.iter().map(|f| f.len).sum();
    if files.iter().all(|f| f.len < 4) {
        return Err(usage(
            "every file is under 4 bytes (one word): nothing to time".into(),
        ));
    }
    let load_start = load_average();
    let t = Instant::now();
    let gpu = Gpu::open_from_env()?;
    let startup = t.elapsed().as_secs_f64();
    let cfg = StreamConfig {
        chunk: o.chunk,
        depth: o.depth,
        shader: o.shader,
        readahead: !o.no_readahead,
        parallel_reads: o.parallel_reads,
        ..StreamConfig::from_env()
    };
    dmafile::stream::validate_config(&gpu, &cfg)?;
    if o.cold {
        evict(&files)?; // refuses before anything is timed
    }
    // The result every path run must give.
    let mut expected = Accumulator::new(o.shader);
    for f in &files {
        expected.append(&dmafile::stream::cpu_reference(
            &SourceFile::open(&f.path)?,
            o.shader,
        )?);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let largest = (0..files.len())
        .max_by_key(|&i| files[i].len)
        .expect("at least one file");
    let resident = Streamer::new(&gpu, cfg.clone())?;

    let mut rows = vec![];
    let mut skipped = vec![];
    for p in gpu.path_availability() {
        if !o.paths.is_empty() && !o.paths.contains(&p.path) {
            continue;
        }
        if p.available {
            rows.push(PathRow {
                kind: p.path,
                setup: vec![],
                first: Series::default(),
                stream: Series::default(),
                process: Series::default(),
                last: None,
                dropped: false,
                visible: None,
            });
        } else {
            skipped.push(json!({"path": p.path.name(), "code": p.code.map(|c| c.name()), "reason": p.reason}));
        }
    }
    let mut routes = vec![Route::Cat, Route::Pread, Route::PreadPar];
    routes.push(if o.cold { Route::Dd } else { Route::Memcpy });
    routes.push(Route::Resident);
    routes.extend((0..rows.len()).map(Route::Path));
    let mut b = Bench {
        o: &o,
        gpu,
        cfg,
        files,
        bytes,
        threads,
        expected: expected.result(),
        resident: Some((resident, largest)),
        resident_expected: None,
    };
    let mut base: Vec<Series> = routes.iter().map(|_| Series::default()).collect();
    // Each round runs the routes in its own order: a shuffle from a fixed
    // seed (so a rerun repeats it), recorded in the JSON. No route keeps
    // its place or its neighbour from round to round.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut orders: Vec<Vec<String>> = vec![];
    let mut resident: Vec<Option<f64>> = vec![];
    for round in 0..=o.runs {
        let counted = round > 0;
        if !o.cold && counted {
            // "Warm" is checked, not assumed: the share of the files' pages
            // in the page cache as each counted round starts.
            resident.push(resident_share(&b.files));
        }
        let mut order: Vec<usize> = (0..routes.len()).collect();
        for k in (1..order.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            order.swap(k, (rng % (k as u64 + 1)) as usize);
        }
        orders.push(
            order
                .iter()
                .map(|&i| match routes[i] {
                    Route::Path(p) => rows[p].kind.name().to_string(),
                    r => route_name(r, threads),
                })
                .collect(),
        );
        for i in order {
            match routes[i] {
                Route::Path(p) if !rows[p].dropped => {
                    if let Err(e) = b.run_path(&mut rows[p], counted)? {
                        // A path the machine offers but these files cannot
                        // take: reported, not run again.
                        skipped.push(json!({"path": rows[p].kind.name(), "reason": e.msg}));
                        rows[p].dropped = true;
                    }
                }
                Route::Path(_) => {}
                r => {
                    let s = b.baseline(r)?;
                    if counted {
                        base[i].0.push(s);
                    }
                }
            }
        }
    }
    drop(b.resident.take());
    let load_end = load_average();

    // Reading baselines: the best is what "vs read" compares against.
    let name = |i: usize| route_name(routes[i], threads);
    let reads: Vec<usize> = (0..routes.len())
        .filter(|&i| {
            matches!(
                routes[i],
                Route::Cat | Route::Pread | Route::PreadPar | Route::Dd
            )
        })
        .filter(|&i| !base[i].0.is_empty())
        .collect();
    let best_read = *reads
        .iter()
        .min_by(|&&a, &&c| base[a].median().total_cmp(&base[c].median()))
        .expect("cat always runs");
    let read_s = base[best_read].median();
    let idx = |r: Route| routes.iter().position(|&x| x == r);
    let resident_i = idx(Route::Resident).expect("always a route");
    let shader_s = base[resident_i].median();
    let shader_cpu_gib = base[resident_i].cpu_median() / (bytes as f64 / GIB);
    let ceiling_s = read_s.max(shader_s);

    // The read bound (warm only): the fastest the CPUs read these bytes out
    // of the page cache, by memcpy from a mapping or by read(2).
    let bound = (!o.cold).then(|| {
        let i = (0..routes.len())
            .filter(|&i| {
                matches!(
                    routes[i],
                    Route::Memcpy | Route::Pread | Route::PreadPar | Route::Cat
                )
            })
            .min_by(|&a, &c| base[a].median().total_cmp(&base[c].median()))
            .expect("warm runs memcpy");
        json!({"name": name(i), "seconds": base[i].median(), "gbps": gbps(bytes, base[i].median())})
    });
    let bound_gbps = bound.as_ref().map(|b| f(&b["gbps"]));
    // A reading no path can honestly pass (x1.2 for noise): flagged, and
    // the tests hold every path under it.
    let over = |g: f64| bound_gbps.is_some_and(|b| g > 1.2 * b);
    let baselines: Vec<Value> = (0..routes.len())
        .filter(|&i| !matches!(routes[i], Route::Path(_)) && !base[i].0.is_empty())
        .filter(|&i| i != resident_i)
        .map(|i| {
            let mut v = base[i].json(bytes);
            v["name"] = json!(name(i));
            v["vs_read"] = json!(read_s / base[i].median());
            v
        })
        .collect();
    let path_rows: Vec<Value> = rows
        .iter()
        .filter(|r| !r.dropped && !r.first.0.is_empty())
        .map(|r| {
            let last = r.last.as_ref().expect("ran");
            let mut first = r.first.json(bytes);
            let mut stream = r.stream.json(bytes);
            for (v, s) in [(&mut first, &r.first), (&mut stream, &r.stream)] {
                v["cpu_beyond_shader_per_gib"] =
                    json!(s.cpu_median() / (bytes as f64 / GIB) - shader_cpu_gib);
                v["vs_read"] = json!(read_s / s.median());
                v["of_ceiling"] = json!(ceiling_s / s.median());
                v["over_read_bound"] = json!(over(f(&v["gbps"])));
            }
            let setup = spread(&r.setup);
            let visible = r.visible.as_ref().map(|(_, v)| {
                let mut x = v.json(bytes);
                x["vs_read"] = json!(read_s / v.median());
                x["over_read_bound"] = json!(over(f(&x["gbps"])));
                x
            });
            let mut process = r.process.json(bytes);
            process["vs_read"] = json!(read_s / r.process.median());
            json!({
                "path": r.kind.name(),
                "new_process": process,
                "visible_only": visible,
                "setup_seconds": setup,
                "first": first,
                "stream": stream,
                "cpu_copied_bytes": last.cpu_copied_bytes,
                "gpu_copied_bytes": last.gpu_copied_bytes,
                "paths": last.paths,
                "result": last.result.as_ref().map(|r| r.to_string()),
            })
        })
        .collect();
    let mut shader_v = base[resident_i].json(bytes);
    shader_v["name"] = json!(name(resident_i));
    let v = json!({
        "files": b.files.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>(),
        "file_count": b.files.len(),
        "bytes": bytes,
        "device": b.gpu.info().name,
        "shader": o.shader.name(),
        "chunk": o.chunk,
        "depth": o.depth,
        "runs": o.runs,
        "warmup_rounds": 1,
        "orders": orders,
        "warm_resident_share": if o.cold { Value::Null } else { json!(resident) },
        "cache": if o.cold { "cold" } else { "warm" },
        "readahead": !o.no_readahead,
        "parallel_reads": o.parallel_reads,
        "cpus": threads,
        "load_average": {"start": load_start, "end": load_end},
        "startup_seconds": startup,
        "expected_result": show(&b.expected),
        "read": {"name": name(best_read), "seconds": read_s, "gbps": gbps(bytes, read_s)},
        "shader_resident": shader_v,
        "ceiling": {"seconds": ceiling_s, "gbps": gbps(bytes, ceiling_s)},
        "read_bound": bound,
        "baselines": baselines,
        "paths": path_rows,
        "skipped": skipped,
    });
    if o.json {
        return out(&format!("{v}\n")).map(|_| ExitCode::SUCCESS);
    }
    out(&human_report(&v)).map(|_| ExitCode::SUCCESS)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn human_report(v: &Value) -> String {
    let mut s = String::new();
    let bytes = v["bytes"].as_u64().unwrap_or(0);
    let files = v["files"].as_array().map_or(0, |a| a.len());
    let what = if files == 1 {
        v["files"][0].as_str().unwrap_or("").to_string()
    } else {
        format!("{files} files")
    };
    let la = |k: &str| {
        v["load_average"][k]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| format!("{:.2}", f(x)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let _ = writeln!(
        s,
        "bench {what} ({}) on {}, shader {}, chunk {} x depth {}",
        human(bytes),
        v["device"].as_str().unwrap_or(""),
        v["shader"].as_str().unwrap_or(""),
        human(v["chunk"].as_u64().unwrap_or(0)),
        v["depth"]
    );
    let least = v["warm_resident_share"]
        .as_array()
        .map(|a| a.iter().map(f).fold(f64::INFINITY, f64::min))
        .filter(|x| x.is_finite());
    let cache = match least {
        Some(x) => format!(
            "warm page cache ({:.0} % of the pages resident at least)",
            x * 100.0
        ),
        None => format!("{} page cache", v["cache"].as_str().unwrap_or("")),
    };
    let _ = writeln!(
        s,
        "{}{}{}; medians of {} rounds after 1 warm-up round, routes alternated; {} CPUs, load {} -> {}",
        cache,
        match (v["readahead"] == false, v["parallel_reads"] == true) {
            (false, false) => "",
            (true, false) => ", --no-readahead",
            (false, true) => ", --parallel-reads",
            (true, true) => ", --no-readahead --parallel-reads",
        },
        if v["cache"] == "cold" {
            " (files evicted before every timed run, checked with cachestat or mincore)"
        } else {
            ""
        },
        v["runs"],
        v["cpus"],
        la("start"),
        la("end")
    );
    let _ = writeln!(
        s,
        "startup (instance, device; once): {:.3} s; every run's {} = the CPU's {}",
        f(&v["startup_seconds"]),
        v["shader"].as_str().unwrap_or(""),
        v["expected_result"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        s,
        "{:<18} {:>9} {:>19} {:>8} {:>8} {:>8} {:>10} {:>9}",
        "route", "median s", "min..max s", "GB/s", "vs read", "of ceil", "CPU s/GiB", "> shader"
    );
    let row = |s: &mut String, name: &str, x: &Value, extra: bool| {
        let _ = write!(
            s,
            "{:<18} {:>9.4} {:>8.4}..{:<10.4} {:>8.2} {:>7.2}x",
            name,
            f(&x["median"]),
            f(&x["min"]),
            f(&x["max"]),
            f(&x["gbps"]),
            f(&x["vs_read"]),
        );
        let mark = if x["over_read_bound"] == true {
            " !"
        } else {
            ""
        };
        if extra {
            let _ = writeln!(
                s,
                " {:>7.2}x {:>10.3} {:>9.3}{mark}",
                f(&x["of_ceiling"]),
                f(&x["cpu_seconds_per_gib"]),
                f(&x["cpu_beyond_shader_per_gib"])
            );
        } else {
            let _ = writeln!(s, " {:>8} {:>10.3}{mark}", "", f(&x["cpu_seconds_per_gib"]));
        }
    };
    for b in v["baselines"].as_array().into_iter().flatten() {
        row(&mut s, b["name"].as_str().unwrap_or(""), b, false);
    }
    let mut r = v["shader_resident"].clone();
    r["vs_read"] = json!(f(&v["read"]["seconds"]) / f(&r["median"]));
    row(&mut s, "shader, resident", &r, false);
    for p in v["paths"].as_array().into_iter().flatten() {
        let name = p["path"].as_str().unwrap_or("");
        row(&mut s, &format!("{name} first"), &p["first"], true);
        row(&mut s, &format!("{name} stream"), &p["stream"], true);
        row(&mut s, &format!("{name} process"), &p["new_process"], false);
        if p["visible_only"].is_object() {
            row(
                &mut s,
                &format!("{name} no shader"),
                &p["visible_only"],
                false,
            );
        }
        let _ = writeln!(
            s,
            "{:<18} setup {:.4} s (min {:.4}, max {:.4}); CPU copied {} bytes, GPU copied {}",
            "",
            f(&p["setup_seconds"]["median"]),
            f(&p["setup_seconds"]["min"]),
            f(&p["setup_seconds"]["max"]),
            p["cpu_copied_bytes"],
            p["gpu_copied_bytes"]
        );
    }
    for k in v["skipped"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "{:<18} skipped: {}",
            k["path"].as_str().unwrap_or(""),
            k["reason"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(
        s,
        "read = {} ({:.2} GB/s), the fastest reading baseline; ceiling = the slower of read and the shader on resident data ({:.2} GB/s)",
        v["read"]["name"].as_str().unwrap_or(""),
        f(&v["read"]["gbps"]),
        f(&v["ceiling"]["gbps"])
    );
    if let Some(m) = v["read_bound"].as_object() {
        let _ = writeln!(
            s,
            "read bound: {:.2} GB/s ({}), the fastest the CPUs copied these bytes out of the page cache; a path over 1.2x of it is marked ! (a measurement error: nothing reads them faster)",
            f(&m["gbps"]),
            m["name"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(
        s,
        "first: a fresh streamer's first run (lazy driver work, staging allocation and page faults included); stream: its second run; process: a new `dmafile stream` process, start to exit; no shader: a copy path reading every byte into device-visible memory, no kernel run (its CPU compares with cat's); > shader: CPU s/GiB beyond the shader's own on resident data"
    );
    s
}
