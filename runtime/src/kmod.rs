//! The kernel module's ABI: `/dev/dmafile`, as defined by
//! `kmod/include/uapi/linux/dmafile.h` (the single source of truth; the
//! layout test in this module compiles that header and compares).
//!
//! [`Module::map`] turns a range of an open file into a [`DmaBuf`] whose
//! pages are the file's own, or into a [`MapError`] that carries the
//! kernel's [`MapReason`] for refusing.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;

/// Where the module's device lives.
pub const DEVICE: &str = "/dev/dmafile";
/// The ABI version this crate speaks (`DMAFILE_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;

/// `DMAFILE_MAP_*` flags.
pub mod flags {
    /// Pin the range for the dma-buf's lifetime (required).
    pub const PIN: u32 = 1 << 0;
    /// Importers may write; writes reach the file.
    pub const WRITE: u32 = 1 << 1;
    /// Importers need atomics on the memory.
    pub const ATOMIC: u32 = 1 << 2;
    /// The dma-buf fd gets FD_CLOEXEC.
    pub const CLOEXEC: u32 = 1 << 3;
    /// Every flag the ABI defines.
    pub const VALID: u32 = PIN | WRITE | ATOMIC | CLOEXEC;
}

/// `DMAFILE_CAP_*` bits of [`Query::caps`].
pub mod caps {
    pub const PAGE_CACHE: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const STORAGE_DIRECT: u32 = 1 << 2;
    pub const STATUS: u32 = 1 << 3;
}

/// `DMAFILE_STATE_*` bits of [`Status::state`].
pub mod state {
    pub const STALE: u32 = 1 << 0;
    pub const UNLINKED: u32 = 1 << 1;
}

/// The raw structures, field for field as in the uapi header.
pub mod raw {
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Query {
        pub abi_version: u32,
        pub caps: u32,
        pub map_flags: u32,
        pub page_size: u32,
        pub max_pinned_bytes: u64,
        pub pinned_bytes: u64,
        pub user_pinned_bytes: u64,
        pub memlock_limit: u64,
        pub max_map_bytes: u64,
        pub nr_buffers: u64,
        pub reserved: [u64; 4],
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Map {
        pub fd: i32,
        pub flags: u32,
        pub offset: u64,
        pub length: u64,
        pub dmabuf_fd: i32,
        pub backing: u32,
        pub mapped_length: u64,
        pub reason: u32,
        pub pad: u32,
        pub reserved: [u64; 2],
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Status {
        pub dmabuf_fd: i32,
        pub flags: u32,
        pub backing: u32,
        pub state: u32,
        pub dev_major: u32,
        pub dev_minor: u32,
        pub ino: u64,
        pub offset: u64,
        pub length: u64,
        pub file_size: u64,
        pub stale_pages: u64,
        pub reserved: [u64; 2],
    }

    pub const IOC_MAGIC: u8 = 0xDF;
    /// The request numbers, for tests that issue malformed requests.
    pub const IOC_QUERY: u64 =
        nix::request_code_readwrite!(IOC_MAGIC, 0, std::mem::size_of::<Query>()) as u64;
    pub const IOC_MAP: u64 =
        nix::request_code_readwrite!(IOC_MAGIC, 1, std::mem::size_of::<Map>()) as u64;
    pub const IOC_STATUS: u64 =
        nix::request_code_readwrite!(IOC_MAGIC, 2, std::mem::size_of::<Status>()) as u64;
    nix::ioctl_readwrite!(ioc_query, IOC_MAGIC, 0, Query);
    nix::ioctl_readwrite!(ioc_map, IOC_MAGIC, 1, Map);
    nix::ioctl_readwrite!(ioc_status, IOC_MAGIC, 2, Status);
}

macro_rules! reasons {
    ($($variant:ident = $code:literal, $name:literal, $text:literal;)*) => {
        /// Why the module refused a mapping (`enum dmafile_reason`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum MapReason {
            $($variant,)*
            /// A code newer than this crate.
            Unknown(u32),
        }

        impl MapReason {
            /// Every reason this crate knows, in code order.
            pub const ALL: &'static [MapReason] = &[$(MapReason::$variant,)*];

            pub fn from_code(code: u32) -> Self {
                match code {
                    $($code => MapReason::$variant,)*
                    other => MapReason::Unknown(other),
                }
            }

            pub fn code(self) -> u32 {
                match self {
                    $(MapReason::$variant => $code,)*
                    MapReason::Unknown(c) => c,
                }
            }

            /// The stable short name printed to users (`not-regular-file`).
            pub fn name(self) -> &'static str {
                match self {
                    $(MapReason::$variant => $name,)*
                    MapReason::Unknown(_) => "unknown",
                }
            }

            /// A sentence for users.
            pub fn describe(self) -> &'static str {
                match self {
                    $(MapReason::$variant => $text,)*
                    MapReason::Unknown(_) => "a reason newer than this dmafile",
                }
            }
        }
    };
}

