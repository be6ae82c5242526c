//! Scan-out from files on vkms (built out of tree by scripts/build-vkms.sh,
//! loaded with its writeback connector): every presented frame is captured
//! by writeback and compared byte for byte with the file.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use nix::errno::Errno;

use dmafile::compute::builtin;
use dmafile::cpu;
use dmafile::display::{Display, Format, Layout};
use dmafile::{Access, Kernel, PathKind, Region, RegionOptions};
use serde_json::Value;

use crate::ensure;
use crate::util::*;
use crate::TestFn;

pub fn all() -> Vec<(String, TestFn)> {
    let mut t: Vec<(String, TestFn)> = Vec::new();
    for fs in ["tmpfs", "ext4", "xfs", "ext4-dax"] {
        t.push((
            format!("scanout/exact/{fs}"),
            Box::new(move |c: &Ctx| exact(c, fs)),
        ));
    }
    t.push(("scanout/strides".into(), Box::new(strides)));
    t.push(("scanout/many-frames".into(), Box::new(many_frames)));
    t.push(("scanout/partial-frame".into(), Box::new(partial_frame)));
    t.push(("scanout/fallback-dumb".into(), Box::new(fallback_dumb)));
    t.push(("scanout/two-importers".into(), Box::new(two_importers)));
    t.push(("scanout/close-orders".into(), Box::new(close_orders)));
    t.push(("scanout/sample".into(), Box::new(sample)));
    t.push(("scanout/vkms-unload".into(), Box::new(vkms_unload)));
    t.push(("scanout/vkms-offset-bug".into(), Box::new(vkms_offset_bug)));
    t
}

/// `frames` distinct XRGB8888 frames of `w`x`h`, `stride` bytes a row;
/// row padding and the X byte hold bytes the display must not show.
fn frames(w: u32, h: u32, stride: u32, frames: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for f in 0..frames {
        for y in 0..h {
            for x in 0..w {
                v.extend([
                    (x * 7 + f * 31) as u8,
                    (y * 13 + f * 17) as u8,
                    (x ^ y ^ (f * 29)) as u8,
                    0xA5,
                ]);
            }
            v.extend(std::iter::repeat_n(0x5A, (stride - w * 4) as usize));
        }
    }
    v
}

