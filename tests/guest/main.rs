//! Guest tests of dmafile.ko. Run as root inside the QEMU guest by
//! tests/guest/run.sh, which loads vgem and the module, mounts the test
//! filesystems and passes them in the environment:
//!
//! - `DMAFILE_KO`: path of dmafile.ko (tests unload and reload it);
//! - `DMAFILE_MOUNTS`: `name=dir,...` of freshly made filesystems
//!   (ext4, xfs, btrfs on loop images, tmpfs, tmpfs-huge, ramfs; ext4-dax
//!   and xfs-dax on pmem);
//! - `DMAFILE_PMEM`: `name=device,...`, the pmem devices under the DAX mounts;
//! - `DMAFILE_VKMS`, `DMAFILE_VKMS_OFFSET_BUG`: vkms.ko with our fixes
//!   (loaded, with writeback) and one without the framebuffer offset fix
//!   (scripts/build-vkms.sh).
//!
//! Prints one line per test and a summary `guest: N passed, N failed`;
//! exits non-zero if any failed. Arguments filter tests by substring.

mod dax_tests;
mod direct_tests;
mod fuzz;
mod install_tests;
mod kmod_tests;
mod layout_ops;
mod region_tests;
mod scanout_tests;
mod util;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use util::{Ctx, TestResult};

pub type TestFn = Box<dyn Fn(&Ctx) -> TestResult>;

fn main() {
    let filters: Vec<String> = std::env::args().skip(1).collect();
    if filters.first().map(String::as_str) == Some("--child-store-read-only") {
        let path = filters.get(1).expect("a file");
        std::process::exit(region_tests::child_store_read_only(path.as_ref()));
    }
    let ctx = match Ctx::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("guest: cannot set up: {e}");
            println!("guest: 0 passed, 1 failed");
            std::process::exit(1);
        }
    };
    let mut tests = kmod_tests::all(&ctx);
    tests.extend(direct_tests::all());
    tests.extend(region_tests::all());
    tests.extend(dax_tests::all());
    tests.extend(scanout_tests::all());
    tests.extend(fuzz::all());
    tests.extend(install_tests::all());
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut failures = Vec::new();
    let current = watchdog();
    for (name, f) in tests {
        if !filters.is_empty() && !filters.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        *current.lock().unwrap_or_else(|e| e.into_inner()) = Some((name.clone(), Instant::now()));
        let t0 = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| f(&ctx)))
            .unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                Err(format!("panicked: {msg}").into())
            })
            .and_then(|()| ctx.check_nothing_pinned());
        let secs = t0.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("ok   {name} ({secs:.1} s)");
            }
            // A case that cannot apply to this kernel: neither passed nor failed.
            Err(e) if e.is::<util::Skip>() => {
                skipped += 1;
                println!("skip {name}: {e}");
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name} ({secs:.1} s): {e}");
                failures.push(name);
            }
        }
    }
    for name in &failures {
        println!("failed: {name}");
    }
    println!("guest: {passed} passed, {failed} failed, {skipped} skipped");
    std::process::exit(if failed == 0 && passed > 0 { 0 } else { 1 });
}

/// A test still running after this long (DMAFILE_GUEST_STUCK_SECS, 240
/// by default; the slowest test takes about 100 s under the debug kernel)
/// is reported while it runs.
fn stuck_after() -> std::time::Duration {
    let secs = std::env::var("DMAFILE_GUEST_STUCK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(240);
    std::time::Duration::from_secs(secs)
}

/// Watches the running test: one that has run for [`stuck_after`] (a process
/// blocked in the kernel, a display that never flips) gets its name, the
/// kernel stacks of this runner's child processes and the end of the
/// kernel log printed, once, so that a run the guest's timeout ends still
/// says where it stopped. Returns the slot the runner names each test in.
fn watchdog() -> std::sync::Arc<std::sync::Mutex<Option<(String, Instant)>>> {
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None::<(String, Instant)>));
    let watched = slot.clone();
    let stuck = stuck_after();
    std::thread::spawn(move || {
        let mut reported = String::new();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(10));
            let now = watched.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let Some((name, t0)) = now else { continue };
            if t0.elapsed() < stuck || reported == name {
                continue;
            }
            reported = name.clone();
            println!(
                "stuck {name}: still running after {} s",
                t0.elapsed().as_secs()
            );
            for (pid, stack) in child_stacks() {
                println!("stuck {name}: child {pid} kernel stack:\n{stack}");
            }
            match kernel_log_tail(40) {
                Ok(tail) => {
                    for l in tail {
                        println!("stuck {name}: {l}");
                    }
                }
                Err(e) => println!("stuck {name}: /dev/kmsg: {e}"),
            }
        }
    });
    slot
}

/// (pid and command, /proc/PID/stack) of every descendant of this process.
fn child_stacks() -> Vec<(String, String)> {
    let me = std::process::id().to_string();
    let mut parents = vec![me];
    let mut out = vec![];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    let procs: Vec<(String, String, String)> = dir
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid ...
            let (comm, rest) = stat.rsplit_once(')')?;
            let ppid = rest.split_whitespace().nth(1)?.to_string();
            Some((pid, comm.split_once('(')?.1.to_string(), ppid))
        })
        .collect();
    while let Some(parent) = parents.pop() {
        for (pid, comm, _) in procs.iter().filter(|(_, _, pp)| *pp == parent) {
            let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
            out.push((format!("{pid} ({comm})"), stack));
            parents.push(pid.clone());
        }
    }
    out
}

/// The last `n` records of the kernel log, read from /dev/kmsg without
/// blocking (one record per read; EAGAIN at the end).
fn kernel_log_tail(n: usize) -> std::io::Result<Vec<String>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open("/dev/kmsg")?;
    let mut tail = std::collections::VecDeque::with_capacity(n);
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                // "prio,seq,usec,flags;message"
                let rec = String::from_utf8_lossy(&buf[..k]);
                let msg = rec
                    .split_once(';')
                    .map_or(&*rec, |(_, m)| m)
                    .trim_end()
                    .to_string();
                if tail.len() == n {
                    tail.pop_front();
                }
                tail.push_back(msg);
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue, // overwritten records
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(tail.into())
}
