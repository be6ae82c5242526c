//! The sample on a generated model: every float tensor reduced on the GPU
//! equals the CPU bit for bit, on every path this machine has, in one piece
//! or many; known values come out right; bad files are refused clearly.
use std::path::Path;
use std::process::{Command, Output};

#[path = "../../../tests/common/mod.rs"]
mod common;
use common::TempDir;

fn sample(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_safetensors-reduce"))
        .args(args)
        .arg(file)
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn generated_model_matches_the_cpu_on_every_path() {
    let dir = TempDir::new("safetensors");
    let f = dir.path("model.safetensors");
    assert!(sample(&["--generate"], &f).status.success());
    let bytes = std::fs::read(&f).unwrap();
    for args in [
        &["--json"][..],
        &["--json", "--path", "host"],
        &["--json", "--path", "upload", "--piece", "4096"],
    ] {
        let o = sample(args, &f);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let r = json(&o);
        assert_eq!(r["ok"], true);
        let t = r["tensors"].as_array().unwrap();
        assert_eq!(t.len(), 8, "{args:?}");
        assert!(t.iter().all(|t| t["exact"] == true), "{args:?}: {r}");
        assert_eq!(r["skipped"][0]["name"], "position_ids");
        let by = |n: &str| t.iter().find(|t| t["name"] == n).unwrap().clone();
        // Known values, computed here from the file's bytes.
        let special = by("special");
        assert_eq!(special["gpu"]["nonfinite"], 3);
        assert_eq!(special["gpu"]["sum"], 7.0);
        assert_eq!(special["gpu"]["max"].as_f64().unwrap() as f32, f32::MAX);
        assert_eq!(special["gpu"]["min"].as_f64().unwrap() as f32, -f32::MAX);
        assert_ne!(
            special["offset"].as_u64().unwrap() % 4,
            0,
            "meant to be unaligned"
        );
        let bias = by("layers.0.attn.q.bias");
        let off = bias["offset"].as_u64().unwrap() as usize;
        let s = bytes[off..off + 28]
            .chunks_exact(4)
            .fold(0f32, |a, w| a + f32::from_le_bytes(w.try_into().unwrap()));
        assert_eq!(bias["gpu"]["sum"].as_f64().unwrap(), s as f64);
        let up = by("layers.0.mlp.up.weight");
        if args.contains(&"4096") {
            assert_eq!(up["pieces"], 550, "1024-element pieces");
        }
        let total: u64 = t.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
        let carried: u64 = r["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(carried, total);
    }
}

#[test]
fn bad_files_are_refused_with_the_reason() {
    let dir = TempDir::new("safetensors-bad");
    for (name, bytes, want) in common::bad_safetensors() {
        let f = dir.file(name, &bytes);
        let o = sample(&[], &f);
        assert_eq!(o.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{name}: {err}");
    }
    let o = sample(&[], &dir.path("missing"));
    assert_eq!(o.status.code(), Some(2));
}
