//! KMS displays as dma-buf importers: frames of a file scanned out by a
//! display plane, captured back through a writeback connector.
//!
//! A [`Display`] opens a DRM device with atomic modesetting, picks a CRTC,
//! its primary plane, a connector and (where the driver has one) a
//! writeback connector. [`Display::import`] turns a dma-buf into a GEM
//! handle by PRIME; [`Display::framebuffer`] wraps it in a framebuffer of a
//! given format, size, pitch and offset; [`Display::present`] shows it with
//! one atomic commit and, with a [`Capture`], waits for the writeback
//! connector to copy what the CRTC produced. vkms is the CI's display
//! (docs/scanout.md); a real display works the same way minus the capture.
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::ops::{Bound, RangeBounds};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drm::buffer::{DrmFourcc, DrmModifier, Handle as GemHandle, PlanarBuffer};
use drm::control::{
    self, atomic::AtomicModeReq, connector, crtc, dumbbuffer::DumbBuffer, framebuffer, plane,
    property, AtomicCommitFlags, Device as _, FbCmd2Flags, ResourceHandle,
};
use drm::{ClientCapability, Device as _};

/// What can go wrong with a display; `what` names the step.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    /// No DRM device could be used; the reasons per device tried.
    #[error("no usable KMS display: {0}")]
    NoDisplay(String),
    /// A DRM ioctl failed.
    #[error("{device}: {what}: {source}")]
    Drm {
        device: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The request does not fit the display or the format.
    #[error("{0}")]
    Invalid(String),
    /// The writeback connector did not signal within the timeout.
    /// `hint`: what is known to cause this on the device's driver.
    #[error("{device}: the writeback capture did not complete within {secs} s{hint}")]
    CaptureTimeout {
        device: String,
        secs: u64,
        hint: &'static str,
    },
}

pub type Result<T> = std::result::Result<T, DisplayError>;

/// Pixel formats a frame file may hold (DRM fourcc names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// 32-bit little-endian B, G, R, X bytes; X is not shown.
    Xrgb8888,
    /// 32-bit B, G, R, A; alpha blends the plane over the CRTC's black.
    Argb8888,
    /// 16-bit little-endian 5:6:5.
    Rgb565,
}

impl Format {
    pub fn fourcc(self) -> DrmFourcc {
        match self {
            Format::Xrgb8888 => DrmFourcc::Xrgb8888,
            Format::Argb8888 => DrmFourcc::Argb8888,
            Format::Rgb565 => DrmFourcc::Rgb565,
        }
    }

    pub fn bytes_per_pixel(self) -> u32 {
        match self {
            Format::Xrgb8888 | Format::Argb8888 => 4,
            Format::Rgb565 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Xrgb8888 => "XRGB8888",
            Format::Argb8888 => "ARGB8888",
            Format::Rgb565 => "RGB565",
        }
    }

    /// The bytes of a pixel that a display shows: all but XRGB's X byte.
    pub fn shown_bytes(self) -> &'static [usize] {
        match self {
            Format::Xrgb8888 => &[0, 1, 2],
            Format::Argb8888 => &[0, 1, 2, 3],
            Format::Rgb565 => &[0, 1],
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Format, String> {
        match s.to_ascii_uppercase().as_str() {
            "XRGB8888" => Ok(Format::Xrgb8888),
            "ARGB8888" => Ok(Format::Argb8888),
            "RGB565" => Ok(Format::Rgb565),
            _ => Err(format!(
                "unknown format {s:?} (known: XRGB8888, ARGB8888, RGB565)"
            )),
        }
    }
}

/// A frame's layout in a buffer: `pitch` bytes per row from `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub format: Format,
    pub width: u32,
    pub height: u32,
    pub pitch: u32,
    pub offset: u32,
}

impl Layout {
    /// Bytes a frame of this layout spans from its first byte: every row
    /// but the last at full pitch, the last only its pixels.
    pub fn span(&self) -> u64 {
        (self.height as u64 - 1) * self.pitch as u64
            + self.width as u64 * self.format.bytes_per_pixel() as u64
    }

