//! crc32c-sum: CRC-32C checksums of files computed by a GPU shader through
//! dmafile, in the format of `sha256sum` (`<8 hex digits>  <path>`).
//!
//!     crc32c-sum FILE...            print a checksum line per file
//!     crc32c-sum -c MANIFEST        check files against a manifest; exit 1 on a mismatch
//!     crc32c-sum -v ...             also say, on stderr, which path carried each file
//!
//! Each file is streamed with the runtime's `auto` path (zero-copy where the
//! machine allows) and its result recomputed on the CPU, so a wrong line is
//! never printed: a GPU/CPU disagreement is an error.
use std::path::PathBuf;
use std::process::ExitCode;

use dmafile::{Gpu, ShaderKind, ShaderResult, StreamConfig, Streamer};

struct Opts {
    check: Option<PathBuf>,
    verbose: bool,
    files: Vec<PathBuf>,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        check: None,
        verbose: false,
        files: vec![],
    };
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("-c") | Some("--check") => {
                o.check = Some(args.next().ok_or("-c needs a manifest file")?.into())
            }
            Some("-v") | Some("--verbose") => o.verbose = true,
            Some("-h") | Some("--help") => {
                return Err("usage: crc32c-sum [-v] FILE... | crc32c-sum [-v] -c MANIFEST".into())
            }
            _ => o.files.push(a.into()),
        }
    }
    if o.check.is_none() && o.files.is_empty() {
        return Err("usage: crc32c-sum [-v] FILE... | crc32c-sum [-v] -c MANIFEST".into());
    }
    Ok(o)
}

/// Parses `sha256sum`-style lines: 8 hex digits, two spaces (or " *"), a path.
fn parse_manifest(text: &str) -> Result<Vec<(u32, PathBuf)>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let bad = || {
                format!(
                    "manifest line {}: expected `<8 hex digits>  <path>`, got {l:?}",
                    i + 1
                )
            };
            let (hex, rest) = l.split_at_checked(8).ok_or_else(bad)?;
            let crc = u32::from_str_radix(hex, 16).map_err(|_| bad())?;
            let path = rest
                .strip_prefix("  ")
                .or_else(|| rest.strip_prefix(" *"))
                .ok_or_else(bad)?;
            Ok((crc, PathBuf::from(path)))
        })
        .collect()
}

fn checksum(s: &mut Streamer, path: &PathBuf, verbose: bool) -> Result<u32, String> {
    let r = s.run(&[path], &mut |_, _| {}).map_err(|e| e.to_string())?;
    if verbose {
        let paths: Vec<String> = r.paths.iter().map(|(k, v)| format!("{k} {v}")).collect();
        eprintln!(
            "{}: {} bytes via {}",
            path.display(),
            r.bytes,
            if paths.is_empty() {
                "-".into()
            } else {
                paths.join(", ")
            }
        );
        for f in &r.fallbacks {
            eprintln!("  skipped {}: {}", f.from, f.reason);
        }
    }
    match (r.verified, r.result) {
        (Some(true), Some(ShaderResult::Crc32c(c))) => Ok(c),
        _ => Err(format!(
            "{}: GPU and CPU disagree; not printing a checksum",
            path.display()
        )),
    }
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("crc32c-sum: {e}");
            return ExitCode::from(2);
        }
    };
    let gpu = match Gpu::open_from_env() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("crc32c-sum: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = StreamConfig {
        shader: ShaderKind::Crc32c,
        verify: true,
        ..Default::default()
    };
    let mut s = match Streamer::new(&gpu, cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("crc32c-sum: {e}");
            return ExitCode::from(2);
        }
    };
    let mut failed = 0;
    if let Some(m) = &o.check {
        let entries = match std::fs::read_to_string(m)
            .map_err(|e| format!("{}: {e}", m.display()))
            .and_then(|t| parse_manifest(&t))
        {
            Ok(e) => e,
            Err(e) => {
                eprintln!("crc32c-sum: {e}");
                return ExitCode::from(2);
            }
        };
        for (want, path) in entries {
            match checksum(&mut s, &path, o.verbose) {
                Ok(c) if c == want => println!("{}: OK", path.display()),
                Ok(c) => {
                    println!(
                        "{}: FAILED (have {c:08x}, manifest {want:08x})",
                        path.display()
                    );
                    failed += 1;
                }
                Err(e) => {
                    println!("{}: FAILED ({e})", path.display());
                    failed += 1;
                }
            }
        }
        if failed > 0 {
            eprintln!("crc32c-sum: WARNING: {failed} file(s) did not match");
            return ExitCode::from(1);
        }
        return ExitCode::SUCCESS;
    }
    for path in &o.files {
        match checksum(&mut s, path, o.verbose) {
            Ok(c) => println!("{c:08x}  {}", path.display()),
            Err(e) => {
                eprintln!("crc32c-sum: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
