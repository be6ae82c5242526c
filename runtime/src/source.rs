//! Opening and checking the files dmafile streams.
//!
//! Policy (docs/cli.md, "Inputs"):
//! - regular files are streamed from their page cache or mapped;
//! - files on pseudo filesystems (procfs, sysfs, debugfs, tracefs, ...) report
//!   a size of 0 (or a made-up one) yet have content that exists only when
//!   read: dmafile reads them once into memory (at most [`SNAPSHOT_LIMIT`])
//!   and streams that snapshot through the `upload` path;
//! - directories, FIFOs, sockets, character and block devices are refused
//!   before anything is read (FIFOs are opened non-blocking, so a FIFO with no
//!   writer cannot hang the caller);
//! - a file that is truncated, grows or is modified while it is streamed is
//!   reported as [`Error::FileChanged`]; the result is thrown away.
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Largest pseudo-file (procfs, sysfs, ...) dmafile reads into memory.
pub const SNAPSHOT_LIMIT: u64 = 64 << 20;

/// Filesystems whose files have no stable size or page cache.
const PSEUDO_FS: &[(i64, &str)] = &[
    (0x9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x6265_6570, "configfs"),
    (0xcafe_4a11, "bpf"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x7363_6673, "securityfs"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x6e73_6673, "nsfs"),
    (0x6c6f_6f70, "binderfs"),
    (0xde5e_81e4, "efivarfs"),
    (0x6165_676c, "pstore"),
];

/// What a file looked like when it was opened; compared again while streaming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Identity {
    pub(crate) fn of(m: &std::fs::Metadata) -> Self {
        Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        }
    }
}

/// How the bytes of a source are reached.
#[derive(Debug)]
pub enum Content {
    /// A regular file on a real filesystem: read or mapped in place.
    File,
    /// A pseudo-file read once into memory; `fs` names its filesystem.
    Snapshot { data: Vec<u8>, fs: &'static str },
}

/// An open input file, checked and ready to stream.
#[derive(Debug)]
pub struct SourceFile {
    path: PathBuf,
    file: File,
    ident: Identity,
    content: Content,
}

fn pseudo_fs_name(file: &File) -> Option<&'static str> {
    let st = nix::sys::statfs::fstatfs(file.as_fd()).ok()?;
    let magic = st.filesystem_type().0 as i64;
    PSEUDO_FS.iter().find(|(m, _)| *m == magic).map(|(_, n)| *n)
}

