//! The statistics the shader computes, their CPU reference, and how the
//! per-block results fold into a tensor's.
use serde::Serialize;

use crate::st::Dtype;

/// Elements each shader invocation reduces (`BLOCK` in reduce.comp).
pub const BLOCK: u64 = 1024;
/// Bytes of one block's result (`struct Stats` in reduce.comp, std430).
pub const STATS_BYTES: usize = 32;

/// One block's statistics, as the shader writes them.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub sum: f32,
    pub abs_sum: f32,
    pub min: f32,
    pub max: f32,
    pub nonfinite: u32,
    pub finite: u32,
}

impl Block {
    pub fn from_bytes(b: &[u8]) -> Block {
        let w = |i: usize| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        Block {
            sum: f32::from_bits(w(0)),
            abs_sum: f32::from_bits(w(1)),
            min: f32::from_bits(w(2)),
            max: f32::from_bits(w(3)),
            nonfinite: w(4),
            finite: w(5),
        }
    }

    /// Equal as the shader and the CPU should make them (== on floats, so
    /// -0.0 equals 0.0; infinities equal themselves).
    pub fn same(&self, o: &Block) -> bool {
        self.sum == o.sum
            && self.abs_sum == o.abs_sum
            && self.min == o.min
            && self.max == o.max
            && self.nonfinite == o.nonfinite
            && self.finite == o.finite
    }
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = (h >> 10) & 0x1f;
    let man = (h & 0x3ff) as u32;
    match exp {
        0 => sign * man as f32 * (1.0 / (1 << 24) as f32),
        31 => f32::from_bits(((h as u32 & 0x8000) << 16) | 0x7f80_0000 | (man << 13)),
        e => f32::from_bits(((h as u32 & 0x8000) << 16) | ((e as u32 + 112) << 23) | (man << 13)),
    }
}

/// Element `i` of `bytes` as the shader reads it.
pub fn element(bytes: &[u8], dtype: Dtype, i: usize) -> f32 {
    match dtype {
        Dtype::F32 => f32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap()),
        Dtype::F16 => f16_to_f32(u16::from_le_bytes([bytes[i * 2], bytes[i * 2 + 1]])),
        Dtype::BF16 => {
            f32::from_bits((u16::from_le_bytes([bytes[i * 2], bytes[i * 2 + 1]]) as u32) << 16)
        }
    }
}

/// The CPU's version of the shader's blocks over a tensor's bytes: the same
/// float32 operations in the same order.
pub fn cpu_blocks(bytes: &[u8], dtype: Dtype) -> Vec<Block> {
    let n = bytes.len() / dtype.size() as usize;
    (0..n)
        .step_by(BLOCK as usize)
        .map(|start| {
            let end = (start + BLOCK as usize).min(n);
            let mut b = Block {
                sum: 0.0,
                abs_sum: 0.0,
                min: f32::INFINITY,
                max: f32::NEG_INFINITY,
                nonfinite: 0,
                finite: 0,
            };
            for i in start..end {
                let x = element(bytes, dtype, i);
                if !x.is_finite() {
                    b.nonfinite += 1;
                    continue;
                }
                b.sum += x;
                b.abs_sum += x.abs();
                b.min = b.min.min(x);
                b.max = b.max.max(x);
                b.finite += 1;
            }
            b
        })
        .collect()
}

/// A tensor's statistics, folded from its blocks in order (in f64).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Stats {
    pub sum: f64,
    pub abs_sum: f64,
    pub mean: f64,
    /// None when the tensor has no finite element.
    pub min: Option<f32>,
    pub max: Option<f32>,
    pub nonfinite: u64,
}

pub fn fold(blocks: &[Block]) -> Stats {
    let mut s = Stats {
        sum: 0.0,
        abs_sum: 0.0,
        mean: 0.0,
        min: None,
        max: None,
        nonfinite: 0,
    };
    let mut finite = 0u64;
    for b in blocks {
        s.sum += b.sum as f64;
        s.abs_sum += b.abs_sum as f64;
        s.nonfinite += b.nonfinite as u64;
        finite += b.finite as u64;
        if b.finite > 0 {
            s.min = Some(s.min.map_or(b.min, |m| m.min(b.min)));
            s.max = Some(s.max.map_or(b.max, |m| m.max(b.max)));
        }
    }
    if finite > 0 {
        s.mean = s.sum / finite as f64;
    }
    s
}

/// Whether the device's statistics agree with the CPU's where they are not
/// bit-equal: a device may flush subnormals to zero or fuse operations, so
/// sums may differ by rounding (relative to the sum of magnitudes), and
/// extremes only where they are subnormal.
pub fn close(gpu: &Stats, cpu: &Stats) -> bool {
    let tiny = |v: Option<f32>| v.map(|x| if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x });
    let near = |a: f64, b: f64, scale: f64| {
        a == b || (a - b).abs() <= 1e-5 * scale.abs() + 1e-30 || (a.is_nan() && b.is_nan())
    };
    near(gpu.sum, cpu.sum, cpu.abs_sum)
        && near(gpu.abs_sum, cpu.abs_sum, cpu.abs_sum)
        && tiny(gpu.min) == tiny(cpu.min)
        && tiny(gpu.max) == tiny(cpu.max)
        && gpu.nonfinite == cpu.nonfinite
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_known_values() {
        for (h, want) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x0400, 6.103_515_6e-5),
            (0x8000, -0.0),
        ] {
            assert_eq!(f16_to_f32(h), want, "{h:#06x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn blocks_skip_nonfinite_and_fold_in_order() {
        let v = [1.0f32, f32::NAN, -3.0, f32::INFINITY, 0.5];
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let s = fold(&cpu_blocks(&bytes, Dtype::F32));
        assert_eq!(s.sum, -1.5);
        assert_eq!(s.abs_sum, 4.5);
        assert_eq!((s.min, s.max, s.nonfinite), (Some(-3.0), Some(1.0), 2));
        assert_eq!(s.mean, -0.5);
    }
}
