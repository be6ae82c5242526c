//! Scan-out of raw video frames straight from a file: each frame's range
//! is mapped by dmafile.ko into a dma-buf and imported by a KMS display
//! (PRIME), so the display reads the file's pages; where the module
//! refuses, the frame is copied into a dumb buffer, and the report says
//! so and why (docs/scanout.md).
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::display::{Capture, Display, DisplayError, Format, Framebuffer, Gem, Layout};
use crate::kmod::{DmaBuf, Module};
use crate::path::{ReasonCode, Unavailable};
use crate::probe::open_module;
use crate::{Error, PathKind, Result, PAGE_SIZE};

/// How frames reach the display.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScanoutPath {
    /// The frame's range of the file, mapped by dmafile.ko and imported by
    /// PRIME: the display reads the file's pages. No CPU copy.
    Direct,
    /// The frame read (`pread`) into a dumb buffer of the display's.
    Dumb,
}

impl ScanoutPath {
    pub fn name(self) -> &'static str {
        match self {
            ScanoutPath::Direct => "direct",
            ScanoutPath::Dumb => "dumb",
        }
    }
}

/// What to show. `path` None tries direct, then dumb.
#[derive(Clone, Debug)]
pub struct ScanoutConfig {
    pub format: Format,
    pub width: u32,
    pub height: u32,
    /// Bytes per row in the file (default: width × bytes per pixel).
    pub stride: Option<u32>,
    /// Frames per second to pace to (default: as fast as the display
    /// takes them, one per commit).
    pub fps: Option<f64>,
    /// How many frames (default: every whole frame in the file).
    pub frames: Option<u64>,
    pub path: Option<ScanoutPath>,
    /// Capture every frame with the writeback connector and compare it
    /// with the file's bytes.
    pub verify: bool,
    /// The DRM device (default: the first KMS device; when verifying, the
    /// first with a writeback connector).
    pub device: Option<PathBuf>,
}

/// One frame whose capture differs from the file.
#[derive(Clone, Debug, Serialize)]
pub struct Mismatch {
    pub frame: u64,
    pub x: u32,
    pub y: u32,
    /// The shown bytes of the pixel in the file, and in the capture.
    pub file: Vec<u8>,
    pub captured: Vec<u8>,
    pub pixels_differing: u64,
}

/// A frame (or every frame) that did not go the direct way, and why.
#[derive(Clone, Debug, Serialize)]
pub struct ScanoutFallback {
    pub from: ScanoutPath,
    pub to: ScanoutPath,
    pub code: ReasonCode,
    pub reason: String,
    /// How many frames this happened to.
    pub frames: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScanoutReport {
    pub file: PathBuf,
    pub device: PathBuf,
    pub driver: String,
    pub format: &'static str,
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub frame_bytes: u64,
    pub frames_shown: u64,
    /// Bytes at the end of the file that are less than a frame (not shown).
    pub partial_tail_bytes: u64,
    /// Frames per path.
    pub paths: BTreeMap<ScanoutPath, u64>,
    pub fallbacks: Vec<ScanoutFallback>,
    /// Bytes the CPU copied into dumb buffers (0 when every frame is direct).
    pub cpu_copied_bytes: u64,
    pub seconds: f64,
    /// With `verify`: whether every capture equals its frame.
    pub verified: Option<bool>,
    pub mismatches: Vec<Mismatch>,
}

fn display_err(e: DisplayError) -> Error {
    Error::Display(e)
}

/// What one frame is shown from; dropped after the next frame is up.
struct Shown<'d> {
    fb: Framebuffer<'d>,
    _gem: Gem<'d>,
    _dmabuf: Option<DmaBuf>,
}

