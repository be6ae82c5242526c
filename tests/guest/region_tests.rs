//! The runtime's regions and kernels on the direct and heap paths: shaders
//! that read files in place on every filesystem, and shaders that write
//! into files through WRITE mappings (tmpfs) or through the heap path's
//! write-back where the module refuses WRITE (ext4). One Vulkan device for
//! all of them: under TCG each new one costs seconds.

use std::cell::OnceCell;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use dmafile::compute::builtin;
use dmafile::kmod::{Backing, MapReason};
use dmafile::{
    cpu, Access, DeviceBuffer, Error, Gpu, Kernel, PathKind, ReasonCode, Region, RegionOptions,
};

use crate::ensure;
use crate::util::*;
use crate::TestFn;

pub fn all() -> Vec<(String, TestFn)> {
    let t: [(&str, TestFn); 9] = [
        ("region/read-every-fs", Box::new(read_every_fs)),
        ("region/write-tmpfs", Box::new(write_tmpfs)),
        (
            "region/write-ext4-falls-back",
            Box::new(write_ext4_falls_back),
        ),
        ("region/write-heap", Box::new(write_heap)),
        ("region/read-only-refused", Box::new(read_only_refused)),
        (
            "region/read-only-store-faults",
            Box::new(read_only_store_faults),
        ),
        ("sample/safetensors-direct", Box::new(safetensors_direct)),
        ("sample/vk-load-direct", Box::new(vk_load_direct)),
        ("sample/c-load-direct", Box::new(c_load_direct)),
    ];
    t.into_iter().map(|(n, f)| (n.to_string(), f)).collect()
}

thread_local! {
    static GPU: OnceCell<Gpu> = const { OnceCell::new() };
}

pub fn gpu() -> Gpu {
    GPU.with(|g| {
        g.get_or_init(|| Gpu::open_default().expect("lavapipe in the guest"))
            .clone()
    })
}

fn opts(path: &str, access: Access) -> RegionOptions {
    RegionOptions {
        path: path.parse().unwrap(),
        access,
    }
}

/// The SUM64 kernel `k` over the region's buffer up to the end of its
/// range (from the page its range starts in, `skew() + len()` bytes).
pub fn sum64(g: &Gpu, k: &mut Kernel, r: &Region) -> Result<u64, Error> {
    let n = r.skew() + r.len();
    let blocks = n.div_ceil(4096) as usize;
    let mut out = DeviceBuffer::new(g, blocks * 8)?;
    k.run(
        &[r.into(), (&mut out).into()],
        &(n as u32).to_ne_bytes(),
        [blocks.div_ceil(64) as u32, 1, 1],
    )?;
    Ok(out.bytes().chunks_exact(8).fold(0u64, |a, w| {
        a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()))
    }))
}

fn invert(k: &mut Kernel, r: &Region) -> Result<(), Error> {
    let (first, count) = ((r.skew() / 4) as u32, (r.len() / 4) as u32);
    let push = [first.to_ne_bytes(), count.to_ne_bytes()].concat();
    k.run(&[r.into()], &push, [count.div_ceil(64), 1, 1])
}

/// The file must be `before` with `[off, off+len)` inverted.
fn check_inverted(p: &Path, before: &[u8], off: u64, len: u64) -> TestResult {
    let after = std::fs::read(p)?;
    let (a, b) = (off as usize, (off + len) as usize);
    ensure!(
        after.len() == before.len(),
        "size changed to {}",
        after.len()
    );
    ensure!(after[..a] == before[..a], "bytes before the range changed");
    ensure!(after[b..] == before[b..], "bytes after the range changed");
    let bad = (a..b).find(|&i| after[i] != !before[i]);
    ensure!(
        bad.is_none(),
        "byte {} is not the shader's output",
        bad.unwrap()
    );
    Ok(())
}

