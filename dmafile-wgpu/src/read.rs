//! Reads into the application's existing `wgpu::Buffer`s through
//! dmafile's read queue, ordered before wgpu's next submission on the GPU.
use std::path::Path;

use ash::vk;
use dmafile::{
    Destination, ReadQueue, ReadQueueOptions, ReadRequest, RequestReport, Ticket, TimelineSignal,
};
use wgpu_hal::api::Vulkan;

use crate::device::Device;
use crate::{Error, Result};

/// dmafile's read queue on a [`Device`], reading into `wgpu::Buffer`s
/// (see [`Reader::read_into`]).
pub struct Reader {
    // Dropped in this order (Drop first waits for everything pending):
    // the read queue, then our semaphore, then the wgpu handles that keep
    // the device alive.
    rq: Option<ReadQueue>,
    timeline: vk::Semaphore,
    /// The last value `timeline` was asked to reach.
    value: u64,
    ash: ash::Device,
    /// Destinations of reads not yet redeemed: kept alive until they
    /// land, even if the app drops its PendingRead and its buffer.
    holding: Vec<(Ticket, wgpu::Buffer)>,
    device: wgpu::Device,
    queue: wgpu::Queue,
}

/// A submitted read; redeem it with [`Reader::wait`] for its report.
/// (The `Reader` holds the destination buffer until the read is redeemed
/// or the `Reader` dropped.)
#[must_use = "a read's report says whether the destination holds the file's bytes"]
pub struct PendingRead {
    ticket: Ticket,
}

impl Device {
    /// A read queue on this device (`opts` as for [`dmafile::ReadQueue`]).
    pub fn reader(&self, opts: ReadQueueOptions) -> Result<Reader> {
        let ash = self.ash_device()?;
        let rq = ReadQueue::new(self.gpu(), opts)?;
        let mut tci =
            vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE);
        let sci = vk::SemaphoreCreateInfo::default().push_next(&mut tci);
        // SAFETY: a valid create info; the device lives while `ash` is
        // used (the Reader holds the wgpu device).
        let timeline =
            unsafe { ash.create_semaphore(&sci, None) }.map_err(|result| Error::Vulkan {
                call: "vkCreateSemaphore (timeline)",
                result,
            })?;
        Ok(Reader {
            rq: Some(rq),
            timeline,
            value: 0,
            ash,
            holding: vec![],
            device: self.device.clone(),
            queue: self.queue.clone(),
        })
    }
}

