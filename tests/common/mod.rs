//! Helpers shared by dmafile's tests (runtime unit and integration tests,
//! the CLI's host tests), included with `#[path]` so no crate depends on a
//! test-only crate.
#![allow(dead_code)] // each includer uses a subset

use std::path::PathBuf;

/// `n` deterministic pseudo-random bytes (xorshift64), different per seed.
pub fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("dmafile-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `bytes` to a file named `name` in the directory.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A safetensors file: the 8-byte header length, `header`, `data` zeros.
fn safetensors_of(header: &[u8], data: usize) -> Vec<u8> {
    [
        (header.len() as u64).to_le_bytes().to_vec(),
        header.to_vec(),
        vec![0; data],
    ]
    .concat()
}

/// Malformed safetensors files, each with the words a reader of the
/// samples' header parser must say about it: (name, bytes, message).
pub fn bad_safetensors() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        (
            "short",
            vec![1, 2, 3],
            "shorter than the 8-byte header length",
        ),
        (
            "huge-header",
            [u64::MAX.to_le_bytes().to_vec(), vec![0; 8]].concat(),
            "does not fit the file",
        ),
        ("not-json", safetensors_of(b"hello", 0), "not a JSON object"),
        (
            "outside",
            safetensors_of(
                br#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                8,
            ),
            "outside the file",
        ),
        (
            "wrong-size",
            safetensors_of(
                br#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
                16,
            ),
            "16 bytes for shape [3] of F32 (12 expected)",
        ),
    ]
}
