//! The read queue: file ranges into the application's own buffers
//! (cuFileRead's and DirectStorage's job), on any Vulkan device.
//!
//! A batch of requests `(file, offset, length) → (the app's VkBuffer,
//! offset)` is checked whole before anything is read, then each request
//! is made visible to the device through the fastest path that serves it
//! (`direct` and `host` import the file's own pages, zero CPU copies;
//! `heap` and `upload` read it once, `upload` into staging that is
//! reused) and copied by the device into the destination. The batch is
//! submitted to dmafile's queue; completion is signalled on the app's
//! timeline semaphore at the value it chose, and [`ReadQueue::poll`] or
//! [`ReadQueue::wait`] give each request's path, reasons, bytes and
//! whether it is valid (a file changed under a request makes that request
//! fail; the others complete). docs/integration.md has the contract.
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ash::vk;
use serde::Serialize;

use crate::error::{Error, Result, VkResultExt};
use crate::gpu::memory::{Buffer, Placement};
use crate::gpu::{DeviceShared, Gpu};
use crate::hostmap::ReadLease;
use crate::import::{choose, cmd_external_ownership, fall_back_mid_file, import_range, Imported};
use crate::kmod::Backing;
use crate::path::{Fallback, PathChoice, PathKind};
use crate::read::read_parallel;
use crate::source::SourceFile;
use crate::PAGE_SIZE;

/// How a [`ReadQueue`] works.
#[derive(Clone, Debug)]
pub struct ReadQueueOptions {
    /// `auto` (direct, host, upload; see [`ReadQueue`] on heap), or one path.
    pub path: PathChoice,
    /// Bytes of staging for the copy paths, allocated once and reused:
    /// split into pieces of `piece` bytes.
    pub staging_bytes: u64,
    /// The most bytes one staging copy covers; longer requests are read in
    /// pieces, each copied while the next is read.
    pub piece: u64,
    /// The most bytes one import (a dma-buf or a host mapping) covers;
    /// longer requests are imported in pieces. Clamped to the device's
    /// allocation limit. A `direct` import pins its pages and charges them
    /// to the memlock limit: a piece over the limit falls back.
    pub import_piece: u64,
    /// Imports (each an open file, a dma-buf or a mapping) that may wait
    /// for the device at once; past it the queue submits and waits for
    /// the oldest, so thousands of small files never hold thousands of
    /// fds.
    pub max_imports_in_flight: usize,
}

impl Default for ReadQueueOptions {
    fn default() -> Self {
        ReadQueueOptions {
            path: PathChoice::Auto,
            staging_bytes: 64 << 20,
            piece: 16 << 20,
            import_piece: 256 << 20,
            max_imports_in_flight: 64,
        }
    }
}

/// The application's buffer a request lands in: created with
/// `TRANSFER_DST` usage, bound to memory, `size` bytes long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    pub buffer: vk::Buffer,
    pub size: u64,
}

/// Read `len` bytes of `file` at `offset` into `dst` at `dst_offset`.
#[derive(Clone, Debug)]
pub struct ReadRequest {
    pub file: PathBuf,
    pub offset: u64,
    pub len: u64,
    pub dst: Destination,
    pub dst_offset: u64,
}

/// A timeline semaphore of the application's and a value: the value to
/// signal it with when a batch has landed, or (in
/// [`ReadQueue::submit_after`]'s `waits`) the value to wait for before the
/// batch writes its destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineSignal {
    pub semaphore: vk::Semaphore,
    pub value: u64,
}

/// What happened to one request.
#[derive(Clone, Debug, Serialize)]
pub struct RequestReport {
    pub file: PathBuf,
    pub offset: u64,
    pub len: u64,
    /// The path that served it (the last one, if a path failed part way).
    pub path: Option<PathKind>,
    /// For direct: the file's page cache or its storage.
    pub backing: Backing,
    /// Each path skipped or abandoned for it, and why.
    pub fallbacks: Vec<Fallback>,
    pub cpu_copied_bytes: u64,
    pub gpu_copied_bytes: u64,
    /// Seconds the CPU spent making it visible and recording its copies.
    pub seconds: f64,
    /// Why it failed: its destination bytes are then not the file's.
    pub error: Option<String>,
    /// The error itself, to match on (its kind, a path's reason code).
    #[serde(skip)]
    pub cause: Option<Arc<Error>>,
}

impl RequestReport {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// A finished batch: every request, in the order submitted.
#[derive(Clone, Debug, Serialize)]
pub struct BatchReport {
    pub requests: Vec<RequestReport>,
    /// From submit() to the moment poll() or wait() saw it complete.
    pub seconds: f64,
}

impl BatchReport {
    pub fn ok(&self) -> bool {
        self.requests.iter().all(RequestReport::ok)
    }

