//! The wgpu peer benchmark: time to the end of a first shader pass over a
//! whole file, four ways, in one process on one device:
//!
//! - (a) `read+write_buffer`: `std::fs::read` into a Vec, then
//!   `queue.write_buffer` into a STORAGE buffer (the ordinary wgpu way);
//! - (b) `pread→mapped`: `pread` straight into a STORAGE buffer mapped at
//!   creation, then `unmap` (the careful way);
//! - (c) `dmafile import`: [`dmafile_wgpu::Device::import`], `auto` path;
//! - (d) `dmafile read`: [`dmafile_wgpu::Reader::read_into`] an existing
//!   STORAGE buffer, `auto` path.
//!
//! Each ends with the same sum64 WGSL pass over every byte and the read
//! back of its partial sums; all four sums must agree. The pipeline is
//! built before timing; each file gets one untimed warm-up run of every
//! method (so the page cache is warm for all); then `--runs` rounds, the
//! methods rotated in each round. Prints a Markdown table: median, min and
//! max milliseconds, and the median as a ratio against (a).
//!
//!     cargo run --release -p dmafile-wgpu --example bench -- FILE... [--runs N]
#[path = "common/sum64.rs"]
mod sum64;

use std::time::Instant;

use dmafile::{PathChoice, ReadQueueOptions};
use dmafile_wgpu::{Device, DeviceOptions, Reader};

const METHODS: [&str; 4] = [
    "(a) read + write_buffer",
    "(b) pread into mapped_at_creation",
    "(c) dmafile-wgpu import",
    "(d) dmafile-wgpu read queue",
];

struct Ctx {
    dev: Device,
    sum: sum64::Sum64,
    reader: Reader,
}

/// Runs method `m` on `file` once: (seconds, sum64, what path served it).
fn once(c: &mut Ctx, m: usize, file: &str, len: u64) -> Result<(f64, u64, String), String> {
    let (device, queue) = (&c.dev.device, &c.dev.queue);
    let size = len.next_multiple_of(4);
    let storage = |usage, mapped| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench"),
            size,
            usage: wgpu::BufferUsages::STORAGE | usage,
            mapped_at_creation: mapped,
        })
    };
    let t = Instant::now();
    let (sum, path) = match m {
        0 => {
            let mut data = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
            data.resize(size as usize, 0);
            let buf = storage(wgpu::BufferUsages::COPY_DST, false);
            queue.write_buffer(&buf, 0, &data);
            (c.sum.run(device, queue, &buf, 0, len)?, "-".into())
        }
        1 => {
            let f = std::fs::File::open(file).map_err(|e| format!("{file}: {e}"))?;
            let buf = storage(wgpu::BufferUsages::empty(), true);
            {
                let mut view = buf
                    .slice(..)
                    .get_mapped_range_mut()
                    .map_err(|e| format!("mapping: {e}"))?;
                // wgpu 30 hands out mapped memory write-only (it may be
                // write-combined): the kernel writes it through a raw
                // pointer, as pread(2) into a mapping does in C.
                let mut out = view.slice(..len as usize);
                let base = out.as_raw_element_ptr().as_ptr();
                pread_into(&f, base, len).map_err(|e| format!("{file}: {e}"))?;
                view.slice(len as usize..).fill(0);
            }
            buf.unmap();
            (c.sum.run(device, queue, &buf, 0, len)?, "-".into())
        }
        2 => {
            let imp = c
                .dev
                .import(file, 0, len, PathChoice::Auto)
                .map_err(|e| e.to_string())?;
            let s = c.sum.run(device, queue, &imp.buffer, imp.skew(), len)?;
            imp.check().map_err(|e| e.to_string())?;
            (s, imp.path().to_string())
        }
        _ => {
            let buf = storage(wgpu::BufferUsages::COPY_DST, false);
            let p = c
                .reader
                .read_into(file, 0, len, &buf, 0)
                .map_err(|e| e.to_string())?;
            let s = c.sum.run(device, queue, &buf, 0, len)?;
            let r = c.reader.wait(p).map_err(|e| e.to_string())?;
            (s, r.path.map_or("none".into(), |p| p.to_string()))
        }
    };
    let secs = t.elapsed().as_secs_f64();
    // Free everything before the next run (not timed).
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| e.to_string())?;
    Ok((secs, sum, path))
}

/// Reads `len` bytes of `f` from offset 0 to `base` with pread(2).
fn pread_into(f: &std::fs::File, base: *mut u8, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(1 << 30) as usize;
        // SAFETY: `base` points to at least `len` writable bytes (the
        // mapped range), which nothing else accesses meanwhile; the
        // kernel only writes them.
        let r = unsafe {
            libc::pread(
                f.as_raw_fd(),
                base.add(done as usize).cast(),
                n,
                done as libc::off_t,
            )
        };
        match r {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            r if r < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            r => done += r as u64,
        }
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn run() -> Result<(), String> {
    let mut files = vec![];
    let mut runs = 5usize;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                runs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--runs needs a positive integer")?
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ => files.push(a),
        }
    }
    if files.is_empty() {
        return Err("usage: bench FILE... [--runs N]".into());
    }
    let dev = Device::open_default(&DeviceOptions::default()).map_err(|e| e.to_string())?;
    let info = dev.adapter.get_info();
    let limits = dev.device.limits();
    let sum = sum64::Sum64::new(&dev.device);
    let reader = dev
        .reader(ReadQueueOptions::default())
        .map_err(|e| e.to_string())?;
    let mut c = Ctx { dev, sum, reader };
    println!(
        "device: {} ({:?}, driver {} {}); max_buffer_size {} MiB, max_storage_buffer_binding_size {} MiB",
        info.name,
        info.device_type,
        info.driver,
        info.driver_info,
        limits.max_buffer_size >> 20,
        limits.max_storage_buffer_binding_size >> 20
    );
    println!(
        "cpus: {}; load average at start: {}; runs: {runs} per method per file after 1 warm-up each, methods rotated per round",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!();
    println!("| file size | method | path | median ms | min ms | max ms | median vs (a) |");
    println!("| ---: | --- | --- | ---: | ---: | ---: | ---: |");
    for file in &files {
        let len = std::fs::metadata(file)
            .map_err(|e| format!("{file}: {e}"))?
            .len();
        let mut times = vec![vec![]; 4];
        let mut paths = vec![String::new(); 4];
        let mut want = None;
        for round in 0..=runs {
            for k in 0..4 {
                let m = (round + k) % 4;
                let (secs, sum, path) = once(&mut c, m, file, len)?;
                match want {
                    None => want = Some(sum),
                    Some(w) if w != sum => {
                        return Err(format!(
                            "{file}: {} gave sum64={sum}, another method {w}",
                            METHODS[m]
                        ))
                    }
                    _ => {}
                }
                paths[m] = path;
                if round > 0 {
                    times[m].push(secs);
                }
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        };
        let base = med(&mut times[0]);
        for m in 0..4 {
            let md = med(&mut times[m]);
            println!(
                "| {} MiB | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} |",
                len >> 20,
                METHODS[m],
                paths[m],
                md * 1e3,
                times[m][0] * 1e3,
                times[m][times[m].len() - 1] * 1e3,
                md / base
            );
        }
        eprintln!("{file}: sum64={}", want.unwrap_or(0));
    }
    println!();
    println!("load average at end: {}", loadavg());
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}
