//! Streams real files through the shaders on the default Vulkan device
//! (lavapipe in CI) and compares every result with an independent CPU
//! computation over the same bytes.
use std::io::Write;
use std::path::Path;

#[path = "../../tests/common/mod.rs"]
mod common;
use common::{data, TempDir};

use dmafile::cpu;
use dmafile::{
    Error, Gpu, PathChoice, PathKind, ReasonCode, ShaderKind, ShaderResult, StreamConfig, Streamer,
};

fn expected(kind: ShaderKind, d: &[u8]) -> Option<ShaderResult> {
    match kind {
        ShaderKind::Crc32c => Some(ShaderResult::Crc32c(cpu::crc32c(d))),
        ShaderKind::Sum64 => Some(ShaderResult::Sum64(cpu::sum64(d))),
        ShaderKind::Histogram => Some(ShaderResult::Histogram(Box::new(cpu::histogram(d)))),
        ShaderKind::None => None,
    }
}

fn gpu() -> Gpu {
    Gpu::open_default().expect("a Vulkan device (lavapipe in CI) is required")
}

fn available_paths(g: &Gpu) -> Vec<PathKind> {
    g.path_availability()
        .into_iter()
        .filter(|p| p.available)
        .map(|p| p.path)
        .collect()
}

const CHUNK: u64 = 64 << 10;

#[test]
fn shaders_match_cpu_on_odd_sizes_for_every_path() {
    let g = gpu();
    let dir = TempDir::new("sizes");
    let sizes = [
        0usize,
        1,
        2,
        3,
        4,
        5,
        4095,
        4096,
        4097,
        8191,
        65_536,
        3 * CHUNK as usize + 4097,
        5 * CHUNK as usize + 3,
    ];
    let paths = available_paths(&g);
    assert!(
        paths.contains(&PathKind::Upload) && paths.contains(&PathKind::Host),
        "lavapipe has host and upload: {paths:?}"
    );
    for kind in [ShaderKind::Crc32c, ShaderKind::Sum64, ShaderKind::Histogram] {
        let mut streamers: Vec<(PathKind, Streamer)> = paths
            .iter()
            .map(|&p| {
                let cfg = StreamConfig {
                    path: PathChoice::Only(p),
                    chunk: CHUNK,
                    depth: 2,
                    shader: kind,
                    ..Default::default()
                };
                (p, Streamer::new(&g, cfg).unwrap())
            })
            .collect();
        for (i, &n) in sizes.iter().enumerate() {
            let d = data(n, i as u64 + 1);
            let f = dir.file(&format!("{kind}-{n}"), &d);
            let want = expected(kind, &d);
            let mut results = vec![];
            for (p, s) in &mut streamers {
                let r = s.run(&[&f], &mut |_, _| {}).unwrap();
                assert_eq!(r.result, want, "{kind} over {n} bytes via {p}");
                assert_eq!(r.bytes, n as u64);
                assert_eq!(
                    r.paths.get(p).copied().unwrap_or(0),
                    n as u64,
                    "{p} carried the bytes"
                );
                let copied = if *p == PathKind::Upload { n as u64 } else { 0 };
                assert_eq!(r.cpu_copied_bytes, copied, "cpu copies via {p}");
                results.push(r.result);
            }
            assert!(
                results.windows(2).all(|w| w[0] == w[1]),
                "paths disagree on {n} bytes"
            );
        }
    }
}

#[test]
fn several_files_are_one_stream() {
    let g = gpu();
    let dir = TempDir::new("multi");
    let a = data(10_001, 7);
    let b = data(3 * CHUNK as usize + 17, 8);
    let c = data(4, 9);
    let files = [dir.file("a", &a), dir.file("b", &b), dir.file("c", &c)];
    let whole = [a.clone(), b.clone(), c.clone()].concat();
    for kind in [ShaderKind::Crc32c, ShaderKind::Histogram, ShaderKind::Sum64] {
        let cfg = StreamConfig {
            chunk: CHUNK,
            depth: 3,
            shader: kind,
            verify: true,
            ..Default::default()
        };
        let r = Streamer::new(&g, cfg)
            .unwrap()
            .run(&files, &mut |_, _| {})
            .unwrap();
        assert_eq!(r.verified, Some(true));
        for (fr, d) in r.files.iter().zip([&a, &b, &c]) {
            assert_eq!(fr.result, expected(kind, d), "{kind} per file");
        }
        let want = match kind {
            // sum64 of several files: the sum of each file's (zero-padded) sum.
            ShaderKind::Sum64 => Some(ShaderResult::Sum64(
                cpu::sum64(&a)
                    .wrapping_add(cpu::sum64(&b))
                    .wrapping_add(cpu::sum64(&c)),
            )),
            k => expected(k, &whole),
        };
        assert_eq!(r.result, want, "{kind} over the concatenation");
    }
}

