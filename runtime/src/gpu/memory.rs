//! Buffers and their memory: allocated, or imported from host mappings.
//! Each `Buffer` owns its VkBuffer and VkDeviceMemory (and, for imports, the
//! memory they were imported from) and frees them in that order.
use std::sync::Arc;

use ash::vk;

use super::DeviceShared;
use crate::error::{Error, Result, VkResultExt};
use crate::hostmap::HostMapping;

/// What a new allocation is for, which decides the memory type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Written by the CPU, read by shaders: host-visible, device-local if possible.
    Upload,
    /// Written by shaders, read by the CPU: host-visible, cached if possible.
    Readback,
    /// Only the device touches it.
    Device,
}

pub(crate) struct Buffer {
    dev: Arc<DeviceShared>,
    pub buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    pub size: u64,
    mapped: *mut u8,
    // Only owned: dropped after `memory` is freed (see Drop), since the
    // import must go before the mapping it was made from.
    _host_map: Option<HostMapping>,
}

// SAFETY: Vulkan handles may move between threads; the mapped pointer is only
// dereferenced through &mut self.
unsafe impl Send for Buffer {}

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
        let d = &dev.device;
        let ci = vk::BufferCreateInfo::default()
            .size(size.max(4))
            .usage(STORAGE_USAGE)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: valid device and create info.
        let buffer = unsafe { d.create_buffer(&ci, None) }.vk("vkCreateBuffer")?;
        // SAFETY: buffer was just created from d.
        let req = unsafe { d.get_buffer_memory_requirements(buffer) };
        let ranked: &[F] = match placement {
            Placement::Upload => &[
                F::HOST_VISIBLE | F::HOST_COHERENT | F::DEVICE_LOCAL,
                F::HOST_VISIBLE | F::HOST_COHERENT,
            ],
            Placement::Readback => &[
                F::HOST_VISIBLE | F::HOST_COHERENT | F::HOST_CACHED,
                F::HOST_VISIBLE | F::HOST_COHERENT,
            ],
            Placement::Device => &[F::DEVICE_LOCAL, F::empty()],
        };
        let Some(type_index) = find_type(&dev.mem_props, req.memory_type_bits, ranked) else {
            // SAFETY: not bound, not in use.
            unsafe { d.destroy_buffer(buffer, None) };
            return Err(Error::DeviceUnsuitable {
                device: dev.info().name.clone(),
                what: format!("no memory type for {placement:?} buffers"),
            });
        };
        let ai = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(type_index);
        // SAFETY: valid allocate info.
        let memory = match unsafe { d.allocate_memory(&ai, None) }.vk("vkAllocateMemory") {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: not bound, not in use.
                unsafe { d.destroy_buffer(buffer, None) };
                return Err(e);
            }
        };
        let flags = dev.mem_props.memory_types[type_index as usize].property_flags;
        let mut b = Buffer {
            dev: dev.clone(),
            buffer,
            memory,
            size,
            mapped: std::ptr::null_mut(),
            _host_map: None,
        };
        // SAFETY: memory fits the buffer's requirements; offset 0.
        unsafe { d.bind_buffer_memory(buffer, memory, 0) }.vk("vkBindBufferMemory")?;
        if flags.contains(F::HOST_VISIBLE) {
            // SAFETY: host-visible memory, mapped once for the buffer's lifetime.
            b.mapped =
                unsafe { d.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()) }
                    .vk("vkMapMemory")? as *mut u8;
        }
        Ok(b)
    }

    /// Imports a host mapping as device memory. On failure the mapping is
    /// dropped (unmapped) and the Vulkan error returned.
    pub fn import_host(dev: &Arc<DeviceShared>, map: HostMapping) -> Result<Buffer> {
        let d = &dev.device;
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
        let mut ext_ci = vk::ExternalMemoryBufferCreateInfo::default().handle_types(ht);
        let ci = vk::BufferCreateInfo::default()
            .size(map.size())
            .usage(STORAGE_USAGE)
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .push_next(&mut ext_ci);
        // SAFETY: valid create info.
        let buffer = unsafe { d.create_buffer(&ci, None) }.vk("vkCreateBuffer")?;
        // SAFETY: buffer from d.
        let req = unsafe { d.get_buffer_memory_requirements(buffer) };
        let bits = req.memory_type_bits & hp.memory_type_bits;
        let Some(type_index) = find_type(&dev.mem_props, bits, &[vk::MemoryPropertyFlags::empty()])
        else {
            // SAFETY: unbound buffer.
            unsafe { d.destroy_buffer(buffer, None) };
            return Err(Error::Vulkan {
                call: "host pointer import (no compatible memory type)",
                result: vk::Result::ERROR_INVALID_EXTERNAL_HANDLE,
            });
        };
        let mut import = vk::ImportMemoryHostPointerInfoEXT::default()
            .handle_type(ht)
            .host_pointer(map.ptr());
        let ai = vk::MemoryAllocateInfo::default()
            .allocation_size(map.size())
            .memory_type_index(type_index)
            .push_next(&mut import);
        // SAFETY: the host pointer stays mapped until after this memory is
        // freed: the Buffer owns both and frees the memory first.
        let memory = match unsafe { d.allocate_memory(&ai, None) }
            .vk("vkAllocateMemory (host pointer import)")
        {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: unbound buffer.
                unsafe { d.destroy_buffer(buffer, None) };
                return Err(e);
            }
        };
        let b = Buffer {
            dev: dev.clone(),
            buffer,
            memory,
            size: map.size(),
            mapped: std::ptr::null_mut(),
            _host_map: Some(map),
        };
        // SAFETY: the memory was allocated for this buffer's requirements.
        unsafe { d.bind_buffer_memory(buffer, memory, 0) }.vk("vkBindBufferMemory")?;
        Ok(b)
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
