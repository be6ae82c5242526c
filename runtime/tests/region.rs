//! Regions of files run through the caller's own kernels on the default
//! Vulkan device (lavapipe in CI): what a shader reads is the file's bytes,
//! what it writes ends up in the file and nowhere else, and a shader that
//! may write is refused on a region mapped read-only. On a machine without
//! dmafile.ko or dma-heaps this covers the host and upload paths; the guest
//! suite (tests/guest) runs the same checks on the direct and heap paths.
#[path = "../../tests/common/mod.rs"]
mod common;
use common::{data, TempDir};

use dmafile::compute::builtin;
use dmafile::{
    cpu, Access, DeviceBuffer, Error, Gpu, Kernel, PathChoice, PathKind, ReasonCode, Region,
    RegionOptions,
};

fn gpu() -> Gpu {
    Gpu::open_default().expect("a Vulkan device (lavapipe in CI) is required")
}

fn rw() -> RegionOptions {
    RegionOptions {
        path: PathChoice::Auto,
        access: Access::ReadWrite,
    }
}

fn invert_push(first: u32, count: u32) -> Vec<u8> {
    [first.to_ne_bytes(), count.to_ne_bytes()].concat()
}

fn groups(n: u64) -> [u32; 3] {
    [n.div_ceil(64) as u32, 1, 1]
}

#[test]
fn a_writing_shader_changes_exactly_its_range_of_the_file() {
    let g = gpu();
    let dir = TempDir::new("region-write");
    let orig = data(300_000, 7);
    let f = dir.file("data.bin", &orig);
    let mut k = Kernel::new(&g, builtin::INVERT, 8).unwrap();
    assert!(k.bindings()[0].writes);
    // Page-aligned, and not (the buffer then starts 100 bytes before it).
    for (off, len) in [(8192u64, 65_536u64), (3 * 4096 + 100, 100_000)] {
        let before = std::fs::read(&f).unwrap();
        let r = Region::open(&g, &f, off, len, rw()).unwrap();
        assert_eq!(r.skew(), off % 4096);
        let kind = r.path_kind();
        k.run(
            &[(&r).into()],
            &invert_push((r.skew() / 4) as u32, (len / 4) as u32),
            groups(len / 4),
        )
        .unwrap();
        let rep = r.finish().unwrap();
        assert_eq!(rep.path, kind);
        let after = std::fs::read(&f).unwrap();
        let (a, b) = (off as usize, (off + len) as usize);
        assert_eq!(after[..a], before[..a], "bytes before the range changed");
        assert_eq!(after[b..], before[b..], "bytes after the range changed");
        let want: Vec<u8> = before[a..b].iter().map(|x| !x).collect();
        assert!(
            after[a..b] == want[..],
            "the range is not the shader's output"
        );
        if kind != PathKind::Direct {
            assert!(rep.written_back);
            // Read in from the page holding the offset, written back exactly.
            assert_eq!(rep.cpu_copied_bytes, (off % 4096 + len) + len);
            assert!(
                rep.fallbacks
                    .iter()
                    .any(|fb| fb.from == PathKind::Host && fb.code == ReasonCode::ReadOnlyPath),
                "{:?}",
                rep.fallbacks
            );
        }
    }
    // Twice inverted is the original again.
    for (off, len) in [(8192u64, 65_536u64), (3 * 4096 + 100, 100_000)] {
        let r = Region::open(&g, &f, off, len, rw()).unwrap();
        k.run(
            &[(&r).into()],
            &invert_push((r.skew() / 4) as u32, (len / 4) as u32),
            groups(len / 4),
        )
        .unwrap();
        r.finish().unwrap();
    }
    assert!(std::fs::read(&f).unwrap() == orig);
}

#[test]
fn a_writing_shader_is_refused_on_a_read_only_region() {
    let g = gpu();
    let dir = TempDir::new("region-ro");
    let orig = data(65_536, 9);
    let f = dir.file("data.bin", &orig);
    let mut k = Kernel::new(&g, builtin::INVERT, 8).unwrap();
    let r = Region::open(&g, &f, 0, 65_536, RegionOptions::default()).unwrap();
    assert!(!r.writable());
    let e = k
        .run(&[(&r).into()], &invert_push(0, 16_384), groups(16_384))
        .unwrap_err();
    assert!(matches!(e, Error::ReadOnlyRegion { binding: 0, .. }), "{e}");
    assert!(e.to_string().contains("nothing was run"), "{e}");
    let rep = r.finish().unwrap();
    assert!(!rep.written_back);
    assert!(std::fs::read(&f).unwrap() == orig);
}