#[test]
fn auto_picks_the_best_available_path_and_says_why() {
    let g = gpu();
    let dir = TempDir::new("auto");
    let f = dir.file("f", &data(100_000, 3));
    let cfg = StreamConfig {
        chunk: CHUNK,
        ..Default::default()
    };
    let r = Streamer::new(&g, cfg.clone())
        .unwrap()
        .run(&[&f], &mut |_, _| {})
        .unwrap();
    let avail = available_paths(&g);
    let best = avail[0];
    assert_eq!(r.paths.keys().copied().collect::<Vec<_>>(), vec![best]);
    // Every faster path is in the fallbacks, with the reason the machine gave.
    for p in PathKind::ALL.iter().take_while(|&&p| p != best) {
        let u = g.unavailable(*p).expect("faster paths are unavailable");
        let fb = r
            .fallbacks
            .iter()
            .find(|fb| fb.from == *p)
            .unwrap_or_else(|| panic!("no fallback from {p}: {:?}", r.fallbacks));
        assert_eq!((fb.to, fb.code, &fb.reason), (best, u.code, &u.reason));
    }
    if !std::path::Path::new("/dev/dmafile").exists() {
        assert_eq!(r.fallbacks[0].code, ReasonCode::ModuleAbsent);
    }

    // A pseudo-file cannot be mapped: auto says so and uploads a snapshot.
    let r = Streamer::new(
        &g,
        StreamConfig {
            verify: true,
            ..cfg.clone()
        },
    )
    .unwrap()
    .run(&["/proc/self/mountinfo"], &mut |_, _| {})
    .unwrap();
    assert_eq!(r.verified, Some(true));
    assert!(r.bytes > 0, "procfs content was read");
    assert_eq!(
        r.paths.keys().copied().collect::<Vec<_>>(),
        vec![PathKind::Upload]
    );
    assert!(r.fallbacks.iter().any(|f| f.from == PathKind::Host
        && f.code == ReasonCode::NotMappable
        && f.file.is_some()));
    assert_eq!(r.files[0].snapshot_of, Some("procfs"));

    // Asking for an unavailable path is an error that carries the reason.
    for p in PathKind::ALL {
        if let Some(u) = g.unavailable(p) {
            let e = Streamer::new(
                &g,
                StreamConfig {
                    path: PathChoice::Only(p),
                    ..cfg.clone()
                },
            )
            .unwrap()
            .run(&[&f], &mut |_, _| {})
            .unwrap_err();
            assert_eq!(e.unavailable(), Some(&u), "{p}");
        }
    }
}

#[test]
fn bad_configurations_name_the_setting() {
    let g = gpu();
    let max = g.info().max_chunk();
    let cases = [
        (
            StreamConfig {
                chunk: 0,
                ..Default::default()
            },
            "chunk",
        ),
        (
            StreamConfig {
                chunk: 4097,
                ..Default::default()
            },
            "chunk",
        ),
        (
            StreamConfig {
                chunk: max + 4096,
                ..Default::default()
            },
            "chunk",
        ),
        (
            StreamConfig {
                depth: 0,
                ..Default::default()
            },
            "depth",
        ),
        (
            StreamConfig {
                depth: 1000,
                ..Default::default()
            },
            "depth",
        ),
        (
            StreamConfig {
                memory_budget: Some(1 << 20),
                ..Default::default()
            },
            "memory_budget",
        ),
    ];
    for (cfg, want) in cases {
        match Streamer::new(&g, cfg) {
            Err(Error::Config { setting, .. }) => assert_eq!(setting, want),
            Err(e) => panic!("{want}: unexpected error {e}"),
            Ok(_) => panic!("{want}: accepted"),
        }
    }
}