    pub fn cpu_copied_bytes(&self) -> u64 {
        self.requests.iter().map(|r| r.cpu_copied_bytes).sum()
    }
}

/// A submitted batch, redeemed with [`ReadQueue::poll`] or [`ReadQueue::wait`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// A piece of a request that the device reads from until its submission
/// completes, with what proves afterwards that it read the file.
struct Held {
    batch: u64,
    request: usize,
    imported: Imported,
    /// Kept open to compare the file's identity once the device is done.
    file: Arc<SourceFile>,
}

impl Held {
    /// Whether the device read the file's bytes: no page of a direct
    /// mapping truncated under it, no lease broken under a host mapping,
    /// the file not written meanwhile.
    fn check(&self) -> Result<()> {
        let changed = |what: String| {
            Err(Error::FileChanged {
                path: self.file.path().to_path_buf(),
                what,
            })
        };
        if let (Some(m), Some(b)) = (&self.imported.module, self.imported.buffer.module_dmabuf()) {
            use std::os::fd::AsFd;
            let st = m
                .status(b.as_fd())
                .map_err(|e| Error::io(self.file.path(), "dmafile status", e.into()))?;
            if st.stale() {
                return changed(format!(
                    "{} pages were truncated or punched out while the device read them",
                    st.stale_pages
                ));
            }
        }
        if self.imported.lease.as_ref().is_some_and(|l| l.broken()) {
            return changed(
                "it was opened for writing or truncated while the device read it (its read lease was broken)"
                    .into(),
            );
        }
        self.file.check_unchanged()
    }
}

/// When the device is done with something: a value of the queue's own
/// timeline (what it submitted), or a value of the app's semaphore that
/// the app's submission of a command buffer the queue recorded into
/// signals ([`ReadQueue::record`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Done {
    Own(u64),
    App(TimelineSignal),
}

struct InFlight {
    done: Done,
    /// The queue's own command buffer, freed when done; none for a batch
    /// recorded into the app's.
    cmd: Option<vk::CommandBuffer>,
    held: Vec<Held>,
}

struct Staging {
    buf: Buffer,
    /// When it is free again.
    busy_until: Done,
}

struct BatchState {
    done: Done,
    reports: Vec<RequestReport>,
    t0: Instant,
}

/// The commands being recorded: into the queue's own command buffer for
/// its next submission, or into the app's ([`ReadQueue::record`]).
struct Recording {
    cmd: vk::CommandBuffer,
    /// Recording into the app's command buffer, which completes at this.
    app: Option<TimelineSignal>,
    held: Vec<Held>,
    staging: Vec<usize>,
    /// The staging buffer being filled and the bytes of it used: small
    /// pieces share one.
    fill: Option<(usize, u64)>,
    /// Bytes of copies recorded.
    bytes: u64,
}

/// Reads file ranges into the application's buffers on a [`Gpu`] (its own
/// device lent with [`Gpu::from_raw`], or one dmafile opened).
///
/// Under `auto` the queue tries `direct`, `host` and then `upload`; it does
/// not use `heap`, which would allocate a dma-buf per request for the same
/// one CPU copy `upload` makes through reused staging (name it with
/// [`PathChoice::Only`] to use it anyway).
pub struct ReadQueue {
    gpu: Gpu,
    opts: ReadQueueOptions,
    pool: vk::CommandPool,
    timeline: vk::Semaphore,
    /// The last own-timeline value submitted.
    submitted: u64,
    staging: Vec<Staging>,
    in_flight: VecDeque<InFlight>,
    batches: BTreeMap<u64, BatchState>,
    /// Requests found bad after their copies completed, as (batch,
    /// request, why), until their batch is redeemed.
    late_errors: Vec<(u64, usize, Arc<Error>)>,
    recording: Option<Recording>,
    /// The app's semaphores the batch being submitted waits for: every
    /// submission of the batch waits for them.
    waits: Vec<TimelineSignal>,
}

