//! The crate's one error type. A refusal to use a path is data
//! ([`crate::Unavailable`]), not a string, so callers can print or match it.
use std::path::PathBuf;

use ash::vk;

use crate::path::Unavailable;

/// Everything that can go wrong in dmafile's runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or inspected.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The input is not something dmafile can stream (directory, FIFO, ...).
    #[error("{}: {reason}", path.display())]
    BadInput { path: PathBuf, reason: String },
    /// The file was truncated, grew or was modified while it was streamed:
    /// whatever was computed does not describe one version of the file.
    #[error("{}: file changed while streaming: {what}", path.display())]
    FileChanged { path: PathBuf, what: String },
    /// A configuration value is out of range; `setting` names it
    /// (`chunk`, `depth`, `memory_budget`, ...).
    #[error("{setting}: {msg}")]
    Config { setting: &'static str, msg: String },
    /// A shader that may write a binding was given a region mapped
    /// read-only there; nothing was dispatched.
    #[error("{}: binding {binding} of the shader may be written, but the region is mapped read-only; map it with Access::ReadWrite (nothing was run)", path.display())]
    ReadOnlyRegion { path: PathBuf, binding: u32 },
    /// The requested path cannot be used for this request.
    #[error("path `{}` is unavailable: {} [{}]", .0.path, .0.reason, .0.code)]
    PathUnavailable(Unavailable),
    /// The Vulkan loader could not be loaded or has no usable device.
    #[error("Vulkan: {0}")]
    NoVulkan(String),
    /// The device asked for (by index or name) is not there.
    #[error("{wanted:?} matches no Vulkan device (have: {have})")]
    NoSuchDevice { wanted: String, have: String },
    /// A Vulkan call failed.
    #[error("Vulkan: {call} failed: {result}")]
    Vulkan {
        call: &'static str,
        result: vk::Result,
    },
    /// A KMS display could not be used (docs/scanout.md).
    #[error("display: {0}")]
    Display(#[from] crate::display::DisplayError),
    /// The chosen device lacks something dmafile needs.
    #[error("Vulkan device {device}: {what}")]
    DeviceUnsuitable { device: String, what: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            what,
            source,
        }
    }

    /// The path this error is about, when it is about one.
    pub fn unavailable(&self) -> Option<&Unavailable> {
        match self {
            Error::PathUnavailable(u) => Some(u),
            _ => None,
        }
    }
}

/// Maps a failed Vulkan call to [`Error::Vulkan`], naming the call.
pub(crate) trait VkResultExt<T> {
    fn vk(self, call: &'static str) -> Result<T>;
}

impl<T> VkResultExt<T> for std::result::Result<T, vk::Result> {
    fn vk(self, call: &'static str) -> Result<T> {
        self.map_err(|result| Error::Vulkan { call, result })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Unavailable> for Error {
    fn from(u: Unavailable) -> Self {
        Error::PathUnavailable(u)
    }
}

// Errors cross threads (rayon reads, callers' worker threads).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Error>();
};