#[test]
fn stream_larger_than_the_memory_budget() {
    let g = gpu();
    let dir = TempDir::new("budget");
    let d = data(8 << 20, 11);
    let f = dir.file("big", &d);
    let budget = 1 << 20;
    for p in [PathKind::Host, PathKind::Upload] {
        let cfg = StreamConfig {
            path: PathChoice::Only(p),
            chunk: 128 << 10,
            depth: 2,
            shader: ShaderKind::Crc32c,
            memory_budget: Some(budget),
            verify: false,
            force_staging: false,
            readahead: true,
            parallel_reads: false,
        };
        let r = Streamer::new(&g, cfg)
            .unwrap()
            .run(&[&f], &mut |_, _| {})
            .unwrap();
        assert_eq!(r.result, Some(ShaderResult::Crc32c(cpu::crc32c(&d))));
        assert!(r.bytes >= 8 * budget);
        assert!(
            r.peak_in_flight_bytes <= 2 * (128 << 10),
            "{p}: {} in flight",
            r.peak_in_flight_bytes
        );
    }
}

/// Changes the file from the progress callback (called after each chunk is
/// submitted), so the change lands mid-stream deterministically.
fn stream_while(path: PathKind, change: &dyn Fn(&Path)) -> dmafile::Result<dmafile::StreamReport> {
    let g = gpu();
    let dir = TempDir::new(&format!("change-{path}"));
    let f = dir.file("f", &data(2 << 20, 5));
    let cfg = StreamConfig {
        path: PathChoice::Only(path),
        chunk: CHUNK,
        depth: 2,
        verify: true,
        ..Default::default()
    };
    let mut s = Streamer::new(&g, cfg).unwrap();
    let mut calls = 0;
    let r = s.run(&[&f], &mut |_, _| {
        calls += 1;
        if calls == 3 {
            change(&f);
        }
    });
    // The streamer stays usable after an error.
    let d2 = data(100_000, 6);
    let f2 = dir.file("g", &d2);
    let r2 = s.run(&[&f2], &mut |_, _| {}).unwrap();
    assert_eq!(r2.result, Some(ShaderResult::Crc32c(cpu::crc32c(&d2))));
    r
}

fn assert_changed(r: dmafile::Result<dmafile::StreamReport>, what: &str) {
    match r {
        Err(Error::FileChanged { what: w, .. }) => {
            assert!(w.contains(what), "{w:?} should mention {what:?}")
        }
        Err(e) => panic!("expected a change error, got {e}"),
        Ok(r) => panic!("a changed file streamed without error: {:?}", r.result),
    }
}

#[test]
fn truncation_growth_and_rewrites_while_streaming_are_errors() {
    // Upload: preads see the change (short read, size or ctime moved).
    let p = PathKind::Upload;
    assert_changed(
        stream_while(p, &|f| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(f)
                .unwrap()
                .set_len(100_000)
                .unwrap()
        }),
        "truncated",
    );
    assert_changed(
        stream_while(p, &|f| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(f)
                .unwrap()
                .write_all(b"more")
                .unwrap()
        }),
        "grew",
    );
    assert_changed(
        stream_while(p, &|f| {
            use std::os::unix::fs::FileExt;
            std::thread::sleep(std::time::Duration::from_millis(20)); // let the clock tick
            std::fs::OpenOptions::new()
                .write(true)
                .open(f)
                .unwrap()
                .write_at(b"X", 12345)
                .unwrap();
        }),
        "modified",
    );
    // Host: the read lease holds writers off while the file is mapped; the
    // attempt itself stops the stream.
    assert_changed(
        stream_while(PathKind::Host, &|f| {
            use std::os::unix::fs::OpenOptionsExt;
            let e = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(f)
                .expect_err("a writer must wait for the lease");
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        }),
        "lease",
    );
}

