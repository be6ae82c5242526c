//! CPU reference implementations of the shaders, and the CRC-32C algebra the
//! runtime uses to join the GPU's per-block results.
//!
//! CRC-32C here is the standard one (iSCSI, ext4, SSE4.2 `crc32`): reflected
//! polynomial 0x82F63B78, initial register 0xFFFFFFFF, final xor 0xFFFFFFFF.
//! The "raw" functions work on the register without the conditioning, which
//! makes them linear: raw(s, a ++ b) = shift(raw(s, a), |b|) ^ raw(0, b).

/// The reflected CRC-32C polynomial.
pub const CRC32C_POLY: u32 = 0x82F6_3B78;

const fn make_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CRC32C_POLY
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut k = 1;
        while k < 8 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            k += 1;
        }
        i += 1;
    }
    t
}

static TABLES: [[u32; 256]; 8] = make_tables();

/// The slicing-by-4 tables the `crc32c` shader reads (binding 2), flattened.
pub fn crc32c_shader_tables() -> Vec<u32> {
    TABLES[..4].iter().flatten().copied().collect()
}

/// Feeds `data` into the raw CRC-32C register `crc`, in software (slicing-by-8).
pub fn crc32c_raw_sw(mut crc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = TABLES[7][(lo & 0xff) as usize]
            ^ TABLES[6][((lo >> 8) & 0xff) as usize]
            ^ TABLES[5][((lo >> 16) & 0xff) as usize]
            ^ TABLES[4][(lo >> 24) as usize]
            ^ TABLES[3][(hi & 0xff) as usize]
            ^ TABLES[2][((hi >> 8) & 0xff) as usize]
            ^ TABLES[1][((hi >> 16) & 0xff) as usize]
            ^ TABLES[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = TABLES[0][((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_raw_sse42(mut crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut chunks = data.chunks_exact(8);
    let mut c64 = crc as u64;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c64 = _mm_crc32_u64(c64, u64::from_le_bytes(w));
    }
    crc = c64 as u32;
    for &b in chunks.remainder() {
        crc = _mm_crc32_u8(crc, b);
    }
    crc
}

/// Feeds `data` into the raw CRC-32C register, using SSE4.2 where the CPU has it.
pub fn crc32c_raw(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE4.2, checked on the line above.
            return unsafe { crc32c_raw_sse42(crc, data) };
        }
    }
    crc32c_raw_sw(crc, data)
}

/// The standard CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_raw(!0, data)
}

/// Multiplies a and b modulo the CRC polynomial (reflected bit order).
fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 {
            (b >> 1) ^ CRC32C_POLY
        } else {
            b >> 1
        };
    }
    p
}

const fn x2n_table() -> [u32; 32] {
    // x^(2^k) mod p, k = 0..31; computed at compile time with a const multmodp.
    const fn mm(a: u32, mut b: u32) -> u32 {
        let mut m = 1u32 << 31;
        let mut p = 0u32;
        loop {
            if a & m != 0 {
                p ^= b;
                if a & (m - 1) == 0 {
                    break;
                }
            }
            m >>= 1;
            b = if b & 1 != 0 {
                (b >> 1) ^ CRC32C_POLY
            } else {
                b >> 1
            };
        }
        p
    }
    let mut t = [0u32; 32];
    let mut p = 1u32 << 30; // x^1
    t[0] = p;
    let mut n = 1;
    while n < 32 {
        p = mm(p, p);
        t[n] = p;
        n += 1;
    }
    t
}

static X2N: [u32; 32] = x2n_table();

/// The operator that advances a raw CRC register over `len` zero bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrcShift(u32);

impl CrcShift {
    /// x^(8 * len) mod p.
    pub fn new(len: u64) -> Self {
        let mut p = 1u32 << 31; // x^0
        let mut k = 3usize; // 8 = 2^3 bits per byte
        let mut n = len;
        while n != 0 {
            if n & 1 != 0 {
                p = multmodp(X2N[k & 31], p);
            }
            n >>= 1;
            k += 1;
        }
        CrcShift(p)
    }

    /// The register after `len` more bytes whose own raw CRC (from a zero
    /// register) is `next`.
    pub fn apply(self, crc: u32, next: u32) -> u32 {
        multmodp(self.0, crc) ^ next
    }
}

/// Standard CRC-32C of a ++ b, from crc(a), crc(b) and |b| (zlib's crc32_combine).
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    CrcShift::new(len_b).apply(crc_a, crc_b)
}