impl ReadQueue {
    pub fn new(gpu: &Gpu, opts: ReadQueueOptions) -> Result<ReadQueue> {
        let dev = &gpu.shared;
        let max = dev.info().max_memory_allocation_size.max(PAGE_SIZE);
        let mut opts = opts;
        if opts.piece < PAGE_SIZE
            || opts.import_piece < PAGE_SIZE
            || opts.staging_bytes < opts.piece.min(max)
        {
            return Err(Error::Config {
                setting: "piece",
                msg: format!(
                    "pieces of {} bytes (imports {}) with {} bytes of staging: a piece must be at least 4096 bytes and fit in the staging",
                    opts.piece, opts.import_piece, opts.staging_bytes
                ),
            });
        }
        if opts.max_imports_in_flight == 0 {
            return Err(Error::Config {
                setting: "max_imports_in_flight",
                msg: "must be at least 1".into(),
            });
        }
        opts.piece = opts.piece.min(max) & !(PAGE_SIZE - 1);
        // An import covers the piece plus its skew into the first page and
        // the host path's alignment padding: all within the limit.
        let align = dev
            .info()
            .min_imported_host_pointer_alignment
            .max(PAGE_SIZE);
        let import_max = max.saturating_sub(PAGE_SIZE + align).max(PAGE_SIZE);
        opts.import_piece = opts.import_piece.min(import_max) & !(PAGE_SIZE - 1);
        let mut q = ReadQueue {
            gpu: gpu.clone(),
            opts,
            pool: vk::CommandPool::null(),
            timeline: vk::Semaphore::null(),
            submitted: 0,
            staging: vec![],
            in_flight: VecDeque::new(),
            batches: BTreeMap::new(),
            late_errors: vec![],
            recording: None,
            waits: vec![],
        };
        let d = &dev.device;
        let pci = vk::CommandPoolCreateInfo::default()
            .queue_family_index(dev.queue_family)
            .flags(vk::CommandPoolCreateFlags::TRANSIENT);
        // SAFETY: valid create infos; on error Drop destroys what exists.
        q.pool = unsafe { d.create_command_pool(&pci, None) }.vk("vkCreateCommandPool")?;
        let mut tci =
            vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE);
        let sci = vk::SemaphoreCreateInfo::default().push_next(&mut tci);
        // SAFETY: as above.
        q.timeline =
            unsafe { d.create_semaphore(&sci, None) }.vk("vkCreateSemaphore (timeline)")?;
        Ok(q)
    }

    /// Submits `requests` as one batch and returns without waiting for the
    /// device; `signal` (the app's timeline semaphore) is signalled once
    /// every request has landed or failed. Nothing is read unless every
    /// request is well-formed: a zero length, a destination range past its
    /// buffer, or two requests writing overlapping bytes of one buffer is
    /// an error naming the request, with nothing submitted or signalled.
    /// A request whose file cannot be opened, is shorter than its range or
    /// changes while it is read fails alone, in its report.
    ///
    /// It blocks only for what it must do on the CPU: reading the copy
    /// paths' bytes into staging, and, when all staging or
    /// `max_imports_in_flight` imports are busy, waiting for the device to
    /// finish this queue's own earlier copies.
    ///
    /// # Safety
    /// - Every `dst.buffer` must be a valid buffer of the `Gpu`'s device,
    ///   at least `dst.size` bytes, created with `TRANSFER_DST` usage and
    ///   bound to memory, usable on the `Gpu`'s queue family (the same
    ///   family, or `CONCURRENT` sharing), and neither read nor written by
    ///   the application until `signal` is reached (or [`ReadQueue::wait`]
    ///   returns), nor destroyed before that.
    /// - `signal.semaphore` must be a timeline semaphore of the device and
    ///   `signal.value` greater than its current value and every value
    ///   already pending on it. Wait on it with the pipeline stages of
    ///   your first use: the signal makes the copies' writes available,
    ///   your wait makes them visible.
    pub unsafe fn submit(
        &mut self,
        requests: &[ReadRequest],
        signal: Option<TimelineSignal>,
    ) -> Result<Ticket> {
        // SAFETY: the caller's contract, with no waits.
        unsafe { self.submit_after(requests, &[], signal) }
    }

    /// [`ReadQueue::submit`], with the batch's copies waiting on the device
    /// until each of `waits` (the app's timeline semaphores) reaches its
    /// value: the app's own work that still reads or writes the
    /// destinations goes first, without the CPU waiting for it.
    ///
    /// # Safety
    /// As [`ReadQueue::submit`]; and each wait's semaphore is a timeline
    /// semaphore of the device whose value is signalled by the host or by
    /// work submitted earlier on the `Gpu`'s queue or on another queue,
    /// never by a later submission on the `Gpu`'s queue (a signal there
    /// waits for every earlier command, these copies included): when all
    /// staging or imports are busy, this call waits for the queue's
    /// earlier copies, which may sit behind these waits.
    pub unsafe fn submit_after(
        &mut self,
        requests: &[ReadRequest],
        waits: &[TimelineSignal],
        signal: Option<TimelineSignal>,
    ) -> Result<Ticket> {
        check_requests(requests)?;
        self.reclaim()?;
        let batch = next_batch();
        self.waits = waits.to_vec();
        // Always submitted, even with nothing recorded: the app's
        // semaphore must be signalled.
        let r = self
            .record_batch(batch, requests, false)
            .and_then(|reports| Ok((reports, self.flush(signal)?)));
        self.waits.clear();
        let (reports, last_value) = match r {
            Ok(r) => r,
            Err(e) => {
                // The device itself failed: what was recorded is freed
                // unsubmitted, and what was submitted is waited for, so
                // nothing of the batch lands after this returns.
                if let Some(rec) = self.recording.take() {
                    // SAFETY: the queue's own, never submitted.
                    unsafe {
                        self.dev()
                            .device
                            .free_command_buffers(self.pool, &[rec.cmd])
                    };
                }
                let _ = self.wait_value(self.submitted);
                let _ = self.reclaim();
                self.late_errors.retain(|&(b, _, _)| b != batch);
                return Err(e);
            }
        };
        self.batches.insert(
            batch,
            BatchState {
                done: Done::Own(last_value),
                reports,
                t0: Instant::now(),
            },
        );
        Ok(Ticket(batch))
    }

    /// Records `requests` into the app's command buffer `cmd` instead of
    /// submitting them: the app submits `cmd` itself, with its own waits
    /// and signals, and the batch has landed when `completes` (the app's
    /// timeline semaphore, signalled by that submission after `cmd`
    /// completes) reaches its value. Requests are checked as in
    /// [`ReadQueue::submit`]; a request that fails here fails alone, in the
    /// report [`ReadQueue::poll`] returns once `completes` is reached.
    ///
    /// Nothing runs until the app submits, so the batch cannot reuse
    /// staging or wait for its own imports: a batch whose upload pieces
    /// need more than `staging_bytes`, or that holds more than
    /// `max_imports_in_flight` imports, fails the requests that do not fit
    /// (submit such batches with [`ReadQueue::submit`]). The CPU reads of
    /// the copy paths happen here; the copies run in `cmd`.
    ///
    /// # Safety
    /// - The destinations as in [`ReadQueue::submit`], until `completes`
    ///   is reached.
    /// - `cmd` is a primary command buffer of the `Gpu`'s device in the
    ///   recording state, outside a render pass, allocated from a pool of
    ///   the `Gpu`'s queue family. The queue records transfer commands and
    ///   buffer barriers into it; the app's later commands see the copies
    ///   after a barrier from `TRANSFER`/`TRANSFER_WRITE` to their use.
    /// - The app submits `cmd` once, signalling `completes.semaphore` to
    ///   `completes.value` (or more) no earlier than `cmd` completes; or,
    ///   if it does not (the recording failed, the app changed its mind),
    ///   it calls [`ReadQueue::discard`] before dropping the queue.
    ///   Dropping the queue waits for `completes`. `completes.semaphore`
    ///   lives until the batch is redeemed ([`ReadQueue::poll`] gave its
    ///   report, or [`ReadQueue::wait`] returned) or discarded, or the
    ///   queue is dropped.
    /// - On an error, `cmd` may hold part of the batch: reset or free it;
    ///   do not submit it.
    pub unsafe fn record(
        &mut self,
        cmd: vk::CommandBuffer,
        requests: &[ReadRequest],
        completes: TimelineSignal,
    ) -> Result<Ticket> {
        check_requests(requests)?;
        self.reclaim()?;
        let taken = self
            .in_flight
            .iter()
            .any(|f| f.done == Done::App(completes))
            || self
                .batches
                .values()
                .any(|b| b.done == Done::App(completes));
        if taken || self.is_done(Done::App(completes))? {
            return Err(Error::Config {
                setting: "completes",
                msg: format!(
                    "value {} of this semaphore is reached already or completes another recorded batch: give each batch a new value above the semaphore's",
                    completes.value
                ),
            });
        }
        debug_assert!(self.recording.is_none(), "submit flushes its own recording");
        self.recording = Some(Recording {
            cmd,
            app: Some(completes),
            held: vec![],
            staging: vec![],
            fill: None,
            bytes: 0,
        });
        // SAFETY: the app's command buffer, recording (record's contract).
        unsafe { cmd_order_after_earlier(&self.gpu.shared.device, cmd) };
        let batch = next_batch();
        match self.record_batch(batch, requests, true) {
            Ok(reports) => {
                let rec = self.recording.take().expect("recording the app's");
                for &i in &rec.staging {
                    self.staging[i].busy_until = Done::App(completes);
                }
                self.in_flight.push_back(InFlight {
                    done: Done::App(completes),
                    cmd: None,
                    held: rec.held,
                });
                self.batches.insert(
                    batch,
                    BatchState {
                        done: Done::App(completes),
                        reports,
                        t0: Instant::now(),
                    },
                );
                Ok(Ticket(batch))
            }
            Err(e) => {
                // The app must not submit `cmd` now: what it would have
                // read is released here.
                self.recording = None;
                self.late_errors.retain(|&(b, _, _)| b != batch);
                Err(e)
            }
        }
    }

    /// Forgets a batch recorded with [`ReadQueue::record`] whose command
    /// buffer the app will never submit, releasing its imports and
    /// staging.
    ///
    /// # Safety
    /// The command buffer it was recorded into was never submitted, or
    /// was reset or freed, and will not be submitted.
    pub unsafe fn discard(&mut self, t: Ticket) -> Result<()> {
        let done = self.pending(t)?.done;
        if !matches!(done, Done::App(_)) {
            return Err(Error::Config {
                setting: "ticket",
                msg: format!(
                    "batch {} was submitted by the queue: it cannot be discarded",
                    t.0
                ),
            });
        }
        self.batches.remove(&t.0);
        self.late_errors.retain(|&(b, _, _)| b != t.0);
        self.in_flight.retain(|f| f.done != done);
        for s in &mut self.staging {
            if s.busy_until == done {
                s.busy_until = Done::Own(0);
            }
        }
        Ok(())
    }

    /// Records every request of a new batch into the current recording
    /// (the app's when `app` is set), flushing the queue's own pieces as
    /// they are recorded. A request's own failure goes into its report; a
    /// device failure is the error.
    fn record_batch(
        &mut self,
        batch: u64,
        requests: &[ReadRequest],
        into_app: bool,
    ) -> Result<Vec<RequestReport>> {
        let mut reports: Vec<RequestReport> = requests
            .iter()
            .map(|r| RequestReport {
                file: r.file.clone(),
                offset: r.offset,
                len: r.len,
                path: None,
                backing: Backing::None,
                fallbacks: vec![],
                cpu_copied_bytes: 0,
                gpu_copied_bytes: 0,
                seconds: 0.0,
                error: None,
                cause: None,
            })
            .collect();
        for (i, r) in requests.iter().enumerate() {
            let t = Instant::now();
            if let Err(e) = self.record_request(batch, i, r, &mut reports[i], into_app) {
                match e {
                    e if batch_fatal(&e) => return Err(e),
                    e => {
                        reports[i].error = Some(e.to_string());
                        reports[i].cause = Some(Arc::new(e));
                    }
                }
            }
            reports[i].seconds = t.elapsed().as_secs_f64();
        }
        Ok(reports)
    }

    /// The batch's report if it has completed, without blocking.
    pub fn poll(&mut self, t: Ticket) -> Result<Option<BatchReport>> {
        // Seen done before reclaiming, so its checks have run when it is
        // reported (the semaphores only grow).
        let ready = self.is_done(self.pending(t)?.done)?;
        self.reclaim()?;
        if !ready {
            return Ok(None);
        }
        let mut b = self.batches.remove(&t.0).expect("pending above");
        self.late_errors.retain(|(batch, i, e)| {
            if *batch != t.0 {
                return true;
            }
            if let Some(r) = b.reports.get_mut(*i) {
                if r.error.is_none() {
                    r.error = Some(e.to_string());
                    r.cause = Some(e.clone());
                }
            }
            false
        });
        Ok(Some(BatchReport {
            requests: b.reports,
            seconds: b.t0.elapsed().as_secs_f64(),
        }))
    }

    /// The batch `t` names, if it is this queue's and not redeemed yet.
    fn pending(&self, t: Ticket) -> Result<&BatchState> {
        self.batches.get(&t.0).ok_or_else(|| Error::Config {
            setting: "ticket",
            msg: format!(
                "no batch {} pending in this queue (redeemed already, or another queue's)",
                t.0
            ),
        })
    }

    /// Blocks until the batch has completed and returns its report. For a
    /// recorded batch, until the app's submission signals its semaphore.
    pub fn wait(&mut self, t: Ticket) -> Result<BatchReport> {
        let done = self.pending(t)?.done;
        self.wait_done(done)?;
        Ok(self.poll(t)?.expect("its value was reached"))
    }

    fn dev(&self) -> &Arc<DeviceShared> {
        &self.gpu.shared
    }

    fn completed(&self) -> Result<u64> {
        // SAFETY: our own timeline semaphore.
        unsafe { self.dev().device.get_semaphore_counter_value(self.timeline) }
            .vk("vkGetSemaphoreCounterValue")
    }

    fn is_done(&self, d: Done) -> Result<bool> {
        match d {
            Done::Own(v) => Ok(self.completed()? >= v),
            // SAFETY: the app vouched for its semaphore (record's contract).
            Done::App(s) => unsafe { self.dev().device.get_semaphore_counter_value(s.semaphore) }
                .vk("vkGetSemaphoreCounterValue")
                .map(|v| v >= s.value),
        }
    }

    fn wait_value(&self, value: u64) -> Result<()> {
        self.wait_done(Done::Own(value))
    }

    fn wait_done(&self, d: Done) -> Result<()> {
        let (sem, value) = match d {
            Done::Own(v) => (self.timeline, v),
            Done::App(s) => (s.semaphore, s.value),
        };
        let sems = [sem];
        let vals = [value];
        let wi = vk::SemaphoreWaitInfo::default()
            .semaphores(&sems)
            .values(&vals);
        // SAFETY: our own timeline, `value` submitted; or the app's, which
        // its submission signals (record's contract).
        unsafe { self.dev().device.wait_semaphores(&wi, u64::MAX) }.vk("vkWaitSemaphores")
    }

    /// Frees what completed submissions held, after checking that the
    /// device read the files' bytes (a request whose file changed fails:
    /// recorded in `late_errors`, whether or not its batch is registered
    /// yet).
    fn reclaim(&mut self) -> Result<()> {
        let mut keep = VecDeque::with_capacity(self.in_flight.len());
        let mut result = Ok(());
        while let Some(f) = self.in_flight.pop_front() {
            match self.is_done(f.done) {
                Ok(true) => {}
                Ok(false) => {
                    keep.push_back(f);
                    continue;
                }
                Err(e) => {
                    keep.push_back(f);
                    result = Err(e);
                    continue;
                }
            }
            if let Done::App(_) = f.done {
                // Its staging is free: the app's semaphore is not asked
                // about again (the app may destroy it once redeemed).
                for s in &mut self.staging {
                    if s.busy_until == f.done {
                        s.busy_until = Done::Own(0);
                    }
                }
            }
            for h in f.held {
                if let Err(e) = h.check() {
                    self.late_errors.push((h.batch, h.request, Arc::new(e)));
                }
            }
            if let Some(cmd) = f.cmd {
                // SAFETY: the submission that used it has completed.
                unsafe {
                    self.gpu
                        .shared
                        .device
                        .free_command_buffers(self.pool, &[cmd])
                };
            }
        }
        self.in_flight = keep;
        result
    }

    fn held_count(&self) -> usize {
        self.in_flight.iter().map(|f| f.held.len()).sum::<usize>()
            + self.recording.as_ref().map_or(0, |r| r.held.len())
    }

    /// Whether the current recording is into the app's command buffer.
    fn recording_app(&self) -> bool {
        self.recording.as_ref().is_some_and(|r| r.app.is_some())
    }

    /// The command buffer being recorded, begun if needed.
    fn recording(&mut self) -> Result<vk::CommandBuffer> {
        if let Some(r) = &self.recording {
            return Ok(r.cmd);
        }
        let d = &self.gpu.shared.device;
        let ai = vk::CommandBufferAllocateInfo::default()
            .command_pool(self.pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: our pool; only this queue (behind &mut self) uses it.
        let cmd = unsafe { d.allocate_command_buffers(&ai) }.vk("vkAllocateCommandBuffers")?[0];
        let bi = vk::CommandBufferBeginInfo::default()
            .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        // SAFETY: a fresh command buffer.
        if let Err(e) = unsafe { d.begin_command_buffer(cmd, &bi) }.vk("vkBeginCommandBuffer") {
            // SAFETY: never submitted.
            unsafe { d.free_command_buffers(self.pool, &[cmd]) };
            return Err(e);
        }
        // SAFETY: recording.
        unsafe { cmd_order_after_earlier(d, cmd) };
        self.recording = Some(Recording {
            cmd,
            app: None,
            held: vec![],
            staging: vec![],
            fill: None,
            bytes: 0,
        });
        Ok(cmd)
    }

    /// Submits what is recorded in the queue's own command buffer (an
    /// empty one if nothing is), after every earlier submission of this
    /// queue and the batch's waits, signalling the own timeline and
    /// `signal`. Returns the own value it signals.
    fn flush(&mut self, signal: Option<TimelineSignal>) -> Result<u64> {
        debug_assert!(!self.recording_app(), "the app submits its own recording");
        let cmd = self.recording()?;
        let rec = self.recording.take().expect("begun above");
        let dev = self.gpu.shared.clone();
        let d = &dev.device;
        let value = self.submitted + 1;
        let mut sems = vec![self.timeline];
        let mut vals = vec![value];
        if let Some(s) = signal {
            sems.push(s.semaphore);
            vals.push(s.value);
        }
        // A signal's first synchronization scope holds every command
        // earlier in submission order on the queue ("Semaphore Signaling"
        // in the Vulkan spec), so the app's signal covers every copy of
        // the batch without this submission waiting for the earlier ones;
        // the barrier `recording` begins with orders the copies after
        // earlier ones. (Submissions used to wait on the timeline they
        // signal; lavapipe 25.0 crashes when such a semaphore is destroyed
        // right after its last value is reached.) Every submission of a
        // batch waits for the app's semaphores.
        let wait_sems: Vec<vk::Semaphore> = self.waits.iter().map(|w| w.semaphore).collect();
        let wait_vals: Vec<u64> = self.waits.iter().map(|w| w.value).collect();
        let wait_stages = vec![vk::PipelineStageFlags::ALL_COMMANDS; wait_sems.len()];
        let mut tsi = vk::TimelineSemaphoreSubmitInfo::default()
            .signal_semaphore_values(&vals)
            .wait_semaphore_values(&wait_vals);
        let cmds = [cmd];
        let si = [vk::SubmitInfo::default()
            .command_buffers(&cmds)
            .signal_semaphores(&sems)
            .wait_semaphores(&wait_sems)
            .wait_dst_stage_mask(&wait_stages)
            .push_next(&mut tsi)];
        // SAFETY: the command buffer was recorded by this queue; what it
        // reads is held in `rec.held` (imports) and the staging until the
        // own timeline reaches `value`; the app vouched for its buffers
        // and semaphores (submit's contract).
        let r = unsafe {
            d.end_command_buffer(cmd)
                .vk("vkEndCommandBuffer")
                .and_then(|()| dev.submit(&si, vk::Fence::null()))
        };
        if let Err(e) = r {
            // SAFETY: never submitted.
            unsafe { d.free_command_buffers(self.pool, &[cmd]) };
            return Err(e);
        }
        self.submitted = value;
        for &i in &rec.staging {
            self.staging[i].busy_until = Done::Own(value);
        }
        self.in_flight.push_back(InFlight {
            done: Done::Own(value),
            cmd: Some(cmd),
            held: rec.held,
        });
        Ok(value)
    }

    /// What to say when a recorded batch needs more than the queue can
    /// hold until the app submits it.
    fn recorded_too_big(what: String) -> Error {
        Error::Config {
            setting: "record",
            msg: format!(
                "{what} until the app submits the command buffer: this request was not recorded (submit large batches with ReadQueue::submit, or raise the limit)"
            ),
        }
    }

    /// A staging buffer free for a new copy: one whose last copy
    /// completed, a new one while the staging budget allows, or the
    /// oldest busy one once the device is done with it.
    fn free_staging(&mut self) -> Result<usize> {
        let in_use: Vec<usize> = self
            .recording
            .as_ref()
            .map_or(vec![], |r| r.staging.clone());
        for i in 0..self.staging.len() {
            if !in_use.contains(&i) && self.is_done(self.staging[i].busy_until)? {
                return Ok(i);
            }
        }
        let piece = self.opts.piece;
        if (self.staging.len() as u64 + 1) * piece <= self.opts.staging_bytes {
            let buf = Buffer::allocate(self.dev(), piece, Placement::Staging)?;
            if buf.host_bytes().is_none() {
                return Err(Error::DeviceUnsuitable {
                    device: self.dev().info().name.clone(),
                    what: "upload memory is not host-visible".into(),
                });
            }
            self.staging.push(Staging {
                buf,
                busy_until: Done::Own(0),
            });
            return Ok(self.staging.len() - 1);
        }
        // Everything is busy: submit what the queue recorded and wait for
        // its oldest copy out of staging. Staging a recorded batch holds
        // frees only when the app's submission completes: never waited
        // for here, since the app may not have submitted it yet.
        if self.recording.is_some() && !self.recording_app() {
            self.flush(None)?;
        }
        let oldest = self
            .staging
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.busy_until {
                Done::Own(v) if !in_use.contains(&i) => Some((i, v)),
                _ => None,
            })
            .min_by_key(|&(_, v)| v);
        let Some((i, until)) = oldest else {
            return Err(Self::recorded_too_big(format!(
                "all {} bytes of staging are held by recorded batches",
                self.opts.staging_bytes
            )));
        };
        self.wait_value(until)?;
        self.reclaim()?;
        Ok(i)
    }

    /// Waits for the oldest of the queue's own submissions while
    /// `max_imports_in_flight` imports are held.
    fn make_room_for_import(&mut self) -> Result<()> {
        while self.held_count() >= self.opts.max_imports_in_flight {
            let own = |s: &Self| {
                s.in_flight.iter().find_map(|f| match f.done {
                    Done::Own(v) => Some(v),
                    Done::App(_) => None,
                })
            };
            if own(self).is_none() && self.recording.is_some() && !self.recording_app() {
                self.flush(None)?;
            }
            let Some(v) = own(self) else {
                return Err(Self::recorded_too_big(format!(
                    "{} imports (max_imports_in_flight) are held by recorded batches",
                    self.opts.max_imports_in_flight
                )));
            };
            self.wait_value(v)?;
            self.reclaim()?;
        }
        Ok(())
    }

    fn record_request(
        &mut self,
        batch: u64,
        index: usize,
        r: &ReadRequest,
        report: &mut RequestReport,
        into_app: bool,
    ) -> Result<()> {
        let file = Arc::new(SourceFile::open(&r.file)?);
        if !matches!(r.offset.checked_add(r.len), Some(e) if e <= file.len()) {
            return Err(Error::BadInput {
                path: r.file.clone(),
                reason: format!(
                    "the range of {} bytes at offset {} passes the end of the file ({} bytes)",
                    r.len,
                    r.offset,
                    file.len()
                ),
            });
        }
        let name = r.file.display().to_string();
        let mut path: Option<PathKind> = None;
        // The host path's lease on this file, shared by its pieces.
        let mut lease = None;
        let mut done = 0u64;
        while done < r.len {
            let off = r.offset + done;
            let dst_off = r.dst_offset + done;
            // Up to an import's worth; upload takes a staging piece of it.
            let n = self.opts.import_piece.min(r.len - done);
            let (piece, n) = match path {
                None => {
                    // The first piece chooses the path (auto's loop).
                    let (p, k, fallbacks) =
                        choose(self.opts.path, &name, &[PathKind::Heap], |k| {
                            self.visible(&file, off, n, k, &mut lease)
                        })?;
                    path = Some(k);
                    report.fallbacks = fallbacks;
                    p
                }
                Some(k) => match self.visible(&file, off, n, k, &mut lease) {
                    Ok(p) => p,
                    Err(e) => {
                        // A later piece the chosen path cannot serve: the
                        // rest of the request goes through upload.
                        let fb = fall_back_mid_file(self.opts.path, k, e, &r.file)?;
                        report.fallbacks.push(fb);
                        path = Some(PathKind::Upload);
                        self.visible(&file, off, n, PathKind::Upload, &mut lease)?
                    }
                },
            };
            report.path = path;
            self.record_copy(batch, index, &file, piece, n, r.dst, dst_off, report)?;
            // Submitted once a piece's worth (or half the imports) is
            // recorded: the device copies it while the CPU reads or
            // imports the next, and small requests share a submission. A
            // recording of the app's runs when the app submits it.
            let full = self.recording.as_ref().is_some_and(|rec| {
                rec.bytes >= self.opts.piece
                    || rec.held.len() * 2 >= self.opts.max_imports_in_flight
            });
            if !into_app && full {
                self.flush(None)?;
            }
            done += n;
        }
        Ok(())
    }

    /// Makes `n` bytes of `f` at `off` visible through `k`: an import of
    /// the page-aligned range around them, or a staging buffer they were
    /// read into.
    fn visible(
        &mut self,
        f: &SourceFile,
        off: u64,
        n: u64,
        k: PathKind,
        lease: &mut Option<Arc<ReadLease>>,
    ) -> Result<(Piece, u64)> {
        match k {
            PathKind::Upload => {
                // The rest of the staging buffer this recording is filling,
                // or a free one.
                let (i, used) = match self.recording.as_ref().and_then(|r| r.fill) {
                    Some((i, used)) if used < self.opts.piece => (i, used),
                    _ => (self.free_staging()?, 0),
                };
                let n = n.min(self.opts.piece - used);
                let bytes = self.staging[i]
                    .buf
                    .host_bytes_mut()
                    .expect("checked host-visible when allocated");
                read_parallel(f, off, &mut bytes[used as usize..(used + n) as usize])?;
                // A write racing the read would tear it.
                f.check_unchanged()?;
                self.recording()?;
                let rec = self.recording.as_mut().expect("begun");
                if !rec.staging.contains(&i) {
                    rec.staging.push(i);
                }
                rec.fill = Some((i, used + n));
                Ok((Piece::Staging(i, used), n))
            }
            k => {
                // import_range says why `k` is unavailable, if it is.
                self.make_room_for_import()?;
                let skew = off % PAGE_SIZE;
                let imported = import_range(&self.gpu, f, off - skew, skew + n, k, false, lease)?;
                Ok((Piece::Import { imported, skew }, n))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record_copy(
        &mut self,
        batch: u64,
        index: usize,
        file: &Arc<SourceFile>,
        piece: Piece,
        n: u64,
        dst: Destination,
        dst_off: u64,
        report: &mut RequestReport,
    ) -> Result<()> {
        let cmd = self.recording()?;
        let dev = self.gpu.shared.clone();
        let d = &dev.device;
        let region = |src_offset| {
            [vk::BufferCopy::default()
                .src_offset(src_offset)
                .dst_offset(dst_off)
                .size(n)]
        };
        match piece {
            Piece::Staging(i, at) => {
                // Host writes before the submission are visible to it
                // (vkQueueSubmit's implicit host-write dependency).
                // SAFETY: recording; both buffers hold the range (checked).
                unsafe {
                    d.cmd_copy_buffer(cmd, self.staging[i].buf.buffer, dst.buffer, &region(at))
                };
                report.cpu_copied_bytes += n;
            }
            Piece::Import { imported, skew } => {
                let src = imported.buffer.buffer;
                let (fam, transfer) = (dev.queue_family, vk::PipelineStageFlags::TRANSFER);
                // SAFETY: recording; the import is held until the
                // submission completes; the ranges were checked.
                unsafe {
                    let read = vk::AccessFlags::TRANSFER_READ;
                    cmd_external_ownership(d, cmd, fam, &[src], true, transfer, read);
                    d.cmd_copy_buffer(cmd, src, dst.buffer, &region(skew));
                    let none = vk::AccessFlags::empty();
                    cmd_external_ownership(d, cmd, fam, &[src], false, transfer, none);
                }
                if let Some(b) = imported.buffer.module_dmabuf() {
                    report.backing = b.backing();
                }
                report.cpu_copied_bytes += imported.cpu_copied;
                self.recording.as_mut().expect("recording").held.push(Held {
                    batch,
                    request: index,
                    imported,
                    file: file.clone(),
                });
            }
        }
        report.gpu_copied_bytes += n;
        self.recording.as_mut().expect("recording").bytes += n;
        Ok(())
    }
}

/// Numbers a new batch, across the process, so a ticket only redeems at
/// its queue.
fn next_batch() -> u64 {
    static NEXT_BATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT_BATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Whether `e`, met while recording a request, ends the whole batch: the
/// device lost, or the queue's own command buffers, submissions and
/// waits failing. A path failing to import a range fails its request.
fn batch_fatal(e: &Error) -> bool {
    match e {
        Error::Vulkan {
            result: vk::Result::ERROR_DEVICE_LOST,
            ..
        } => true,
        Error::Vulkan { call, .. } => matches!(
            *call,
            "vkQueueSubmit"
                | "vkEndCommandBuffer"
                | "vkBeginCommandBuffer"
                | "vkAllocateCommandBuffers"
                | "vkWaitSemaphores"
                | "vkGetSemaphoreCounterValue"
        ),
        Error::NoVulkan(_) | Error::DeviceUnsuitable { .. } => true,
        _ => false,
    }
}

/// Records a barrier that orders the copies recorded after it behind
/// every command earlier on the queue: the queue's own earlier copies (a
/// destination written by two batches ends with the later one's bytes)
/// and the app's earlier reads and writes of the destinations.
///
/// # Safety
/// `cmd` is a command buffer of `d` in the recording state, outside a
/// render pass.
unsafe fn cmd_order_after_earlier(d: &ash::Device, cmd: vk::CommandBuffer) {
    let order = [vk::MemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::MEMORY_WRITE)
        .dst_access_mask(vk::AccessFlags::TRANSFER_WRITE)];
    // SAFETY: per the caller.
    unsafe {
        d.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::ALL_COMMANDS,
            vk::PipelineStageFlags::TRANSFER,
            vk::DependencyFlags::empty(),
            &order,
            &[],
            &[],
        )
    };
}

/// What one piece is copied from.
enum Piece {
    /// A staging buffer and the offset of the bytes in it.
    Staging(usize, u64),
    Import {
        imported: Imported,
        skew: u64,
    },
}

/// Every request well-formed, before anything is read: a length, a
/// destination range inside its buffer, no two requests writing the same
/// bytes of one buffer.
fn check_requests(requests: &[ReadRequest]) -> Result<()> {
    let bad = |i: usize, r: &ReadRequest, why: String| {
        Err(Error::BadInput {
            path: r.file.clone(),
            reason: format!("request {i}: {why} (nothing was submitted)"),
        })
    };
    let mut ranges: Vec<(vk::Buffer, u64, u64, usize)> = vec![];
    for (i, r) in requests.iter().enumerate() {
        if r.len == 0 {
            return bad(i, r, "zero-length request".into());
        }
        match r.dst_offset.checked_add(r.len) {
            Some(end) if end <= r.dst.size => ranges.push((r.dst.buffer, r.dst_offset, end, i)),
            _ => {
                return bad(
                    i,
                    r,
                    format!(
                        "destination too small: {} bytes at offset {} of a {}-byte buffer",
                        r.len, r.dst_offset, r.dst.size
                    ),
                )
            }
        }
        if r.offset.checked_add(r.len).is_none() {
            return bad(
                i,
                r,
                format!("offset {} + length {} overflows", r.offset, r.len),
            );
        }
    }
    ranges.sort();
    for w in ranges.windows(2) {
        let ((b0, _, e0, i0), (b1, s1, _, i1)) = (w[0], w[1]);
        if b0 == b1 && s1 < e0 {
            let r = &requests[i1];
            return bad(
                i1,
                r,
                format!("its destination bytes overlap request {i0}'s in the same buffer"),
            );
        }
    }
    Ok(())
}

impl Drop for ReadQueue {
    fn drop(&mut self) {
        // Never free what the device may still read: wait for this queue's
        // own submissions (not the whole device, which may be the app's).
        if let Some(r) = self.recording.take().filter(|r| r.app.is_none()) {
            // SAFETY: recorded, never submitted.
            unsafe {
                self.gpu
                    .shared
                    .device
                    .free_command_buffers(self.pool, &[r.cmd])
            };
        }
        if self.submitted > 0 {
            let _ = self.wait_value(self.submitted);
        }
        // And for the app's submissions of the batches it had recorded
        // (record's contract: submitted, or discarded).
        let recorded: Vec<Done> = self
            .in_flight
            .iter()
            .map(|f| f.done)
            .filter(|d| matches!(d, Done::App(_)))
            .collect();
        for d in recorded {
            let _ = self.wait_done(d);
        }
        let _ = self.reclaim();
        self.in_flight.clear();
        self.staging.clear();
        let d = &self.gpu.shared.device;
        // SAFETY: nothing of ours is pending any more.
        unsafe {
            d.destroy_semaphore(self.timeline, None);
            d.destroy_command_pool(self.pool, None);
        }
    }
}
