//! The safetensors format: an 8-byte little-endian header length N, N
//! bytes of JSON naming each tensor's dtype, shape and `data_offsets`
//! (relative to the byte after the header), then the tensors' bytes.
//! <https://huggingface.co/docs/safetensors> ("Format").
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Deserialize;

/// Largest header accepted (the format's own reference reader uses 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// Element types the reduction shader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    pub fn parse(s: &str) -> Option<Dtype> {
        match s {
            "F32" => Some(Dtype::F32),
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::BF16),
            _ => None,
        }
    }

    pub fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }

    /// The shader's `dtype` push constant.
    pub fn code(self) -> u32 {
        match self {
            Dtype::F32 => 0,
            Dtype::F16 => 1,
            Dtype::BF16 => 2,
        }
    }
}

/// Byte size of each dtype the format defines (to check offsets of
/// tensors this sample does not reduce).
fn any_dtype_size(s: &str) -> Option<u64> {
    Some(match s {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// One tensor of the file.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Absolute offset of its first byte in the file.
    pub offset: u64,
    pub bytes: u64,
    pub elements: u64,
}

/// Reads and checks the header of `path`; tensors in file order.
pub fn read_header(path: &Path) -> Result<Vec<Tensor>, String> {
    let p = path.display();
    let f = std::fs::File::open(path).map_err(|e| format!("{p}: {e}"))?;
    let file_len = f.metadata().map_err(|e| format!("{p}: {e}"))?.len();
    let mut len8 = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut len8, 0)
        .map_err(|_| format!("{p}: not safetensors: shorter than the 8-byte header length"))?;
    let n = u64::from_le_bytes(len8);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(format!(
            "{p}: not safetensors: header length {n} does not fit the file ({file_len} bytes)"
        ));
    }
    let mut hdr = vec![0u8; n as usize];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut hdr, 8)
        .map_err(|e| format!("{p}: reading the header: {e}"))?;
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&hdr)
        .map_err(|e| format!("{p}: not safetensors: the header is not a JSON object: {e}"))?;
    let data_start = 8 + n;
    let mut out = Vec::new();
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let t: RawTensor = serde_json::from_value(v)
            .map_err(|e| format!("{p}: tensor {name:?}: malformed entry: {e}"))?;
        let [b, e] = t.data_offsets;
        let elements = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("{p}: tensor {name:?}: shape {:?} overflows", t.shape))?;
        let size = any_dtype_size(&t.dtype)
            .ok_or_else(|| format!("{p}: tensor {name:?}: unknown dtype {:?}", t.dtype))?;
        if b > e || e.checked_add(data_start).is_none_or(|end| end > file_len) {
            return Err(format!(
                "{p}: tensor {name:?}: data_offsets [{b}, {e}] are outside the file's {} data bytes",
                file_len - data_start
            ));
        }
        if elements.checked_mul(size) != Some(e - b) {
            return Err(format!(
                "{p}: tensor {name:?}: {} bytes for shape {:?} of {} ({} expected)",
                e - b,
                t.shape,
                t.dtype,
                elements.saturating_mul(size)
            ));
        }
        out.push(Tensor {
            name,
            dtype: t.dtype,
            shape: t.shape,
            offset: data_start + b,
            bytes: e - b,
            elements,
        });
    }
    out.sort_by_key(|t| (t.offset, t.name.clone()));
    Ok(out)
}

/// A deterministic pseudo-random generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Random normal (never subnormal) values' bits in each dtype, with
/// magnitudes from about 2^-12 to 2^4, as weights have.
fn value_bits(r: &mut Rng, dtype: Dtype) -> Vec<u8> {
    let x = r.next();
    let sign = x & 1;
    let e = (x >> 1) % 17; // 0..=16
    match dtype {
        Dtype::F32 => {
            let bits = (sign << 31) | ((115 + e) << 23) | ((x >> 8) & 0x7f_ffff);
            (bits as u32).to_le_bytes().to_vec()
        }
        Dtype::F16 => {
            let bits = (sign << 15) | ((3 + e) << 10) | ((x >> 8) & 0x3ff);
            (bits as u16).to_le_bytes().to_vec()
        }
        Dtype::BF16 => {
            let bits = (sign << 15) | ((115 + e) << 7) | ((x >> 8) & 0x7f);
            (bits as u16).to_le_bytes().to_vec()
        }
    }
}

/// Writes a small model-shaped safetensors file for tests: float tensors of
/// each supported dtype and awkward sizes (one element; not a multiple of
/// the shader's block; crossing pages), one with NaN, infinities and
/// signed zeros at an offset that is not 4-byte aligned, one over 2 MiB,
/// and an integer tensor the sample skips.
pub fn generate(path: &Path) -> Result<(), String> {
    let mut r = Rng(0x5afe_7e50);
    let specs: &[(&str, &str, &[u64])] = &[
        ("embed.weight", "F32", &[257, 33]),
        ("layers.0.attn.q.weight", "F16", &[64, 129]),
        ("layers.0.attn.k.weight", "BF16", &[3, 1000]),
        ("layers.0.attn.q.bias", "F32", &[7]),
        ("layers.0.norm.weight", "BF16", &[1]),
        ("layers.0.mlp.up.weight", "F16", &[1024, 1100]),
        ("special", "F32", &[12]),
        ("position_ids", "I64", &[1, 5]),
        ("head.weight", "BF16", &[33, 257]),
    ];
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "generator": "safetensors-reduce --generate"}),
    );
    for (name, dtype, shape) in specs {
        let n: u64 = shape.iter().product();
        let begin = data.len() as u64;
        match (*name, Dtype::parse(dtype)) {
            ("special", Some(Dtype::F32)) => {
                let v = [
                    1.5f32,
                    f32::NAN,
                    -0.0,
                    0.0,
                    f32::INFINITY,
                    -2.25,
                    f32::NEG_INFINITY,
                    1e-3,
                    f32::MAX,
                    -f32::MAX,
                    f32::MIN_POSITIVE,
                    7.0,
                ];
                for x in v {
                    data.extend_from_slice(&x.to_le_bytes());
                }
            }
            (_, Some(d)) => {
                for _ in 0..n {
                    data.extend(value_bits(&mut r, d));
                }
            }
            (_, None) => {
                for i in 0..n {
                    data.extend_from_slice(&(i as i64).to_le_bytes());
                }
            }
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    // Pad the header with spaces so the data starts 8-byte aligned, as
    // the format's writers do.
    while (8 + h.len()) % 8 != 0 {
        h.push(b' ');
    }
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(&(h.len() as u64).to_le_bytes())
        .and_then(|()| f.write_all(&h))
        .and_then(|()| f.write_all(&data))
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}