fn scanout(args: &[&str]) -> Result<(Output, Value), Box<dyn std::error::Error>> {
    let o = dmafile(&[&["scanout"], args].concat());
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    Ok((o, v))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every frame, direct, captured equal; page-aligned and unaligned frames.
fn exact(c: &Ctx, fs: &str) -> TestResult {
    for (w, h, stride, name) in [(64, 48, 256, "a"), (50, 30, 200, "b")] {
        let bytes = frames(w, h, stride, 5);
        let p = write_file(c.fs(fs)?, &format!("frames-{name}.raw"), &bytes);
        let size = format!("{w}x{h}");
        let (o, v) = scanout(&[
            p.to_str().unwrap(),
            "--size",
            &size,
            "--stride",
            &stride.to_string(),
            "--path",
            "direct",
            "--verify",
            "--json",
        ])?;
        ensure!(
            o.status.success(),
            "{fs} {size}: exit {:?}: {}{}",
            o.status.code(),
            stderr(&o),
            v
        );
        ensure!(v["driver"] == "vkms", "{fs}: driver {}", v["driver"]);
        ensure!(v["verified"] == true, "{fs} {size}: {v}");
        ensure!(
            v["frames_shown"] == 5 && v["paths"]["direct"] == 5,
            "{fs} {size}: {v}"
        );
        ensure!(v["cpu_copied_bytes"] == 0, "{fs} {size}: {v}");
    }
    Ok(())
}

/// A long run of captured frames, each a writeback job right after the
/// previous one's: the race of scripts/vkms-writeback-race.patch (a late
/// cleanup switching the composer off under the next job) stops a run like
/// this with a capture that never completes. Paced at 240 fps.
fn many_frames(c: &Ctx) -> TestResult {
    let (w, h, n) = (32, 24, 150);
    let bytes = frames(w, h, w * 4, n);
    let p = write_file(c.fs("ext4")?, "many.raw", &bytes);
    let (o, v) = scanout(&[
        p.to_str().unwrap(),
        "--size",
        "32x24",
        "--fps",
        "240",
        "--verify",
        "--json",
    ])?;
    ensure!(
        o.status.success() && v["verified"] == true && v["paths"]["direct"] == n,
        "exit {:?}: {}{v}",
        o.status.code(),
        stderr(&o)
    );
    Ok(())
}

/// A stride that is not a multiple of the pixel size, and one too small.
fn strides(c: &Ctx) -> TestResult {
    let (w, h) = (50, 30);
    let odd = w * 4 + 3;
    let bytes = frames(w, h, odd, 3);
    let p = write_file(c.fs("tmpfs")?, "odd-stride.raw", &bytes);
    let (o, v) = scanout(&[
        p.to_str().unwrap(),
        "--size",
        "50x30",
        "--stride",
        &odd.to_string(),
        "--verify",
        "--json",
    ])?;
    ensure!(
        o.status.success() && v["verified"] == true && v["paths"]["direct"] == 3,
        "odd stride {odd}: exit {:?}: {}{v}",
        o.status.code(),
        stderr(&o)
    );
    let (o, _) = scanout(&[p.to_str().unwrap(), "--size", "50x30", "--stride", "199"])?;
    ensure!(
        o.status.code() == Some(2) && stderr(&o).contains("stride 199 is less than a row"),
        "stride 199: exit {:?}: {}",
        o.status.code(),
        stderr(&o)
    );
    Ok(())
}

/// A final partial frame is not shown, and said so; asking for it, or a
/// file smaller than one frame, is refused with the sizes.
fn partial_frame(c: &Ctx) -> TestResult {
    let mut bytes = frames(64, 48, 256, 3);
    bytes.extend(std::iter::repeat_n(7u8, 1000));
    let p = write_file(c.fs("tmpfs")?, "partial.raw", &bytes);
    let path = p.to_str().unwrap();
    let (o, v) = scanout(&[path, "--size", "64x48", "--verify", "--json"])?;
    ensure!(
        o.status.success()
            && v["frames_shown"] == 3
            && v["partial_tail_bytes"] == 1000
            && v["verified"] == true,
        "exit {:?}: {}{v}",
        o.status.code(),
        stderr(&o)
    );
    let (o, _) = scanout(&[path, "--size", "64x48"])?;
    let human = String::from_utf8_lossy(&o.stdout);
    ensure!(
        human.contains("not shown:    the last 1000 bytes, less than a 12288-byte frame"),
        "{human}"
    );
    let (o, _) = scanout(&[path, "--size", "64x48", "--frames", "4"])?;
    ensure!(
        o.status.code() == Some(2)
            && stderr(&o)
                .contains("holds 3 whole 12288-byte frames and a partial one of 1000 bytes"),
        "--frames 4: {:?} {}",
        o.status.code(),
        stderr(&o)
    );
    let small = write_file(c.fs("tmpfs")?, "small.raw", &[1u8; 100]);
    let (o, _) = scanout(&[small.to_str().unwrap(), "--size", "64x48"])?;
    ensure!(
        o.status.code() == Some(2) && stderr(&o).contains("100 bytes is less than one 64x48"),
        "small: {}",
        stderr(&o)
    );
    Ok(())
}

/// Where the module refuses (ramfs), frames go through dumb buffers and
/// the report says why; `--path direct` is an error with that reason.
fn fallback_dumb(c: &Ctx) -> TestResult {
    let bytes = frames(64, 48, 256, 3);
    let p = write_file(c.fs("ramfs")?, "frames.raw", &bytes);
    let path = p.to_str().unwrap();
    let (o, v) = scanout(&[path, "--size", "64x48", "--verify", "--json"])?;
    ensure!(o.status.success(), "{}{v}", stderr(&o));
    ensure!(
        v["paths"]["dumb"] == 3 && v["paths"]["direct"].is_null() && v["verified"] == true,
        "{v}"
    );
    ensure!(v["cpu_copied_bytes"] == 3 * 64 * 48 * 4, "{v}");
    let f = &v["fallbacks"][0];
    ensure!(
        f["code"] == "fs-not-supported" && f["to"] == "dumb" && f["frames"] == 3,
        "{v}"
    );
    let (o, _) = scanout(&[path, "--size", "64x48", "--path", "direct"])?;
    ensure!(
        o.status.code() == Some(2) && stderr(&o).contains("fs-not-supported"),
        "--path direct on ramfs: {:?} {}",
        o.status.code(),
        stderr(&o)
    );
    Ok(())
}

/// One mapping, two importers: a direct region of a frame is read by a
/// shader (Vulkan import) and shown by vkms (PRIME import) at once.
fn two_importers(c: &Ctx) -> TestResult {
    let (w, h, stride) = (64u32, 48u32, 264u32);
    let bytes = frames(w, h, stride, 3);
    let p = write_file(c.fs("tmpfs")?, "two.raw", &bytes);
    let g = crate::region_tests::gpu();
    let mut k = Kernel::new(&g, builtin::SUM64, 4)?;
    let frame = (stride * h) as u64;
    let off = frame; // frame 1: 12672 bytes in, 384 past a page
    let r = Region::open(
        &g,
        &p,
        off,
        frame,
        RegionOptions {
            path: "direct".parse().unwrap(),
            access: Access::Read,
        },
    )?;
    ensure!(r.path_kind() == PathKind::Direct, "{}", r.path_kind());
    let fd = r.dmabuf().ok_or("a direct region without a dma-buf")?;
    let d = Display::open(None, true)?;
    let gem = d.import(fd)?;
    let fb = d.framebuffer(
        &gem,
        Layout {
            format: Format::Xrgb8888,
            width: w,
            height: h,
            pitch: stride,
            offset: r.skew() as u32,
        },
    )?;
    let mut cap = d.capture_buffer(w, h)?;
    d.present(&fb, Some(&cap), std::time::Duration::from_secs(10))?;
    // The shader reads the same pages while vkms shows them.
    let sum = crate::region_tests::sum64(&g, &mut k, &r)?;
    let start = (off - r.skew()) as usize;
    let want = cpu::sum64(&bytes[start..(off + frame) as usize]);
    ensure!(sum == want, "shader: GPU {sum}, CPU {want}");
    let got = d.read_capture(&mut cap)?;
    for y in 0..h as usize {
        for x in 0..w as usize {
            let a = off as usize + y * stride as usize + x * 4;
            let b = (y * w as usize + x) * 4;
            ensure!(
                got[b..b + 3] == bytes[a..a + 3],
                "capture pixel ({x}, {y}): {:02x?}, file {:02x?}",
                &got[b..b + 3],
                &bytes[a..a + 3]
            );
        }
    }
    d.off()?;
    drop((fb, gem, cap));
    let rep = r.finish()?;
    ensure!(rep.cpu_copied_bytes == 0, "{rep:?}");
    Ok(())
}

/// samples/scanout-play: `make` a test video on xfs, `play` it twice with
/// `--verify`; every frame direct and every capture equal to the file.
fn sample(c: &Ctx) -> TestResult {
    let bin = sibling("scanout-play");
    let p = c.fs("xfs")?.join("sample.raw");
    let o = Command::new(&bin)
        .args([
            "make",
            p.to_str().unwrap(),
            "--size",
            "80x60",
            "--frames",
            "12",
        ])
        .output()?;
    ensure!(o.status.success(), "make: {}", stderr(&o));
    let len = std::fs::metadata(&p)?.len();
    ensure!(len == 12 * 80 * 60 * 4, "the test video has {len} bytes");
    let o = Command::new(&bin)
        .args([
            "play",
            p.to_str().unwrap(),
            "--size",
            "80x60",
            "--fps",
            "60",
        ])
        .args(["--loops", "2", "--verify"])
        .output()?;
    let out = String::from_utf8_lossy(&o.stdout);
    ensure!(
        o.status.success()
            && out.matches("12 frames of 80x60 XRGB8888").count() == 2
            && out.matches(": direct 12; CPU copied 0 bytes").count() == 2
            && out
                .matches("verified: every capture equals its frame")
                .count()
                == 2,
        "play: exit {:?}: {out}{}",
        o.status.code(),
        stderr(&o)
    );
    Ok(())
}

fn nothing_pinned(c: &Ctx, what: &str) -> TestResult {
    let q = c.module().query()?;
    ensure!(
        q.pinned_bytes == 0 && q.nr_buffers == 0,
        "{what}: {} bytes pinned, {} dma-bufs live",
        q.pinned_bytes,
        q.nr_buffers
    );
    Ok(())
}

/// Closing the file, the dma-buf and the DRM fd in every order leaves
/// nothing pinned (and the kernel log clean, checked after the run).
fn close_orders(c: &Ctx) -> TestResult {
    let bytes = frames(64, 48, 256, 1);
    let p = write_file(c.fs("tmpfs")?, "close.raw", &bytes);
    let orders: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        nothing_pinned(c, "before")?;
        let f = open_ro(&p);
        let b = c.module().map(f.as_fd(), 0, bytes.len() as u64, 0)?;
        let d = Display::open(None, true)?;
        let gem = d.import(b.as_fd())?;
        let fb = d.framebuffer(
            &gem,
            Layout {
                format: Format::Xrgb8888,
                width: 64,
                height: 48,
                pitch: 256,
                offset: 0,
            },
        )?;
        let cap = d.capture_buffer(64, 48)?;
        d.present(&fb, Some(&cap), std::time::Duration::from_secs(10))?;
        // Closing the DRM fd (2) with the frame on screen: the kernel
        // removes the framebuffer and the import itself.
        std::mem::forget((fb, gem, cap));
        let (mut f, mut b, mut d) = (Some(f), Some(b), Some(d));
        for i in order {
            match i {
                0 => drop(f.take()),
                1 => drop(b.take()),
                // As a crashing process would: without the off commit
                // of Display's drop.
                _ => d.take().unwrap().close_without_off(),
            }
        }
        nothing_pinned(c, &format!("after closing in order {order:?}"))?;
    }
    Ok(())
}

