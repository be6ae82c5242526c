//! The sample compute shaders, their results, and how per-block GPU outputs
//! fold into a result for a whole stream.
use std::fmt;

use serde::Serialize;

use crate::cpu::{self, CrcShift};

/// Bytes each shader invocation handles (`BLOCK_BYTES` in shaders/common.glsl).
pub const BLOCK_BYTES: u64 = 4096;

/// Which shader runs over the streamed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShaderKind {
    /// Standard CRC-32C of the whole stream.
    Crc32c,
    /// Sum of little-endian u32 words mod 2^64 (trailing partial word zero-padded).
    Sum64,
    /// 256-bin byte histogram.
    Histogram,
    /// No shader: the bytes are only made shader-visible.
    None,
}

impl ShaderKind {
    pub const ALL: [ShaderKind; 4] = [
        ShaderKind::Crc32c,
        ShaderKind::Sum64,
        ShaderKind::Histogram,
        ShaderKind::None,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ShaderKind::Crc32c => "crc32c",
            ShaderKind::Sum64 => "sum64",
            ShaderKind::Histogram => "histogram",
            ShaderKind::None => "none",
        }
    }

    /// Bytes of output the shader writes for `len` input bytes.
    pub(crate) fn output_bytes(self, len: u64) -> u64 {
        let blocks = len.div_ceil(BLOCK_BYTES).max(1);
        match self {
            ShaderKind::Crc32c => blocks * 4,
            ShaderKind::Sum64 => blocks * 8,
            ShaderKind::Histogram => 256 * 4,
            ShaderKind::None => 4,
        }
    }
}

impl fmt::Display for ShaderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ShaderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ShaderKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown shader `{s}` (expected crc32c, sum64, histogram or none)")
            })
    }
}

/// The result of a shader over a whole stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShaderResult {
    Crc32c(u32),
    Sum64(u64),
    Histogram(Box<[u64; 256]>),
}

/// Serializes as the CLI's JSON shows results: crc32c as "0x%08x", sum64 as a
/// decimal string (it does not fit a JSON double), histogram as 256 numbers.
impl Serialize for ShaderResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ShaderResult::Crc32c(c) => s.collect_str(&format_args!("0x{c:08x}")),
            ShaderResult::Sum64(v) => s.collect_str(v),
            ShaderResult::Histogram(h) => h[..].serialize(s),
        }
    }
}

impl fmt::Display for ShaderResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShaderResult::Crc32c(c) => write!(f, "0x{c:08x}"),
            ShaderResult::Sum64(s) => write!(f, "{s}"),
            ShaderResult::Histogram(h) => {
                let total: u64 = h.iter().sum();
                let nonzero = h.iter().filter(|&&c| c != 0).count();
                let (top, count) = h
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, &c)| c)
                    .map(|(i, &c)| (i, c))
                    .unwrap_or((0, 0));
                write!(
                    f,
                    "{total} bytes, {nonzero} distinct values, most frequent 0x{top:02x} ({count})"
                )
            }
        }
    }
}

/// Folds results in stream order. One per file plus one for the whole stream.
#[derive(Clone, Debug)]
pub struct Accumulator {
    kind: ShaderKind,
    crc: u32,
    sum: u64,
    bins: Box<[u64; 256]>,
    len: u64,
    block_shift: CrcShift,
}

impl Accumulator {
    pub fn new(kind: ShaderKind) -> Self {
        Accumulator {
            kind,
            crc: !0,
            sum: 0,
            bins: Box::new([0; 256]),
            len: 0,
            block_shift: CrcShift::new(BLOCK_BYTES),
        }
    }