#[test]
fn a_reading_shader_sees_the_files_bytes_on_every_path_this_machine_has() {
    let g = gpu();
    let dir = TempDir::new("region-read");
    let d = data(200_003, 3);
    let f = dir.file("data.bin", &d);
    let mut k = Kernel::new(&g, builtin::SUM64, 4).unwrap();
    let mut seen = vec![];
    for choice in ["auto", "direct", "host", "heap", "upload"] {
        let path: PathChoice = choice.parse().unwrap();
        // Offsets at and off a page; the sum covers the buffer from the
        // page start, and the CPU sums the same bytes.
        for (off, len) in [(0u64, 200_003u64), (4096, 100_000), (5000, 150_000)] {
            let opts = RegionOptions {
                path,
                access: Access::Read,
            };
            let r = match Region::open(&g, &f, off, len, opts) {
                Ok(r) => r,
                Err(Error::PathUnavailable(u)) if path != PathChoice::Auto => {
                    assert!(g.unavailable(u.path).is_some(), "{u}");
                    continue;
                }
                Err(e) => panic!("{choice}: {e}"),
            };
            let n = r.skew() + len;
            let blocks = n.div_ceil(4096) as usize;
            let mut out = DeviceBuffer::new(&g, blocks * 8).unwrap();
            k.run(
                &[(&r).into(), (&mut out).into()],
                &(n as u32).to_ne_bytes(),
                [blocks.div_ceil(64) as u32, 1, 1],
            )
            .unwrap();
            let gpu_sum = out.bytes().chunks_exact(8).fold(0u64, |a, w| {
                a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()))
            });
            let start = (off - r.skew()) as usize;
            assert_eq!(
                gpu_sum,
                cpu::sum64(&d[start..(off + len) as usize]),
                "{choice} {off}+{len} via {}",
                r.path_kind()
            );
            seen.push(r.path_kind());
            let rep = r.finish().unwrap();
            assert!(!rep.written_back);
        }
    }
    assert!(seen.contains(&PathKind::Upload));
}

#[test]
fn bad_requests_are_refused_with_what_is_wrong() {
    let g = gpu();
    let dir = TempDir::new("region-bad");
    let f = dir.file("data.bin", &data(10_000, 1));
    let err = |off, len| {
        Region::open(&g, &f, off, len, RegionOptions::default())
            .err()
            .unwrap()
            .to_string()
    };
    assert!(err(0, 0).contains("length 0"));
    assert!(err(9_000, 1_001).contains("passes the end of the file (10000 bytes)"));
    assert!(err(u64::MAX, 2).contains("passes the end"));
    let e = Region::open(&g, dir.path("nope"), 0, 1, RegionOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("no such file"), "{e}");
    let e = Region::open(&g, "/proc/self/status", 0, 10, rw())
        .err()
        .unwrap();
    assert!(e.to_string().contains("pseudo-file"), "{e}");

    let r = Region::open(&g, &f, 0, 10_000, rw()).unwrap();
    let mut k = Kernel::new(&g, builtin::INVERT, 8).unwrap();
    let e = k.run(&[], &invert_push(0, 1), [1, 1, 1]).unwrap_err();
    assert!(
        e.to_string()
            .contains("1 storage buffers (bindings 0), 0 arguments"),
        "{e}"
    );
    let e = k.run(&[(&r).into()], &[0; 4], [1, 1, 1]).unwrap_err();
    assert!(
        e.to_string()
            .contains("8 bytes of push constants, 4 were given"),
        "{e}"
    );
    let e = k
        .run(&[(&r).into()], &invert_push(0, 1), [0, 1, 1])
        .unwrap_err();
    assert!(e.to_string().contains("workgroups"), "{e}");
    assert!(Kernel::new(&g, &[1, 2, 3, 4], 0).is_err());
    assert!(Kernel::new(&g, builtin::INVERT, 6).is_err());
    // Nothing ran, so nothing is written back.
    assert!(!r.finish().unwrap().written_back);
}

#[test]
fn a_file_changed_under_a_copy_keeps_the_other_writers_bytes() {
    let g = gpu();
    let dir = TempDir::new("region-changed");
    let f = dir.file("data.bin", &data(65_536, 5));
    let r = Region::open(&g, &f, 0, 65_536, rw()).unwrap();
    assert_ne!(r.path_kind(), PathKind::Direct);
    let mut k = Kernel::new(&g, builtin::INVERT, 8).unwrap();
    k.run(&[(&r).into()], &invert_push(0, 16_384), groups(16_384))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let other = data(65_536, 6);
    std::fs::write(&f, &other).unwrap();
    let e = r.finish().unwrap_err();
    assert!(matches!(e, Error::FileChanged { .. }), "{e}");
    assert!(std::fs::read(&f).unwrap() == other);
}

#[test]
fn a_dropped_region_still_writes_back() {
    let g = gpu();
    let dir = TempDir::new("region-drop");
    let orig = data(8192, 2);
    let f = dir.file("data.bin", &orig);
    {
        let r = Region::open(&g, &f, 0, 8192, rw()).unwrap();
        let mut k = Kernel::new(&g, builtin::INVERT, 8).unwrap();
        k.run(&[(&r).into()], &invert_push(0, 2048), groups(2048))
            .unwrap();
    }
    let want: Vec<u8> = orig.iter().map(|x| !x).collect();
    assert!(std::fs::read(&f).unwrap() == want);
}

/// A read region on the host path holds a read lease: opening the same
/// file for writing through dmafile is refused at once with the reason
/// (it used to fail with a bare EAGAIN from our own lease), and works once
/// the read region is gone.
#[test]
fn a_writable_region_on_a_file_this_process_reads_on_host_says_why() {
    let g = gpu();
    let dir = TempDir::new("region-own-lease");
    let f = dir.file("f.bin", &data(50_000, 5));
    let read = Region::open(
        &g,
        &f,
        0,
        50_000,
        RegionOptions {
            path: PathChoice::Only(PathKind::Host),
            access: Access::Read,
        },
    )
    .unwrap();
    let e = Region::open(&g, &f, 0, 4096, rw()).err().expect("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("this process is reading it through dmafile's host path"),
        "{msg}"
    );
    drop(read);
    let w = Region::open(&g, &f, 0, 4096, rw()).unwrap();
    w.finish().unwrap();
}
