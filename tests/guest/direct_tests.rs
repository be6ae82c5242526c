//! The runtime's direct and heap paths, through the `dmafile` CLI, with
//! lavapipe inside the guest. Few processes: under TCG every one pays for
//! lavapipe's start-up and first dispatch.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

use crate::ensure;
use crate::util::*;
use crate::TestFn;

pub fn all() -> Vec<(String, TestFn)> {
    let t: [(&str, TestFn); 9] = [
        ("direct/stream-every-fs", Box::new(stream_every_fs)),
        ("direct/refused-falls-back", Box::new(refused_falls_back)),
        ("direct/module-absent", Box::new(module_absent)),
        ("direct/memlock-falls-back", Box::new(memlock_falls_back)),
        ("direct/info-memlock", Box::new(info_memlock)),
        ("heap/stream", Box::new(heap_stream)),
        (
            "direct/truncate-while-streaming",
            Box::new(truncate_while_streaming),
        ),
        ("direct/cli-map", Box::new(cli_map)),
        ("bench/all-paths", Box::new(bench_all_paths)),
    ];
    t.into_iter().map(|(n, f)| (n.to_string(), f)).collect()
}

fn json(o: &Output) -> Result<Value, String> {
    serde_json::from_slice(&o.stdout).map_err(|e| {
        format!(
            "no JSON on stdout ({e}); exit {:?}, stderr: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn crc_of(bytes: &[u8]) -> String {
    dmafile::ShaderResult::Crc32c(dmafile::cpu::crc32c(bytes)).to_string()
}

fn stream_every_fs(c: &Ctx) -> TestResult {
    let mut files = Vec::new();
    for (i, fs) in ["ext4", "xfs", "btrfs", "tmpfs"].iter().enumerate() {
        let bytes = data(3 * (1 << 20) + 777 + i * 4096, 1000 + i as u64);
        files.push((write_file(c.fs(fs)?, "direct.bin", &bytes), bytes));
    }
    let names: Vec<&str> = files.iter().map(|(p, _)| p.to_str().unwrap()).collect();
    let mut args = vec![
        "stream", "--path", "direct", "--shader", "crc32c", "--verify", "--json", "--chunk", "1M",
    ];
    args.extend(&names);
    let o = dmafile(&args);
    let v = json(&o)?;
    ensure!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    ensure!(v["verified"] == true, "not verified: {v}");
    ensure!(
        v["cpu_copied_bytes"] == 0,
        "cpu_copied_bytes {}",
        v["cpu_copied_bytes"]
    );
    ensure!(
        v["paths"]["direct"] == total,
        "paths {} (want direct {total})",
        v["paths"]
    );
    ensure!(
        v["fallbacks"].as_array().is_some_and(|a| a.is_empty()),
        "fallbacks {}",
        v["fallbacks"]
    );
    for (f, (p, bytes)) in v["files"].as_array().unwrap().iter().zip(&files) {
        ensure!(
            f["paths"]["direct"] == bytes.len() as u64,
            "{}: paths {}",
            p.display(),
            f["paths"]
        );
        ensure!(
            f["result"] == crc_of(bytes).as_str(),
            "{}: GPU {} != CPU {}",
            p.display(),
            f["result"],
            crc_of(bytes)
        );
    }
    Ok(())
}

fn refused_falls_back(c: &Ctx) -> TestResult {
    let bytes = data(1 << 20, 7);
    let p = write_file(c.fs("ramfs")?, "refused.bin", &bytes);
    let ps = p.to_str().unwrap();
    let o = dmafile(&["stream", "--path", "direct", "--verify", "--json", ps]);
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(
        o.status.code() == Some(2) && o.stdout.is_empty(),
        "--path direct on ramfs: exit {:?}",
        o.status.code()
    );
    ensure!(
        err.contains("fs-not-supported"),
        "--path direct on ramfs: {err}"
    );
    let o = dmafile(&["stream", "--path", "auto", "--verify", "--json", ps]);
    let v = json(&o)?;
    ensure!(v["verified"] == true, "auto on ramfs not verified: {v}");
    let fb = &v["fallbacks"][0];
    ensure!(
        fb["from"] == "direct" && fb["code"] == "fs-not-supported",
        "fallbacks {}",
        v["fallbacks"]
    );
    ensure!(v["paths"]["direct"].is_null(), "paths {}", v["paths"]);
    Ok(())
}

fn module_absent(c: &Ctx) -> TestResult {
    let bytes = data(1 << 20, 8);
    let p = write_file(c.fs("ext4")?, "absent.bin", &bytes);
    let ps = p.to_str().unwrap();
    let _reload = crate::kmod_tests::Reload(&c.ko);
    crate::kmod_tests::delete_module()?;
    let o = dmafile(&["stream", "--path", "direct", "--json", ps]);
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(
        o.status.code() == Some(2) && err.contains("module-absent"),
        "--path direct without the module: exit {:?}: {err}",
        o.status.code()
    );
    let o = dmafile(&["stream", "--verify", "--json", ps]);
    let v = json(&o)?;
    ensure!(
        v["verified"] == true,
        "auto without the module not verified: {v}"
    );
    let fb = &v["fallbacks"][0];
    ensure!(
        fb["from"] == "direct" && fb["code"] == "module-absent",
        "fallbacks {}",
        v["fallbacks"]
    );
    let o = dmafile(&["info", "--json"]);
    let v = json(&o)?;
    ensure!(
        v["module"]["loaded"] == false,
        "info module {}",
        v["module"]
    );
    Ok(())
}

/// Streams `file` as nobody with RLIMIT_MEMLOCK = `memlock` bytes.
/// Runs the CLI as nobody with this RLIMIT_MEMLOCK.
fn cli_as_nobody(args: &[&str], memlock: u64) -> Result<std::process::Output, String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(sibling("dmafile"));
    cmd.args(args)
        .env("DMAFILE_NO_PROGRESS", "1")
        .env("HOME", "/tmp");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            use nix::sys::resource::{setrlimit, Resource};
            setrlimit(Resource::RLIMIT_MEMLOCK, memlock, memlock)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(65534))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(65534))?;
            Ok(())
        });
    }
    cmd.output().map_err(|e| e.to_string())
}

