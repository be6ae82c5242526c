//! Buffers and their memory: allocated, or imported from host mappings or
//! dma-bufs. Each `Buffer` owns its VkBuffer and VkDeviceMemory (and, for
//! imports, what they were imported from) and frees them in that order.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::sync::Arc;

use ash::vk;

use super::DeviceShared;
use crate::error::{Error, Result, VkResultExt};
use crate::hostmap::HostMapping;
use crate::kmod::DmaBuf;

/// What a new allocation is for, which decides the memory type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Written by the CPU, read by shaders: host-visible, device-local if possible.
    Upload,
    /// Written by shaders, read by the CPU: host-visible, cached if possible.
    Readback,
    /// Only the device touches it.
    Device,
    /// Written by the CPU once per use, read by device copies (or by
    /// shaders where the device is the CPU): host memory, our own
    /// huge-page memory where the device imports host pointers and the
    /// buffer is at least 2 MiB ([`HostMapping::anonymous`]), else as
    /// `Upload`. Not for buffers shaders of a GPU read in place: imported
    /// host memory is not device-local.
    Staging,
}

/// A dma-buf an imported buffer's memory came from, with its size.
pub(crate) enum DmaBufSource {
    /// A dmafile.ko mapping of the file (the direct path).
    Module(DmaBuf),
    /// A dma-heap buffer filled from the file (the heap path).
    Heap { fd: OwnedFd, len: u64 },
}

impl DmaBufSource {
    fn len(&self) -> u64 {
        match self {
            DmaBufSource::Module(b) => b.len(),
            DmaBufSource::Heap { len, .. } => *len,
        }
    }
}

impl AsFd for DmaBufSource {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DmaBufSource::Module(b) => b.as_fd(),
            DmaBufSource::Heap { fd, .. } => fd.as_fd(),
        }
    }
}

/// What an imported buffer's memory came from; kept until the memory is
/// freed.
enum Source {
    Host(#[allow(dead_code)] /* held for its Drop */ HostMapping),
    DmaBuf(DmaBufSource),
    /// Our own staging memory (HostMapping::anonymous), imported as a host
    /// pointer: not a file's pages, so not "imported" in the sense of
    /// [`Buffer::is_imported`].
    Staging(#[allow(dead_code)] /* held for its Drop */ HostMapping),
}

pub(crate) struct Buffer {
    dev: Arc<DeviceShared>,
    pub buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    pub size: u64,
    mapped: *mut u8,
    // Dropped after `memory` is freed (see Drop), since the import must go
    // before what it was made from.
    source: Option<Source>,
}

// SAFETY: Vulkan handles may move between threads; the mapped pointer is only
// dereferenced through &mut self.
unsafe impl Send for Buffer {}

/// A VkBuffer without memory yet, destroyed on drop unless it becomes a
/// [`Buffer`]: every early return of an allocation cleans up by itself.
struct Unbound<'a> {
    dev: &'a Arc<DeviceShared>,
    buffer: vk::Buffer,
}

impl<'a> Unbound<'a> {
    fn create(dev: &'a Arc<DeviceShared>, ci: &vk::BufferCreateInfo<'_>) -> Result<Self> {
        // SAFETY: valid create info.
        let buffer = unsafe { dev.device.create_buffer(ci, None) }.vk("vkCreateBuffer")?;
        Ok(Unbound { dev, buffer })
    }

    /// A storage buffer of `size` bytes whose memory will be imported as
    /// external memory of type `ht`.
    fn external(
        dev: &'a Arc<DeviceShared>,
        size: u64,
        ht: vk::ExternalMemoryHandleTypeFlags,
    ) -> Result<Self> {
        let mut ext_ci = vk::ExternalMemoryBufferCreateInfo::default().handle_types(ht);
        let ci = vk::BufferCreateInfo::default()
            .size(size)
            .usage(STORAGE_USAGE)
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .push_next(&mut ext_ci);
        Self::create(dev, &ci)
    }

    /// The memory requirements, and whether the driver wants a dedicated
    /// allocation.
    fn requirements(&self) -> (vk::MemoryRequirements, bool) {
        let mut dedicated = vk::MemoryDedicatedRequirements::default();
        let mut req2 = vk::MemoryRequirements2::default().push_next(&mut dedicated);
        let rqi = vk::BufferMemoryRequirementsInfo2::default().buffer(self.buffer);
        // SAFETY: buffer from this device; Vulkan 1.1 core.
        unsafe {
            self.dev
                .device
                .get_buffer_memory_requirements2(&rqi, &mut req2)
        };
        let req = req2.memory_requirements;
        let want = dedicated.prefers_dedicated_allocation == vk::TRUE
            || dedicated.requires_dedicated_allocation == vk::TRUE;
        (req, want)
    }

