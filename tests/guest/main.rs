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
    for (name, f) in tests {
        if !filters.is_empty() && !filters.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
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