fn stream_as_nobody(file: &std::path::Path, memlock: u64) -> Result<Value, String> {
    stream_chunks_as_nobody(file, memlock, "1M")
}

fn stream_chunks_as_nobody(
    file: &std::path::Path,
    memlock: u64,
    chunk: &str,
) -> Result<Value, String> {
    let f = file.to_str().unwrap();
    json(&cli_as_nobody(
        &[
            "stream", "--verify", "--json", "--chunk", chunk, "--depth", "3", f,
        ],
        memlock,
    )?)
}

/// `dmafile info` as a user with an 8 MiB memlock limit says that direct
/// falls back for chunks above what fits (limit / depth) and how to raise
/// the limit, and streams bear it out on both sides of that size.
fn info_memlock(c: &Ctx) -> TestResult {
    let mib = 1u64 << 20;
    let o = cli_as_nobody(&["info"], 8 * mib)?;
    let text = String::from_utf8_lossy(&o.stdout);
    ensure!(
        o.status.success(),
        "dmafile info: {:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.contains("[memlock]"))
        .ok_or(format!("no memlock problem in:\n{text}"))?;
    ensure!(
        line.contains("8.0 MiB")
            && line.contains("direct falls back (memlock-limit) for chunks above 2.7 MiB"),
        "info's memlock line: {line}"
    );
    ensure!(
        text.contains("/etc/security/limits.d/dmafile.conf")
            && text.contains("LimitMEMLOCK=50331648")
            && text.contains("ulimit -l 49152")
            && text.contains("--chunk 2728K"),
        "info does not say how to raise the limit:\n{text}"
    );
    let fix = text
        .lines()
        .skip_while(|l| !l.contains("[memlock]"))
        .nth(1)
        .unwrap_or("");
    println!("     info as nobody, memlock 8 MiB:\n     {line}\n     {fix}");
    let v: Value = serde_json::from_slice(&cli_as_nobody(&["info", "--json"], 8 * mib)?.stdout)?;
    let problems = v["checks"]["problems"]
        .as_array()
        .ok_or("no checks.problems")?;
    ensure!(
        problems.iter().any(|p| p["check"] == "memlock"),
        "info --json: {}",
        v["checks"]
    );
    // Root, unlimited: no memlock problem.
    let o = dmafile(&["info", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout)?;
    ensure!(
        !v["checks"]["problems"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["check"] == "memlock")),
        "root: {}",
        v["checks"]
    );
    // What info says holds: the chunk it suggests (three in flight: 8184
    // KiB) streams direct, 4 MiB ones (12 MiB) fall back.
    let p = write_file(c.fs("tmpfs")?, "info-memlock.bin", &data(16 << 20, 21));
    let v = stream_chunks_as_nobody(&p, 8 * mib, "2728K")?;
    ensure!(
        v["verified"] == true && v["paths"]["direct"] == 16 << 20,
        "2728 KiB chunks: {}",
        v["paths"]
    );
    let v = stream_chunks_as_nobody(&p, 8 * mib, "4M")?;
    ensure!(
        v["verified"] == true
            && v["fallbacks"]
                .as_array()
                .is_some_and(|a| a.iter().any(|f| f["code"] == "memlock-limit")),
        "4 MiB chunks: paths {} fallbacks {}",
        v["paths"],
        v["fallbacks"]
    );
    Ok(())
}

/// Pins charged to RLIMIT_MEMLOCK: with 64 KiB not even the first 1 MiB
/// chunk maps, and auto skips direct for the file; with 1.5 MiB the first
/// chunk maps but the second cannot while it is in flight, and the rest of
/// the file goes through upload. Both record the module's reason.
fn memlock_falls_back(c: &Ctx) -> TestResult {
    let bytes = data(3 << 20, 13);
    let p = write_file(c.fs("tmpfs")?, "memlock.bin", &bytes);
    let fell_back = |v: &Value| {
        v["fallbacks"].as_array().is_some_and(|a| {
            a.iter()
                .any(|f| f["from"] == "direct" && f["code"] == "memlock-limit")
        })
    };
    let v = stream_as_nobody(&p, 64 << 10)?;
    ensure!(v["verified"] == true, "64 KiB: not verified: {v}");
    ensure!(
        fell_back(&v),
        "64 KiB: no direct fallback with memlock-limit: {}",
        v["fallbacks"]
    );
    ensure!(
        v["paths"]["direct"].is_null(),
        "64 KiB: paths {}",
        v["paths"]
    );

    let v = stream_as_nobody(&p, 3 << 19)?;
    ensure!(v["verified"] == true, "1.5 MiB: not verified: {v}");
    ensure!(
        fell_back(&v),
        "1.5 MiB: no direct fallback with memlock-limit: {}",
        v["fallbacks"]
    );
    ensure!(
        v["paths"]["direct"] == 1 << 20 && v["paths"]["upload"] == 2 << 20,
        "1.5 MiB: want 1 MiB direct then 2 MiB upload, paths {}",
        v["paths"]
    );
    Ok(())
}

fn heap_stream(c: &Ctx) -> TestResult {
    let bytes = data(2 * (1 << 20) + 5, 9);
    let p = write_file(c.fs("ext4")?, "heap.bin", &bytes);
    let o = dmafile(&[
        "stream",
        "--path",
        "heap",
        "--verify",
        "--json",
        "--chunk",
        "1M",
        p.to_str().unwrap(),
    ]);
    let v = json(&o)?;
    ensure!(v["verified"] == true, "heap not verified: {v}");
    ensure!(
        v["paths"]["heap"] == bytes.len() as u64,
        "paths {}",
        v["paths"]
    );
    ensure!(
        v["cpu_copied_bytes"] == bytes.len() as u64,
        "cpu_copied_bytes {}",
        v["cpu_copied_bytes"]
    );
    Ok(())
}

fn truncate_while_streaming(c: &Ctx) -> TestResult {
    let bytes = data(16 << 20, 10);
    let p = write_file(c.fs("tmpfs")?, "truncated.bin", &bytes);
    let want = crc_of(&bytes);
    let child = Command::new(sibling("dmafile"))
        .args([
            "stream",
            "--path",
            "direct",
            "--verify",
            "--json",
            "--chunk",
            "1M",
            "--depth",
            "2",
            p.to_str().unwrap(),
        ])
        .env("DMAFILE_NO_PROGRESS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Truncate once the child has the file open (it opens files after
    // the device), while it streams: under TCG each chunk takes a while.
    let fd_dir = PathBuf::from(format!("/proc/{}/fd", child.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_dir(&fd_dir)
        .map(|d| {
            d.flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == p))
        })
        .unwrap_or(true)
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "the stream never opened the file"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)?
        .set_len(3 << 20)?;
    let o = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    match o.status.code() {
        Some(2) => {
            ensure!(
                err.contains("changed") || err.contains("stale"),
                "error does not say the file changed: {err}"
            );
            println!("     truncation reported: {}", err.trim());
        }
        Some(0) => {
            let v = json(&o)?;
            ensure!(
                v["result"] == want.as_str() && v["verified"] == true,
                "finished with {} (verified {}) but the original's CRC is {want}",
                v["result"],
                v["verified"]
            );
            println!("     the stream finished before the truncate");
        }
        other => return Err(format!("exit {other:?}: {err}").into()),
    }
    Ok(())
}

fn cli_map(c: &Ctx) -> TestResult {
    let bytes = data(10_000, 11);
    let p = write_file(c.fs("xfs")?, "map.bin", &bytes);
    let o = dmafile(&["map", p.to_str().unwrap(), "--offset", "4096", "--json"]);
    let v = json(&o)?;
    let md = std::fs::metadata(&p)?;
    use std::os::unix::fs::MetadataExt;
    ensure!(
        v["length"] == 8192 && v["offset"] == 4096 && v["backing"] == "page-cache",
        "map: {v}"
    );
    ensure!(
        v["ino"] == md.ino() && v["stale"] == false && v["writable"] == false,
        "map: {v}"
    );
    let o = dmafile(&["info", "--json"]);
    let module = &json(&o)?["module"];
    ensure!(
        module["loaded"] == true
            && module["abi_version"] == dmafile::kmod::ABI_VERSION
            && module["caps"]
                .as_array()
                .is_some_and(|c| c.iter().any(|v| v == "page-cache"))
            && module["pinned_bytes"] == 0
            && module["memlock_limit"] == u64::MAX,
        "info's module section: {module}"
    );
    let o = dmafile(&["map", p.to_str().unwrap(), "--write"]);
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(
        o.status.code() == Some(2) && err.contains("write-pin-not-allowed"),
        "map --write on xfs: {err}"
    );
    let o = dmafile(&["map", p.to_str().unwrap(), "--offset", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(
        o.status.code() == Some(2) && err.contains("unaligned"),
        "map --offset 1: {err}"
    );
    Ok(())
}

fn bench_all_paths(c: &Ctx) -> TestResult {
    let bytes = data(4 << 20, 12);
    let p = write_file(c.fs("ext4")?, "bench.bin", &bytes);
    let o = dmafile(&["bench", p.to_str().unwrap(), "--runs", "1", "--json"]);
    let v = json(&o)?;
    let rows = v["paths"].as_array().ok_or("no paths in bench output")?;
    for want in ["direct", "host", "heap", "upload"] {
        let r = rows
            .iter()
            .find(|r| r["path"] == want)
            .ok_or_else(|| format!("bench has no {want} row: {v}"))?;
        let ratio = r["stream"]["vs_read"].as_f64().unwrap_or(0.0);
        ensure!(
            ratio > 0.0 && ratio.is_finite(),
            "{want}: stream.vs_read {}",
            r["stream"]["vs_read"]
        );
        // The device is the CPU here too: no path beats the read bound.
        let bound = v["read_bound"]["gbps"].as_f64().unwrap_or(0.0);
        for k in ["first", "stream"] {
            let g = r[k]["gbps"].as_f64().unwrap_or(f64::INFINITY);
            let within = g <= 1.2 * bound;
            ensure!(
                within,
                "{want} {k}: {g:.3} GB/s over the read bound {bound:.3} GB/s"
            );
        }
        let copied = r["cpu_copied_bytes"].as_u64();
        let want_copied = if matches!(want, "direct" | "host") {
            0
        } else {
            bytes.len() as u64
        };
        ensure!(
            copied == Some(want_copied),
            "{want}: cpu_copied_bytes {copied:?}"
        );
    }
    // Cold: the file is evicted before every timed run (the loop device's
    // backing file stays in the guest's memory, so "storage" is a memcpy
    // under TCG; this shows the paths run cold, not how fast).
    let human = dmafile(&["bench", p.to_str().unwrap(), "--runs", "1", "--cold"]);
    ensure!(
        human.status.success() && String::from_utf8_lossy(&human.stdout).contains("direct stream"),
        "bench --cold: {}{}",
        String::from_utf8_lossy(&human.stdout),
        String::from_utf8_lossy(&human.stderr)
    );
    println!(
        "{}",
        String::from_utf8_lossy(&human.stdout)
            .trim_end()
            .lines()
            .map(|l| format!("     {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}
