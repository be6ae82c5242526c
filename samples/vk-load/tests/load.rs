//! vk-load on a generated model of 72 MiB and 24 tensors: every tensor's
//! sum from the app's own shader over its own buffers equals a sum this
//! test computes from the file, through auto, host and upload; host
//! copies nothing on the CPU; a device made without the import extensions
//! reads through upload and says why; bad files are refused with the
//! reason and exit 2.
use std::path::Path;
use std::process::{Command, Output};

#[path = "../../../tests/common/mod.rs"]
mod common;
use common::TempDir;

fn vk_load(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vk-load"))
        .args(args)
        .arg(file)
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&o.stderr)))
}

/// The test's own sum64 of each tensor, from the header it parses itself.
fn expected(bytes: &[u8]) -> std::collections::BTreeMap<String, u64> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let hdr: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    hdr.iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            let (b, e) = (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            );
            let t = &bytes[8 + n + b..8 + n + e];
            let sum = t.chunks(4).fold(0u64, |s, w| {
                let mut x = [0u8; 4];
                x[..w.len()].copy_from_slice(w);
                s.wrapping_add(u32::from_le_bytes(x) as u64)
            });
            (k.clone(), sum)
        })
        .collect()
}

#[test]
fn every_tensor_lands_and_sums_right_on_every_path() {
    let dir = TempDir::new("vk-load");
    let f = dir.path("model.safetensors");
    let g = Command::new(env!("CARGO_BIN_EXE_vk-load"))
        .args(["--generate"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(g.status.success());
    let bytes = std::fs::read(&f).unwrap();
    assert!(bytes.len() >= 64 << 20);
    let want = expected(&bytes);
    assert!(want.len() >= 20);
    for (args, path) in [
        (&["--json"][..], "host"),
        (&["--json", "--path", "host"], "host"),
        (&["--json", "--path", "upload"], "upload"),
        (&["--json", "--no-import-extensions"], "upload"),
    ] {
        let o = vk_load(args, &f);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v = json(&o);
        assert_eq!(v["verified"], true, "{args:?}");
        let tensors = v["tensors"].as_array().unwrap();
        assert_eq!(tensors.len(), want.len());
        for t in tensors {
            let name = t["name"].as_str().unwrap();
            assert_eq!(t["gpu_sum64"], want[name].to_string(), "{args:?} {name}");
            assert_eq!(t["cpu_sum64"], want[name].to_string(), "{args:?} {name}");
            if t["bytes"] != 0 {
                assert_eq!(t["path"], path, "{args:?} {name}");
            }
        }
        let copied = v["cpu_copied_bytes"].as_u64().unwrap();
        let data: u64 = tensors.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
        if path == "host" {
            assert_eq!(copied, 0, "{args:?}");
        } else {
            assert_eq!(copied, data, "{args:?}");
        }
        if args.contains(&"--no-import-extensions") {
            let fb = v["fallbacks"].as_array().unwrap();
            assert!(
                fb.iter()
                    .any(|f| f["from"] == "host" && f["code"] == "missing-extension"),
                "{fb:?}"
            );
        }
    }
}

#[test]
fn bad_files_are_refused_with_the_reason() {
    let dir = TempDir::new("vk-load-bad");
    for (name, bytes, want) in common::bad_safetensors() {
        let f = dir.file(name, &bytes);
        let o = vk_load(&[], &f);
        assert_eq!(o.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{name}: {err}");
        assert!(o.stdout.is_empty(), "{name}");
    }
    let o = vk_load(&[], &dir.path("missing"));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing"));
}

/// The benchmark runs every route and verifies each landing (a wrong
/// landing is an error, exit 2); no timing is asserted.
#[test]
fn bench_runs_every_route_and_verifies_it() {
    let dir = TempDir::new("vk-load-bench");
    let f = dir.file("f.bin", &common::data(3 << 20 | 5, 11));
    let o = Command::new(env!("CARGO_BIN_EXE_vk-load"))
        .args(["--bench", "--runs", "1", "--json"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json(&o);
    let routes = v[0]["routes"].as_array().unwrap();
    let names: Vec<&str> = routes
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "read-queue",
            "read-queue-upload",
            "pread+copy",
            "hostptr+copy"
        ]
    );
    for r in routes {
        assert!(r["median_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(
        routes[0]["cpu_copied_bytes"], 0,
        "read-queue on host copies nothing"
    );
}
