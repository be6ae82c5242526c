//! safetensors-reduce: per-tensor statistics (sum, mean, sum of
//! magnitudes, min, max, non-finite count) of a safetensors model, computed
//! by a GPU shader that reads each tensor where dmafile put it: with
//! dmafile.ko loaded, the file's own page-cache pages (path `direct`, no
//! CPU copy); otherwise the best path the machine has. Every tensor's
//! result is recomputed on the CPU and compared before it is printed.
//!
//!     safetensors-reduce MODEL.safetensors [--path P] [--piece BYTES] [--json]
//!     safetensors-reduce --generate OUT.safetensors
//!
//! Exit status: 0 when every float tensor matched the CPU, 1 when one did
//! not, 2 for bad input or a runtime error.
mod reduce;
mod st;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;

use dmafile::{
    Access, DeviceBuffer, Fallback, Gpu, Kernel, PathChoice, PathKind, Region, RegionOptions,
};
use serde::Serialize;

use reduce::{Block, Stats, BLOCK, STATS_BYTES};
use st::Dtype;

const SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/reduce.spv"));
const USAGE: &str = "usage: safetensors-reduce MODEL.safetensors [--path auto|direct|host|heap|upload] [--piece BYTES] [--json]\n       safetensors-reduce --generate OUT.safetensors";

struct Opts {
    file: PathBuf,
    path: PathChoice,
    piece: Option<u64>,
    json: bool,
    generate: bool,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        file: PathBuf::new(),
        path: PathChoice::Auto,
        piece: None,
        json: false,
        generate: false,
    };
    let mut file = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| -> Result<String, String> {
            args.next()
                .and_then(|v| v.into_string().ok())
                .ok_or(format!("{what} needs a value\n{USAGE}"))
        };
        match a.to_str() {
            Some("--path") => o.path = value("--path")?.parse()?,
            Some("--piece") => {
                let v = value("--piece")?;
                o.piece = Some(
                    v.parse()
                        .map_err(|_| format!("--piece: {v:?} is not a number of bytes"))?,
                )
            }
            Some("--json") => o.json = true,
            Some("--generate") => o.generate = true,
            Some("-h") | Some("--help") => return Err(USAGE.into()),
            Some(s) if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}")),
            _ if file.is_none() => file = Some(PathBuf::from(a)),
            _ => return Err(format!("one file at a time\n{USAGE}")),
        }
    }
    o.file = file.ok_or(USAGE)?;
    Ok(o)
}

#[derive(Serialize)]
struct TensorReport {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    offset: u64,
    bytes: u64,
    elements: u64,
    path: PathKind,
    pieces: u64,
    gpu: Stats,
    cpu: Stats,
    /// Every block bit-equal to the CPU's.
    exact: bool,
    ok: bool,
}

#[derive(Serialize)]
struct Skipped {
    name: String,
    dtype: String,
    reason: String,
}

#[derive(Serialize)]
struct Report {
    file: String,
    device: String,
    tensors: Vec<TensorReport>,
    skipped: Vec<Skipped>,
    /// Bytes carried by each path.
    paths: BTreeMap<PathKind, u64>,
    cpu_copied_bytes: u64,
    fallbacks: Vec<Fallback>,
    ok: bool,
}

