//! Running the caller's own compute shaders over file regions.
//!
//! A [`Kernel`] is a compute pipeline made from SPIR-V. Its storage buffers
//! (descriptor set 0) are found by reflection, with whether the shader may
//! write each one; [`Kernel::run`] binds one argument per binding, a
//! [`Region`] of a file or a [`DeviceBuffer`], pushes the push constants,
//! dispatches, and waits. A shader that may write a binding is refused,
//! before anything is recorded, when that binding is given a region mapped
//! read-only: on the direct path the pages are the file's own and the
//! module maps them without write access, so such a store could only fault.
use std::sync::Arc;

use ash::vk;

use crate::error::{Error, Result, VkResultExt};
use crate::gpu::kernels::{begin_one_time, compute_pipeline, pipeline_layout, storage_set_layout};
use crate::gpu::memory::{Buffer, Placement};
use crate::gpu::{DeviceShared, Gpu};
use crate::import::external_ownership;
use crate::region::Region;
use crate::spirv::{self, Binding};

/// The built-in shaders (defined in the crate's spirv module).
pub use crate::spirv::builtin;

/// A buffer of device memory the CPU can read and write (results, tables).
pub struct DeviceBuffer {
    buf: Buffer,
    len: usize,
}

impl DeviceBuffer {
    /// The Vulkan buffer (valid while this lives), for the app's own
    /// commands.
    pub fn raw_buffer(&self) -> ash::vk::Buffer {
        self.buf.buffer
    }

    /// A zeroed buffer of `len` bytes in host-visible memory.
    pub fn new(gpu: &Gpu, len: usize) -> Result<DeviceBuffer> {
        if len == 0 {
            return Err(Error::Config {
                setting: "len",
                msg: "a device buffer needs at least one byte".into(),
            });
        }
        let mut buf = Buffer::allocate(&gpu.shared, len as u64, Placement::Readback)?;
        buf.host_bytes_mut()
            .ok_or_else(|| Error::DeviceUnsuitable {
                device: gpu.info().name.clone(),
                what: "readback memory is not host-visible".into(),
            })?
            .fill(0);
        Ok(DeviceBuffer { buf, len })
    }

    /// The buffer's bytes as the device left them after the last run.
    pub fn bytes(&self) -> &[u8] {
        &self.buf.host_bytes().expect("host-visible by construction")[..self.len]
    }

    /// The buffer's bytes, to fill before a run.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self
            .buf
            .host_bytes_mut()
            .expect("host-visible by construction")[..len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What one binding of a kernel run is given.
pub enum Arg<'a> {
    Region(&'a Region),
    Buffer(&'a DeviceBuffer),
}

impl<'a> From<&'a Region> for Arg<'a> {
    fn from(r: &'a Region) -> Self {
        Arg::Region(r)
    }
}

impl<'a> From<&'a DeviceBuffer> for Arg<'a> {
    fn from(b: &'a DeviceBuffer) -> Self {
        Arg::Buffer(b)
    }
}

impl<'a> From<&'a mut DeviceBuffer> for Arg<'a> {
    fn from(b: &'a mut DeviceBuffer) -> Self {
        Arg::Buffer(b)
    }
}

/// A compute shader ready to run.
pub struct Kernel {
    dev: Arc<DeviceShared>,
    bindings: Vec<Binding>,
    push_bytes: u32,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
    desc_pool: vk::DescriptorPool,
    set: vk::DescriptorSet,
    cmd_pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
}