reasons! {
    None = 0, "none", "no refusal";
    InvalidArgument = 1, "invalid-argument", "a reserved or output field of the request was not zero";
    FlagsUnsupported = 2, "flags-unsupported", "the request has flag bits the module does not know";
    PinRequired = 3, "pin-required", "only pinned mappings exist: the PIN flag is required";
    BadFd = 4, "bad-fd", "not an open file descriptor";
    NotRegularFile = 5, "not-regular-file", "not a regular file";
    FsNotSupported = 6, "fs-not-supported", "the file's filesystem is not on the module's allow-list";
    Unaligned = 7, "unaligned", "the offset is not a multiple of the page size";
    InvalidRange = 8, "invalid-range", "the length is zero or offset + length overflows";
    BeyondEof = 9, "beyond-eof", "the range ends past the end of the file";
    TooLarge = 10, "too-large", "the range is larger than one mapping may be";
    MemlockLimit = 11, "memlock-limit", "pinning would exceed the user's RLIMIT_MEMLOCK";
    GlobalLimit = 12, "global-limit", "pinning would exceed the module-wide cap on pinned memory";
    FdNotReadable = 13, "fd-not-readable", "the file descriptor is not open for reading";
    FdNotWritable = 14, "fd-not-writable", "a writable mapping needs a file descriptor open for writing";
    Sealed = 15, "sealed", "the memfd is sealed against writes";
    Immutable = 16, "immutable", "the file is immutable or append-only";
    WritePinNotAllowed = 17, "write-pin-not-allowed", "the kernel does not allow writable long-term pins of this filesystem's page cache, or of huge pages (tmpfs huge=), which truncation cannot split; storage-direct (DAX) mappings are read-only";
    FileChanged = 18, "file-changed", "the file changed while it was being mapped";
    IoError = 19, "io-error", "reading the file's pages failed";
    NoMemory = 20, "no-memory", "the kernel ran out of memory";
    Interrupted = 21, "interrupted", "interrupted by a signal";
    MapFailed = 22, "map-failed", "the filesystem or a security module refused to map the file";
    DaxUnbacked = 23, "dax-unbacked", "on a DAX mount the range has holes or unwritten extents, which have no storage to map: write the range first";
    FileBusy = 24, "file-busy", "on a DAX mount the file's layout cannot be frozen now: it is open for writing (the descriptor given included: open it read-only), or it is a swap file";
    NotOwner = 25, "not-owner", "on a DAX mount a mapping stops everyone from changing the file while it lives, which only the file's owner (or CAP_LEASE) may ask";
}

impl fmt::Display for MapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What backs a dma-buf's pages (`enum dmafile_backing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backing {
    None,
    PageCache,
    StorageDirect,
    Unknown(u32),
}

/// Serialized by name, as the CLI's JSON shows it.
impl serde::Serialize for Backing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl Backing {
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => Backing::None,
            1 => Backing::PageCache,
            2 => Backing::StorageDirect,
            c => Backing::Unknown(c),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backing::None => "none",
            Backing::PageCache => "page-cache",
            Backing::StorageDirect => "storage-direct",
            Backing::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A refused map request: the ioctl's errno and the module's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {} ({errno:?})", reason.describe())]
pub struct MapError {
    pub errno: Errno,
    pub reason: MapReason,
}

/// What the module reports about itself ([`Module::query`]).
pub type Query = raw::Query;

/// The status of one of the module's dma-bufs ([`Module::status`]).
pub type Status = raw::Status;

impl raw::Status {
    /// What backs the pages.
    pub fn backing(&self) -> Backing {
        Backing::from_code(self.backing)
    }

    /// Some pages are no longer the file's (truncated or punched out).
    pub fn stale(&self) -> bool {
        self.state & state::STALE != 0
    }