    /// Binds `memory` (allocated for this buffer's requirements; the new
    /// Buffer owns and frees it) at offset 0.
    fn bind(self, memory: vk::DeviceMemory, size: u64, source: Option<Source>) -> Result<Buffer> {
        let b = Buffer {
            dev: self.dev.clone(),
            buffer: self.buffer,
            memory,
            size,
            mapped: std::ptr::null_mut(),
            source,
        };
        // From here the Buffer destroys the VkBuffer.
        std::mem::forget(self);
        // SAFETY: the memory was allocated for this buffer's requirements.
        unsafe { b.dev.device.bind_buffer_memory(b.buffer, memory, 0) }.vk("vkBindBufferMemory")?;
        Ok(b)
    }
}

impl Drop for Unbound<'_> {
    fn drop(&mut self) {
        // SAFETY: the buffer has no memory and was never used.
        unsafe { self.dev.device.destroy_buffer(self.buffer, None) };
    }
}

fn find_type(
    props: &vk::PhysicalDeviceMemoryProperties,
    bits: u32,
    ranked: &[vk::MemoryPropertyFlags],
) -> Option<u32> {
    ranked.iter().find_map(|want| {
        (0..props.memory_type_count).find(|&i| {
            bits & (1 << i) != 0
                && props.memory_types[i as usize]
                    .property_flags
                    .contains(*want)
        })
    })
}

const STORAGE_USAGE: vk::BufferUsageFlags = vk::BufferUsageFlags::from_raw(
    vk::BufferUsageFlags::STORAGE_BUFFER.as_raw()
        | vk::BufferUsageFlags::TRANSFER_SRC.as_raw()
        | vk::BufferUsageFlags::TRANSFER_DST.as_raw(),
);

impl Buffer {
    pub fn allocate(dev: &Arc<DeviceShared>, size: u64, placement: Placement) -> Result<Buffer> {
        use vk::MemoryPropertyFlags as F;
        // Staging is host memory the device reads: where the device imports
        // host pointers, it is our own huge-page memory (HostMapping::
        // anonymous says why); a refused import falls back to the driver's.
        // Only where every host-visible type is coherent: nothing flushes
        // staging writes.
        let coherent = || {
            dev.mem_props.memory_types[..dev.mem_props.memory_type_count as usize]
                .iter()
                .filter(|t| t.property_flags.contains(F::HOST_VISIBLE))
                .all(|t| t.property_flags.contains(F::HOST_COHERENT))
        };
        if placement == Placement::Staging
            && size >= 2 << 20
            && dev.host_ext.is_some()
            && coherent()
        {
            if let Ok(map) = HostMapping::anonymous(size) {
                let ptr = map.ptr() as *mut u8;
                if let Ok(mut b) = Buffer::import_host_as(dev, map, Source::Staging) {
                    b.mapped = ptr;
                    return Ok(b);
                }
            }
        }
        let ci = vk::BufferCreateInfo::default()
            .size(size.max(4))
            .usage(STORAGE_USAGE)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        let buffer = Unbound::create(dev, &ci)?;
        let (req, _) = buffer.requirements();
        let ranked: &[F] = match placement {
            Placement::Upload | Placement::Staging => &[
                F::HOST_VISIBLE | F::HOST_COHERENT | F::DEVICE_LOCAL,
                F::HOST_VISIBLE | F::HOST_COHERENT,
            ],
            Placement::Readback => &[
                F::HOST_VISIBLE | F::HOST_COHERENT | F::HOST_CACHED,
                F::HOST_VISIBLE | F::HOST_COHERENT,
            ],
            Placement::Device => &[F::DEVICE_LOCAL, F::empty()],
        };
        let type_index =
            find_type(&dev.mem_props, req.memory_type_bits, ranked).ok_or_else(|| {
                Error::DeviceUnsuitable {
                    device: dev.info().name.clone(),
                    what: format!("no memory type for {placement:?} buffers"),
                }
            })?;
        let ai = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(type_index);
        // SAFETY: valid allocate info.
        let memory = unsafe { dev.device.allocate_memory(&ai, None) }.vk("vkAllocateMemory")?;
        let mut b = buffer.bind(memory, size, None)?;
        let flags = dev.mem_props.memory_types[type_index as usize].property_flags;
        if flags.contains(F::HOST_VISIBLE) {
            // SAFETY: host-visible memory, mapped once for the buffer's lifetime.
            b.mapped = unsafe {
                dev.device
                    .map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
            }
            .vk("vkMapMemory")? as *mut u8;
        }
        Ok(b)
    }