impl Kernel {
    /// Builds a kernel from SPIR-V (as `glslangValidator -V` writes it)
    /// whose push-constant block is `push_constant_bytes` long (0 for none).
    pub fn new(gpu: &Gpu, spirv: &[u8], push_constant_bytes: u32) -> Result<Kernel> {
        let bad = |msg: String| Error::Config {
            setting: "shader",
            msg,
        };
        let words = spirv::words(spirv).map_err(bad)?;
        let refl = spirv::reflect(&words).map_err(bad)?;
        let dev = gpu.shared.clone();
        let limit = gpu.info().max_push_constants_size;
        if push_constant_bytes % 4 != 0 || push_constant_bytes > limit {
            return Err(bad(format!(
                "push constants of {push_constant_bytes} bytes: must be a multiple of 4 and at most {limit} on {}",
                gpu.info().name
            )));
        }
        let d = &dev.device;
        let mut k = Kernel {
            dev: dev.clone(),
            bindings: refl.bindings,
            push_bytes: push_constant_bytes,
            set_layout: vk::DescriptorSetLayout::null(),
            layout: vk::PipelineLayout::null(),
            pipeline: vk::Pipeline::null(),
            desc_pool: vk::DescriptorPool::null(),
            set: vk::DescriptorSet::null(),
            cmd_pool: vk::CommandPool::null(),
            cmd: vk::CommandBuffer::null(),
            fence: vk::Fence::null(),
        };
        let numbers: Vec<u32> = k.bindings.iter().map(|b| b.binding).collect();
        k.set_layout = storage_set_layout(d, &numbers)?;
        k.layout = pipeline_layout(d, k.set_layout, push_constant_bytes)?;
        let entry = std::ffi::CString::new(refl.entry)
            .expect("reflection reads the entry point's name up to its NUL");
        k.pipeline = compute_pipeline(d, &words, &entry, k.layout)?;
        // SAFETY: valid create infos throughout; Drop destroys what was made
        // (null handles are ignored by vkDestroy*).
        unsafe {
            let n = k.bindings.len().max(1) as u32;
            let sizes = [vk::DescriptorPoolSize::default()
                .ty(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(n)];
            let dci = vk::DescriptorPoolCreateInfo::default()
                .max_sets(1)
                .pool_sizes(&sizes);
            k.desc_pool = d
                .create_descriptor_pool(&dci, None)
                .vk("vkCreateDescriptorPool")?;
            let layouts = [k.set_layout];
            let dai = vk::DescriptorSetAllocateInfo::default()
                .descriptor_pool(k.desc_pool)
                .set_layouts(&layouts);
            k.set = d
                .allocate_descriptor_sets(&dai)
                .vk("vkAllocateDescriptorSets")?[0];
            let pci = vk::CommandPoolCreateInfo::default()
                .queue_family_index(dev.queue_family)
                .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
            k.cmd_pool = d
                .create_command_pool(&pci, None)
                .vk("vkCreateCommandPool")?;
            let cai = vk::CommandBufferAllocateInfo::default()
                .command_pool(k.cmd_pool)
                .level(vk::CommandBufferLevel::PRIMARY)
                .command_buffer_count(1);
            k.cmd = d
                .allocate_command_buffers(&cai)
                .vk("vkAllocateCommandBuffers")?[0];
            k.fence = d
                .create_fence(&vk::FenceCreateInfo::default(), None)
                .vk("vkCreateFence")?;
        }
        Ok(k)
    }

    /// The shader's storage buffers, by binding number, and whether it may
    /// write each.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// Runs the shader once over `args` (one per binding, in binding order)
    /// with `push` as its push constants, dispatching `groups` workgroups,
    /// and waits for it. Regions the shader may write are marked written, so
    /// that [`Region::finish`] carries copy paths' results to the file.
    pub fn run(&mut self, args: &[Arg<'_>], push: &[u8], groups: [u32; 3]) -> Result<()> {
        self.check_shape(args, push, groups)?;
        self.check_access(args)?;
        self.record_and_wait(args, push, groups)
    }

    /// [`Kernel::run`] without the check that a binding the shader may
    /// write is not a read-only region. For tests that show what the kernel
    /// module does to such stores.
    ///
    /// # Safety
    /// A store into a read-only direct mapping faults in the device; on CPU
    /// devices (lavapipe) that kills the process with SIGSEGV.
    #[doc(hidden)]
    pub unsafe fn run_unchecked_access(
        &mut self,
        args: &[Arg<'_>],
        push: &[u8],
        groups: [u32; 3],
    ) -> Result<()> {
        self.check_shape(args, push, groups)?;
        self.record_and_wait(args, push, groups)
    }

    /// Records, submits and waits for one dispatch; `check_shape` passed.
    fn record_and_wait(&mut self, args: &[Arg<'_>], push: &[u8], groups: [u32; 3]) -> Result<()> {
        let d = &self.dev.device;
        let infos: Vec<_> = args
            .iter()
            .map(|a| {
                let (buffer, range) = match a {
                    Arg::Region(r) => (r.buffer().buffer, r.buffer().size),
                    Arg::Buffer(b) => (b.buf.buffer, b.buf.size),
                };
                vk::DescriptorBufferInfo::default()
                    .buffer(buffer)
                    .offset(0)
                    .range(range)
            })
            .collect();
        let writes: Vec<_> = self
            .bindings
            .iter()
            .zip(&infos)
            .map(|(b, info)| {
                vk::WriteDescriptorSet::default()
                    .dst_set(self.set)
                    .dst_binding(b.binding)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(std::slice::from_ref(info))
            })
            .collect();
        // Imported memory belongs to the external queue family until
        // acquired, and goes back to it after the run (a no-op on drivers
        // that do not care, required by the spec for those that do).
        let imported: Vec<vk::Buffer> = args
            .iter()
            .filter_map(|a| match a {
                Arg::Region(r) if r.buffer().is_imported() => Some(r.buffer().buffer),
                _ => None,
            })
            .collect();
        let family = self.dev.queue_family;
        let acquire = external_ownership(
            family,
            &imported,
            true,
            vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE,
        );
        let release = external_ownership(family, &imported, false, vk::AccessFlags::SHADER_WRITE);
        let host_read = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::SHADER_WRITE)
            .dst_access_mask(vk::AccessFlags::HOST_READ)];
        let host_write = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::HOST_WRITE)
            .dst_access_mask(vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE)];
        let cmd = self.cmd;
        // SAFETY: the previous run waited for its fence, so the set and the
        // command buffer are idle; every handle is from this device, and the
        // arguments outlive the wait at the end of this call.
        unsafe {
            d.update_descriptor_sets(&writes, &[]);
            begin_one_time(d, cmd)?;
            d.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::HOST | vk::PipelineStageFlags::TOP_OF_PIPE,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::DependencyFlags::empty(),
                &host_write,
                &acquire,
                &[],
            );
            d.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, self.pipeline);
            d.cmd_bind_descriptor_sets(
                cmd,
                vk::PipelineBindPoint::COMPUTE,
                self.layout,
                0,
                &[self.set],
                &[],
            );
            if !push.is_empty() {
                d.cmd_push_constants(cmd, self.layout, vk::ShaderStageFlags::COMPUTE, 0, push);
            }
            d.cmd_dispatch(cmd, groups[0], groups[1], groups[2]);
            d.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::PipelineStageFlags::HOST | vk::PipelineStageFlags::BOTTOM_OF_PIPE,
                vk::DependencyFlags::empty(),
                &host_read,
                &release,
                &[],
            );
            d.end_command_buffer(cmd).vk("vkEndCommandBuffer")?;
            let cmds = [cmd];
            let si = [vk::SubmitInfo::default().command_buffers(&cmds)];
            self.dev.submit(&si, self.fence)?;
            d.wait_for_fences(&[self.fence], true, u64::MAX)
                .vk("vkWaitForFences")?;
            d.reset_fences(&[self.fence]).vk("vkResetFences")?;
        }
        for (b, a) in self.bindings.iter().zip(args) {
            if let (true, Arg::Region(r)) = (b.writes, a) {
                r.mark_written();
            }
        }
        Ok(())
    }

    /// What any run needs: one argument per binding, the push-constant
    /// size the kernel was built for, workgroups and regions within the
    /// device's limits.
    fn check_shape(&self, args: &[Arg<'_>], push: &[u8], groups: [u32; 3]) -> Result<()> {
        let cfg = |setting, msg| Err(Error::Config { setting, msg });
        if args.len() != self.bindings.len() {
            let list: Vec<String> = self
                .bindings
                .iter()
                .map(|b| b.binding.to_string())
                .collect();
            return cfg(
                "args",
                format!(
                    "the shader has {} storage buffers (bindings {}), {} arguments were given",
                    self.bindings.len(),
                    list.join(", "),
                    args.len()
                ),
            );
        }
        if push.len() != self.push_bytes as usize {
            return cfg(
                "push",
                format!(
                    "the kernel was built for {} bytes of push constants, {} were given",
                    self.push_bytes,
                    push.len()
                ),
            );
        }
        let info = &self.dev.info();
        let max = info.max_compute_work_group_count;
        if groups.contains(&0) || groups.iter().zip(max).any(|(&g, m)| g > m) {
            return cfg(
                "groups",
                format!(
                    "{groups:?} workgroups: each must be 1..={max:?} on {}",
                    info.name
                ),
            );
        }
        for (b, a) in self.bindings.iter().zip(args) {
            let Arg::Region(r) = a else { continue };
            if r.buffer().size > info.max_storage_buffer_range {
                return cfg(
                    "args",
                    format!(
                        "binding {}: the region of {} is {} bytes, more than {} binds at once (maxStorageBufferRange {})",
                        b.binding,
                        r.path().display(),
                        r.buffer().size,
                        info.name,
                        info.max_storage_buffer_range
                    ),
                );
            }
        }
        Ok(())
    }

    /// No binding the shader may write is a region mapped read-only.
    fn check_access(&self, args: &[Arg<'_>]) -> Result<()> {
        for (b, a) in self.bindings.iter().zip(args) {
            if let (true, Arg::Region(r)) = (b.writes, a) {
                if !r.writable() {
                    return Err(Error::ReadOnlyRegion {
                        path: r.path().to_path_buf(),
                        binding: b.binding,
                    });
                }
            }
        }
        Ok(())
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        let d = &self.dev.device;
        // SAFETY: run() waits for its work, so nothing is in flight; null
        // handles (a failed new()) are ignored.
        unsafe {
            d.destroy_fence(self.fence, None);
            d.destroy_command_pool(self.cmd_pool, None);
            d.destroy_descriptor_pool(self.desc_pool, None);
            d.destroy_pipeline(self.pipeline, None);
            d.destroy_pipeline_layout(self.layout, None);
            d.destroy_descriptor_set_layout(self.set_layout, None);
        }
    }
}