/// Shows frames of `file` per `cfg`; `on_frame(i, path)` after each.
pub fn scanout(
    file_path: &Path,
    cfg: &ScanoutConfig,
    on_frame: &mut dyn FnMut(u64, ScanoutPath),
) -> Result<ScanoutReport> {
    let bad = |reason: String| Error::BadInput {
        path: file_path.to_path_buf(),
        reason,
    };
    let bpp = cfg.format.bytes_per_pixel();
    let row = cfg.width as u64 * bpp as u64;
    let stride = cfg.stride.unwrap_or((row.min(u32::MAX as u64)) as u32);
    let probe = Layout {
        format: cfg.format,
        width: cfg.width,
        height: cfg.height,
        pitch: stride,
        offset: 0,
    };
    probe.check().map_err(display_err)?;
    if cfg.verify && cfg.format != Format::Xrgb8888 {
        return Err(Error::Config {
            setting: "verify",
            msg: format!(
                "captures are compared exactly only for XRGB8888 frames ({} is converted and blended by the display)",
                cfg.format.name()
            ),
        });
    }
    if let Some(f) = cfg.fps {
        if !(f > 0.0 && f.is_finite()) {
            return Err(Error::Config {
                setting: "fps",
                msg: format!("{f} is not a positive number of frames per second"),
            });
        }
    }
    let file = File::open(file_path).map_err(|e| Error::io(file_path, "open", e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(file_path, "stat", e))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let frame_bytes = stride as u64 * cfg.height as u64;
    let whole = meta.len() / frame_bytes;
    let tail = meta.len() % frame_bytes;
    if whole == 0 {
        return Err(bad(format!(
            "{} bytes is less than one {}x{} {} frame of {frame_bytes} bytes (stride {stride})",
            meta.len(),
            cfg.width,
            cfg.height,
            cfg.format.name()
        )));
    }
    let frames = cfg.frames.unwrap_or(whole);
    if frames > whole {
        return Err(Error::Config {
            setting: "frames",
            msg: format!(
                "{frames} frames asked for, but the file holds {whole} whole {frame_bytes}-byte frames{}",
                if tail > 0 {
                    format!(" and a partial one of {tail} bytes")
                } else {
                    String::new()
                }
            ),
        });
    }

    let display = Display::open(cfg.device.as_deref(), cfg.verify).map_err(display_err)?;
    display
        .check_size(cfg.width, cfg.height)
        .map_err(display_err)?;
    let mut report = ScanoutReport {
        file: file_path.to_path_buf(),
        device: display.path().to_path_buf(),
        driver: display.driver().to_string(),
        format: cfg.format.name(),
        width: cfg.width,
        height: cfg.height,
        stride,
        frame_bytes,
        frames_shown: 0,
        partial_tail_bytes: tail,
        paths: BTreeMap::new(),
        fallbacks: Vec::new(),
        cpu_copied_bytes: 0,
        seconds: 0.0,
        verified: None,
        mismatches: Vec::new(),
    };
    let module = match cfg.path {
        Some(ScanoutPath::Dumb) => None,
        _ => match open_module() {
            Ok(m) => Some(m),
            Err(u) if cfg.path == Some(ScanoutPath::Direct) => {
                return Err(Error::PathUnavailable(u))
            }
            Err(u) => {
                note_fallback(&mut report.fallbacks, u.code, u.reason, frames);
                None
            }
        },
    };
    show_frames(
        &display,
        &file,
        file_path,
        cfg,
        module.as_ref(),
        frames,
        &mut report,
        on_frame,
    )?;
    Ok(report)
}

fn note_fallback(list: &mut Vec<ScanoutFallback>, code: ReasonCode, reason: String, frames: u64) {
    match list
        .iter_mut()
        .find(|f| f.code == code && f.reason == reason)
    {
        Some(f) => f.frames += frames,
        None => list.push(ScanoutFallback {
            from: ScanoutPath::Direct,
            to: ScanoutPath::Dumb,
            code,
            reason,
            frames,
        }),
    }
}

/// Why a frame could not go direct: the fallback's code and reason, and
/// the error to give where `--path direct` was asked for.
struct Refusal {
    code: ReasonCode,
    reason: String,
    error: Error,
}

impl Refusal {
    fn display(e: DisplayError) -> Refusal {
        Refusal {
            code: ReasonCode::ImportFailed,
            reason: e.to_string(),
            error: Error::Display(e),
        }
    }

    /// `detail`: what the error says beyond the fallback's reason.
    fn path(code: ReasonCode, reason: String, detail: Option<String>) -> Refusal {
        let why = detail.unwrap_or_else(|| reason.clone());
        Refusal {
            code,
            reason,
            error: Error::PathUnavailable(Unavailable::new(PathKind::Direct, code, why)),
        }
    }
}

/// The file's frames: where they are and how they are laid out.
struct Source<'a> {
    file: &'a File,
    path: &'a Path,
    cfg: &'a ScanoutConfig,
    stride: u32,
}