impl Reader {
    /// Reads `len` bytes of `file` at `offset` into `dst` at `dst_offset`
    /// through dmafile's read queue, and makes wgpu's next submission on
    /// this device wait for it on the GPU (a timeline semaphore staged
    /// with wgpu-hal's `Queue::add_wait_semaphore`; a wait in
    /// `vkQueueSubmit` orders every later submission too). Returns once
    /// the read is submitted; [`Reader::wait`] gives its path, reasons and
    /// bytes, and says whether it succeeded: trust results computed from
    /// `dst` only after that.
    ///
    /// `dst` must be a buffer of this `Device` (wgpu's error handler
    /// panics on another device's buffer, as for any wgpu call), with
    /// `COPY_DST` usage; `dst_offset` a multiple of 4, and
    /// room for `len` rounded up to 4 bytes: the range is first cleared
    /// through wgpu (`clear_buffer`, so that wgpu's initialization
    /// tracker counts it as written and does not zero it on first use),
    /// which zeroes the 0..3 bytes after an unaligned end. This call waits
    /// on the CPU for that clear (and what was submitted before it) before
    /// dmafile's copy is submitted, so the two writes are ordered.
    ///
    /// Until [`Reader::wait`] returns, don't map `dst` or call
    /// `dst.destroy()`, and don't call [`wgpu::Queue::submit`] from
    /// another thread while this call runs (see [`Device`]'s queue rule).
    pub fn read_into(
        &mut self,
        file: impl AsRef<Path>,
        offset: u64,
        len: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
    ) -> Result<PendingRead> {
        let file = file.as_ref();
        let name = file.display();
        if !dst.usage().contains(wgpu::BufferUsages::COPY_DST) {
            return Err(Error::BadInput(format!(
                "{name}: the destination buffer lacks COPY_DST usage (it has {:?})",
                dst.usage()
            )));
        }
        if len == 0 {
            return Err(Error::BadInput(format!(
                "{name}: a read must have at least one byte (length 0 given)"
            )));
        }
        if !dst_offset.is_multiple_of(4) {
            return Err(Error::BadInput(format!(
                "{name}: the destination offset {dst_offset} is not a multiple of 4"
            )));
        }
        let span = len.next_multiple_of(4);
        if dst_offset
            .checked_add(span)
            .is_none_or(|end| end > dst.size())
        {
            return Err(Error::BadInput(format!(
                "{name}: the destination buffer ({} bytes) is too small for {len} bytes (rounded up to {span}) at offset {dst_offset}",
                dst.size()
            )));
        }
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("dmafile-wgpu read: initialize"),
            });
        enc.clear_buffer(dst, dst_offset, Some(span));
        let index = self.queue.submit([enc.finish()]);
        self.device.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        })?;
        let raw = {
            // SAFETY: we only read the handle; nothing is destroyed.
            let hal = unsafe { dst.as_hal::<Vulkan>() }.ok_or_else(|| {
                Error::BadInput(format!(
                    "{name}: the destination is not a Vulkan buffer (or was destroyed)"
                ))
            })?;
            // SAFETY: not destroyed through this handle.
            unsafe { hal.raw_handle() }
        };
        let value = self.value + 1;
        let rq = self.rq.as_mut().expect("only Drop takes it");
        let req = ReadRequest {
            file: file.to_path_buf(),
            offset,
            len,
            dst: Destination {
                buffer: raw,
                size: dst.size(),
            },
            dst_offset,
        };
        let signal = TimelineSignal {
            semaphore: self.timeline,
            value,
        };
        // SAFETY: `raw` is a buffer of the Gpu's device (wgpu's), of
        // `dst.size()` bytes, with TRANSFER_DST (COPY_DST, checked), bound
        // to memory and created by wgpu with exclusive sharing on its only
        // queue family, which is dmafile's. wgpu does not touch it until
        // `value` is reached: the only wgpu work on it so far (the clear)
        // has completed (waited above), and wgpu's next submission waits
        // for `value` (staged below, before any wgpu submission can
        // happen: the caller submits on this thread). PendingRead keeps
        // `dst` alive. The semaphore is ours and `value` is above every
        // value asked of it.
        let ticket = unsafe { rq.submit(&[req], Some(signal)) }?;
        self.value = value;
        // SAFETY: we only stage a wait; nothing is destroyed.
        let hal_queue = unsafe { self.queue.as_hal::<Vulkan>() }
            .ok_or_else(|| Error::Adapter("the wgpu queue is not a Vulkan one".into()))?;
        hal_queue.add_wait_semaphore(
            self.timeline,
            Some(value),
            vk::PipelineStageFlags::ALL_COMMANDS,
        );
        self.holding.push((ticket, dst.clone()));
        Ok(PendingRead { ticket })
    }

    /// Blocks until the read has landed and returns its report (path,
    /// fallbacks, bytes copied by the CPU and the GPU); a read that failed
    /// (the file changed under it, could not be opened, was shorter than
    /// its range) is an error naming the file and the reason, and then
    /// the destination does not hold the file's bytes.
    pub fn wait(&mut self, p: PendingRead) -> Result<RequestReport> {
        let rq = self.rq.as_mut().expect("only Drop takes it");
        let mut report = rq.wait(p.ticket)?;
        self.holding.retain(|(t, _)| *t != p.ticket);
        let r = report.requests.remove(0);
        match &r.error {
            None => Ok(r),
            Some(e) => Err(Error::BadInput(format!(
                "{}: the read failed: {e}",
                r.file.display()
            ))),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // A wait still staged in wgpu-hal would make wgpu's next
        // submission wait on a destroyed semaphore: unstage every one.
        // SAFETY: nothing is destroyed through the guard.
        if let Some(q) = unsafe { self.queue.as_hal::<Vulkan>() } {
            while q.remove_wait_semaphore(self.timeline) {}
        }
        if self.value > 0 {
            // Both semaphores (ours and the read queue's own) must be free
            // of every batch that refers to them before they are
            // destroyed. Seeing a semaphore signalled was not enough on
            // lavapipe 25.0.7: destroying them right after (the read
            // queue's drop waits only for its own value) crashed or hung
            // `sum --read` in 10 of 30 runs, presumably because the queue
            // thread still touches a batch's semaphores after signalling
            // them. So submit an empty batch through wgpu after them and
            // wait for it (0 of 70 runs failed since).
            let index = self.queue.submit([]);
            if let Err(e) = self.device.poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            }) {
                log::error!("dmafile-wgpu: waiting for the queue before dropping a Reader: {e}");
            }
        }
        // The read queue waits for its own submissions (done already) and
        // frees what they held.
        self.rq = None;
        // SAFETY: every batch that signals `timeline` (the read queue's)
        // or waits on it (wgpu's) was submitted before the empty batch
        // waited for above, and no wait is staged any more.
        unsafe { self.ash.destroy_semaphore(self.timeline, None) };
    }
}