fn read_every_fs(c: &Ctx) -> TestResult {
    let g = gpu();
    let mut k = Kernel::new(&g, builtin::SUM64, 4)?;
    for fs in TEST_FS {
        let d = data(3 * (1 << 20) + 123, 77);
        let p = write_file(c.fs(fs)?, "region.bin", &d);
        for (off, len) in [
            (0u64, d.len() as u64),
            (1 << 20, 1 << 20),
            (4096 + 40, 500_000),
        ] {
            let r = Region::open(&g, &p, off, len, opts("direct", Access::Read))?;
            ensure!(r.path_kind() == PathKind::Direct, "{fs}: {}", r.path_kind());
            ensure!(r.backing() == Backing::PageCache, "{fs}: {:?}", r.backing());
            let sum = sum64(&g, &mut k, &r)?;
            let start = (off - r.skew()) as usize;
            let want = cpu::sum64(&d[start..(off + len) as usize]);
            ensure!(sum == want, "{fs} {off}+{len}: GPU {sum}, CPU {want}");
            let rep = r.finish()?;
            ensure!(
                rep.cpu_copied_bytes == 0,
                "{fs}: copied {}",
                rep.cpu_copied_bytes
            );
        }
    }
    Ok(())
}

fn write_tmpfs(c: &Ctx) -> TestResult {
    let g = gpu();
    let mut k = Kernel::new(&g, builtin::INVERT, 8)?;
    let before = data((2 << 20) + 5000, 11);
    let p = write_file(c.fs("tmpfs")?, "write.bin", &before);
    let mtime0 = std::fs::metadata(&p)?.modified()?;
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut cur = before.clone();
    for (off, len) in [
        (0u64, 1u64 << 20),
        (3 * 4096 + 100, 600_000),
        (2 << 20, 5000),
    ] {
        let r = Region::open(&g, &p, off, len, opts("direct", Access::ReadWrite))?;
        ensure!(r.path_kind() == PathKind::Direct, "{}", r.path_kind());
        let st = r.status().expect("direct")?;
        ensure!(
            st.flags & dmafile::kmod::flags::WRITE != 0,
            "not a WRITE mapping: {st:?}"
        );
        invert(&mut k, &r)?;
        let rep = r.finish()?;
        ensure!(!rep.written_back && rep.cpu_copied_bytes == 0, "{rep:?}");
        check_inverted(&p, &cur, off, len)?;
        cur = std::fs::read(&p)?;
    }
    ensure!(
        std::fs::metadata(&p)?.modified()? > mtime0,
        "the device's writes did not move the file's mtime"
    );
    Ok(())
}

fn write_ext4_falls_back(c: &Ctx) -> TestResult {
    let g = gpu();
    let mut k = Kernel::new(&g, builtin::INVERT, 8)?;
    let before = data(1 << 20, 12);
    let p = write_file(c.fs("ext4")?, "write.bin", &before);
    // Asked for direct only: the module's reason, nothing changed.
    let e = Region::open(&g, &p, 0, 1 << 20, opts("direct", Access::ReadWrite))
        .err()
        .ok_or("direct WRITE on ext4 was allowed")?;
    let u = e.unavailable().ok_or(format!("not a path refusal: {e}"))?;
    ensure!(
        u.code == ReasonCode::Kernel(MapReason::WritePinNotAllowed),
        "reason {}",
        u.code
    );
    // auto: direct refused, host cannot write, heap carries it.
    let r = Region::open(&g, &p, 4096, 500_000, opts("auto", Access::ReadWrite))?;
    ensure!(r.path_kind() == PathKind::Heap, "{}", r.path_kind());
    let codes: Vec<(PathKind, ReasonCode)> =
        r.fallbacks().iter().map(|f| (f.from, f.code)).collect();
    ensure!(
        codes
            == [
                (
                    PathKind::Direct,
                    ReasonCode::Kernel(MapReason::WritePinNotAllowed)
                ),
                (PathKind::Host, ReasonCode::ReadOnlyPath)
            ],
        "fallbacks {codes:?}"
    );
    invert(&mut k, &r)?;
    let rep = r.finish()?;
    ensure!(rep.written_back, "{rep:?}");
    check_inverted(&p, &before, 4096, 500_000)
}

