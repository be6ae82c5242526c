//! `dmafile map`: map a file range through dmafile.ko and print its status
//! (a debugging aid for the kernel side of the direct path).
use std::fmt::Write;
use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use dmafile::kmod::{flags, Module};
use serde_json::json;

use crate::{out, size, CliError};

#[derive(Args)]
pub struct MapOpts {
    /// The file to map.
    file: PathBuf,
    /// Start of the range (a multiple of the page size; units K, M, G).
    #[arg(long, default_value = "0", value_parser = size::parse_size)]
    offset: u64,
    /// Length of the range (default: to the end of the file).
    #[arg(long, value_parser = size::parse_size)]
    length: Option<u64>,
    /// Ask for a writable mapping (needs a writable file on tmpfs).
    #[arg(long)]
    write: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(o: MapOpts) -> Result<ExitCode, CliError> {
    let err = |msg: String| CliError { msg, code: 2 };
    let m = Module::open().map_err(|e| {
        err(format!(
            "cannot open {}: {e}{}",
            dmafile::kmod::DEVICE,
            if e.kind() == std::io::ErrorKind::NotFound {
                " (the kernel module dmafile is not loaded; see docs/kmod.md)"
            } else {
                ""
            }
        ))
    })?;
    let f = OpenOptions::new()
        .read(true)
        .write(o.write)
        .open(&o.file)
        .map_err(|e| err(format!("{}: {e}", o.file.display())))?;
    let size = f
        .metadata()
        .map_err(|e| err(format!("{}: {e}", o.file.display())))?
        .len();
    let length = match o.length {
        Some(l) => l,
        None if o.offset < size => size - o.offset,
        None => {
            return Err(err(format!(
                "{}: offset {} is at or past the end of the file ({size} bytes); give --length",
                o.file.display(),
                o.offset
            )))
        }
    };
    let fl = if o.write { flags::WRITE } else { 0 };
    let b = m
        .map(f.as_fd(), o.offset, length, fl)
        .map_err(|e| err(format!("{}: dmafile.ko refused: {e}", o.file.display())))?;
    let st = m
        .status(b.as_fd())
        .map_err(|e| err(format!("status of the new dma-buf: {e}")))?;
    if o.json {
        let v = json!({
            "file": o.file,
            "offset": st.offset,
            "length": st.length,
            "requested_length": length,
            "backing": st.backing().name(),
            "writable": b.writable(),
            "flags": st.flags,
            "dev": format!("{}:{}", st.dev_major, st.dev_minor),
            "ino": st.ino,
            "file_size": st.file_size,
            "stale": st.stale(),
            "stale_pages": st.stale_pages,
            "unlinked": st.unlinked(),
        });
        out(&format!("{v}\n"))?;
    } else {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "mapped {} bytes of {} at offset {} ({} requested)",
            st.length,
            o.file.display(),
            st.offset,
            length
        );
        let _ = writeln!(
            s,
            "  backing:  {}{}",
            st.backing(),
            if b.writable() {
                ", writable"
            } else {
                ", read-only"
            }
        );
        let _ = writeln!(
            s,
            "  file:     dev {}:{} ino {}, {} bytes now",
            st.dev_major, st.dev_minor, st.ino, st.file_size
        );
        let _ = writeln!(
            s,
            "  state:    {}{}",
            if st.stale() {
                format!("stale ({} pages)", st.stale_pages)
            } else {
                "current".into()
            },
            if st.unlinked() { ", unlinked" } else { "" }
        );
        out(&s)?;
    }
    Ok(ExitCode::SUCCESS)
}