    /// Imports a host mapping as device memory. On failure the mapping is
    /// dropped (unmapped) and the Vulkan error returned.
    pub fn import_host(dev: &Arc<DeviceShared>, map: HostMapping) -> Result<Buffer> {
        Buffer::import_host_as(dev, map, Source::Host)
    }

    /// [`Buffer::import_host`], keeping the mapping as `source(map)`.
    fn import_host_as(
        dev: &Arc<DeviceShared>,
        map: HostMapping,
        source: fn(HostMapping) -> Source,
    ) -> Result<Buffer> {
        let Some(ext) = dev.host_ext.as_ref() else {
            return Err(Error::DeviceUnsuitable {
                device: dev.info().name.clone(),
                what: "no VK_EXT_external_memory_host".into(),
            });
        };
        let ht = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;
        let mut hp = vk::MemoryHostPointerPropertiesEXT::default();
        // SAFETY: map.ptr() is a live mapping aligned as the extension requires.
        unsafe {
            (ext.fp().get_memory_host_pointer_properties_ext)(ext.device(), ht, map.ptr(), &mut hp)
        }
        .result()
        .vk("vkGetMemoryHostPointerPropertiesEXT")?;
        let buffer = Unbound::external(dev, map.size(), ht)?;
        let (req, _) = buffer.requirements();
        let bits = req.memory_type_bits & hp.memory_type_bits;
        let type_index = find_type(&dev.mem_props, bits, &[vk::MemoryPropertyFlags::empty()])
            .ok_or(Error::Vulkan {
                call: "host pointer import (no compatible memory type)",
                result: vk::Result::ERROR_INVALID_EXTERNAL_HANDLE,
            })?;
        let mut import = vk::ImportMemoryHostPointerInfoEXT::default()
            .handle_type(ht)
            .host_pointer(map.ptr());
        let ai = vk::MemoryAllocateInfo::default()
            .allocation_size(map.size())
            .memory_type_index(type_index)
            .push_next(&mut import);
        // SAFETY: the host pointer stays mapped until after this memory is
        // freed: the Buffer owns both and frees the memory first.
        let memory = unsafe { dev.device.allocate_memory(&ai, None) }
            .vk("vkAllocateMemory (host pointer import)")?;
        let size = map.size();
        buffer.bind(memory, size, Some(source(map)))
    }

    /// Imports a dma-buf as a buffer of `size` bytes at its offset 0, with
    /// VK_EXT_external_memory_dma_buf; the buffer keeps `source` alive.
    pub fn import_dmabuf(
        dev: &Arc<DeviceShared>,
        source: DmaBufSource,
        size: u64,
    ) -> Result<Buffer> {
        let Some(ext) = dev.fd_ext.as_ref() else {
            return Err(Error::DeviceUnsuitable {
                device: dev.info().name.clone(),
                what: "no VK_EXT_external_memory_dma_buf".into(),
            });
        };
        let fd = source.as_fd();
        let ht = vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT;
        let mut props = vk::MemoryFdPropertiesKHR::default();
        // SAFETY: fd is an open dma-buf for the duration of the call.
        unsafe { ext.get_memory_fd_properties(ht, fd.as_raw_fd(), &mut props) }
            .vk("vkGetMemoryFdPropertiesKHR")?;
        let buffer = Unbound::external(dev, size.max(4), ht)?;
        let (req, want_dedicated) = buffer.requirements();
        let bits = req.memory_type_bits & props.memory_type_bits;
        let type_index = (req.size <= source.len())
            .then(|| find_type(&dev.mem_props, bits, &[vk::MemoryPropertyFlags::empty()]))
            .flatten()
            .ok_or(Error::Vulkan {
                call: "dma-buf import (no compatible memory type, or the dma-buf is smaller than the buffer needs)",
                result: vk::Result::ERROR_INVALID_EXTERNAL_HANDLE,
            })?;
        // Vulkan takes ownership of the fd it imports: give it a duplicate.
        let dup = fd
            .try_clone_to_owned()
            .map_err(|e| Error::io(std::path::Path::new("dma-buf"), "cannot dup", e))?
            .into_raw_fd();
        let mut import = vk::ImportMemoryFdInfoKHR::default().handle_type(ht).fd(dup);
        let mut ded = vk::MemoryDedicatedAllocateInfo::default().buffer(buffer.buffer);
        let mut ai = vk::MemoryAllocateInfo::default()
            .allocation_size(source.len())
            .memory_type_index(type_index)
            .push_next(&mut import);
        if want_dedicated {
            ai = ai.push_next(&mut ded);
        }
        // SAFETY: valid allocate info; on success the memory owns `dup`.
        let memory = unsafe { dev.device.allocate_memory(&ai, None) }
            .vk("vkAllocateMemory (dma-buf import)")
            .inspect_err(|_| close_failed_import(dup, fd))?;
        buffer.bind(memory, size, Some(Source::DmaBuf(source)))
    }

