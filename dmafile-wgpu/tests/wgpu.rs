//! dmafile-wgpu on the machine's Vulkan device (lavapipe here): what
//! lands in wgpu buffers is the file's bytes, and bad input is a clear
//! error naming the problem. Skips, saying why, where no Vulkan adapter
//! is found.
use std::io::Write;

use dmafile::{PathChoice, PathKind, ReadQueueOptions};
use dmafile_wgpu::{Device, DeviceOptions, Error};

fn device() -> Option<Device> {
    match Device::open_default(&DeviceOptions::default()) {
        Ok(d) => Some(d),
        Err(Error::Adapter(why)) => {
            eprintln!("skip: {why}");
            None
        }
        Err(e) => panic!("opening the device: {e}"),
    }
}

/// A file under the system temp dir, removed on drop.
struct TempFile(std::path::PathBuf);

fn file(bytes: &[u8]) -> TempFile {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "dmafile-wgpu-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(bytes))
        .expect("write the test file");
    TempFile(p)
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Copies `n` bytes of `src` from `off` to a mappable buffer and returns them.
fn read_back(dev: &Device, src: &wgpu::Buffer, off: u64, n: u64) -> Vec<u8> {
    let size = n.next_multiple_of(4);
    let out = dev.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = dev.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(src, off, &out, 0, size);
    dev.queue.submit([enc.finish()]);
    out.slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    dev.device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    let v = out.slice(..).get_mapped_range().expect("mapped")[..n as usize].to_vec();
    v
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn an_import_holds_the_files_bytes_on_every_available_path() {
    let Some(dev) = device() else { return };
    let data = pattern(3 * 4096 + 5);
    let f = file(&data);
    let mut tried = 0;
    for a in dev.path_availability() {
        if !a.available {
            eprintln!("skip path {}: {}", a.path, a.reason.unwrap_or_default());
            continue;
        }
        // An unaligned offset: the range starts at skew() in the buffer.
        let (off, len) = (4096 + 8, 2 * 4096 - 3);
        let imp = dev
            .import(&f.0, off, len, PathChoice::Only(a.path))
            .unwrap_or_else(|e| panic!("{}: {e}", a.path));
        assert_eq!(imp.path(), a.path);
        assert_eq!(imp.skew(), 8);
        let got = read_back(&dev, &imp.buffer, imp.skew(), len);
        assert_eq!(got, data[off as usize..(off + len) as usize], "{}", a.path);
        imp.check().expect("unchanged");
        tried += 1;
    }
    assert!(tried > 0, "no path available (upload always is)");
}

#[test]
fn a_read_lands_in_the_apps_buffer_and_reports_its_path() {
    let Some(dev) = device() else { return };
    let data = pattern(10_001);
    let f = file(&data);
    for path in [PathKind::Host, PathKind::Upload] {
        if dev.gpu().unavailable(path).is_some() {
            eprintln!("skip path {path}: unavailable");
            continue;
        }
        let mut r = dev
            .reader(ReadQueueOptions {
                path: PathChoice::Only(path),
                ..Default::default()
            })
            .expect("reader");
        let dst = dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 12_000,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let p = r.read_into(&f.0, 3, 9_000, &dst, 400).expect("submit");
        let got = read_back(&dev, &dst, 400, 9_000);
        let rep = r.wait(p).expect("report");
        assert_eq!(rep.path, Some(path));
        assert_eq!(got, data[3..9_003], "{path}");
    }
}

#[test]
fn bad_input_is_an_error_naming_the_problem() {
    let Some(dev) = device() else { return };
    let f = file(&pattern(100));
    let mut r = dev.reader(ReadQueueOptions::default()).expect("reader");
    let buf = |usage, size| {
        dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let no_dst = buf(wgpu::BufferUsages::STORAGE, 128);
    let ok = buf(wgpu::BufferUsages::COPY_DST, 128);
    let small = buf(wgpu::BufferUsages::COPY_DST, 64);
    let msg = |e: Error| e.to_string();
    let cases: [(&str, Result<_, Error>); 5] = [
        ("lacks COPY_DST", r.read_into(&f.0, 0, 10, &no_dst, 0)),
        ("length 0", r.read_into(&f.0, 0, 0, &ok, 0)),
        ("not a multiple of 4", r.read_into(&f.0, 0, 10, &ok, 2)),
        ("too small", r.read_into(&f.0, 0, 99, &small, 0)),
        (
            "passes the end of the file",
            dev.import(&f.0, 50, 51, PathChoice::Auto)
                .map(|_| unreachable_pending()),
        ),
    ];
    for (want, got) in cases {
        match got {
            Ok(_) => panic!("accepted; want an error saying {want:?}"),
            Err(e) => assert!(msg(e).contains(want), "want {want:?}"),
        }
    }
    // A read of a range past the end fails in its report, by name.
    let p = r.read_into(&f.0, 50, 60, &ok, 0).expect("submitted");
    let e = r.wait(p).expect_err("a read past the end must fail");
    assert!(e.to_string().contains(&f.0.display().to_string()), "{e}");
}

/// Stands for a value of the read case's type in the import row.
fn unreachable_pending() -> dmafile_wgpu::PendingRead {
    unreachable!("the import must fail")
}