    /// The file has no names left.
    pub fn unlinked(&self) -> bool {
        self.state & state::UNLINKED != 0
    }
}

/// `DMA_BUF_IOCTL_SYNC` flags (linux/dma-buf.h): bracket CPU access to any
/// dma-buf's mapping with `START | access` and `END | access`.
pub mod sync {
    pub const READ: u64 = 1;
    pub const WRITE: u64 = 2;
    pub const RW: u64 = READ | WRITE;
    pub const START: u64 = 0;
    pub const END: u64 = 4;
}

nix::ioctl_write_ptr!(ioc_dma_buf_sync, b'b', 0, u64);

/// `DMA_BUF_IOCTL_SYNC` on any dma-buf (ours or another exporter's).
pub fn dma_buf_sync(dmabuf: BorrowedFd<'_>, sync_flags: u64) -> Result<(), Errno> {
    // SAFETY: the ioctl reads one struct dma_buf_sync, a single u64.
    unsafe { ioc_dma_buf_sync(dmabuf.as_raw_fd(), &sync_flags) }.map(drop)
}

/// An open `/dev/dmafile`.
#[derive(Debug)]
pub struct Module {
    dev: File,
}

impl Module {
    /// Opens [`DEVICE`]; `ENOENT` means the module is not loaded.
    pub fn open() -> std::io::Result<Module> {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(DEVICE)?;
        Ok(Module { dev })
    }

    /// The ABI version, capabilities, limits and pinned bytes.
    pub fn query(&self) -> Result<Query, Errno> {
        let mut q = raw::Query::default();
        // SAFETY: `q` is a valid, exclusively borrowed `struct dmafile_query`
        // for the duration of the call; the kernel reads and writes only it.
        unsafe { raw::ioc_query(self.dev.as_raw_fd(), &mut q) }?;
        Ok(q)
    }

    /// Issues a raw map request as given, for callers (tests) that need
    /// to send malformed requests. On failure the returned struct carries
    /// the reason the module wrote back.
    pub fn map_raw(&self, req: &mut raw::Map) -> Result<OwnedFd, Errno> {
        // SAFETY: `req` is a valid `struct dmafile_map` borrowed mutably for
        // the call.
        unsafe { raw::ioc_map(self.dev.as_raw_fd(), req) }?;
        // SAFETY: on success the kernel installed `dmabuf_fd` in our fd
        // table for us; nothing else owns it.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(req.dmabuf_fd) })
    }

    /// Maps `length` bytes of `file` from `offset` (page-aligned) into a
    /// dma-buf. [`flags::PIN`] is added; `CLOEXEC` is always set.
    pub fn map(
        &self,
        file: BorrowedFd<'_>,
        offset: u64,
        length: u64,
        map_flags: u32,
    ) -> Result<DmaBuf, MapError> {
        let mut req = raw::Map {
            fd: file.as_raw_fd(),
            flags: map_flags | flags::PIN | flags::CLOEXEC,
            offset,
            length,
            ..Default::default()
        };
        match self.map_raw(&mut req) {
            Ok(fd) => Ok(DmaBuf {
                fd,
                offset,
                length: req.mapped_length,
                flags: req.flags,
                backing: Backing::from_code(req.backing),
            }),
            Err(errno) => Err(MapError {
                errno,
                reason: MapReason::from_code(req.reason),
            }),
        }
    }

    /// Describes one of the module's dma-bufs (`EINVAL` for another
    /// exporter's, `EBADF` for a non-dma-buf).
    pub fn status(&self, dmabuf: BorrowedFd<'_>) -> Result<Status, Errno> {
        let mut st = raw::Status {
            dmabuf_fd: dmabuf.as_raw_fd(),
            ..Default::default()
        };
        // SAFETY: `st` is a valid `struct dmafile_status` borrowed mutably.
        unsafe { raw::ioc_status(self.dev.as_raw_fd(), &mut st) }?;
        Ok(st)
    }
}

impl AsFd for Module {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dev.as_fd()
    }
}

/// A dma-buf made by the module: owns its fd; the pages stay pinned until
/// this and every other reference (importers, mappings) are gone.
#[derive(Debug)]
pub struct DmaBuf {
    fd: OwnedFd,
    offset: u64,
    length: u64,
    flags: u32,
    backing: Backing,
}

