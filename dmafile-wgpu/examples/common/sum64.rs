//! sum64 on the GPU with WGSL: the sum of the little-endian u32 words of a
//! byte range, mod 2^64, a partial last word zero-padded. WGSL has no u64,
//! so each invocation keeps a (lo, hi) pair of u32 with carry; each
//! workgroup reduces its 256 pairs in shared memory and writes one pair;
//! the CPU adds the pairs (one per 64 KiB) after reading them back.
//!
//! The buffer is bound in windows no larger than the device's storage
//! binding limit (lavapipe: 128 MiB), one dispatch per window.
use wgpu::util::DeviceExt;

const WG: u64 = 256;
const PER_THREAD: u64 = 64;
/// Bytes one workgroup sums.
const GROUP_BYTES: u64 = WG * PER_THREAD * 4;

const SHADER: &str = r#"
struct Params { words: u32, tail_mask: u32, first_group: u32, pad: u32 }
@group(0) @binding(0) var<storage, read> data: array<u32>;
@group(0) @binding(1) var<storage, read_write> partials: array<vec2<u32>>;
@group(0) @binding(2) var<uniform> params: Params;
var<workgroup> lo_s: array<u32, 256>;
var<workgroup> hi_s: array<u32, 256>;

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(workgroup_id) wid: vec3<u32>) {
    let base = wid.x * 256u * 64u;
    var acc = vec2<u32>(0u, 0u);
    for (var i = 0u; i < 64u; i++) {
        let idx = base + i * 256u + lid.x;
        if (idx < params.words) {
            var w = data[idx];
            if (idx == params.words - 1u) { w = w & params.tail_mask; }
            acc = add64(acc, vec2<u32>(w, 0u));
        }
    }
    lo_s[lid.x] = acc.x;
    hi_s[lid.x] = acc.y;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid.x < s) {
            let r = add64(vec2<u32>(lo_s[lid.x], hi_s[lid.x]),
                          vec2<u32>(lo_s[lid.x + s], hi_s[lid.x + s]));
            lo_s[lid.x] = r.x;
            hi_s[lid.x] = r.y;
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        partials[params.first_group + wid.x] = vec2<u32>(lo_s[0], hi_s[0]);
    }
}
"#;

/// The pipeline, built once (shader compilation is not part of any
/// measurement).
pub struct Sum64 {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    window: u64,
}

impl Sum64 {
    pub fn new(device: &wgpu::Device) -> Sum64 {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("sum64"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let entry = |binding, ty| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("sum64"),
            entries: &[
                entry(0, wgpu::BufferBindingType::Storage { read_only: true }),
                entry(1, wgpu::BufferBindingType::Storage { read_only: false }),
                entry(2, wgpu::BufferBindingType::Uniform),
            ],
        });
        let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("sum64"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("sum64"),
            layout: Some(&pl),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let limits = device.limits();
        let max_bind = limits.max_storage_buffer_binding_size;
        let window = (max_bind.min(128 << 20) / GROUP_BYTES) * GROUP_BYTES;
        Sum64 {
            pipeline,
            layout,
            window,
        }
    }

    /// sum64 of `len` bytes of `buf` from byte `start` (a multiple of 4,
    /// and of 256 when the range spans more than one window). Submits,
    /// waits, and reads the partial sums back: the end of a first pass.
    pub fn run(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        buf: &wgpu::Buffer,
        start: u64,
        len: u64,
    ) -> Result<u64, String> {
        if !start.is_multiple_of(4) {
            return Err(format!(
                "the range starts at byte {start}, not a multiple of 4"
            ));
        }
        let windows: Vec<(u64, u64)> = (0..len.div_ceil(self.window))
            .map(|i| {
                let off = i * self.window;
                (start + off, (len - off).min(self.window))
            })
            .collect();
        let groups: Vec<u64> = windows.iter().map(|w| w.1.div_ceil(GROUP_BYTES)).collect();
        let total: u64 = groups.iter().sum();
        let partials = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("sum64 partials"),
            size: total * 8,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("sum64 readback"),
            size: total * 8,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = device.create_command_encoder(&Default::default());
        let mut first = 0u64;
        let mut groups_of_bind = vec![];
        for (&(off, n), &g) in windows.iter().zip(&groups) {
            let rem = n % 4;
            let mask = if rem == 0 {
                u32::MAX
            } else {
                (1u32 << (8 * rem)) - 1
            };
            let params = [n.div_ceil(4) as u32, mask, first as u32, 0];
            let pbuf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("sum64 params"),
                contents: &params
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let bind_size = n.next_multiple_of(4);
            let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("sum64"),
                layout: &self.layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: buf,
                            offset: off,
                            size: wgpu::BufferSize::new(bind_size),
                        }),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: partials.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: pbuf.as_entire_binding(),
                    },
                ],
            });
            groups_of_bind.push((bg, g));
            first += g;
        }
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&self.pipeline);
            for (bg, g) in &groups_of_bind {
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(*g as u32, 1, 1);
            }
        }
        enc.copy_buffer_to_buffer(&partials, 0, &readback, 0, total * 8);
        queue.submit([enc.finish()]);
        let slice = readback.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| format!("waiting for the sum: {e}"))?;
        rx.recv()
            .map_err(|e| format!("mapping the sums: {e}"))?
            .map_err(|e| format!("mapping the sums: {e}"))?;
        let sum = {
            let data = slice
                .get_mapped_range()
                .map_err(|e| format!("mapping the sums: {e}"))?;
            data.chunks_exact(8).fold(0u64, |acc, c| {
                let lo = u32::from_le_bytes(c[0..4].try_into().unwrap()) as u64;
                let hi = u32::from_le_bytes(c[4..8].try_into().unwrap()) as u64;
                acc.wrapping_add(lo | (hi << 32))
            })
        };
        readback.unmap();
        Ok(sum)
    }
}
