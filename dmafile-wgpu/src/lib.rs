//! dmafile for wgpu applications: a [`wgpu::Device`] whose Vulkan device
//! has dmafile's import extensions, file ranges as [`wgpu::Buffer`]s with
//! zero copies where the `direct` or `host` path serves them, and reads
//! into the application's own `wgpu::Buffer`s through dmafile's read
//! queue. Every result says which path ran and why faster ones were
//! skipped. docs/integration.md has a complete program and the rules.
//!
//! ```no_run
//! use dmafile_wgpu::{Device, DeviceOptions};
//! let dev = Device::open_default(&DeviceOptions::default())?;
//! let imported = dev.import("weights.bin", 0, 1 << 20, Default::default())?;
//! // `imported.buffer` is a STORAGE | COPY_SRC wgpu::Buffer; the file's
//! // byte 0 is at imported.skew() in it.
//! println!("via {} ({} fallbacks)", imported.path(), imported.fallbacks().len());
//! # Ok::<(), dmafile_wgpu::Error>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
// A library never prints: warnings go through the `log` facade.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod device;
mod import;
mod read;

pub use device::{Device, DeviceOptions};
pub use import::ImportedBuffer;
pub use read::{PendingRead, Reader};

use ash::vk;

/// Everything that can go wrong in dmafile-wgpu.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// dmafile itself refused or failed (a path, a file, the device).
    #[error(transparent)]
    Dmafile(#[from] dmafile::Error),
    /// No adapter, or not a Vulkan one: dmafile imports Vulkan memory.
    #[error("wgpu adapter: {0}")]
    Adapter(String),
    /// wgpu-hal could not create the Vulkan device.
    #[error("wgpu-hal could not create the Vulkan device: {0}")]
    OpenDevice(#[from] wgpu_hal::DeviceError),
    /// wgpu refused the device wgpu-hal created.
    #[error("wgpu: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),
    /// wgpu could not wait for the device.
    #[error("wgpu: waiting for the device failed: {0}")]
    Poll(#[from] wgpu::PollError),
    /// An argument is unusable; the message names it and says why.
    #[error("{0}")]
    BadInput(String),
    /// A Vulkan call dmafile-wgpu makes itself failed.
    #[error("Vulkan: {call} failed: {result}")]
    Vulkan {
        call: &'static str,
        result: vk::Result,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