/// vkms.ko's path (tests/guest/inside.sh loads it from there); `offset_bug`:
/// the build without scripts/vkms-fb-offset.patch.
fn vkms_ko(offset_bug: bool) -> Result<PathBuf, String> {
    let var = if offset_bug {
        "DMAFILE_VKMS_OFFSET_BUG"
    } else {
        "DMAFILE_VKMS"
    };
    std::env::var_os(var)
        .map(PathBuf::from)
        .ok_or_else(|| format!("{var} is not set"))
}

/// Loads vkms (with writeback) and waits for its KMS device.
fn load_vkms(ko: &Path) -> TestResult {
    let f = std::fs::File::open(ko).map_err(|e| format!("{}: {e}", ko.display()))?;
    let params = std::ffi::CString::new("enable_writeback=1").unwrap();
    nix::kmod::finit_module(&f, &params, nix::kmod::ModuleInitFlags::empty())?;
    // devtmpfs makes /dev/dri/card* asynchronously to the load.
    let mut last = String::new();
    for _ in 0..200 {
        match Display::open(None, true) {
            Ok(d) if d.driver() == "vkms" => return Ok(()),
            Ok(d) => last = format!("{} is {}", d.path().display(), d.driver()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("vkms loaded, but no vkms display came up: {last}").into())
}

/// However the test ends, the fixed vkms is loaded after it, so later
/// tests have a display; `replace`: unload whichever vkms is loaded first.
struct ReloadVkms {
    ko: PathBuf,
    replace: bool,
}

impl Drop for ReloadVkms {
    fn drop(&mut self) {
        let loaded = Path::new("/sys/module/vkms").exists();
        if loaded && self.replace {
            if let Err(e) = unload_module("vkms") {
                eprintln!("rmmod vkms (to reload the fixed one): {e}");
                return;
            }
        } else if loaded {
            return;
        }
        if let Err(e) = load_vkms(&self.ko) {
            eprintln!("reloading vkms: {e}");
        }
    }
}

/// Shows the 64x48 (pitch 256) frame in dma-buf `b` on `d` and checks
/// its capture against `bytes`.
fn show_checked(d: &Display, b: BorrowedFd<'_>, bytes: &[u8]) -> TestResult {
    let gem = d.import(b)?;
    let layout = Layout {
        format: Format::Xrgb8888,
        width: 64,
        height: 48,
        pitch: 256,
        offset: 0,
    };
    let fb = d.framebuffer(&gem, layout)?;
    let mut cap = d.capture_buffer(64, 48)?;
    d.present(&fb, Some(&cap), Duration::from_secs(10))?;
    let got = d.read_capture(&mut cap)?;
    for (i, (g, w)) in got.chunks_exact(4).zip(bytes.chunks_exact(4)).enumerate() {
        ensure!(
            g[..3] == w[..3],
            "pixel {i}: captured {g:02x?}, file {w:02x?}"
        );
    }
    // The frame stays on screen: only the handles go, the kernel keeps
    // the framebuffer and the import while the plane shows them.
    std::mem::forget((fb, gem, cap));
    Ok(())
}

/// vkms cannot be unloaded while a process has it open, even with a file
/// frame on screen; once the DRM fd is closed it unloads while the frame's
/// dma-buf lives on, which stays readable and unpins when closed; and a
/// reloaded vkms shows file frames again.
fn vkms_unload(c: &Ctx) -> TestResult {
    let ko = vkms_ko(false)?;
    let _reload = ReloadVkms {
        ko: ko.clone(),
        replace: false,
    };
    let bytes = frames(64, 48, 256, 1);
    let p = write_file(c.fs("tmpfs")?, "unload.raw", &bytes);
    let f = open_ro(&p);
    let b = c.module().map(f.as_fd(), 0, bytes.len() as u64, 0)?;
    let d = Display::open(None, true)?;
    show_checked(&d, b.as_fd(), &bytes)?;
    let r = unload_module("vkms");
    ensure!(
        r == Err(Errno::EWOULDBLOCK),
        "rmmod vkms with a frame on screen and the DRM fd open: {r:?}"
    );
    // A crash-like close: no off commit; the kernel takes the frame down.
    d.close_without_off();
    let mut r = unload_module("vkms");
    for _ in 0..100 {
        if r != Err(Errno::EWOULDBLOCK) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        r = unload_module("vkms");
    }
    ensure!(r.is_ok(), "rmmod vkms after closing the DRM fd: {r:?}");
    let q = c.module().query()?;
    ensure!(
        q.nr_buffers == 1 && q.pinned_bytes == bytes.len() as u64,
        "after vkms went: {} dma-bufs, {} bytes pinned",
        q.nr_buffers,
        q.pinned_bytes
    );
    ensure!(
        dmabuf_bytes(b.as_fd(), b.len())? == expected(&bytes, 0, b.len()),
        "the dma-buf's bytes after vkms went"
    );
    drop(b);
    nothing_pinned(c, "after closing the dma-buf")?;
    load_vkms(&ko)?;
    let b = c.module().map(f.as_fd(), 0, bytes.len() as u64, 0)?;
    let d = Display::open(None, true)?;
    show_checked(&d, b.as_fd(), &bytes)?;
    d.off()?;
    drop((d, b));
    nothing_pinned(c, "after the reloaded vkms's frame")
}

/// The vkms of Linux 6.12 as shipped applies framebuffer offsets twice
/// (loaded here: our build without scripts/vkms-fb-offset.patch).
/// The runtime's probe finds that out (safely, inside a buffer three
/// frames long), and scan-out copies the frames that do not start on a
/// page instead of showing them wrong or faulting past the dma-buf's end;
/// every capture still equals the file.
fn vkms_offset_bug(c: &Ctx) -> TestResult {
    let buggy = vkms_ko(true)?;
    let _reload = ReloadVkms {
        ko: vkms_ko(false)?,
        replace: true,
    };
    unload_module("vkms").map_err(|e| format!("rmmod the fixed vkms: {e}"))?;
    load_vkms(&buggy)?;
    {
        let d = Display::open(None, true)?;
        ensure!(
            !d.offsets_shown_right()?,
            "the probe says a vkms with the offset bug shows offsets right"
        );
    }
    let bytes = frames(50, 30, 200, 5);
    let p = write_file(c.fs("tmpfs")?, "offset-bug.raw", &bytes);
    let path = p.to_str().unwrap();
    let (o, v) = scanout(&[path, "--size", "50x30", "--verify", "--json"])?;
    ensure!(
        o.status.success(),
        "exit {:?}: {}{v}",
        o.status.code(),
        stderr(&o)
    );
    // Frame 0 starts on a page; frames 1-4 start 6000 * i bytes in.
    ensure!(
        v["verified"] == true && v["paths"]["direct"] == 1 && v["paths"]["dumb"] == 4,
        "{v}"
    );
    let f = &v["fallbacks"][0];
    ensure!(
        f["code"] == "device-limit"
            && f["frames"] == 4
            && f["reason"]
                .as_str()
                .is_some_and(|r| r.contains("applies the offset twice")),
        "{v}"
    );
    let (o, _) = scanout(&[path, "--size", "50x30", "--path", "direct"])?;
    ensure!(
        o.status.code() == Some(2)
            && stderr(&o).contains("frame 1 starts 1904 bytes into a page")
            && stderr(&o).contains("device-limit"),
        "--path direct: {:?} {}",
        o.status.code(),
        stderr(&o)
    );
    // Page-aligned frames need no offset: direct on this vkms too.
    let aligned = frames(64, 48, 256, 3);
    let p = write_file(c.fs("tmpfs")?, "offset-bug-aligned.raw", &aligned);
    let (o, v) = scanout(&[p.to_str().unwrap(), "--size", "64x48", "--verify", "--json"])?;
    ensure!(
        o.status.success() && v["verified"] == true && v["paths"]["direct"] == 3,
        "aligned: {}{v}",
        stderr(&o)
    );
    Ok(())
}
