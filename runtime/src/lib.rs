//! dmafile: GPUDirect-Storage-style file access for any Vulkan GPU on Linux.
//!
//! The runtime makes file ranges shader-visible through one of several
//! [paths](PathKind), chosen per request and always reported with the reason
//! faster ones were skipped, and streams files through compute shaders with
//! bounded memory. See docs/runtime.md.
//!
//! ```no_run
//! use dmafile::{Gpu, StreamConfig, Streamer, ShaderKind};
//! let gpu = Gpu::open_default()?;
//! let mut s = Streamer::new(&gpu, StreamConfig { shader: ShaderKind::Crc32c, ..Default::default() })?;
//! let report = s.run(&["data.bin"], &mut |_, _| {})?;
//! println!("{} via {:?}", report.result.unwrap(), report.paths);
//! # Ok::<(), dmafile::Error>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
// A library never prints: warnings go through the `log` facade.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod compute;
pub mod cpu;
pub mod display;
mod error;
mod gpu;
mod hostmap;
mod import;
pub mod kmod;
pub mod path;
mod probe;
pub mod queue;
mod read;
mod readahead;
pub mod region;
pub mod scanout;
pub mod shader;
pub mod source;
mod spirv;
pub mod stream;
#[cfg(test)]
#[path = "../../tests/common/mod.rs"]
mod test_common;

pub use compute::{Arg, DeviceBuffer, Kernel};
pub use error::{Error, Result};
pub use gpu::{
    choose_device, device_requirements, BorrowedDevice, DeviceInfo, DeviceKind, DeviceRequirements,
    Features, Gpu, MemoryType, PathRequirement, QueueGuard, DEVICE_ENV,
};
pub use path::{Fallback, PathAvailability, PathChoice, PathKind, ReasonCode, Unavailable};
pub use queue::{
    BatchReport, Destination, ReadQueue, ReadQueueOptions, ReadRequest, RequestReport, Ticket,
    TimelineSignal,
};
pub use region::{Access, RawRange, Region, RegionOptions, RegionReport};
pub use shader::{Accumulator, ShaderKind, ShaderResult};
pub use source::SourceFile;
pub use spirv::Binding;
pub use stream::{StreamConfig, StreamReport, Streamer};

/// The page size dmafile aligns chunks and mappings to (x86-64, arm64 4K).
pub const PAGE_SIZE: u64 = 4096;