fn write_heap(c: &Ctx) -> TestResult {
    let g = gpu();
    let mut k = Kernel::new(&g, builtin::INVERT, 8)?;
    for fs in ["tmpfs", "xfs"] {
        let before = data(300_000, 13);
        let p = write_file(c.fs(fs)?, "heap-write.bin", &before);
        let r = Region::open(&g, &p, 4096 + 8, 200_000, opts("heap", Access::ReadWrite))?;
        invert(&mut k, &r)?;
        let rep = r.finish()?;
        ensure!(rep.path == PathKind::Heap && rep.written_back, "{rep:?}");
        check_inverted(&p, &before, 4096 + 8, 200_000)?;
    }
    Ok(())
}

fn read_only_refused(c: &Ctx) -> TestResult {
    let g = gpu();
    let mut k = Kernel::new(&g, builtin::INVERT, 8)?;
    let before = data(1 << 20, 14);
    let p = write_file(c.fs("tmpfs")?, "ro.bin", &before);
    let r = Region::open(&g, &p, 0, 1 << 20, opts("direct", Access::Read))?;
    let e = invert(&mut k, &r)
        .err()
        .ok_or("a writing shader ran on a read-only region")?;
    ensure!(matches!(e, Error::ReadOnlyRegion { binding: 0, .. }), "{e}");
    r.finish()?;
    ensure!(std::fs::read(&p)? == before, "the file changed");
    Ok(())
}

/// What the module does when the runtime's check is bypassed: the GPU's
/// store into the read-only mapping faults (lavapipe: SIGSEGV in the
/// child) and the file keeps its bytes.
fn read_only_store_faults(c: &Ctx) -> TestResult {
    let before = data(1 << 20, 15);
    let p = write_file(c.fs("tmpfs")?, "ro-store.bin", &before);
    let out = Command::new(std::env::current_exe()?)
        .args(["--child-store-read-only"])
        .arg(&p)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains("child: region direct read-only"),
        "the child did not get a direct read-only region: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success(),
        "the store through a read-only mapping completed: {stdout}"
    );
    ensure!(
        out.status.signal() == Some(nix::libc::SIGSEGV) || out.status.code() == Some(3),
        "the child ended with {:?}, not SIGSEGV or a device error: {stdout}",
        out.status
    );
    ensure!(std::fs::read(&p)? == before, "the file changed");
    println!(
        "     the child's store through the read-only mapping ended it with {:?}",
        out.status
    );
    Ok(())
}