    /// Checks the layout itself (not a device's limits).
    pub fn check(&self) -> Result<()> {
        let row = self.width as u64 * self.format.bytes_per_pixel() as u64;
        if self.width == 0 || self.height == 0 {
            return Err(DisplayError::Invalid(format!(
                "frame size {}x{} is empty",
                self.width, self.height
            )));
        }
        if (self.pitch as u64) < row {
            return Err(DisplayError::Invalid(format!(
                "stride {} is less than a row of {} {} pixels ({row} bytes)",
                self.pitch,
                self.width,
                self.format.name()
            )));
        }
        Ok(())
    }
}

struct Card {
    file: File,
    path: PathBuf,
}

impl AsFd for Card {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
impl drm::Device for Card {}
impl control::Device for Card {}

/// Property handles of one KMS object, by name.
struct Props(HashMap<String, property::Handle>);

impl Props {
    fn of<H: ResourceHandle>(card: &Card, h: H) -> std::io::Result<Props> {
        let set = card.get_properties(h)?;
        let map = set.as_hashmap(card)?;
        Ok(Props(
            map.into_iter().map(|(k, v)| (k, v.handle())).collect(),
        ))
    }
    fn get(&self, name: &str) -> Option<property::Handle> {
        self.0.get(name).copied()
    }
}

/// `struct drm_mode_modeinfo`, for a mode blob of any size.
#[repr(C)]
#[derive(Clone, Copy)]
struct ModeInfo {
    clock: u32,
    hdisplay: u16,
    hsync_start: u16,
    hsync_end: u16,
    htotal: u16,
    hskew: u16,
    vdisplay: u16,
    vsync_start: u16,
    vsync_end: u16,
    vtotal: u16,
    vscan: u16,
    vrefresh: u32,
    flags: u32,
    type_: u32,
    name: [u8; 32],
}

impl ModeInfo {
    /// A progressive mode of exactly `w`x`h` at about `hz`, with small
    /// blanking intervals (what a virtual or a tolerant display needs).
    fn new(w: u16, h: u16, hz: u32) -> ModeInfo {
        let (htotal, vtotal) = (w.saturating_add(40), h.saturating_add(10));
        let mut name = [0u8; 32];
        let s = format!("{w}x{h}");
        name[..s.len().min(31)].copy_from_slice(&s.as_bytes()[..s.len().min(31)]);
        ModeInfo {
            clock: (htotal as u64 * vtotal as u64 * hz as u64 / 1000).max(1) as u32,
            hdisplay: w,
            hsync_start: w.saturating_add(10),
            hsync_end: w.saturating_add(20),
            htotal,
            hskew: 0,
            vdisplay: h,
            vsync_start: h.saturating_add(3),
            vsync_end: h.saturating_add(6),
            vtotal,
            vscan: 0,
            vrefresh: hz,
            flags: 0,
            type_: 1 << 5, // DRM_MODE_TYPE_USERDEF
            name,
        }
    }
}

/// A GEM handle of an imported dma-buf or a dumb buffer, closed on drop.
pub struct Gem<'d> {
    display: &'d Display,
    handle: GemHandle,
    dumb: Option<DumbBuffer>,
}

impl Gem<'_> {
    pub fn handle(&self) -> GemHandle {
        self.handle
    }
}

impl Drop for Gem<'_> {
    fn drop(&mut self) {
        let r = match self.dumb.take() {
            Some(d) => self.display.card.destroy_dumb_buffer(d),
            None => self.display.card.close_buffer(self.handle),
        };
        if let Err(e) = r {
            log::warn!("closing GEM handle {:?}: {e}", self.handle);
        }
    }
}

/// A framebuffer, removed on drop (the kernel turns off a plane that
/// still shows it).
pub struct Framebuffer<'d> {
    display: &'d Display,
    fb: framebuffer::Handle,
    layout: Layout,
}

impl Framebuffer<'_> {
    pub fn layout(&self) -> Layout {
        self.layout
    }
}

impl Drop for Framebuffer<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.display.card.destroy_framebuffer(self.fb) {
            log::warn!("removing framebuffer {:?}: {e}", self.fb);
        }
    }
}

struct Planar {
    layout: Layout,
    handle: GemHandle,
}