impl Source<'_> {
    /// Frame `i`, `off` bytes into the file, through a dmafile dma-buf of
    /// the pages holding it, imported by PRIME; the frame starts `skew`
    /// bytes into the buffer.
    fn direct<'d>(
        &self,
        display: &'d Display,
        m: &Module,
        (i, off): (u64, u64),
        offsets_ok: bool,
    ) -> std::result::Result<Shown<'d>, Refusal> {
        let page = off / PAGE_SIZE * PAGE_SIZE;
        let skew = (off - page) as u32;
        if skew != 0 && !offsets_ok {
            let reason = display.offsets_wrong();
            let detail = format!("frame {i} starts {skew} bytes into a page: {reason}");
            return Err(Refusal::path(ReasonCode::DeviceLimit, reason, Some(detail)));
        }
        let layout = Layout {
            format: self.cfg.format,
            width: self.cfg.width,
            height: self.cfg.height,
            pitch: self.stride,
            offset: skew,
        };
        let b = m
            .map(self.file.as_fd(), page, skew as u64 + layout.span(), 0)
            .map_err(|e| {
                let reason = format!("{}: {e}", self.path.display());
                Refusal::path(ReasonCode::Kernel(e.reason), reason, None)
            })?;
        let gem = display.import(b.as_fd()).map_err(Refusal::display)?;
        let fb = display
            .framebuffer(&gem, layout)
            .map_err(Refusal::display)?;
        Ok(Shown {
            fb,
            _gem: gem,
            _dmabuf: Some(b),
        })
    }

    /// The frame `off` bytes into the file, read into a dumb buffer.
    fn dumb<'d>(&self, display: &'d Display, off: u64) -> Result<Shown<'d>> {
        let (cfg, stride) = (self.cfg, self.stride as u64);
        let row = cfg.width as usize * cfg.format.bytes_per_pixel() as usize;
        let (mut gem, pitch) = display
            .dumb(cfg.format, cfg.width, cfg.height)
            .map_err(display_err)?;
        display
            .with_dumb_mapping(&mut gem, |m| -> std::io::Result<()> {
                for y in 0..cfg.height as usize {
                    let at = y * pitch as usize;
                    self.file
                        .read_exact_at(&mut m[at..at + row], off + y as u64 * stride)?;
                }
                Ok(())
            })
            .map_err(display_err)?
            .map_err(|e| Error::io(self.path, "read a frame", e))?;
        let layout = Layout {
            format: cfg.format,
            width: cfg.width,
            height: cfg.height,
            pitch,
            offset: 0,
        };
        let fb = display.framebuffer(&gem, layout).map_err(display_err)?;
        Ok(Shown {
            fb,
            _gem: gem,
            _dmabuf: None,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn show_frames(
    display: &Display,
    file: &File,
    file_path: &Path,
    cfg: &ScanoutConfig,
    module: Option<&Module>,
    frames: u64,
    report: &mut ScanoutReport,
    on_frame: &mut dyn FnMut(u64, ScanoutPath),
) -> Result<()> {
    let (w, h, stride) = (cfg.width, cfg.height, report.stride);
    let frame_bytes = report.frame_bytes;
    let timeout = Duration::from_secs(10);
    let mut capture: Option<Capture<'_>> = if cfg.verify {
        Some(display.capture_buffer(w, h).map_err(display_err)?)
    } else {
        None
    };
    // Frames that do not start on a page are shown from an offset into
    // their dma-buf; probe once, before the first frame, that the display
    // shows such framebuffers right (vkms 6.12 does not).
    let some_skewed = frames > 1 && frame_bytes % PAGE_SIZE != 0;
    let offsets_ok = match module {
        Some(_) if some_skewed => display.offsets_shown_right().map_err(display_err)?,
        _ => true,
    };
    let src = Source {
        file,
        path: file_path,
        cfg,
        stride,
    };
    let mut prev: Option<Shown<'_>> = None;
    let start = Instant::now();
    for i in 0..frames {
        let off = i * frame_bytes;
        let direct = module.map(|m| src.direct(display, m, (i, off), offsets_ok));
        let (shown, path) = match direct {
            Some(Ok(shown)) => (shown, ScanoutPath::Direct),
            Some(Err(r)) if cfg.path == Some(ScanoutPath::Direct) => return Err(r.error),
            Some(Err(r)) => {
                note_fallback(&mut report.fallbacks, r.code, r.reason, 1);
                (src.dumb(display, off)?, ScanoutPath::Dumb)
            }
            None => (src.dumb(display, off)?, ScanoutPath::Dumb),
        };
        if path == ScanoutPath::Dumb {
            report.cpu_copied_bytes += w as u64 * cfg.format.bytes_per_pixel() as u64 * h as u64;
        }
        if let Some(fps) = cfg.fps {
            let due = start + Duration::from_secs_f64(i as f64 / fps);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        display
            .present(&shown.fb, capture.as_ref(), timeout)
            .map_err(display_err)?;
        // The new frame is up: the previous one's buffers may go.
        prev = Some(shown);
        *report.paths.entry(path).or_insert(0) += 1;
        report.frames_shown += 1;
        if let Some(cap) = capture.as_mut() {
            let got = display.read_capture(cap).map_err(display_err)?;
            let mut want = vec![0u8; frame_bytes as usize];
            file.read_exact_at(&mut want, off)
                .map_err(|e| Error::io(file_path, "read a frame to compare", e))?;
            if let Some(m) = compare(cfg, stride, i, &want, &got) {
                report.mismatches.push(m);
            }
        }
        on_frame(i, path);
    }
    report.seconds = start.elapsed().as_secs_f64();
    // Off first, so that no plane shows a buffer while it goes.
    display.off().map_err(display_err)?;
    drop(prev);
    if cfg.verify {
        report.verified = Some(report.mismatches.is_empty());
    }
    Ok(())
}

/// The first pixel whose shown bytes differ between the file's frame
/// (`stride` bytes per row) and the capture (XRGB8888, `width * 4`).
fn compare(
    cfg: &ScanoutConfig,
    stride: u32,
    frame: u64,
    want: &[u8],
    got: &[u8],
) -> Option<Mismatch> {
    let shown = cfg.format.shown_bytes();
    let bpp = cfg.format.bytes_per_pixel() as usize;
    let pick =
        |bytes: &[u8], at: usize| -> Vec<u8> { shown.iter().map(|&k| bytes[at + k]).collect() };
    let mut first = None;
    let mut n = 0u64;
    for y in 0..cfg.height as usize {
        for x in 0..cfg.width as usize {
            let a = y * stride as usize + x * bpp;
            let b = (y * cfg.width as usize + x) * 4;
            if shown.iter().any(|&k| want[a + k] != got[b + k]) {
                n += 1;
                first.get_or_insert_with(|| (x as u32, y as u32, pick(want, a), pick(got, b)));
            }
        }
    }
    first.map(|(x, y, file, captured)| Mismatch {
        frame,
        x,
        y,
        file,
        captured,
        pixels_differing: n,
    })
}