    /// Folds the GPU output of one chunk of `len` bytes (`words` as the shader
    /// wrote them). Chunks must come in stream order and, except the last
    /// one of a stream, be whole multiples of 4 bytes (the runtime's chunks
    /// are page-aligned).
    pub(crate) fn fold_gpu(&mut self, len: u64, words: &[u32]) {
        match self.kind {
            ShaderKind::Crc32c => {
                let blocks = len.div_ceil(BLOCK_BYTES) as usize;
                for (i, &r) in words[..blocks].iter().enumerate() {
                    let n = (len - i as u64 * BLOCK_BYTES).min(BLOCK_BYTES);
                    let shift = if n == BLOCK_BYTES {
                        self.block_shift
                    } else {
                        CrcShift::new(n)
                    };
                    self.crc = shift.apply(self.crc, r);
                }
            }
            ShaderKind::Sum64 => {
                let blocks = len.div_ceil(BLOCK_BYTES) as usize;
                for pair in words[..blocks * 2].chunks_exact(2) {
                    self.sum = self
                        .sum
                        .wrapping_add(pair[0] as u64 | (pair[1] as u64) << 32);
                }
            }
            ShaderKind::Histogram => {
                for (b, &c) in self.bins.iter_mut().zip(words) {
                    *b += c as u64;
                }
            }
            ShaderKind::None => {}
        }
        self.len += len;
    }

    /// Folds another accumulator's stream after this one's.
    pub fn append(&mut self, other: &Accumulator) {
        debug_assert_eq!(self.kind, other.kind);
        self.crc = CrcShift::new(other.len)
            .apply(self.crc, other.crc ^ CrcShift::new(other.len).apply(!0, 0));
        self.sum = self.sum.wrapping_add(other.sum);
        for (a, b) in self.bins.iter_mut().zip(other.bins.iter()) {
            *a += b;
        }
        self.len += other.len;
    }

    /// Feeds the next bytes of the stream, computing on the CPU (the
    /// reference for --verify). Like the GPU's chunks, every piece but the
    /// last must be a whole number of 4-byte words: sum64 pads each piece's
    /// tail, so a misaligned piece would change the sum.
    ///
    /// # Panics
    /// If a piece follows one whose length was not a multiple of 4.
    pub fn update_cpu(&mut self, data: &[u8]) {
        assert!(
            self.len % 4 == 0,
            "Accumulator::update_cpu: a piece followed one of {} bytes (not whole words)",
            self.len
        );
        match self.kind {
            ShaderKind::Crc32c => self.crc = cpu::crc32c_raw(self.crc, data),
            ShaderKind::Sum64 => self.sum = self.sum.wrapping_add(cpu::sum64(data)),
            ShaderKind::Histogram => cpu::histogram_update(&mut self.bins, data),
            ShaderKind::None => {}
        }
        self.len += data.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn result(&self) -> Option<ShaderResult> {
        match self.kind {
            ShaderKind::Crc32c => Some(ShaderResult::Crc32c(!self.crc)),
            ShaderKind::Sum64 => Some(ShaderResult::Sum64(self.sum)),
            ShaderKind::Histogram => Some(ShaderResult::Histogram(self.bins.clone())),
            ShaderKind::None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_joins_streams() {
        let a: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let b: Vec<u8> = (0..5_003u32).map(|i| (i * 13 + 1) as u8).collect();
        let whole = [a.clone(), b.clone()].concat();
        for kind in [ShaderKind::Crc32c, ShaderKind::Histogram] {
            let mut x = Accumulator::new(kind);
            x.update_cpu(&a);
            let mut y = Accumulator::new(kind);
            y.update_cpu(&b);
            x.append(&y);
            let mut z = Accumulator::new(kind);
            z.update_cpu(&whole);
            assert_eq!(x.result(), z.result(), "{kind}");
        }
    }

    #[test]
    fn pieces_of_whole_words_fold_like_one() {
        let d: Vec<u8> = (0..10_007u32).map(|i| (i * 31 + 5) as u8).collect();
        for kind in [ShaderKind::Crc32c, ShaderKind::Sum64, ShaderKind::Histogram] {
            let mut pieces = Accumulator::new(kind);
            for p in d.chunks(332) {
                pieces.update_cpu(p);
            }
            let mut one = Accumulator::new(kind);
            one.update_cpu(&d);
            assert_eq!(pieces.result(), one.result(), "{kind}");
        }
    }

    #[test]
    #[should_panic(expected = "not whole words")]
    fn a_piece_after_a_partial_word_is_refused() {
        let mut a = Accumulator::new(ShaderKind::Sum64);
        a.update_cpu(&[1, 2, 3]);
        a.update_cpu(&[4]);
    }
}