fn run(o: &Opts) -> Result<Report, String> {
    let tensors = st::read_header(&o.file)?;
    let gpu = Gpu::open_from_env().map_err(|e| e.to_string())?;
    let info = gpu.info();
    let piece = o
        .piece
        .unwrap_or(64 << 20)
        .min(info.max_storage_buffer_range.saturating_sub(8192));
    let mut kernel = Kernel::new(&gpu, SPIRV, 12).map_err(|e| e.to_string())?;
    let file = std::fs::File::open(&o.file).map_err(|e| format!("{}: {e}", o.file.display()))?;
    let mut rep = Report {
        file: o.file.display().to_string(),
        device: info.name.clone(),
        tensors: vec![],
        skipped: vec![],
        paths: BTreeMap::new(),
        cpu_copied_bytes: 0,
        fallbacks: vec![],
        ok: true,
    };
    let mut out: Option<DeviceBuffer> = None;
    for t in tensors {
        let Some(dtype) = Dtype::parse(&t.dtype) else {
            rep.skipped.push(Skipped {
                reason: format!(
                    "{} is not a float type the shader reads (F32, F16, BF16)",
                    t.dtype
                ),
                name: t.name,
                dtype: t.dtype,
            });
            continue;
        };
        let esize = dtype.size();
        if t.elements == 0 {
            rep.skipped.push(Skipped {
                reason: "it has no elements".into(),
                name: t.name,
                dtype: t.dtype,
            });
            continue;
        }
        // Pieces of whole blocks, each one region and one dispatch.
        let per_piece = ((piece / esize) / BLOCK).max(1) * BLOCK;
        let mut blocks: Vec<Block> = Vec::with_capacity(t.elements.div_ceil(BLOCK) as usize);
        let mut path = None;
        let mut pieces = 0;
        let mut first = 0;
        while first < t.elements {
            let n = per_piece.min(t.elements - first);
            let opts = RegionOptions {
                path: o.path,
                access: Access::Read,
            };
            let region = Region::open(&gpu, &o.file, t.offset + first * esize, n * esize, opts)
                .map_err(|e| format!("tensor {:?}: {e}", t.name))?;
            let nblocks = n.div_ceil(BLOCK) as usize;
            let need = nblocks * STATS_BYTES;
            if out.as_ref().is_none_or(|b| b.len() < need) {
                out = Some(DeviceBuffer::new(&gpu, need).map_err(|e| e.to_string())?);
            }
            let ob = out.as_mut().expect("allocated above");
            let push: Vec<u8> = [region.skew() as u32, n as u32, dtype.code()]
                .iter()
                .flat_map(|v| v.to_ne_bytes())
                .collect();
            kernel
                .run(
                    &[(&region).into(), (&mut *ob).into()],
                    &push,
                    [nblocks.div_ceil(64) as u32, 1, 1],
                )
                .map_err(|e| format!("tensor {:?}: {e}", t.name))?;
            blocks.extend(
                ob.bytes()[..need]
                    .chunks_exact(STATS_BYTES)
                    .map(Block::from_bytes),
            );
            let r = region
                .finish()
                .map_err(|e| format!("tensor {:?}: {e}", t.name))?;
            *rep.paths.entry(r.path).or_insert(0) += r.len;
            rep.cpu_copied_bytes += r.cpu_copied_bytes;
            for fb in r.fallbacks {
                let fb = Fallback { file: None, ..fb };
                if !rep.fallbacks.contains(&fb) {
                    rep.fallbacks.push(fb);
                }
            }
            path = Some(r.path);
            pieces += 1;
            first += n;
        }
        // The CPU reference, from a fresh read of the file.
        let mut bytes = vec![0u8; t.bytes as usize];
        file.read_exact_at(&mut bytes, t.offset)
            .map_err(|e| format!("{}: reading tensor {:?}: {e}", o.file.display(), t.name))?;
        let cpu_blocks = reduce::cpu_blocks(&bytes, dtype);
        let exact = cpu_blocks.len() == blocks.len()
            && cpu_blocks.iter().zip(&blocks).all(|(c, g)| c.same(g));
        let (gpu_s, cpu_s) = (reduce::fold(&blocks), reduce::fold(&cpu_blocks));
        let ok = exact || reduce::close(&gpu_s, &cpu_s);
        rep.ok &= ok;
        rep.tensors.push(TensorReport {
            name: t.name,
            dtype: t.dtype,
            shape: t.shape,
            offset: t.offset,
            bytes: t.bytes,
            elements: t.elements,
            path: path.expect("a tensor has at least one piece"),
            pieces,
            gpu: gpu_s,
            cpu: cpu_s,
            exact,
            ok,
        });
    }
    Ok(rep)
}

fn size(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn print_human(r: &Report) {
    let total: u64 = r.tensors.iter().map(|t| t.bytes).sum();
    println!(
        "{}: {} float tensors ({}) on {}",
        r.file,
        r.tensors.len(),
        size(total),
        r.device
    );
    let w = r
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "  {:w$}  {:5} {:>14} {:>7} {:>13} {:>13} {:>13} {:>13} {:>5}  check",
        "name", "dtype", "shape", "path", "sum", "mean", "min", "max", "nonfin"
    );
    let opt = |v: Option<f32>| v.map_or("-".to_string(), |x| format!("{x:.6e}"));
    for t in &r.tensors {
        let shape = format!("{:?}", t.shape).replace(' ', "");
        println!(
            "  {:w$}  {:5} {:>14} {:>7} {:>13.6e} {:>13.6e} {:>13} {:>13} {:>5}  {}",
            t.name,
            t.dtype,
            shape,
            t.path.name(),
            t.gpu.sum,
            t.gpu.mean,
            opt(t.gpu.min),
            opt(t.gpu.max),
            t.gpu.nonfinite,
            match (t.ok, t.exact) {
                (true, true) => "= cpu (bit-exact)".to_string(),
                (true, false) => "~ cpu (within rounding)".to_string(),
                (false, _) => format!(
                    "MISMATCH: cpu sum {:e} min {} max {}",
                    t.cpu.sum,
                    opt(t.cpu.min),
                    opt(t.cpu.max)
                ),
            }
        );
    }
    for s in &r.skipped {
        println!("  {}  {}: skipped: {}", s.name, s.dtype, s.reason);
    }
    let paths: Vec<String> = r
        .paths
        .iter()
        .map(|(k, v)| format!("{k} {}", size(*v)))
        .collect();
    println!(
        "paths: {}; CPU copied {}",
        if paths.is_empty() {
            "none".into()
        } else {
            paths.join(", ")
        },
        size(r.cpu_copied_bytes)
    );
    for f in &r.fallbacks {
        println!(
            "fallback: {} -> {} [{}]: {}",
            f.from, f.to, f.code, f.reason
        );
    }
    let bad = r.tensors.iter().filter(|t| !t.ok).count();
    let exact = r.tensors.iter().filter(|t| t.exact).count();
    if bad == 0 {
        println!(
            "checked against the CPU: all {} match ({exact} bit-exact)",
            r.tensors.len()
        );
    } else {
        println!(
            "checked against the CPU: {bad} of {} DO NOT match",
            r.tensors.len()
        );
    }
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if o.generate {
        return match st::generate(&o.file) {
            Ok(()) => {
                println!("wrote {}", o.file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("safetensors-reduce: {e}");
                ExitCode::from(2)
            }
        };
    }
    match run(&o) {
        Ok(r) => {
            if o.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("serializable")
                );
            } else {
                print_human(&r);
            }
            if r.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("safetensors-reduce: {e}");
            ExitCode::from(2)
        }
    }
}
