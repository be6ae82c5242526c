//! A range of a file made visible to the caller's own shaders, through the
//! fastest path that can serve it, for reading or for reading and writing.
//!
//! ```no_run
//! use dmafile::{Gpu, Region, RegionOptions, Access, Kernel, DeviceBuffer};
//! let gpu = Gpu::open_default()?;
//! // Map bytes 4096.. of the file; `auto` tries direct, host, heap, upload.
//! let region = Region::open(&gpu, "weights.bin", 4096, 1 << 20, RegionOptions::default())?;
//! println!("via {} ({} fallbacks)", region.path_kind(), region.fallbacks().len());
//! # Ok::<(), dmafile::Error>(())
//! ```
//!
//! The buffer a shader sees starts at the page that holds `offset`: the
//! requested first byte is at [`Region::skew`] in it (0 for a page-aligned
//! offset), and bytes before it and after the range belong to the file (or
//! are zero past its end) and must not be relied on.
//!
//! Writing ([`Access::ReadWrite`]): on the direct path the shader writes the
//! file's own pages, which the kernel writes back like any mmap store; the
//! module allows it where the filesystem can take stores to a pinned page
//! (tmpfs and memfds). On the heap and upload paths the device writes a
//! copy, and [`Region::finish`] writes the range back to the file. The host
//! path maps files read-only and is skipped for writing.
use std::cell::Cell;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gpu::memory::{Buffer, DmaBufSource};
use crate::gpu::Gpu;
use crate::hostmap::ReadLease;
use crate::import::{choose, cmd_external_ownership, import_range};
use crate::kmod::{dma_buf_sync, sync, Backing, Module, Status};
use crate::path::{Fallback, PathChoice, PathKind, SYSTEM_HEAP};
use crate::source::SourceFile;
use crate::PAGE_SIZE;
use ash::vk;

/// What the device may do to a region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Shaders may only read it; one that may write it is refused.
    #[default]
    Read,
    /// Shaders may write it; what they write ends up in the file.
    ReadWrite,
}

/// How to open a region.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegionOptions {
    pub path: PathChoice,
    pub access: Access,
}

/// What a region did, reported by [`Region::finish`].
#[derive(Clone, Debug, Serialize)]
pub struct RegionReport {
    pub file: String,
    pub offset: u64,
    pub len: u64,
    pub path: PathKind,
    /// `page-cache` or `storage-direct` on the direct path; `none` otherwise.
    pub backing: Backing,
    pub access: Access,
    /// Bytes the CPU copied: reading the range in, and writing it back.
    pub cpu_copied_bytes: u64,
    /// True when a copy path wrote the device's output back to the file.
    pub written_back: bool,
    pub fallbacks: Vec<Fallback>,
}

/// A file range visible to shaders (see the module documentation).
/// The raw Vulkan objects of a [`Region`] ([`Region::raw`]).
#[derive(Clone, Copy, Debug)]
pub struct RawRange {
    pub buffer: vk::Buffer,
    pub memory: vk::DeviceMemory,
    /// Bytes of `buffer` (the range from its page start, rounded up to 4).
    pub size: u64,
    /// Where the file's byte at the region's offset is in `buffer`.
    pub skew: u64,
    /// The region's length from `skew`.
    pub len: u64,
    /// Memory imported from outside the device (direct, host, heap).
    pub imported: bool,
}

pub struct Region {
    // Dropped first: the import goes before the file and the lease.
    buffer: Option<Buffer>,
    file: SourceFile,
    offset: u64,
    len: u64,
    skew: u64,
    access: Access,
    kind: PathKind,
    fallbacks: Vec<Fallback>,
    module: Option<Module>,
    lease: Option<std::sync::Arc<ReadLease>>,
    cpu_copied: u64,
    written: Cell<bool>,
}

impl Region {
    /// Makes `len` bytes of `path` at `offset` visible to shaders.
    pub fn open(
        gpu: &Gpu,
        path: impl AsRef<Path>,
        offset: u64,
        len: u64,
        opts: RegionOptions,
    ) -> Result<Region> {
        let path = path.as_ref();
        let file = match opts.access {
            Access::Read => SourceFile::open(path)?,
            Access::ReadWrite => SourceFile::open_writable(path)?,
        };
        if len == 0 {
            return Err(Error::BadInput {
                path: path.into(),
                reason: "a region must have at least one byte (length 0 given)".into(),
            });
        }
        let end = offset.checked_add(len).filter(|&e| e <= file.len());
        if end.is_none() {
            return Err(Error::BadInput {
                path: path.into(),
                reason: format!(
                    "the range of {len} bytes at offset {offset} passes the end of the file ({} bytes)",
                    file.len()
                ),
            });
        }
        let skew = offset % PAGE_SIZE;
        let mut r = Region {
            buffer: None,
            file,
            offset,
            len,
            skew,
            access: opts.access,
            kind: PathKind::Upload,
            fallbacks: vec![],
            module: None,
            lease: None,
            cpu_copied: 0,
            written: Cell::new(false),
        };
        let write = opts.access == Access::ReadWrite;
        let start = offset - skew;
        let n = skew + len;
        let name = r.file.path().display().to_string();
        let file = &mut r.file;
        let (imported, kind, fallbacks) = choose(opts.path, &name, &[], |k| {
            let i = import_range(gpu, file, start, n, k, write, &mut None)?;
            if write && k == PathKind::Direct {
                // Pinning for write faulted the pages writable, which moves
                // the file's times on tmpfs: our change, not another
                // writer's.
                file.rebase_identity()?;
            }
            Ok(i)
        })?;
        r.kind = kind;
        r.fallbacks = fallbacks;
        r.buffer = Some(imported.buffer);
        r.module = imported.module;
        r.lease = imported.lease;
        r.cpu_copied = imported.cpu_copied;
        Ok(r)
    }

