//! A generated safetensors model for vk-load's tests: 24 tensors of F32,
//! F16, BF16 and I64 with odd element counts (and one empty tensor),
//! about `mib` MiB in all, tensors starting at offsets that are not
//! page-aligned, deterministic bytes.
use std::io::Write;
use std::path::Path;

/// SplitMix64: deterministic bytes, fast.
fn fill(seed: u64, out: &mut [u8]) {
    let mut s = seed;
    for c in out.chunks_mut(8) {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        c.copy_from_slice(&z.to_le_bytes()[..c.len()]);
    }
}

/// Writes the model; returns how many tensors it has.
pub fn generate(path: &Path, mib: u64) -> Result<usize, String> {
    let dtypes = [("F32", 4u64), ("F16", 2), ("BF16", 2), ("I64", 8)];
    let budget = mib.max(1) << 20;
    // Shares of the budget: a few large tensors, many small and odd ones.
    let shares = [
        300u64, 170, 120, 90, 70, 55, 45, 35, 28, 22, 17, 13, 10, 8, 6, 4, 3, 2, 1, 1, 1, 1, 1, 0,
    ];
    let total: u64 = shares.iter().sum();
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "generator": "vk-load --generate"}),
    );
    let mut specs = vec![];
    let mut at = 0u64;
    for (i, &share) in shares.iter().enumerate() {
        let (dtype, size) = dtypes[i % dtypes.len()];
        // An odd element count (or none, for the last tensor).
        let elements = if share == 0 {
            0
        } else {
            ((budget * share / total) / size) | 1
        };
        let shape = if elements == 0 {
            vec![0u64]
        } else {
            vec![elements]
        };
        let bytes = elements * size;
        let name = format!("layers.{i}.{}", dtype.to_lowercase());
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [at, at + bytes]}),
        );
        specs.push((i as u64, bytes));
        at += bytes;
    }
    let mut h = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    // Data starts 8-byte aligned but not page-aligned, as real files do.
    while (8 + h.len()) % 8 != 0 {
        h.push(b' ');
    }
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
    f.write_all(&(h.len() as u64).to_le_bytes()).map_err(err)?;
    f.write_all(&h).map_err(err)?;
    let mut buf = vec![];
    for (seed, bytes) in &specs {
        buf.resize(*bytes as usize, 0);
        fill(*seed + 1, &mut buf);
        f.write_all(&buf).map_err(err)?;
    }
    f.into_inner()
        .map_err(|e| err(e.into_error()))?
        .sync_all()
        .map_err(err)?;
    Ok(specs.len())
}