impl DmaBuf {
    /// Offset of the mapped range in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The dma-buf's size: the requested length rounded up to a page.
    pub fn len(&self) -> u64 {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    pub fn backing(&self) -> Backing {
        self.backing
    }

    pub fn writable(&self) -> bool {
        self.flags & flags::WRITE != 0
    }
}

impl AsFd for DmaBuf {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    /// Compiles the uapi header with the C compiler and compares every size,
    /// offset and constant with this module's mirrors.
    #[test]
    fn layout_matches_uapi_header() {
        let dir = crate::test_common::TempDir::new("uapi");
        let include = concat!(env!("CARGO_MANIFEST_DIR"), "/../kmod/include/uapi");
        let mut c = String::from(
            "#include <stdio.h>\n#include <stddef.h>\n#include <linux/dmafile.h>\n\
             #define F(s, f) printf(#s \".\" #f \" %zu\\n\", offsetof(struct s, f))\n\
             #define S(s) printf(#s \" %zu\\n\", sizeof(struct s))\n\
             #define K(k) printf(#k \" %llu\\n\", (unsigned long long)(k))\nint main(void) {\n",
        );
        let mut want: Vec<(String, u64)> = Vec::new();
        macro_rules! fields {
            ($cs:literal, $rs:ty, [$($f:ident),*]) => {
                c.push_str(&format!("S({});\n", $cs));
                want.push(($cs.to_string(), size_of::<$rs>() as u64));
                $(
                    c.push_str(&format!("F({}, {});\n", $cs, stringify!($f)));
                    want.push((format!("{}.{}", $cs, stringify!($f)), offset_of!($rs, $f) as u64));
                )*
            };
        }
        fields!(
            "dmafile_query",
            raw::Query,
            [
                abi_version,
                caps,
                map_flags,
                page_size,
                max_pinned_bytes,
                pinned_bytes,
                user_pinned_bytes,
                memlock_limit,
                max_map_bytes,
                nr_buffers,
                reserved
            ]
        );
        fields!(
            "dmafile_map",
            raw::Map,
            [
                fd,
                flags,
                offset,
                length,
                dmabuf_fd,
                backing,
                mapped_length,
                reason,
                pad,
                reserved
            ]
        );
        fields!(
            "dmafile_status",
            raw::Status,
            [
                dmabuf_fd,
                flags,
                backing,
                state,
                dev_major,
                dev_minor,
                ino,
                offset,
                length,
                file_size,
                stale_pages,
                reserved
            ]
        );
        let mut konst = |name: &str, v: u64| {
            c.push_str(&format!("K({name});\n"));
            want.push((name.to_string(), v));
        };
        konst("DMAFILE_ABI_VERSION", ABI_VERSION as u64);
        konst("DMAFILE_MAP_PIN", flags::PIN as u64);
        konst("DMAFILE_MAP_WRITE", flags::WRITE as u64);
        konst("DMAFILE_MAP_ATOMIC", flags::ATOMIC as u64);
        konst("DMAFILE_MAP_CLOEXEC", flags::CLOEXEC as u64);
        konst("DMAFILE_MAP_VALID_FLAGS", flags::VALID as u64);
        konst("DMAFILE_CAP_PAGE_CACHE", caps::PAGE_CACHE as u64);
        konst("DMAFILE_CAP_WRITE", caps::WRITE as u64);
        konst("DMAFILE_CAP_STORAGE_DIRECT", caps::STORAGE_DIRECT as u64);
        konst("DMAFILE_CAP_STATUS", caps::STATUS as u64);
        konst("DMAFILE_STATE_STALE", state::STALE as u64);
        konst("DMAFILE_STATE_UNLINKED", state::UNLINKED as u64);
        konst("DMAFILE_BACKING_PAGE_CACHE", 1);
        konst("DMAFILE_BACKING_STORAGE_DIRECT", 2);
        konst("DMAFILE_IOC_QUERY", raw::IOC_QUERY);
        konst("DMAFILE_IOC_MAP", raw::IOC_MAP);
        konst("DMAFILE_IOC_STATUS", raw::IOC_STATUS);
        for r in MapReason::ALL {
            let cname = format!(
                "DMAFILE_REASON_{}",
                r.name().to_uppercase().replace('-', "_")
            );
            konst(&cname, r.code() as u64);
        }
        c.push_str("return 0;\n}\n");
        let src = dir.path("layout.c");
        let exe = dir.path("layout");
        std::fs::write(&src, c).unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let st = Command::new(&cc)
            .args(["-std=c11", "-Wall", "-Werror", "-I", include, "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
            .expect("run the C compiler");
        assert!(st.success(), "the uapi header does not compile with {cc}");
        let out = Command::new(&exe).output().unwrap();
        let got: Vec<(String, u64)> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn reason_codes_round_trip() {
        for (i, r) in MapReason::ALL.iter().enumerate() {
            assert_eq!(r.code(), i as u32);
            assert_eq!(MapReason::from_code(r.code()), *r);
        }
        assert_eq!(MapReason::from_code(999), MapReason::Unknown(999));
        let e = MapError {
            errno: Errno::EOPNOTSUPP,
            reason: MapReason::FsNotSupported,
        };
        assert_eq!(
            e.to_string(),
            "fs-not-supported: the file's filesystem is not on the module's allow-list (EOPNOTSUPP)"
        );
    }
}