impl PlanarBuffer for Planar {
    fn size(&self) -> (u32, u32) {
        (self.layout.width, self.layout.height)
    }
    fn format(&self) -> DrmFourcc {
        self.layout.format.fourcc()
    }
    fn modifier(&self) -> Option<DrmModifier> {
        None
    }
    fn pitches(&self) -> [u32; 4] {
        [self.layout.pitch, 0, 0, 0]
    }
    fn handles(&self) -> [Option<GemHandle>; 4] {
        [Some(self.handle), None, None, None]
    }
    fn offsets(&self) -> [u32; 4] {
        [self.layout.offset, 0, 0, 0]
    }
}

/// A buffer the writeback connector writes the CRTC's output into.
pub struct Capture<'d> {
    gem: Gem<'d>,
    fb: Framebuffer<'d>,
}

/// One KMS pipe of a DRM device: CRTC, primary plane, connector and the
/// writeback connector where there is one.
pub struct Display {
    card: Card,
    driver: String,
    crtc: crtc::Handle,
    plane: plane::Handle,
    connector: connector::Handle,
    writeback: Option<connector::Handle>,
    crtc_props: Props,
    plane_props: Props,
    conn_props: Props,
    wb_props: Option<Props>,
    formats: Vec<u32>,
    /// The framebuffer sizes the device takes: (min, max) width and height.
    fb_width: (u32, u32),
    fb_height: (u32, u32),
    /// The mode blob of the current size, and that size.
    mode: std::cell::Cell<Option<(u64, (u32, u32))>>,
    /// Whether framebuffer offsets are shown right (probed once, vkms).
    offsets_ok: std::cell::Cell<Option<bool>>,
}

/// A frame size written `WxH` (`640x480`); the error names what was given.
pub fn parse_size(s: &str) -> std::result::Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not WxH (e.g. 640x480)");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    Ok((w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
}