/// Sum of the little-endian u32 words of `data`, mod 2^64; a trailing
/// partial word is zero-padded.
pub fn sum64(data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    let mut s = 0u64;
    for w in &mut words {
        s = s.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as u64);
    }
    let rest = words.remainder();
    let mut last = [0u8; 4];
    last[..rest.len()].copy_from_slice(rest);
    s.wrapping_add(u32::from_le_bytes(last) as u64)
}

/// Adds the byte histogram of `data` to `bins`.
pub fn histogram_update(bins: &mut [u64; 256], data: &[u8]) {
    // Four interleaved tables avoid store-to-load stalls on runs of one byte.
    let mut t = [[0u32; 256]; 4];
    for piece in data.chunks(1 << 30) {
        let mut q = piece.chunks_exact(4);
        for c in &mut q {
            t[0][c[0] as usize] += 1;
            t[1][c[1] as usize] += 1;
            t[2][c[2] as usize] += 1;
            t[3][c[3] as usize] += 1;
        }
        for &b in q.remainder() {
            t[0][b as usize] += 1;
        }
        for (i, bin) in bins.iter_mut().enumerate() {
            *bin += t[0][i] as u64 + t[1][i] as u64 + t[2][i] as u64 + t[3][i] as u64;
        }
        t = [[0u32; 256]; 4];
    }
}

/// The byte histogram of a whole buffer.
pub fn histogram(data: &[u8]) -> [u64; 256] {
    let mut bins = [0u64; 256];
    histogram_update(&mut bins, data);
    bins
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_common::data;

    #[test]
    fn crc32c_check_values() {
        // RFC 3720 B.4 and the catalogue's check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0..32u8).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn sw_and_hw_agree() {
        for n in [0, 1, 7, 8, 9, 4095, 4096, 4097, 100_003] {
            let d = data(n, n as u64);
            assert_eq!(crc32c_raw_sw(!0, &d), crc32c_raw(!0, &d), "n={n}");
        }
    }

    #[test]
    fn combine_matches_concatenation() {
        let d = data(20_000, 3);
        for split in [0, 1, 3, 4096, 12_345, 20_000] {
            let (a, b) = d.split_at(split);
            assert_eq!(
                crc32c_combine(crc32c(a), crc32c(b), b.len() as u64),
                crc32c(&d),
                "split={split}"
            );
        }
        // Raw register form, as the stream uses it.
        let (a, b) = d.split_at(4096);
        let s = CrcShift::new(b.len() as u64).apply(crc32c_raw(!0, a), crc32c_raw(0, b));
        assert_eq!(!s, crc32c(&d));
    }

    #[test]
    fn shader_tables_are_slicing_by_4() {
        let t = crc32c_shader_tables();
        assert_eq!(t.len(), 1024);
        assert_eq!(t[1], 0xF26B_8303);
        // Emulate the shader's word step on the CPU and compare.
        let d = data(4096 + 3, 9);
        let mut crc = 0u32;
        let words = d.len() / 4;
        for i in 0..words {
            crc ^= u32::from_le_bytes(d[i * 4..i * 4 + 4].try_into().unwrap());
            crc = t[768 + (crc & 0xff) as usize]
                ^ t[512 + ((crc >> 8) & 0xff) as usize]
                ^ t[256 + ((crc >> 16) & 0xff) as usize]
                ^ t[(crc >> 24) as usize];
        }
        for &b in &d[words * 4..] {
            crc = t[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
        }
        assert_eq!(crc, crc32c_raw(0, &d));
    }

    #[test]
    fn sum64_padding() {
        assert_eq!(sum64(&[]), 0);
        assert_eq!(sum64(&[1]), 1);
        assert_eq!(sum64(&[0, 0, 0, 0, 0, 1]), 0x100);
        assert_eq!(sum64(&[0xff; 8]), 2 * 0xffff_ffffu64);
        assert_eq!(sum64(&[0xff; 9]), 2 * 0xffff_ffffu64 + 0xff);
    }

    #[test]
    fn histogram_counts() {
        let d = data(9_999, 7);
        let h = histogram(&d);
        assert_eq!(h.iter().sum::<u64>(), 9_999);
        let mut naive = [0u64; 256];
        for &b in &d {
            naive[b as usize] += 1;
        }
        assert_eq!(h, naive);
    }
}
