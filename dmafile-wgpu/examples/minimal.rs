//! The smallest complete dmafile-wgpu program (docs/integration.md, "wgpu"):
//! import a file's first bytes as a wgpu::Buffer, and read them into a
//! buffer of the app's own through the read queue; copy both to a
//! mappable buffer and print them.
//!
//!     cargo run -p dmafile-wgpu --example minimal -- FILE
use dmafile::{PathChoice, ReadQueueOptions};
use dmafile_wgpu::{Device, DeviceOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = std::env::args().nth(1).ok_or("usage: minimal FILE")?;
    let len = std::fs::metadata(&file)?.len().min(16);
    let dev = Device::open_default(&DeviceOptions::default())?;

    // 1. The file's range as a wgpu::Buffer (STORAGE | COPY_SRC).
    let imported = dev.import(&file, 0, len, PathChoice::Auto)?;
    println!("import: path {}", imported.path());
    for f in imported.fallbacks() {
        println!("  skipped {}: {} [{}]", f.from, f.reason, f.code);
    }

    // 2. The same range into a buffer the app created.
    let mine = dev.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("mine"),
        size: 16,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let mut reader = dev.reader(ReadQueueOptions::default())?;
    let pending = reader.read_into(&file, 0, len, &mine, 0)?;

    // Ordinary wgpu from here: the next submission waits for the read.
    let out = dev.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("out"),
        size: 32,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let n = len.next_multiple_of(4);
    let mut enc = dev.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(&imported.buffer, imported.skew(), &out, 0, n);
    enc.copy_buffer_to_buffer(&mine, 0, &out, 16, n);
    dev.queue.submit([enc.finish()]);
    let report = reader.wait(pending)?; // an error if the read failed
    println!(
        "read: path {:?}, {} bytes copied by the CPU",
        report.path, report.cpu_copied_bytes
    );
    imported.check()?; // the file did not change under the import

    out.slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    dev.device.poll(wgpu::PollType::wait_indefinitely())?;
    let bytes = out.slice(..).get_mapped_range()?;
    println!("imported: {:02x?}", &bytes[..len as usize]);
    println!("read:     {:02x?}", &bytes[16..16 + len as usize]);
    Ok(())
}