    /// The dmafile.ko dma-buf this buffer was imported from, if any.
    pub fn module_dmabuf(&self) -> Option<&DmaBuf> {
        match &self.source {
            Some(Source::DmaBuf(DmaBufSource::Module(b))) => Some(b),
            _ => None,
        }
    }

    /// The dma-buf this buffer was imported from, if any.
    pub fn dmabuf_source(&self) -> Option<&DmaBufSource> {
        match &self.source {
            Some(Source::DmaBuf(s)) => Some(s),
            _ => None,
        }
    }

    /// The device that owns it.
    pub fn dev(&self) -> &Arc<DeviceShared> {
        &self.dev
    }

    /// The memory bound to `buffer` at offset 0.
    pub fn memory(&self) -> vk::DeviceMemory {
        self.memory
    }

    /// Whether the memory is imported: a file's pages or a dma-buf, owned
    /// by the external queue family until acquired (our own staging is not).
    pub fn is_imported(&self) -> bool {
        matches!(self.source, Some(Source::Host(_) | Source::DmaBuf(_)))
    }

    /// The CPU view of a host-visible buffer, read-only.
    pub fn host_bytes(&self) -> Option<&[u8]> {
        if self.mapped.is_null() {
            return None;
        }
        // SAFETY: as for host_bytes_mut; &self means no CPU writer exists.
        Some(unsafe { std::slice::from_raw_parts(self.mapped, self.size as usize) })
    }

    /// The CPU view of a host-visible buffer.
    pub fn host_bytes_mut(&mut self) -> Option<&mut [u8]> {
        if self.mapped.is_null() {
            return None;
        }
        // SAFETY: the memory is mapped for `size` bytes for the buffer's whole
        // life, and &mut self means no other CPU view exists. Callers only
        // touch it while the device is not using the buffer.
        Some(unsafe { std::slice::from_raw_parts_mut(self.mapped, self.size as usize) })
    }

    /// The CPU view of a host-visible buffer as u32 words.
    pub fn host_words(&self, n: usize) -> Option<&[u32]> {
        if self.mapped.is_null() || n * 4 > self.size as usize {
            return None;
        }
        // SAFETY: mapped memory is aligned to at least minMemoryMapAlignment
        // (>= 64) and holds `size` bytes.
        Some(unsafe { std::slice::from_raw_parts(self.mapped as *const u32, n) })
    }
}

/// After a failed import the spec leaves the fd with the caller, but Mesa
/// closes it anyway. Close it only if that number is still open on the same
/// dma-buf, so that neither a leak (pins held until exit) nor a double close
/// can happen.
fn close_failed_import(dup: i32, original: BorrowedFd<'_>) {
    use nix::sys::stat::fstat;
    let (Ok(a), Ok(b)) = (fstat(dup), fstat(original.as_raw_fd())) else {
        return;
    };
    if a.st_dev == b.st_dev && a.st_ino == b.st_ino {
        let _ = nix::unistd::close(dup);
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: the owner waited for the device to finish with the buffer
        // (streams wait on their timeline before dropping inputs). Buffer
        // first, then its memory (which unmaps it); the host mapping the
        // memory may have been imported from is dropped after this.
        unsafe {
            self.dev.device.destroy_buffer(self.buffer, None);
            self.dev.device.free_memory(self.memory, None);
        }
    }
}