#[test]
fn host_path_needs_a_lease() {
    // A file someone holds open for writing cannot be leased: --path host
    // refuses it, auto falls back to upload and says why.
    let g = gpu();
    let dir = TempDir::new("lease");
    let d = data(300_000, 12);
    let f = dir.file("f", &d);
    let _writer = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    let e = Streamer::new(
        &g,
        StreamConfig {
            path: PathChoice::Only(PathKind::Host),
            ..Default::default()
        },
    )
    .unwrap()
    .run(&[&f], &mut |_, _| {})
    .unwrap_err();
    assert_eq!(
        e.unavailable().map(|u| u.code),
        Some(ReasonCode::NoLease),
        "{e}"
    );
    let r = Streamer::new(&g, StreamConfig::default())
        .unwrap()
        .run(&[&f], &mut |_, _| {})
        .unwrap();
    assert_eq!(r.result, Some(ShaderResult::Crc32c(cpu::crc32c(&d))));
    assert!(r
        .fallbacks
        .iter()
        .any(|fb| fb.from == PathKind::Host && fb.code == ReasonCode::NoLease));
    assert_eq!(
        r.paths.keys().copied().collect::<Vec<_>>(),
        vec![PathKind::Upload]
    );
}

#[test]
fn staging_copy_path_matches() {
    // The discrete-GPU upload path (staging buffer + device copy), forced on.
    let g = gpu();
    let dir = TempDir::new("staging");
    let d = data(3 * CHUNK as usize + 1001, 13);
    let f = dir.file("f", &d);
    for kind in [ShaderKind::Crc32c, ShaderKind::Histogram] {
        let cfg = StreamConfig {
            path: PathChoice::Only(PathKind::Upload),
            chunk: CHUNK,
            depth: 2,
            shader: kind,
            force_staging: true,
            ..Default::default()
        };
        let r = Streamer::new(&g, cfg)
            .unwrap()
            .run(&[&f], &mut |_, _| {})
            .unwrap();
        assert_eq!(r.result, expected(kind, &d), "{kind}");
        assert_eq!(r.cpu_copied_bytes, d.len() as u64);
        assert_eq!(r.gpu_copied_bytes, (d.len() as u64).next_multiple_of(4));
    }
}

/// The shader on resident data (the bench's ceiling) runs the real kernel:
/// its folded result equals the CPU's over the first chunk repeated, on the
/// device-copy route too, for every shader; with no shader it is refused.
#[test]
fn resident_pass_runs_the_kernel_over_the_first_chunk_repeated() {
    let g = gpu();
    let dir = TempDir::new("resident");
    let d = data(3 * CHUNK as usize + 4097, 21);
    let p = dir.file("f", &d);
    let f = dmafile::SourceFile::open(&p).unwrap();
    let bytes = 7 * CHUNK + 12_345;
    let mut rep = Vec::with_capacity(bytes as usize);
    while (rep.len() as u64) < bytes {
        let n = (CHUNK as usize).min(bytes as usize - rep.len());
        rep.extend_from_slice(&d[..n]);
    }
    for force_staging in [false, true] {
        for shader in [ShaderKind::Sum64, ShaderKind::Crc32c, ShaderKind::Histogram] {
            let mut s = Streamer::new(
                &g,
                StreamConfig {
                    shader,
                    chunk: CHUNK,
                    depth: 3,
                    force_staging,
                    ..Default::default()
                },
            )
            .unwrap();
            // Before and after a stream: the slots are reused either way.
            let r = s.resident_pass(&f, bytes).unwrap();
            assert_eq!(
                r.result,
                expected(shader, &rep),
                "{shader} staged={force_staging}"
            );
            assert!(r.seconds > 0.0);
            let run = s.run(&[&p], &mut |_, _| {}).unwrap();
            assert_eq!(run.result, expected(shader, &d));
            let r = s.resident_pass(&f, bytes).unwrap();
            assert_eq!(r.result, expected(shader, &rep), "{shader} after a run");
        }
    }
    let mut s = Streamer::new(
        &g,
        StreamConfig {
            shader: ShaderKind::None,
            chunk: CHUNK,
            ..Default::default()
        },
    )
    .unwrap();
    match s.resident_pass(&f, bytes) {
        Err(Error::Config { setting, msg }) => {
            assert_eq!(setting, "shader");
            assert!(msg.contains("no kernel"), "{msg}");
        }
        r => panic!("shader none: {r:?}"),
    }
}
