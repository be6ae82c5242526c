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

use crate::compute::builtin::{
    CRC32C as SPV_CRC32C, HISTOGRAM as SPV_HISTOGRAM, SUM64 as SPV_SUM64,
};

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
        let bindings: Vec<_> = (0..3)
            .map(|b| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(b)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        let ci = vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings);
        // SAFETY: valid create info.
        let set_layout = unsafe { d.create_descriptor_set_layout(&ci, None) }
            .vk("vkCreateDescriptorSetLayout")?;
        let mut k = Kernels {
            dev: dev.clone(),
            set_layout,
            layout: vk::PipelineLayout::null(),
            pipeline: None,
            tables: Buffer::allocate(dev, 4096, Placement::Upload)?,
        };
        let ranges = [vk::PushConstantRange::default()
            .stage_flags(vk::ShaderStageFlags::COMPUTE)
            .offset(0)
            .size(4)];
        let layouts = [set_layout];
        let ci = vk::PipelineLayoutCreateInfo::default()
            .set_layouts(&layouts)
            .push_constant_ranges(&ranges);
        // SAFETY: valid create info.
        k.layout = unsafe { d.create_pipeline_layout(&ci, None) }.vk("vkCreatePipelineLayout")?;
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
        let d = &self.dev.device;
        let code = ash::util::read_spv(&mut std::io::Cursor::new(spv))
            .map_err(|e| Error::NoVulkan(format!("embedded SPIR-V is corrupt: {e}")))?;
        let ci = vk::ShaderModuleCreateInfo::default().code(&code);
        // SAFETY: validated SPIR-V (build.rs runs spirv-val).
        let module = unsafe { d.create_shader_module(&ci, None) }.vk("vkCreateShaderModule")?;
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(c"main");
        let pci = [vk::ComputePipelineCreateInfo::default()
            .stage(stage)
            .layout(self.layout)];
        // SAFETY: valid create info; the module may be destroyed once the pipeline exists.
        let r = unsafe { d.create_compute_pipelines(vk::PipelineCache::null(), &pci, None) };
        // SAFETY: no longer needed after pipeline creation.
        unsafe { d.destroy_shader_module(module, None) };
        match r {
            Ok(p) => Ok(p[0]),
            Err((_, e)) => Err(Error::Vulkan {
                call: "vkCreateComputePipelines",
                result: e,
            }),
        }
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