/// A range's first and last value.
fn bounds(r: impl RangeBounds<u32>) -> (u32, u32) {
    let lo = match r.start_bound() {
        Bound::Included(&v) => v,
        Bound::Excluded(&v) => v.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let hi = match r.end_bound() {
        Bound::Included(&v) => v,
        Bound::Excluded(&v) => v.saturating_sub(1),
        Bound::Unbounded => u32::MAX,
    };
    (lo, hi)
}

fn drm_err(card: &Card, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DisplayError {
    let device = card.path.display().to_string();
    let what = what.into();
    move |source| DisplayError::Drm {
        device,
        what,
        source,
    }
}

impl Display {
    /// Opens `path`, or the first `/dev/dri/card*` that can do atomic
    /// modesetting; with `want_writeback`, one that also has a writeback
    /// connector (an error names each device tried and why not).
    pub fn open(path: Option<&Path>, want_writeback: bool) -> Result<Display> {
        let candidates: Vec<PathBuf> = match path {
            Some(p) => vec![p.to_path_buf()],
            None => {
                let mut v: Vec<PathBuf> = std::fs::read_dir("/dev/dri")
                    .map_err(|e| DisplayError::NoDisplay(format!("/dev/dri: {e}")))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("card"))
                    })
                    .collect();
                v.sort();
                v
            }
        };
        let mut why = Vec::new();
        for p in candidates {
            match Display::open_one(&p) {
                Ok(d) if !want_writeback || d.writeback.is_some() => return Ok(d),
                Ok(_) => why.push(format!("{}: no writeback connector", p.display())),
                Err(e) => why.push(e.to_string()),
            }
        }
        if why.is_empty() {
            why.push("no /dev/dri/card* device".into());
        }
        Err(DisplayError::NoDisplay(why.join("; ")))
    }

    fn open_one(path: &Path) -> Result<Display> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| DisplayError::Drm {
                device: path.display().to_string(),
                what: "open".into(),
                source,
            })?;
        let card = Card {
            file,
            path: path.to_path_buf(),
        };
        let driver = card
            .get_driver()
            .map(|d| d.name().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "?".into());
        card.set_client_capability(ClientCapability::UniversalPlanes, true)
            .map_err(drm_err(&card, "universal planes"))?;
        card.set_client_capability(ClientCapability::Atomic, true)
            .map_err(drm_err(
                &card,
                "atomic modesetting (not a KMS driver, or no atomic support)",
            ))?;
        // Only drivers with writeback connectors accept this cap.
        let _ = card.set_client_capability(ClientCapability::WritebackConnectors, true);
        let res = card
            .resource_handles()
            .map_err(drm_err(&card, "resources"))?;
        let fb_width = bounds(res.supported_fb_width());
        let fb_height = bounds(res.supported_fb_height());
        let crtc = *res
            .crtcs()
            .first()
            .ok_or_else(|| DisplayError::Invalid(format!("{}: no CRTC", path.display())))?;
        let mut connector = None;
        let mut writeback = None;
        for &c in res.connectors() {
            let info = card
                .get_connector(c, false)
                .map_err(drm_err(&card, "connector"))?;
            if info.interface() == connector::Interface::Writeback {
                writeback.get_or_insert(c);
            } else if connector.is_none() && info.state() != connector::State::Disconnected {
                connector = Some(c);
            }
        }
        let connector = connector.ok_or_else(|| {
            DisplayError::Invalid(format!("{}: no connected connector", path.display()))
        })?;
        let mut primary = None;
        for p in card.plane_handles().map_err(drm_err(&card, "planes"))? {
            let info = card.get_plane(p).map_err(drm_err(&card, "plane"))?;
            if !res.filter_crtcs(info.possible_crtcs()).contains(&crtc) {
                continue;
            }
            let props = card
                .get_properties(p)
                .map_err(drm_err(&card, "plane properties"))?;
            let map = props
                .as_hashmap(&card)
                .map_err(drm_err(&card, "plane properties"))?;
            let is_primary = map.get("type").is_some_and(|t| {
                props
                    .iter()
                    .find(|(h, _)| **h == t.handle())
                    .is_some_and(|(_, v)| *v == 1) // DRM_PLANE_TYPE_PRIMARY
            });
            if is_primary {
                primary = Some((p, info.formats().to_vec()));
                break;
            }
        }
        let (plane, formats) = primary.ok_or_else(|| {
            DisplayError::Invalid(format!("{}: no primary plane for the CRTC", path.display()))
        })?;
        let crtc_props = Props::of(&card, crtc).map_err(drm_err(&card, "CRTC properties"))?;
        let plane_props = Props::of(&card, plane).map_err(drm_err(&card, "plane properties"))?;
        let conn_props =
            Props::of(&card, connector).map_err(drm_err(&card, "connector properties"))?;
        let wb_props = match writeback {
            Some(w) => Some(Props::of(&card, w).map_err(drm_err(&card, "writeback properties"))?),
            None => None,
        };
        Ok(Display {
            card,
            driver,
            crtc,
            plane,
            connector,
            writeback,
            crtc_props,
            plane_props,
            conn_props,
            wb_props,
            formats,
            fb_width,
            fb_height,
            mode: std::cell::Cell::new(None),
            offsets_ok: std::cell::Cell::new(None),
        })
    }

    /// The device node.
    pub fn path(&self) -> &Path {
        &self.card.path
    }

    /// The DRM driver's name (`vkms`, `amdgpu`, `i915`, ...).
    pub fn driver(&self) -> &str {
        &self.driver
    }

    pub fn has_writeback(&self) -> bool {
        self.writeback.is_some()
    }

    fn err(&self, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DisplayError {
        drm_err(&self.card, what)
    }

    /// Imports a dma-buf by PRIME. The GEM object holds its own reference
    /// to the dma-buf until the handle is closed (on drop).
    pub fn import(&self, dmabuf: BorrowedFd<'_>) -> Result<Gem<'_>> {
        let handle = self
            .card
            .prime_fd_to_buffer(dmabuf)
            .map_err(self.err("PRIME import of the dma-buf"))?;
        Ok(Gem {
            display: self,
            handle,
            dumb: None,
        })
    }

    /// A dumb buffer of `w`x`h` pixels of `format`, and its pitch.
    pub fn dumb(&self, format: Format, w: u32, h: u32) -> Result<(Gem<'_>, u32)> {
        let d = self
            .card
            .create_dumb_buffer((w, h), format.fourcc(), format.bytes_per_pixel() * 8)
            .map_err(self.err("dumb buffer"))?;
        use drm::buffer::Buffer as _;
        let (handle, pitch) = (d.handle(), d.pitch());
        Ok((
            Gem {
                display: self,
                handle,
                dumb: Some(d),
            },
            pitch,
        ))
    }

    /// Runs `f` on the CPU mapping of a dumb buffer.
    pub fn with_dumb_mapping<R>(
        &self,
        gem: &mut Gem<'_>,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R> {
        let d = gem
            .dumb
            .as_mut()
            .ok_or_else(|| DisplayError::Invalid("not a dumb buffer".into()))?;
        let mut m = self
            .card
            .map_dumb_buffer(d)
            .map_err(drm_err(&self.card, "mapping a dumb buffer"))?;
        Ok(f(m.as_mut()))
    }

    /// A framebuffer of `layout` over `gem`. The format must be one the
    /// primary plane scans out.
    ///
    /// On vkms, the first framebuffer with a non-zero offset runs the
    /// probe of [`Display::offsets_shown_right`] (a commit and capture of
    /// its own, after which the display is off until the next `present`);
    /// where offsets are shown wrong, one is refused.
    pub fn framebuffer<'d>(&'d self, gem: &Gem<'d>, layout: Layout) -> Result<Framebuffer<'d>> {
        layout.check()?;
        self.check_size(layout.width, layout.height)?;
        if layout.offset != 0 && !self.offsets_shown_right()? {
            return Err(DisplayError::Invalid(self.offsets_wrong()));
        }
        let fourcc = layout.format.fourcc() as u32;
        if !self.formats.contains(&fourcc) {
            return Err(DisplayError::Invalid(format!(
                "{} ({}): the primary plane cannot show {}",
                self.card.path.display(),
                self.driver,
                layout.format.name()
            )));
        }
        self.framebuffer_unchecked(gem, layout)
    }

    /// A writeback target of `w`x`h` XRGB8888 (the CRTC's size).
    pub fn capture_buffer(&self, w: u32, h: u32) -> Result<Capture<'_>> {
        if self.writeback.is_none() {
            return Err(DisplayError::Invalid(format!(
                "{} ({}) has no writeback connector to capture with",
                self.card.path.display(),
                self.driver
            )));
        }
        self.check_size(w, h)?;
        let (gem, pitch) = self.dumb(Format::Xrgb8888, w, h)?;
        let layout = Layout {
            format: Format::Xrgb8888,
            width: w,
            height: h,
            pitch,
            offset: 0,
        };
        let fb = self.framebuffer_unchecked(&gem, layout)?;
        Ok(Capture { gem, fb })
    }

    /// Whether a framebuffer whose pixels start `offset` bytes into its
    /// buffer is shown from there. vkms in Linux 6.12 applies the offset
    /// twice (its plane reader starts from the mapping already advanced
    /// by `drm_gem_fb_vmap` and adds the offset again): it shows the wrong
    /// rows and reads past the end of the buffer, which faults in the
    /// kernel when the buffer ends at a page. On vkms this is probed once:
    /// a 16x16 frame at one frame's offset into a three-frame dumb buffer
    /// (so a doubled offset stays inside it) is shown and captured. Without
    /// writeback, vkms is assumed to have the bug. Other drivers are
    /// trusted.
    pub fn offsets_shown_right(&self) -> Result<bool> {
        if let Some(ok) = self.offsets_ok.get() {
            return Ok(ok);
        }
        let ok = if self.driver != "vkms" {
            true
        } else if self.writeback.is_none() {
            false
        } else {
            self.probe_offsets()?
        };
        self.offsets_ok.set(Some(ok));
        Ok(ok)
    }

    /// Why a framebuffer offset is refused (after the probe said so).
    pub fn offsets_wrong(&self) -> String {
        format!(
            "{} ({}) shows framebuffers at an offset wrongly ({})",
            self.card.path.display(),
            self.driver,
            if self.writeback.is_none() {
                "vkms 6.12 applies the offset twice; without a writeback connector, this one cannot be probed"
            } else {
                "probed: it applies the offset twice"
            }
        )
    }

    fn probe_offsets(&self) -> Result<bool> {
        let ((wmin, _), (hmin, _)) = self.size_limits();
        let (w, h) = (wmin.max(16), hmin.max(16));
        let (mut gem, pitch) = self.dumb(Format::Xrgb8888, w, 3 * h)?;
        let frame = pitch as usize * h as usize;
        let pixel = |k: usize| [0x40 + k as u8, 0x80 + k as u8, 0xC0 + k as u8, 0];
        self.with_dumb_mapping(&mut gem, |m| {
            for (i, px) in m[..3 * frame].chunks_exact_mut(4).enumerate() {
                px.copy_from_slice(&pixel(i / (frame / 4)));
            }
        })?;
        let layout = Layout {
            format: Format::Xrgb8888,
            width: w,
            height: h,
            pitch,
            offset: frame as u32,
        };
        let fb = self.framebuffer_unchecked(&gem, layout)?;
        let mut cap = self.capture_buffer(w, h)?;
        self.present(&fb, Some(&cap), Duration::from_secs(10))?;
        let got = self.read_capture(&mut cap)?;
        // Off before the probe's buffers go: removing a framebuffer that is
        // on screen may turn the CRTC off behind the cached mode.
        self.off()?;
        let shown = |k: usize| got.chunks_exact(4).all(|p| p[..3] == pixel(k)[..3]);
        Ok(shown(1))
    }

    /// The smallest and largest framebuffer widths and heights the device
    /// takes (DRM_IOCTL_MODE_GETRESOURCES).
    pub fn size_limits(&self) -> ((u32, u32), (u32, u32)) {
        (self.fb_width, self.fb_height)
    }

    /// Whether the device takes `w`x`h` frames; the error names its limits.
    pub fn check_size(&self, w: u32, h: u32) -> Result<()> {
        let ((wmin, wmax), (hmin, hmax)) = self.size_limits();
        if (wmin..=wmax).contains(&w) && (hmin..=hmax).contains(&h) {
            return Ok(());
        }
        Err(DisplayError::Invalid(format!(
            "{} ({}) takes frames of {wmin}..={wmax} by {hmin}..={hmax} pixels, not {w}x{h}",
            self.card.path.display(),
            self.driver
        )))
    }

    fn framebuffer_unchecked<'d>(
        &'d self,
        gem: &Gem<'d>,
        layout: Layout,
    ) -> Result<Framebuffer<'d>> {
        let fb = self
            .card
            .add_planar_framebuffer(
                &Planar {
                    layout,
                    handle: gem.handle,
                },
                FbCmd2Flags::empty(),
            )
            .map_err(self.err(format!(
                "framebuffer {}x{} {} pitch {} offset {}",
                layout.width,
                layout.height,
                layout.format.name(),
                layout.pitch,
                layout.offset
            )))?;
        Ok(Framebuffer {
            display: self,
            fb,
            layout,
        })
    }

    /// The capture's pixels, `width * 4` bytes per row without padding.
    pub fn read_capture(&self, cap: &mut Capture<'_>) -> Result<Vec<u8>> {
        let l = cap.fb.layout;
        let row = l.width as usize * 4;
        self.with_dumb_mapping(&mut cap.gem, |m| {
            let mut out = Vec::with_capacity(row * l.height as usize);
            for y in 0..l.height as usize {
                let at = y * l.pitch as usize;
                out.extend_from_slice(&m[at..at + row]);
            }
            out
        })
    }

    fn prop(p: &Props, name: &str, what: &str) -> Result<property::Handle> {
        p.get(name)
            .ok_or_else(|| DisplayError::Invalid(format!("{what} has no {name} property")))
    }

    /// Shows `fb` full-screen on a CRTC of exactly its size (a mode made
    /// for it), in one blocking atomic commit. With `capture`, the
    /// writeback connector copies the CRTC's output of this commit, and
    /// this waits (up to `timeout`) until it has.
    pub fn present(
        &self,
        fb: &Framebuffer<'_>,
        capture: Option<&Capture<'_>>,
        timeout: Duration,
    ) -> Result<()> {
        let l = fb.layout;
        let size = (l.width, l.height);
        if l.width > u16::MAX as u32 || l.height > u16::MAX as u32 {
            return Err(DisplayError::Invalid(format!(
                "{}x{} is too large a mode",
                l.width, l.height
            )));
        }
        let mut req = AtomicModeReq::new();
        // Routing may change between commits (see below): let the kernel
        // do a modeset where one is needed; it does none where none is.
        let flags = AtomicCommitFlags::ALLOW_MODESET;
        if !matches!(self.mode.get(), Some((_, s)) if s == size) {
            let blob = self
                .card
                .create_property_blob(&ModeInfo::new(l.width as u16, l.height as u16, 60))
                .map_err(self.err("mode blob"))?;
            let blob_id = match blob {
                property::Value::Blob(id) => id,
                _ => unreachable!("create_property_blob returns a blob"),
            };
            if let Some((old, _)) = self.mode.replace(Some((blob_id, size))) {
                let _ = self.card.destroy_property_blob(old);
            }
            req.add_raw_property(
                self.crtc.into(),
                Self::prop(&self.crtc_props, "MODE_ID", "the CRTC")?,
                blob_id,
            );
            req.add_raw_property(
                self.crtc.into(),
                Self::prop(&self.crtc_props, "ACTIVE", "the CRTC")?,
                1,
            );
        }
        // vkms (6.12) does not let its writeback encoder clone the virtual
        // one ("failed valid clone check"): while capturing, the CRTC
        // drives the writeback connector alone, which then receives
        // exactly what the connector would show.
        let crtc_id = u32::from(self.crtc) as u64;
        req.add_raw_property(
            self.connector.into(),
            Self::prop(&self.conn_props, "CRTC_ID", "the connector")?,
            if capture.is_some() { 0 } else { crtc_id },
        );
        if let (Some(wb), Some(wp), None) = (self.writeback, &self.wb_props, capture) {
            req.add_raw_property(
                wb.into(),
                Self::prop(wp, "CRTC_ID", "the writeback connector")?,
                0,
            );
        }
        let pp = &self.plane_props;
        let obj = self.plane.into();
        let fixed = |v: u32| (v as u64) << 16;
        for (name, value) in [
            ("FB_ID", u32::from(fb.fb) as u64),
            ("CRTC_ID", u32::from(self.crtc) as u64),
            ("SRC_X", 0),
            ("SRC_Y", 0),
            ("SRC_W", fixed(l.width)),
            ("SRC_H", fixed(l.height)),
            ("CRTC_X", 0),
            ("CRTC_Y", 0),
            ("CRTC_W", l.width as u64),
            ("CRTC_H", l.height as u64),
        ] {
            req.add_raw_property(obj, Self::prop(pp, name, "the primary plane")?, value);
        }
        let mut fence: i32 = -1;
        if let Some(cap) = capture {
            let (wb, wp) = match (self.writeback, &self.wb_props) {
                (Some(w), Some(p)) => (w, p),
                _ => return Err(DisplayError::Invalid("no writeback connector".into())),
            };
            if (cap.fb.layout.width, cap.fb.layout.height) != size {
                return Err(DisplayError::Invalid(format!(
                    "capture buffer {}x{} is not the frame's size {}x{}",
                    cap.fb.layout.width, cap.fb.layout.height, l.width, l.height
                )));
            }
            req.add_raw_property(
                wb.into(),
                Self::prop(wp, "CRTC_ID", "the writeback connector")?,
                u32::from(self.crtc) as u64,
            );
            req.add_raw_property(
                wb.into(),
                Self::prop(wp, "WRITEBACK_FB_ID", "the writeback connector")?,
                u32::from(cap.fb.fb) as u64,
            );
            req.add_raw_property(
                wb.into(),
                Self::prop(wp, "WRITEBACK_OUT_FENCE_PTR", "the writeback connector")?,
                &mut fence as *mut i32 as u64,
            );
        }
        self.card
            .atomic_commit(flags, req)
            .map_err(self.err(format!(
                "atomic commit of a {}x{} {} frame",
                l.width,
                l.height,
                l.format.name()
            )))?;
        if capture.is_some() {
            if fence < 0 {
                return Err(DisplayError::Invalid(
                    "the writeback connector gave no out-fence".into(),
                ));
            }
            // SAFETY: the kernel installed this sync_file fd for us.
            let fence = unsafe { OwnedFd::from_raw_fd(fence) };
            wait_fence(&fence, timeout).map_err(|e| match e {
                None => DisplayError::CaptureTimeout {
                    device: self.card.path.display().to_string(),
                    secs: timeout.as_secs(),
                    hint: if self.driver == "vkms" {
                        " (vkms as released in Linux 6.12 can lose a writeback job to a race, and \
                         then completes none until it is reloaded; scripts/vkms-writeback-race.patch \
                         fixes it: docs/scanout.md)"
                    } else {
                        ""
                    },
                },
                Some(source) => DisplayError::Drm {
                    device: self.card.path.display().to_string(),
                    what: "waiting for the writeback fence".into(),
                    source,
                },
            })?;
        }
        Ok(())
    }

    /// Turns the pipe off: no plane shows any of our framebuffers after.
    pub fn off(&self) -> Result<()> {
        let mut req = AtomicModeReq::new();
        let obj = self.plane.into();
        req.add_raw_property(
            obj,
            Self::prop(&self.plane_props, "FB_ID", "the primary plane")?,
            0,
        );
        req.add_raw_property(
            obj,
            Self::prop(&self.plane_props, "CRTC_ID", "the primary plane")?,
            0,
        );
        req.add_raw_property(
            self.connector.into(),
            Self::prop(&self.conn_props, "CRTC_ID", "the connector")?,
            0,
        );
        if let (Some(wb), Some(wp)) = (self.writeback, &self.wb_props) {
            req.add_raw_property(
                wb.into(),
                Self::prop(wp, "CRTC_ID", "the writeback connector")?,
                0,
            );
        }
        req.add_raw_property(
            self.crtc.into(),
            Self::prop(&self.crtc_props, "ACTIVE", "the CRTC")?,
            0,
        );
        req.add_raw_property(
            self.crtc.into(),
            Self::prop(&self.crtc_props, "MODE_ID", "the CRTC")?,
            0,
        );
        self.card
            .atomic_commit(AtomicCommitFlags::ALLOW_MODESET, req)
            .map_err(self.err("turning the display off"))?;
        if let Some((blob, _)) = self.mode.take() {
            let _ = self.card.destroy_property_blob(blob);
        }
        Ok(())
    }
}

