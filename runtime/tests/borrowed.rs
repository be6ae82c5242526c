//! An application's own Vulkan device lent to dmafile (`Gpu::from_raw`):
//! created with what `device_requirements` lists, dmafile streams files
//! on it through every path it enabled, checked against the CPU; created
//! without the import extensions, those paths are unavailable with the
//! reason and `auto` falls back to upload. Afterwards the app's device
//! still works (dmafile destroyed nothing of the app's), and the app
//! destroys it itself.
use ash::vk;

#[path = "../../tests/common/mod.rs"]
mod common;
use common::{data, TempDir};
mod app;
use app::App;

use dmafile::{
    cpu, BorrowedDevice, Gpu, PathChoice, PathKind, ReasonCode, ShaderKind, ShaderResult,
    StreamConfig, Streamer,
};

fn stream(g: &Gpu, path: PathChoice, file: &std::path::Path) -> dmafile::StreamReport {
    let cfg = StreamConfig {
        path,
        chunk: 64 << 10,
        shader: ShaderKind::Crc32c,
        verify: true,
        ..Default::default()
    };
    Streamer::new(g, cfg)
        .unwrap()
        .run(&[file], &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

#[test]
fn borrowed_device_with_the_import_extensions() {
    let dir = TempDir::new("borrowed");
    let bytes = data(300_001, 7);
    let file = dir.path("f.bin");
    std::fs::write(&file, &bytes).unwrap();
    let app = App::new(true);
    {
        let g = app.lend();
        assert!(g.is_borrowed());
        assert_eq!(g.raw_device(), app.device.handle());
        assert_eq!(g.queue_family(), app.family);
        let host = g.unavailable(PathKind::Host);
        assert!(
            host.is_none(),
            "host on a device with the extension: {host:?}"
        );
        for p in [PathKind::Host, PathKind::Upload] {
            let r = stream(&g, PathChoice::Only(p), &file);
            assert_eq!(r.verified, Some(true));
            assert_eq!(r.result, Some(ShaderResult::Crc32c(cpu::crc32c(&bytes))));
            assert_eq!(r.paths.get(&p), Some(&(bytes.len() as u64)), "{p:?}");
        }
        let r = stream(&g, PathChoice::Only(PathKind::Host), &file);
        assert_eq!(r.cpu_copied_bytes, 0);
        // A clone outlives the original; dropping both leaves the device.
        let g2 = g.clone();
        drop(g);
        assert!(g2.path_availability().iter().any(|p| p.available));
    }
    app.still_works();
}

#[test]
fn borrowed_device_without_the_import_extensions_falls_back_with_the_reason() {
    let dir = TempDir::new("borrowed-bare");
    let bytes = data(200_003, 9);
    let file = dir.path("f.bin");
    std::fs::write(&file, &bytes).unwrap();
    let app = App::new(false);
    {
        let g = app.lend();
        for k in [PathKind::Direct, PathKind::Host, PathKind::Heap] {
            let u = g
                .unavailable(k)
                .unwrap_or_else(|| panic!("{k:?} available"));
            // direct and heap may also lack the kernel side; the device
            // side is checked first, so the reason is the extension.
            assert_eq!(u.code, ReasonCode::MissingExtension, "{k:?}: {u:?}");
            assert!(
                u.reason.contains("not enabled on the application's device"),
                "{}",
                u.reason
            );
        }
        let r = stream(&g, PathChoice::Auto, &file);
        assert_eq!(r.verified, Some(true));
        assert_eq!(r.result, Some(ShaderResult::Crc32c(cpu::crc32c(&bytes))));
        assert_eq!(
            r.paths.keys().copied().collect::<Vec<_>>(),
            vec![PathKind::Upload]
        );
        assert!(
            r.fallbacks
                .iter()
                .any(|f| f.from == PathKind::Host && f.code == ReasonCode::MissingExtension),
            "{:?}",
            r.fallbacks
        );
        // Naming a path the app did not enable is an error with the reason.
        let e = Streamer::new(
            &g,
            StreamConfig {
                path: PathChoice::Only(PathKind::Host),
                ..Default::default()
            },
        )
        .and_then(|mut s| s.run(&[&file], &mut |_, _| {}))
        .expect_err("host refused");
        assert!(e.to_string().contains("VK_EXT_external_memory_host"), "{e}");
    }
    app.still_works();
}

#[test]
fn a_borrowed_device_must_have_timelines_and_a_compute_queue() {
    let app = App::new(true);
    let lend = |timeline_semaphore: bool, queue_family: u32| {
        app.lend_as(BorrowedDevice {
            timeline_semaphore,
            queue_family,
            ..app.borrowed()
        })
    };
    let e = lend(false, app.family).err().expect("no timelines refused");
    assert!(e.to_string().contains("timelineSemaphore"), "{e}");
    let e = lend(true, 99).err().expect("family 99 refused");
    assert!(e.to_string().contains("family 99"), "{e}");
    app.still_works();
}

/// A region's raw handles in the app's own commands: the app acquires the
/// imported buffer, copies the range from `skew` into its own buffer,
/// releases it, reads its buffer back: the file's bytes.
#[test]
fn a_regions_raw_buffer_in_the_apps_own_copy() {
    use dmafile::{Region, RegionOptions};
    let dir = TempDir::new("borrowed-raw");
    let bytes = data(100_000, 12);
    let file = dir.path("f.bin");
    std::fs::write(&file, &bytes).unwrap();
    let app = App::new(true);
    {
        let g = app.lend();
        for path in [PathKind::Host, PathKind::Upload] {
            let opts = RegionOptions {
                path: PathChoice::Only(path),
                ..Default::default()
            };
            let (off, len) = (5000u64, 60_001u64);
            let r = Region::open(&g, &file, off, len, opts).unwrap();
            let raw = r.raw();
            assert_eq!((raw.skew, raw.len), (off % 4096, len));
            assert_eq!(raw.imported, path != PathKind::Upload);
            let out = app.buffer(len.next_multiple_of(4), false);
            assert_eq!(g.queue_family(), app.family);
            let region = [vk::BufferCopy::default().src_offset(raw.skew).size(len)];
            // SAFETY: the app's command buffer on the Gpu's queue family,
            // submitted under its queue lock and waited for before the
            // region and buffer go.
            app.run(Some(&g), |cb| unsafe {
                let (transfer, read) = (
                    vk::PipelineStageFlags::TRANSFER,
                    vk::AccessFlags::TRANSFER_READ,
                );
                r.cmd_acquire(cb, transfer, read);
                app.device
                    .cmd_copy_buffer(cb, raw.buffer, out.buffer, &region);
                r.cmd_release(cb, transfer, vk::AccessFlags::empty());
            });
            let got = app.read_back(&out);
            assert!(
                got[..len as usize] == bytes[off as usize..(off + len) as usize],
                "{path:?}: the app's copy of the region is not the file's bytes"
            );
            app.destroy(out);
            drop(r);
        }
    }
    app.still_works();
}

/// One queue lent twice (two libraries, or one lent again) has one lock:
/// while one `Gpu`'s guard is held, the other's lock_queue waits.
#[test]
fn a_queue_lent_twice_has_one_lock() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let app = App::new(true);
    {
        let (g1, g2) = (app.lend(), app.lend());
        let taken = AtomicBool::new(false);
        std::thread::scope(|s| {
            let l1 = g1.lock_queue().unwrap();
            let h = s.spawn(|| {
                let _l2 = g2.lock_queue().unwrap();
                taken.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert!(
                !taken.load(Ordering::SeqCst),
                "the second Gpu locked the queue the first holds"
            );
            drop(l1);
            h.join().unwrap();
            assert!(taken.load(Ordering::SeqCst));
        });
    }
    app.still_works();
}