    /// The Vulkan objects behind the region, for the application's own
    /// pipelines and copies: valid while the region lives (they are
    /// destroyed when it is finished or dropped, so the app must be done
    /// with them by then, its submissions waited for). The file's byte at
    /// [`Region::offset`] is at `skew` in `buffer`; `size` bytes of
    /// `buffer` may be bound. Imported memory (every path but `upload`)
    /// belongs to the external queue family until acquired: record
    /// [`Region::cmd_acquire`] before first use in each submission.
    pub fn raw(&self) -> RawRange {
        let b = self.buffer();
        RawRange {
            buffer: b.buffer,
            memory: b.memory(),
            size: b.size,
            skew: self.skew,
            len: self.len,
            imported: b.is_imported(),
        }
    }

    /// Records into `cmd` the barrier that acquires the region's buffer
    /// from the external queue family for `dst_access` at `dst_stage` on
    /// the queue family of the `Gpu` it was opened on
    /// ([`crate::Gpu::queue_family`]; a plain execution barrier for memory
    /// that is not imported).
    ///
    /// # Safety
    /// `cmd` must be a command buffer of the region's device in the
    /// recording state, to be submitted on that queue family while the
    /// region lives.
    pub unsafe fn cmd_acquire(
        &self,
        cmd: vk::CommandBuffer,
        dst_stage: vk::PipelineStageFlags,
        dst_access: vk::AccessFlags,
    ) {
        // SAFETY: per the caller.
        unsafe { self.cmd_ownership(cmd, true, dst_stage, dst_access) }
    }

    /// Records the matching release back to the external queue family
    /// after the app's last use (`src_access` at `src_stage`).
    ///
    /// # Safety
    /// As for [`Region::cmd_acquire`].
    pub unsafe fn cmd_release(
        &self,
        cmd: vk::CommandBuffer,
        src_stage: vk::PipelineStageFlags,
        src_access: vk::AccessFlags,
    ) {
        // SAFETY: per the caller.
        unsafe { self.cmd_ownership(cmd, false, src_stage, src_access) }
    }

    /// The ownership barrier of [`Region::cmd_acquire`] and
    /// [`Region::cmd_release`].
    ///
    /// # Safety
    /// As for [`Region::cmd_acquire`].
    unsafe fn cmd_ownership(
        &self,
        cmd: vk::CommandBuffer,
        acquire: bool,
        stage: vk::PipelineStageFlags,
        access: vk::AccessFlags,
    ) {
        let b = self.buffer();
        let imported: &[vk::Buffer] = if b.is_imported() {
            std::slice::from_ref(&b.buffer)
        } else {
            &[]
        };
        let (d, family) = (&b.dev().device, b.dev().queue_family);
        // SAFETY: per the caller.
        unsafe { cmd_external_ownership(d, cmd, family, imported, acquire, stage, access) };
    }

    pub(crate) fn buffer(&self) -> &Buffer {
        self.buffer
            .as_ref()
            .expect("a region has a buffer until finished")
    }

    pub(crate) fn mark_written(&self) {
        self.written.set(true);
    }

    /// Bytes the CPU copied to make the range visible so far (0 on the
    /// direct and host paths); [`Region::finish`] reports the total.
    pub fn cpu_copied_bytes(&self) -> u64 {
        self.cpu_copied
    }

