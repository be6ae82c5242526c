//! The compute pipelines for the sample shaders, sharing one interface
//! (shaders/common.glsl): binding 0 input words, 1 output, 2 tables, and a
//! push constant with the number of valid input bytes.
use std::sync::Arc;

use ash::vk;

use super::memory::{Buffer, Placement};
use super::DeviceShared;
use crate::error::{Error, Result, VkResultExt};
use crate::shader::ShaderKind;

/// Invocations per workgroup (`local_size_x` in the shaders).
pub(crate) const WORKGROUP: u64 = 64;

use crate::spirv::builtin::{CRC32C as SPV_CRC32C, HISTOGRAM as SPV_HISTOGRAM, SUM64 as SPV_SUM64};

/// A descriptor set layout with one compute storage buffer at each binding.
pub(crate) fn storage_set_layout(
    d: &ash::Device,
    bindings: &[u32],
) -> Result<vk::DescriptorSetLayout> {
    let lb: Vec<_> = bindings
        .iter()
        .map(|&b| {
            vk::DescriptorSetLayoutBinding::default()
                .binding(b)
                .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(1)
                .stage_flags(vk::ShaderStageFlags::COMPUTE)
        })
        .collect();
    let ci = vk::DescriptorSetLayoutCreateInfo::default().bindings(&lb);
    // SAFETY: valid create info.
    unsafe { d.create_descriptor_set_layout(&ci, None) }.vk("vkCreateDescriptorSetLayout")
}

/// A compute pipeline layout of `set_layout` and `push_bytes` (0: none) of
/// push constants.
pub(crate) fn pipeline_layout(
    d: &ash::Device,
    set_layout: vk::DescriptorSetLayout,
    push_bytes: u32,
) -> Result<vk::PipelineLayout> {
    let ranges = [vk::PushConstantRange::default()
        .stage_flags(vk::ShaderStageFlags::COMPUTE)
        .offset(0)
        .size(push_bytes)];
    let layouts = [set_layout];
    let mut ci = vk::PipelineLayoutCreateInfo::default().set_layouts(&layouts);
    if push_bytes > 0 {
        ci = ci.push_constant_ranges(&ranges);
    }
    // SAFETY: valid create info.
    unsafe { d.create_pipeline_layout(&ci, None) }.vk("vkCreatePipelineLayout")
}

/// A compute pipeline running `entry` of the SPIR-V `words` in `layout`.
pub(crate) fn compute_pipeline(
    d: &ash::Device,
    words: &[u32],
    entry: &std::ffi::CStr,
    layout: vk::PipelineLayout,
) -> Result<vk::Pipeline> {
    let ci = vk::ShaderModuleCreateInfo::default().code(words);
    // SAFETY: SPIR-V validated by spirv-val at build time (ours) or checked
    // by reflection (callers'); the driver validates the rest.
    let module = unsafe { d.create_shader_module(&ci, None) }.vk("vkCreateShaderModule")?;
    let stage = vk::PipelineShaderStageCreateInfo::default()
        .stage(vk::ShaderStageFlags::COMPUTE)
        .module(module)
        .name(entry);
    let pci = [vk::ComputePipelineCreateInfo::default()
        .stage(stage)
        .layout(layout)];
    // SAFETY: valid create info; the module may be destroyed once the
    // pipeline exists.
    let r = unsafe { d.create_compute_pipelines(vk::PipelineCache::null(), &pci, None) };
    // SAFETY: no longer needed after pipeline creation.
    unsafe { d.destroy_shader_module(module, None) };
    Ok(r.map_err(|(_, e)| e).vk("vkCreateComputePipelines")?[0])
}

/// Resets `cmd` and begins recording it for one submission.
///
/// # Safety
/// `cmd` must be idle: no submission of it may still be pending.
pub(crate) unsafe fn begin_one_time(d: &ash::Device, cmd: vk::CommandBuffer) -> Result<()> {
    let bi =
        vk::CommandBufferBeginInfo::default().flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
    // SAFETY: the caller guarantees cmd is idle.
    unsafe {
        d.reset_command_buffer(cmd, vk::CommandBufferResetFlags::empty())
            .vk("vkResetCommandBuffer")?;
        d.begin_command_buffer(cmd, &bi).vk("vkBeginCommandBuffer")
    }
}

pub(crate) struct Kernels {
    dev: Arc<DeviceShared>,
    pub set_layout: vk::DescriptorSetLayout,
    pub layout: vk::PipelineLayout,
    pipeline: Option<vk::Pipeline>,
    pub tables: Buffer,
}

impl Kernels {
    /// The interface shared by all shaders, and the pipeline of `shader`
    /// alone (none for [`ShaderKind::None`]).
    pub fn new(dev: &Arc<DeviceShared>, shader: ShaderKind) -> Result<Kernels> {
        let d = &dev.device;
        let set_layout = storage_set_layout(d, &[0, 1, 2])?;
        let mut k = Kernels {
            dev: dev.clone(),
            set_layout,
            layout: vk::PipelineLayout::null(),
            pipeline: None,
            tables: Buffer::allocate(dev, 4096, Placement::Upload)?,
        };
        k.layout = pipeline_layout(d, set_layout, 4)?;
        let spv = match shader {
            ShaderKind::Crc32c => Some(SPV_CRC32C),
            ShaderKind::Sum64 => Some(SPV_SUM64),
            ShaderKind::Histogram => Some(SPV_HISTOGRAM),
            ShaderKind::None => None,
        };
        if let Some(spv) = spv {
            k.pipeline = Some(k.make_pipeline(spv)?);
        }
        let tables = crate::cpu::crc32c_shader_tables();
        let bytes = k
            .tables
            .host_bytes_mut()
            .ok_or_else(|| Error::DeviceUnsuitable {
                device: dev.info().name.clone(),
                what: "upload memory is not host-visible".into(),
            })?;
        for (dst, t) in bytes.chunks_exact_mut(4).zip(tables) {
            dst.copy_from_slice(&t.to_le_bytes());
        }
        Ok(k)
    }

    fn make_pipeline(&self, spv: &[u8]) -> Result<vk::Pipeline> {
        let code = crate::spirv::words(spv)
            .map_err(|e| Error::NoVulkan(format!("embedded SPIR-V is corrupt: {e}")))?;
        compute_pipeline(&self.dev.device, &code, c"main", self.layout)
    }

    pub fn pipeline(&self) -> Option<vk::Pipeline> {
        self.pipeline
    }

    /// Workgroups to dispatch for `len` input bytes.
    pub fn groups(len: u64) -> u32 {
        len.div_ceil(crate::shader::BLOCK_BYTES)
            .div_ceil(WORKGROUP)
            .max(1) as u32
    }
}

impl Drop for Kernels {
    fn drop(&mut self) {
        let d = &self.dev.device;
        // SAFETY: owners wait for the device to be idle before dropping kernels.
        unsafe {
            if let Some(p) = self.pipeline {
                d.destroy_pipeline(p, None);
            }
            d.destroy_pipeline_layout(self.layout, None);
            d.destroy_descriptor_set_layout(self.set_layout, None);
        }
    }
}
