//! A file range as a `wgpu::Buffer`: the dmafile region's own `VkBuffer`
//! handed to wgpu, so the `direct` and `host` paths stay zero-copy.
use std::path::Path;
use std::sync::{Arc, Mutex};

use ash::vk;
use dmafile::{Access, Fallback, PathChoice, PathKind, Region, RegionOptions};
use wgpu_hal::api::Vulkan;

use crate::device::Device;
use crate::{Error, Result};

/// A file range imported as a [`wgpu::Buffer`] (see [`Device::import`]).
///
/// The buffer is the dmafile region's own `VkBuffer`: on `direct` it is
/// the file's pinned pages (or its storage on DAX), on `host` the file's
/// mmap imported with `VK_EXT_external_memory_host`; `heap` and `upload`
/// hold a copy made when it was imported. The file's byte at the
/// requested offset is at [`ImportedBuffer::skew`] in it; bytes before it
/// and after the range must not be relied on.
pub struct ImportedBuffer {
    /// Usage `STORAGE | COPY_SRC`, [`ImportedBuffer::buffer_len`] bytes.
    /// It can't be mapped; wgpu treats it as initialized.
    pub buffer: wgpu::Buffer,
    /// Shared with the buffer's drop callback: the region lives until
    /// both this and wgpu's last use of the buffer are gone.
    region: Arc<Mutex<Region>>,
    path: PathKind,
    fallbacks: Vec<Fallback>,
    skew: u64,
    len: u64,
}

impl ImportedBuffer {
    /// The path that carries the range.
    pub fn path(&self) -> PathKind {
        self.path
    }

    /// The faster paths that were skipped, and why.
    pub fn fallbacks(&self) -> &[Fallback] {
        &self.fallbacks
    }

    /// Where the range's first byte is in the buffer (offset modulo 4096).
    pub fn skew(&self) -> u64 {
        self.skew
    }

    /// Bytes of the range.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the buffer: `skew() + len()` rounded up to 4.
    pub fn buffer_len(&self) -> u64 {
        self.buffer.size()
    }

    /// Whether what the device sees still is the file's range (no page
    /// truncated under a direct mapping, no lease broken under a host
    /// mapping, the file unchanged since a copy path read it):
    /// [`dmafile::Region::check`]. Call it after the shader work whose
    /// results you are about to trust.
    pub fn check(&self) -> Result<()> {
        let r = self
            .region
            .lock()
            .map_err(|_| Error::BadInput("the imported region's lock is poisoned".into()))?;
        Ok(r.check()?)
    }
}

impl Device {
    /// Imports `len` bytes of `file` at `offset` as a `wgpu::Buffer` usable
    /// as `STORAGE` and `COPY_SRC`, through `path` (`auto` tries direct,
    /// host, heap, upload and records why each faster one was skipped).
    ///
    /// The external queue-family acquire that Vulkan requires before the
    /// first use of imported memory is recorded here, through wgpu (a raw
    /// command buffer of a wgpu encoder, submitted on wgpu's queue), so
    /// the application's wgpu code needs no barrier of its own: a
    /// pipeline barrier orders everything later in submission order on
    /// the queue, and every later wgpu submission is later. This call
    /// waits on the CPU until the queue has executed that barrier (and so
    /// whatever the application submitted before it), because wgpu does
    /// not track the raw barrier's use of the region's buffer.
    pub fn import(
        &self,
        file: impl AsRef<Path>,
        offset: u64,
        len: u64,
        path: PathChoice,
    ) -> Result<ImportedBuffer> {
        let region = Region::open(
            self.gpu(),
            file.as_ref(),
            offset,
            len,
            RegionOptions {
                path,
                access: Access::Read,
            },
        )?;
        let raw = region.raw();
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("dmafile-wgpu acquire"),
            });
        let stages = vk::PipelineStageFlags::ALL_COMMANDS;
        let access = vk::AccessFlags::SHADER_READ | vk::AccessFlags::TRANSFER_READ;
        // SAFETY: the raw command buffer is the encoder's, open, of this
        // device, and will be submitted on its only queue (family
        // `gpu().queue_family()`), while the region lives: we wait for
        // it below before `region` can be dropped. We touch the encoder
        // through nothing else while recording.
        let recorded = unsafe {
            enc.as_hal_mut::<Vulkan, _, _>(|e| {
                e.map(|e| region.cmd_acquire(e.raw_handle(), stages, access))
            })
        };
        if recorded.is_none() {
            return Err(Error::Adapter(
                "wgpu gave no Vulkan command encoder to record the acquire barrier in".into(),
            ));
        }
        let index = self.queue.submit([enc.finish()]);
        self.device.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        })?;
        let (kind, fallbacks, skew) = (
            region.path_kind(),
            region.fallbacks().to_vec(),
            region.skew(),
        );
        let region = Arc::new(Mutex::new(region));
        let keep = region.clone();
        // SAFETY (ownership): wgpu-hal neither destroys `raw.buffer` nor
        // frees its memory (externally owned); the drop callback holds the
        // region, which owns both (and the pin, mapping or lease behind
        // them). wgpu-core calls it when it destroys its buffer, which it
        // does only once the `wgpu::Buffer` is dropped and every submission
        // that used it has completed (it keeps each used resource alive
        // until its submission's fence passes). So the VkBuffer lives as
        // long as wgpu may use it. The device outlives it: wgpu's buffer
        // holds the wgpu device.
        let hal = unsafe {
            wgpu_hal::vulkan::Buffer::from_raw_externally_owned(
                raw.buffer,
                Box::new(move || drop(keep)),
            )
        };
        let desc = wgpu::BufferDescriptor {
            label: Some("dmafile-wgpu import"),
            size: raw.size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        };
        // SAFETY: the buffer is of this device, `raw.size` (> 0: a region
        // has at least one byte) bytes, created with STORAGE_BUFFER and
        // TRANSFER_SRC usage (dmafile's import usage includes both), bound
        // to memory holding the file's bytes (initialized), not mappable
        // through wgpu.
        let buffer = unsafe { self.device.create_buffer_from_hal::<Vulkan>(hal, &desc) };
        Ok(ImportedBuffer {
            buffer,
            region,
            path: kind,
            fallbacks,
            skew,
            len,
        })
    }
}
