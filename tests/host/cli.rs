//! Host tests of the `dmafile` binary on the default Vulkan device (lavapipe
//! in CI). They run the real binary on real files and compare real values.
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

#[path = "../common/mod.rs"]
mod common;
use common::{data, TempDir};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dmafile")
}

fn dmafile(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("DMAFILE_NO_PROGRESS", "1")
        .output()
        .expect("run dmafile")
}

/// The `result` of a histogram run as 256 counts.
fn histogram_of(v: &Value) -> Vec<u64> {
    v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn json_of(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "dmafile failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("stdout is one JSON object")
}

/// Runs a command that must fail: exit 2, nothing on stdout, and stderr
/// naming `needle`.
fn assert_refused(args: &[&str], needle: &str) {
    let o = dmafile(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: stderr {err}");
    assert!(
        o.stdout.is_empty(),
        "{args:?} wrote to stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        err.contains(needle),
        "{args:?}: stderr {err:?} should mention {needle:?}"
    );
}

#[test]
fn json_has_the_documented_fields() {
    let dir = TempDir::new("json");
    let d = data(3 * 65536 + 5, 1);
    let f = dir.file("f", &d);
    let fs = f.to_str().unwrap();
    let crc = dmafile::cpu::crc32c(&d);
    let v = json_of(&dmafile(&[
        "stream", fs, "--chunk", "64K", "--verify", "--json",
    ]));
    assert_eq!(v["bytes"], d.len() as u64);
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(v["shader"], "crc32c");
    assert_eq!(v["result"], format!("0x{crc:08x}"));
    assert_eq!(v["verified"], true);
    let paths = v["paths"].as_object().unwrap();
    assert_eq!(
        paths.values().map(|b| b.as_u64().unwrap()).sum::<u64>(),
        d.len() as u64
    );
    assert!(v["cpu_copied_bytes"].is_u64());
    for fb in v["fallbacks"].as_array().unwrap() {
        assert!(
            fb["from"].is_string() && fb["reason"].is_string() && fb["code"].is_string(),
            "{fb}"
        );
    }
    // Without --verify, verified is null; sum64 is a decimal string; histogram 256 numbers.
    let v = json_of(&dmafile(&["stream", fs, "--shader", "sum64", "--json"]));
    assert_eq!(v["verified"], Value::Null);
    assert_eq!(v["result"], dmafile::cpu::sum64(&d).to_string());
    let v = json_of(&dmafile(&[
        "stream",
        fs,
        "--shader",
        "histogram",
        "--path",
        "upload",
        "--json",
    ]));
    assert_eq!(histogram_of(&v), dmafile::cpu::histogram(&d).to_vec());
    assert_eq!(v["cpu_copied_bytes"], d.len() as u64);
    assert_eq!(v["paths"]["upload"], d.len() as u64);
    // The human summary carries the same facts.
    let o = dmafile(&["stream", fs, "--verify"]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains(&format!("0x{crc:08x}")) && s.contains("verified:     yes"),
        "{s}"
    );
}

#[test]
fn auto_reports_its_choice_and_fallbacks() {
    let dir = TempDir::new("auto");
    let f = dir.file("f", &data(100_000, 2));
    let v = json_of(&dmafile(&["stream", f.to_str().unwrap(), "--json"]));
    let info: Value = serde_json::from_slice(&dmafile(&["info", "--json"]).stdout).unwrap();
    let avail: Vec<&str> = info["paths"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["available"] == true)
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    let best = avail[0];
    assert_eq!(
        v["paths"].as_object().unwrap().keys().collect::<Vec<_>>(),
        vec![best]
    );
    for p in info["paths"]
        .as_array()
        .unwrap()
        .iter()
        .take_while(|p| p["path"] != best)
    {
        let fb = v["fallbacks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|fb| fb["from"] == p["path"])
            .expect("fallback recorded");
        assert_eq!(fb["reason"], p["reason"]);
        assert_eq!(fb["to"], best);
    }
}

#[test]
fn bad_input_is_refused_clearly() {
    let dir = TempDir::new("bad");
    let f = dir.file("f", &data(10_000, 3));
    let fs = f.to_str().unwrap();
    assert_refused(
        &["stream", dir.path("missing").to_str().unwrap()],
        "no such file",
    );
    assert_refused(&["stream", dir.0.to_str().unwrap()], "is a directory");
    let fifo = dir.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert_refused(&["stream", fifo.to_str().unwrap()], "FIFO");
    assert_refused(&["stream", "/dev/null"], "character device");
    assert_refused(&["stream", fs, "--chunk", "0"], "--chunk");
    assert_refused(
        &["stream", fs, "--chunk", "5000"],
        "multiple of the page size",
    );
    assert_refused(&["stream", fs, "--chunk", "64G"], "can bind at once");
    assert_refused(&["stream", fs, "--chunk", "lots"], "not a size");
    assert_refused(&["stream", fs, "--depth", "0"], "--depth");
    assert_refused(&["stream", fs, "--memory-budget", "1M"], "--memory-budget");
    assert_refused(&["stream", fs, "--path", "sideways"], "unknown path");
    assert_refused(&["stream", fs, "--shader", "md5"], "unknown shader");
    if !Path::new("/dev/dmafile").exists() {
        assert_refused(
            &["stream", fs, "--path", "direct"],
            "kernel module dmafile is not loaded",
        );
    }
    if !Path::new("/dev/dma_heap/system").exists() {
        assert_refused(&["stream", fs, "--path", "heap"], "dma-buf heap");
    }
    assert_refused(
        &["stream", "/proc/self/status", "--path", "host"],
        "pseudo-file",
    );
    // One bad file among good ones: nothing is streamed, nothing printed.
    assert_refused(
        &["stream", fs, dir.path("missing").to_str().unwrap()],
        "no such file",
    );
}

#[test]
fn unreadable_file_is_refused() {
    let dir = TempDir::new("perm");
    let f = dir.file("secret", &data(5000, 4));
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["stream", f.to_str().unwrap()])
        .env("DMAFILE_NO_PROGRESS", "1");
    if nix::unistd::geteuid().is_root() {
        // Root reads anything: run as nobody, who may enter the directory only.
        std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        cmd.uid(65534).gid(65534);
    }
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(o.stdout.is_empty());
    assert!(err.contains("permission denied"), "{err}");
}

#[test]
fn proc_files_are_streamed_from_a_snapshot() {
    let v = json_of(&dmafile(&[
        "stream",
        "/proc/self/mountinfo",
        "--verify",
        "--json",
    ]));
    assert_eq!(v["verified"], true);
    assert!(v["bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["files"][0]["snapshot_of"], "procfs");
    assert!(v["paths"]["upload"].as_u64().unwrap() > 0);
}

/// Streams a 64 MiB file while another process truncates it: the stream
/// must end in an error that names the change, print nothing on stdout, and
/// let the truncate through.
#[test]
fn truncation_by_another_process_is_reported() {
    for path in ["host", "upload"] {
        let dir = TempDir::new(&format!("trunc-{path}"));
        let f = dir.file("f", &data(64 << 20, 9));
        let fs = f.to_str().unwrap();
        let child = Command::new(bin())
            .args([
                "stream", fs, "--path", path, "--chunk", "256K", "--depth", "2",
            ])
            .args(["--shader", "histogram", "--verify", "--json"])
            .env("DMAFILE_NO_PROGRESS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150));
        // GNU truncate opens with O_NONBLOCK: while dmafile holds a read lease
        // it gets EWOULDBLOCK (and the lease break starts); retry like a writer.
        let mut tries = 0;
        while !Command::new("truncate")
            .args(["-s", "1M", fs])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            tries += 1;
            assert!(tries < 200, "{path}: truncate never got through");
            std::thread::sleep(Duration::from_millis(50));
        }
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{path}: {err}");
        assert!(
            o.stdout.is_empty(),
            "{path}: nothing on stdout after an error"
        );
        assert!(err.contains("changed while streaming"), "{path}: {err}");
        assert_eq!(
            std::fs::metadata(&f).unwrap().len(),
            1 << 20,
            "the truncate went through"
        );
    }
}

fn max_rss_kib(args: &[&str]) -> i64 {
    let child = Command::new(bin())
        .args(args)
        .env("DMAFILE_NO_PROGRESS", "1")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it for our own child.
    let mut ru: nix::libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child; status and ru are valid out-pointers.
    let r = unsafe { nix::libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid);
    assert!(
        nix::libc::WIFEXITED(status) && nix::libc::WEXITSTATUS(status) == 0,
        "{args:?} failed"
    );
    std::mem::forget(child); // reaped above
    ru.ru_maxrss
}

#[test]
fn memory_stays_bounded_whatever_the_file_size() {
    let dir = TempDir::new("rss");
    let small = dir.file("small", &data(4 << 20, 5));
    let big = dir.file("big", &data(256 << 20, 6));
    for path in ["host", "upload"] {
        let args = |f: &Path| {
            vec![
                "stream".to_string(),
                f.to_str().unwrap().into(),
                "--path".into(),
                path.into(),
                "--chunk".into(),
                "1M".into(),
                "--depth".into(),
                "2".into(),
                "--shader".into(),
                "sum64".into(),
                "--memory-budget".into(),
                "4M".into(),
            ]
        };
        let a = args(&small);
        let b = args(&big);
        let rs = max_rss_kib(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let rb = max_rss_kib(&b.iter().map(String::as_str).collect::<Vec<_>>());
        // 256 MiB streamed through 2 x 1 MiB: the peak may not grow with the file.
        assert!(
            rb - rs < 32 * 1024,
            "{path}: max RSS {rs} KiB for 4 MiB, {rb} KiB for 256 MiB"
        );
    }
}

/// The names of a bench JSON's baselines, in order.
fn baseline_names(v: &Value) -> Vec<String> {
    v["baselines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

/// The rule docs/benchmarks.md states: on lavapipe the device is
/// the CPU, so no path can make a file visible to a shader that reads every
/// byte faster than the CPUs copy those bytes out of the page cache. Every
/// path's first and streaming medians must stay within 1.2x of that bound,
/// for every shader; `none` (which reads nothing) is refused.
#[test]
fn bench_never_reports_a_path_faster_than_the_bytes_can_be_read() {
    let dir = TempDir::new("bench");
    let f = dir.file("f", &data(32 << 20, 7));
    let bytes = std::fs::read(&f).unwrap();
    for shader in ["sum64", "crc32c", "histogram"] {
        let o = dmafile(&[
            "bench",
            f.to_str().unwrap(),
            "--chunk",
            "4M",
            "--runs",
            "3",
            "--shader",
            shader,
            "--json",
        ]);
        let v = json_of(&o);
        let bound = v["read_bound"]["gbps"].as_f64().unwrap();
        assert!(bound > 0.0, "{v}");
        let names = baseline_names(&v);
        for want in ["cat", "pread", "pread x", "memcpy x"] {
            assert!(names.iter().any(|n| n.starts_with(want)), "{names:?}");
        }
        assert_eq!(v["cache"], "warm");
        for x in v["warm_resident_share"].as_array().unwrap() {
            assert!(x.as_f64().unwrap() > 0.99, "not warm: {v}");
        }
        assert_eq!(v["shader_resident"]["samples"].as_array().unwrap().len(), 3);
        let rows = v["paths"].as_array().unwrap();
        assert!(rows.iter().any(|r| r["path"] == "upload"), "{v}");
        assert!(rows.iter().any(|r| r["path"] == "host"), "{v}");
        if shader == "sum64" {
            let sum = dmafile::cpu::sum64(&bytes).to_string();
            assert_eq!(v["expected_result"], sum);
        }
        assert_eq!(
            v["orders"].as_array().unwrap().len(),
            4,
            "warm-up + 3 rounds"
        );
        for r in rows {
            assert_eq!(r["result"], v["expected_result"], "{r}");
            // A new process per round, its result checked by the bench.
            let np = &r["new_process"];
            assert_eq!(np["samples"].as_array().unwrap().len(), 3, "{np}");
            assert!(np["median"].as_f64().unwrap() > 0.0, "{np}");
            for k in ["first", "stream", "visible_only"] {
                let x = &r[k];
                if k == "visible_only" && r["path"] != "upload" {
                    continue; // only copy paths read every byte with no shader
                }
                assert_eq!(x["over_read_bound"], false, "{x}");
                let g = x["gbps"].as_f64().unwrap();
                assert!(
                    g > 0.0 && g <= 1.2 * bound,
                    "{shader} {} {k}: {g:.2} GB/s against a read bound of {bound:.2} GB/s ({}): {x}",
                    r["path"],
                    v["read_bound"]["name"]
                );
                let (min, med, max) = (
                    x["min"].as_f64().unwrap(),
                    x["median"].as_f64().unwrap(),
                    x["max"].as_f64().unwrap(),
                );
                assert!(min <= med && med <= max, "{x}");
                assert_eq!(x["samples"].as_array().unwrap().len(), 3, "{x}");
                assert!(x["cpu_seconds_per_gib"].as_f64().unwrap() > 0.0, "{x}");
            }
        }
    }
    let o = dmafile(&["bench", f.to_str().unwrap(), "--chunk", "1M", "--runs", "1"]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("vs read") && s.contains("host stream") && s.contains("read bound:"),
        "{s}"
    );
    // No shader would time a mapping as a read of every byte: refused.
    let o = dmafile(&["bench", f.to_str().unwrap(), "--shader", "none"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("--shader none") && e.contains("read none"),
        "{e}"
    );
}

/// `--cold` evicts the files before every timed run and adds the storage
/// read without the page cache; a file the kernel cannot evict is refused.
#[test]
fn bench_cold_evicts_or_says_why_not() {
    // Under target/, on the checkout's filesystem: /tmp may be tmpfs,
    // which cannot be read cold (that refusal is checked below).
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-cold-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("f");
    std::fs::write(&f, data(8 << 20, 9)).unwrap();
    let o = dmafile(&[
        "bench",
        f.to_str().unwrap(),
        "--cold",
        "--runs",
        "1",
        "--chunk",
        "1M",
        "--paths",
        "host,upload",
        "--json",
    ]);
    let v = json_of(&o);
    assert_eq!(v["cache"], "cold");
    assert!(v["read_bound"].is_null(), "{v}");
    let names = baseline_names(&v);
    assert!(names.contains(&"dd iflag=direct".to_string()), "{names:?}");
    assert_eq!(v["paths"].as_array().unwrap().len(), 2, "{v}");
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        let p = shm.join(format!("dmafile-cold-{}", std::process::id()));
        std::fs::write(&p, data(1 << 20, 3)).unwrap();
        let o = dmafile(&["bench", p.to_str().unwrap(), "--cold", "--runs", "1"]);
        let _ = std::fs::remove_file(&p);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(
            e.contains("--cold") && e.contains("stayed in the page cache"),
            "{e}"
        );
    } else {
        eprintln!("skip: no /dev/shm to show a tmpfs file refused");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With no shader the zero-copy paths read nothing, so `stream` gives no rate.
#[test]
fn stream_with_no_shader_gives_no_read_rate_for_unread_bytes() {
    let dir = TempDir::new("noshader");
    let f = dir.file("f", &data(4 << 20, 5));
    let v = json_of(&dmafile(&[
        "stream",
        f.to_str().unwrap(),
        "--shader",
        "none",
        "--path",
        "host",
        "--json",
    ]));
    assert!(v["gbps"].is_null(), "{v}");
    assert_eq!(v["unread_bytes"], 4 << 20);
    let o = dmafile(&[
        "stream",
        f.to_str().unwrap(),
        "--shader",
        "none",
        "--path",
        "host",
    ]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("no rate") && !s.contains("GB/s"), "{s}");
    // upload reads every byte into staging: its rate stands.
    let v = json_of(&dmafile(&[
        "stream",
        f.to_str().unwrap(),
        "--shader",
        "none",
        "--path",
        "upload",
        "--json",
    ]));
    assert!(v["gbps"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["unread_bytes"], 0);
}

#[test]
fn info_lists_devices_and_paths() {
    let v = json_of(&dmafile(&["info", "--json"]));
    assert!(!v["devices"].as_array().unwrap().is_empty());
    let names: Vec<&str> = v["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["direct", "host", "heap", "upload"]);
    for p in v["paths"].as_array().unwrap() {
        assert!(p["available"] == true || p["reason"].is_string(), "{p}");
    }
    // DMAFILE_DEVICE selects by index or name, and a wrong one is an error.
    let o = Command::new(bin())
        .args(["info"])
        .env("DMAFILE_DEVICE", "no-such-gpu")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("matches no Vulkan device"));
    let o = Command::new(bin())
        .args(["info", "--json"])
        .env("DMAFILE_DEVICE", "0")
        .output()
        .unwrap();
    assert!(o.status.success());
}

#[test]
fn map_without_the_module_says_so() {
    // CI's host kernel cannot load dmafile.ko (it is tested in the guest);
    // on a machine that has it loaded, `info` must say so instead.
    if std::path::Path::new("/dev/dmafile").exists() {
        let v = json_of(&dmafile(&["info", "--json"]));
        assert_eq!(v["module"]["loaded"], true);
        assert_eq!(v["module"]["abi_version"], 1);
        return;
    }
    assert_refused(
        &["map", "Cargo.toml"],
        "kernel module dmafile is not loaded",
    );
    let v = json_of(&dmafile(&["info", "--json"]));
    assert_eq!(v["module"]["loaded"], false);
    assert_eq!(v["paths"][0]["code"], "module-absent");
}

#[test]
fn scanout_refuses_bad_input_before_touching_a_display() {
    let dir = TempDir::new("scanout");
    let f = dir.file("frames.raw", &[7u8; 64 * 48 * 4 * 2]);
    let f = f.to_str().unwrap();
    let d = dir.0.to_str().unwrap();
    let cases: [(&[&str], &str); 10] = [
        (&[f, "--size", "64by48"], "\"64by48\" is not WxH"),
        (&[f, "--size", "0x48"], "frame size 0x48 is empty"),
        (
            &[f, "--size", "64x48", "--stride", "100"],
            "stride 100 is less than a row of 64 XRGB8888 pixels (256 bytes)",
        ),
        (&[f, "--size", "64x48", "--format", "NV12"], "NV12"),
        (
            &[f, "--size", "64x48", "--format", "RGB565", "--verify"],
            "captures are compared exactly only for XRGB8888",
        ),
        (
            &[f, "--size", "64x48", "--fps", "0"],
            "0 is not a positive number of frames per second",
        ),
        (
            &[f, "--size", "64x48", "--frames", "3"],
            "3 frames asked for, but the file holds 2 whole 12288-byte frames",
        ),
        (
            &[f, "--size", "640x480"],
            "24576 bytes is less than one 640x480 XRGB8888 frame of 1228800 bytes",
        ),
        (&[d, "--size", "64x48"], "not a regular file"),
        (
            &["/nonexistent/x.raw", "--size", "64x48"],
            "/nonexistent/x.raw",
        ),
    ];
    for (args, needle) in cases {
        assert_refused(&[&["scanout"], args].concat(), needle);
    }
    // CI's host has no display at all: the error says so and which devices.
    if !std::path::Path::new("/dev/dri").exists() {
        assert_refused(
            &["scanout", f, "--size", "64x48"],
            "no usable KMS display: /dev/dri",
        );
    }
}

/// More inputs than the process may have open descriptors: the stream
/// opens each file only when it reaches it (docs/runtime.md), so 1,100
/// files stream under a limit of 256 and verify.
#[test]
fn more_files_than_open_file_descriptors() {
    let dir = TempDir::new("many-files");
    let files: Vec<String> = (0..1100)
        .map(|i| {
            dir.file(&format!("f{i:04}"), &data(1 + i * 7, i as u64))
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut cmd = Command::new(bin());
    cmd.args(["stream", "--verify", "--json", "--shader", "sum64"])
        .args(&files)
        .env("DMAFILE_NO_PROGRESS", "1");
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 256, 256)
                .map_err(std::io::Error::from)
        });
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(v["files"].as_array().unwrap().len(), 1100);
    let want: u64 = (0..1100u64).map(|i| 1 + i * 7).sum();
    assert_eq!(v["bytes"], want);
}