impl SourceFile {
    /// Opens `path` read-only and checks that dmafile can stream it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_mode(path.as_ref(), false)
    }

    /// Opens `path` for reading and writing (a region the device writes).
    /// Pseudo-files are refused: their bytes are not a file's pages.
    pub fn open_writable(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_mode(path.as_ref(), true)
    }

    fn open_mode(path: &Path, write: bool) -> Result<Self> {
        let path = path.to_path_buf();
        if write {
            // Our own read lease would make this open fail (EAGAIN: it is
            // non-blocking) or, blocking, wait for ourselves.
            if let Ok(m) = std::fs::metadata(&path) {
                if crate::hostmap::leased_here((m.dev(), m.ino())) {
                    return Err(Error::BadInput {
                        path,
                        reason: "this process is reading it through dmafile's host path (a Region, stream or read-queue request holds a read lease on it): finish or drop that first, or read it through another path (PathChoice::Only(PathKind::Upload))".into(),
                    });
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            // Never block on a FIFO without a writer; refused below anyway.
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| {
                let what = match e.kind() {
                    std::io::ErrorKind::NotFound => "no such file",
                    std::io::ErrorKind::PermissionDenied => "permission denied",
                    _ => "cannot open",
                };
                Error::io(&path, what, e)
            })?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(&path, "cannot stat", e))?;
        let ft = meta.file_type();
        let refuse = |what: &str| {
            Err(Error::BadInput {
                path: path.clone(),
                reason: format!("is {what}; dmafile streams regular files only"),
            })
        };
        if ft.is_dir() {
            return refuse("a directory");
        } else if ft.is_fifo() {
            return refuse("a FIFO (named pipe): it has no size and cannot be mapped");
        } else if ft.is_socket() {
            return refuse("a socket");
        } else if ft.is_char_device() {
            return refuse("a character device");
        } else if ft.is_block_device() {
            return refuse("a block device");
        } else if !ft.is_file() {
            return refuse("not a regular file");
        }
        // Back to blocking reads for the regular file.
        nix::fcntl::fcntl(
            file.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .map_err(|e| Error::io(&path, "fcntl", e.into()))?;
        let ident = Identity::of(&meta);
        let content = match pseudo_fs_name(&file) {
            // Refused before anything is read from it.
            Some(fs) if write => {
                return Err(Error::BadInput {
                    path,
                    reason: format!(
                        "is a pseudo-file on {fs}; the device can only write regular files"
                    ),
                })
            }
            Some(fs) => Content::Snapshot {
                data: Self::snapshot(&path, &file)?,
                fs,
            },
            None => Content::File,
        };
        Ok(SourceFile {
            path,
            file,
            ident,
            content,
        })
    }

    fn snapshot(path: &Path, file: &File) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        let mut limited = file.take(SNAPSHOT_LIMIT + 1);
        limited
            .read_to_end(&mut data)
            .map_err(|e| Error::io(path, "cannot read", e))?;
        if data.len() as u64 > SNAPSHOT_LIMIT {
            return Err(Error::BadInput {
                path: path.to_path_buf(),
                reason: format!(
                    "is a pseudo-file larger than the {} MiB dmafile reads into memory",
                    SNAPSHOT_LIMIT >> 20
                ),
            });
        }
        Ok(data)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub fn identity(&self) -> Identity {
        self.ident
    }

    pub fn content(&self) -> &Content {
        &self.content
    }

    /// The number of bytes that will be streamed.
    pub fn len(&self) -> u64 {
        match &self.content {
            Content::File => self.ident.size,
            Content::Snapshot { data, .. } => data.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why this file cannot be memory-mapped, if it cannot.
    pub fn unmappable_reason(&self) -> Option<String> {
        match &self.content {
            Content::File => None,
            Content::Snapshot { fs, .. } => Some(format!(
                "{} is a pseudo-file on {fs}; its bytes exist only when read",
                self.path.display()
            )),
        }
    }

    /// Fills `buf` with the bytes at `offset`. A short read means the file
    /// shrank under us and is reported as a change.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.content {
            Content::Snapshot { data, .. } => {
                let start = offset as usize;
                buf.copy_from_slice(&data[start..start + buf.len()]);
                Ok(())
            }
            Content::File => {
                let mut done = 0usize;
                while done < buf.len() {
                    match self.file.read_at(&mut buf[done..], offset + done as u64) {
                        Ok(0) => {
                            return Err(Error::FileChanged {
                                path: self.path.clone(),
                                what: format!(
                                    "truncated: read ended at byte {} of {}",
                                    offset + done as u64,
                                    self.ident.size
                                ),
                            })
                        }
                        Ok(n) => done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Error::io(&self.path, "read failed", e)),
                    }
                }
                Ok(())
            }
        }
    }

    /// Takes the file as it is now as the version later checks compare
    /// with (after our own change: a writable mapping's first write fault
    /// moves the times of files without `page_mkwrite`, like tmpfs).
    pub(crate) fn rebase_identity(&mut self) -> Result<()> {
        let meta = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, "cannot stat", e))?;
        let now = Identity::of(&meta);
        if now.size != self.ident.size {
            return Err(Error::FileChanged {
                path: self.path.clone(),
                what: format!("size went from {} to {} bytes", self.ident.size, now.size),
            });
        }
        self.ident = now;
        Ok(())
    }

    /// Checks that the file still is what it was when opened.
    pub fn check_unchanged(&self) -> Result<()> {
        if let Content::Snapshot { .. } = self.content {
            return Ok(()); // the snapshot cannot change
        }
        let meta = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, "cannot stat", e))?;
        let now = Identity::of(&meta);
        let what = if now.size < self.ident.size {
            format!("truncated from {} to {} bytes", self.ident.size, now.size)
        } else if now.size > self.ident.size {
            format!("grew from {} to {} bytes", self.ident.size, now.size)
        } else if now.mtime_ns != self.ident.mtime_ns || now.ctime_ns != self.ident.ctime_ns {
            "modified (its change time moved)".to_string()
        } else {
            return Ok(());
        };
        Err(Error::FileChanged {
            path: self.path.clone(),
            what,
        })
    }
}