    /// Whether shaders may write this region.
    pub fn writable(&self) -> bool {
        self.access == Access::ReadWrite
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The path that carries the region.
    pub fn path_kind(&self) -> PathKind {
        self.kind
    }

    /// The faster paths that were skipped, and why.
    pub fn fallbacks(&self) -> &[Fallback] {
        &self.fallbacks
    }

    /// Offset of the range in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length of the range in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the range starts in the buffer shaders see (`offset` modulo
    /// the page size).
    pub fn skew(&self) -> u64 {
        self.skew
    }

    /// Size of the buffer shaders see: `skew() + len()`, rounded up to 4.
    pub fn buffer_len(&self) -> u64 {
        self.buffer().size
    }

    /// What the memory is: the file's page cache or its storage (direct),
    /// or `none` for the copies and host mappings of the other paths.
    pub fn backing(&self) -> Backing {
        self.buffer()
            .module_dmabuf()
            .map_or(Backing::None, |b| b.backing())
    }

    /// The dma-buf of a direct region, for importing the same mapping into
    /// another device as well (a display: [`crate::display`]). The file's
    /// byte at `offset()` is at `skew()` in it. `None` on other paths.
    pub fn dmabuf(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.buffer().module_dmabuf().map(|b| b.as_fd())
    }

    /// The module's view of the mapping (direct path only).
    pub fn status(&self) -> Option<Result<Status>> {
        let (m, b) = (self.module.as_ref()?, self.buffer().module_dmabuf()?);
        Some(
            m.status(b.as_fd())
                .map_err(|e| Error::io(self.path(), "dmafile status", e.into())),
        )
    }

    /// Checks that what the device sees still is the file's range: no page
    /// truncated or punched out under a direct mapping, no lease broken
    /// under a host mapping, and the file not changed since the region was
    /// made (copy paths hold the bytes of that moment).
    pub fn check(&self) -> Result<()> {
        let changed = |what: String| {
            Err(Error::FileChanged {
                path: self.path().to_path_buf(),
                what,
            })
        };
        if let Some(st) = self.status().transpose()? {
            if st.stale() {
                return changed(format!(
                    "{} of the {} pages mapped at offset {} were truncated or punched out under the mapping (dmafile status: stale)",
                    st.stale_pages,
                    st.length / PAGE_SIZE,
                    st.offset
                ));
            }
        }
        if self.lease.as_ref().is_some_and(|l| l.broken()) {
            return changed(
                "it was opened for writing or truncated, by another process or by this one outside dmafile (its read lease was broken)"
                    .into(),
            );
        }
        self.file.check_unchanged()
    }

    /// Ends the region: checks it (see [`Region::check`]), writes a copy
    /// path's device output back to the file, releases the mapping, and
    /// reports. A region whose file changed is an error, and then a copy
    /// path's output is *not* written (it would overwrite the other
    /// writer's bytes).
    pub fn finish(mut self) -> Result<RegionReport> {
        self.check()?;
        let backing = self.backing();
        let mut written_back = false;
        if self.written.get() && self.kind != PathKind::Direct {
            self.write_back()?;
            written_back = true;
        }
        self.buffer = None; // unpins, dirtying a WRITE mapping's pages
        if self.written.get() && self.kind == PathKind::Direct {
            // The device's stores bypassed write(2): say the file changed.
            use nix::sys::stat::futimens;
            use nix::sys::time::TimeSpec;
            let _ = futimens(
                std::os::fd::AsRawFd::as_raw_fd(&self.file.fd()),
                &TimeSpec::UTIME_OMIT,
                &TimeSpec::UTIME_NOW,
            );
        }
        self.written.set(false);
        Ok(RegionReport {
            file: self.path().display().to_string(),
            offset: self.offset,
            len: self.len,
            path: self.kind,
            backing,
            access: self.access,
            cpu_copied_bytes: self.cpu_copied,
            written_back,
            fallbacks: std::mem::take(&mut self.fallbacks),
        })
    }

    /// Copies the range from the device's copy to the file.
    fn write_back(&mut self) -> Result<()> {
        let (skew, len) = (self.skew as usize, self.len as usize);
        let path = self.file.path().to_path_buf();
        let buf = self.buffer.as_ref().expect("not finished");
        let write = |data: &[u8]| -> Result<()> {
            self.file
                .file()
                .write_all_at(data, self.offset)
                .map_err(|e| Error::io(&path, "cannot write the device's output back", e))
        };
        match buf.dmabuf_source() {
            Some(DmaBufSource::Heap { fd, len: blen }) => {
                let heap_err = |what, e: std::io::Error| Error::io(Path::new(SYSTEM_HEAP), what, e);
                // SAFETY: the device is idle (runs wait); we only read.
                let map = unsafe { memmap2::MmapOptions::new().len(*blen as usize).map(fd) }
                    .map_err(|e| heap_err("cannot mmap a heap buffer", e))?;
                let s = |fl| {
                    dma_buf_sync(fd.as_fd(), fl)
                        .map_err(|e| heap_err("DMA_BUF_IOCTL_SYNC", e.into()))
                };
                s(sync::START | sync::READ)?;
                let r = write(&map[skew..skew + len]);
                s(sync::END | sync::READ)?;
                r?;
            }
            _ => {
                let bytes = buf
                    .host_bytes()
                    .expect("upload buffers are host-visible: try_path filled it through the CPU");
                write(&bytes[skew..skew + len])?;
            }
        }
        self.cpu_copied += self.len;
        Ok(())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // An unfinished region whose device output only lives in a copy:
        // still write it back, as a direct mapping's stores would be.
        if self.buffer.is_some() && self.written.get() && self.kind != PathKind::Direct {
            if let Err(e) = self.check().and_then(|()| self.write_back()) {
                log::error!(
                    "region dropped without finish(); its output was not written back: {e}"
                );
            }
        }
    }
}