impl Display {
    /// Closes the device without turning the pipe off first, as a process
    /// that dies does: the kernel removes this client's framebuffers (which
    /// turns off a plane showing one) and its GEM handles.
    pub fn close_without_off(self) {
        self.mode.set(None);
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        if self.mode.get().is_some() {
            let _ = self.off();
        }
    }
}

/// Waits for a sync_file to signal: `Err(None)` on timeout.
fn wait_fence(fd: &OwnedFd, timeout: Duration) -> std::result::Result<(), Option<std::io::Error>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, ms) {
        Ok(0) => Err(None),
        Ok(_) => Ok(()),
        Err(e) => Err(Some(std::io::Error::from_raw_os_error(e as i32))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_info_is_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<ModeInfo>(), 68);
        let m = ModeInfo::new(64, 48, 60);
        assert!(
            m.hdisplay < m.hsync_start && m.hsync_start < m.hsync_end && m.hsync_end < m.htotal
        );
        assert!(
            m.vdisplay < m.vsync_start && m.vsync_start < m.vsync_end && m.vsync_end < m.vtotal
        );
    }

    #[test]
    fn layouts_are_checked() {
        let l = Layout {
            format: Format::Xrgb8888,
            width: 10,
            height: 3,
            pitch: 39,
            offset: 0,
        };
        let e = l.check().unwrap_err().to_string();
        assert!(e.contains("stride 39 is less than a row"), "{e}");
        let l = Layout { pitch: 43, ..l };
        l.check().unwrap();
        assert_eq!(l.span(), 2 * 43 + 40);
        assert!("NV12"
            .parse::<Format>()
            .unwrap_err()
            .contains("known: XRGB8888"));
        assert_eq!("xrgb8888".parse::<Format>().unwrap(), Format::Xrgb8888);
    }
}