/// The child of `region/read-only-store-faults`.
pub fn child_store_read_only(path: &Path) -> i32 {
    let g = Gpu::open_default().expect("lavapipe");
    let r = Region::open(&g, path, 0, 1 << 20, opts("direct", Access::Read)).expect("region");
    println!(
        "child: region {} {}",
        r.path_kind(),
        if r.writable() {
            "writable"
        } else {
            "read-only"
        }
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut k = Kernel::new(&g, builtin::INVERT, 8).expect("kernel");
    let push = [0u32.to_ne_bytes(), (1u32 << 18).to_ne_bytes()].concat();
    // SAFETY: this child exists to show the fault.
    match unsafe { k.run_unchecked_access(&[(&r).into()], &push, [1 << 12, 1, 1]) } {
        Ok(()) => {
            println!("child: the store completed");
            0
        }
        Err(e) => {
            println!("child: device error: {e}");
            3
        }
    }
}

/// samples/safetensors-reduce on a generated model, every tensor read in
/// place (several pieces each for the large ones) and checked on the CPU.
fn safetensors_direct(c: &Ctx) -> TestResult {
    let bin = sibling("safetensors-reduce");
    for fs in ["ext4", "xfs", "btrfs", "tmpfs"] {
        let f = c.fs(fs)?.join("model.safetensors");
        let o = Command::new(&bin).arg("--generate").arg(&f).output()?;
        ensure!(o.status.success(), "{fs}: generate: {o:?}");
        let r = json_of(
            fs,
            Command::new(&bin)
                .args(["--path", "direct", "--piece", "1048576", "--json"])
                .arg(&f),
        )?;
        let t = r["tensors"].as_array().ok_or("no tensors")?;
        ensure!(t.len() == 8, "{fs}: {} tensors", t.len());
        for x in t {
            ensure!(
                x["exact"] == true && x["path"] == "direct",
                "{fs}: {}: {x}",
                x["name"]
            );
        }
        let pieces = t
            .iter()
            .find(|x| x["name"] == "layers.0.mlp.up.weight")
            .map(|x| x["pieces"].clone());
        ensure!(pieces == Some(3.into()), "{fs}: pieces {pieces:?}");
        ensure!(
            r["cpu_copied_bytes"] == 0,
            "{fs}: {}",
            r["cpu_copied_bytes"]
        );
        let paths = r["paths"].as_object().ok_or("no paths")?;
        ensure!(paths.keys().eq(["direct"]), "{fs}: paths {paths:?}");
    }
    Ok(())
}

/// Runs a sample that must succeed on `fs` and returns its JSON.
fn json_of(fs: &str, cmd: &mut Command) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let o = cmd.output()?;
    ensure!(
        o.status.success(),
        "{fs}: exit {:?}: {}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(serde_json::from_slice(&o.stdout)?)
}

/// samples/vk-load, an application with its own Vulkan device, loads a
/// generated model into its own buffers through the read queue on
/// `direct`: every tensor's sum from its own shader equals the CPU's, and
/// the CPU copied nothing.
fn vk_load_direct(c: &Ctx) -> TestResult {
    let bin = sibling("vk-load");
    for fs in ["ext4", "xfs", "tmpfs"] {
        let f = c.fs(fs)?.join("vk-model.safetensors");
        let o = Command::new(&bin)
            .args(["--generate"])
            .arg(&f)
            .args(["--mib", "6"])
            .output()?;
        ensure!(o.status.success(), "{fs}: generate: {o:?}");
        let r = json_of(
            fs,
            Command::new(&bin)
                .args(["--path", "direct", "--json"])
                .arg(&f),
        )?;
        let t = r["tensors"].as_array().ok_or("no tensors")?;
        ensure!(t.len() == 24, "{fs}: {} tensors", t.len());
        for x in t {
            ensure!(
                x["gpu_sum64"] == x["cpu_sum64"] && (x["bytes"] == 0 || x["path"] == "direct"),
                "{fs}: {}: {x}",
                x["name"]
            );
        }
        ensure!(
            r["verified"] == true && r["cpu_copied_bytes"] == 0,
            "{fs}: verified {} cpu_copied_bytes {}",
            r["verified"],
            r["cpu_copied_bytes"]
        );
        std::fs::remove_file(&f)?;
    }
    Ok(())
}

/// samples/c-load, the C application, built by run.sh against the C ABI
/// installed into a prefix (`make install`, then `cc $(pkg-config ...)`):
/// on `direct` it loads odd-sized ranges of files on ext4 and tmpfs into
/// its own buffer with no CPU copy, and its sum64 is the one computed here
/// from the file's bytes.
fn c_load_direct(c: &Ctx) -> TestResult {
    let bin = std::env::var_os("DMAFILE_C_LOAD")
        .ok_or("DMAFILE_C_LOAD is not set (tests/guest/run.sh installs c-load)")?;
    let bytes: Vec<u8> = (0..(3u64 << 20) + 5)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let sum64 = |b: &[u8]| {
        b.chunks(4).fold(0u64, |s, w| {
            let mut x = [0u8; 4];
            x[..w.len()].copy_from_slice(w);
            s.wrapping_add(u32::from_le_bytes(x) as u64)
        })
    };
    for fs in ["ext4", "tmpfs"] {
        let f = write_file(c.fs(fs)?, "c-load.bin", &bytes);
        for (off, len) in [(0u64, bytes.len() as u64), (4099, 1_000_001), (8192, 1)] {
            let o = Command::new(&bin)
                .arg(&f)
                .args(["--offset", &off.to_string(), "--length", &len.to_string()])
                .args(["--path", "direct"])
                .output()?;
            let out = String::from_utf8_lossy(&o.stdout);
            ensure!(
                o.status.success(),
                "{fs} {off}+{len}: {:?}: {out} {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            let want = sum64(&bytes[off as usize..(off + len) as usize]);
            let line = format!("sum64={want} path=direct cpu_copied=0");
            ensure!(
                out.trim() == line,
                "{fs} {off}+{len}: c-load printed {out:?}, want {line:?}"
            );
        }
        std::fs::remove_file(&f)?;
    }
    Ok(())
}
