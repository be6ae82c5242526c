//! Installing the module the way users do: DKMS from a clean copy of
//! kmod/ (scripts/dkms-check.sh, run on the host for the guest's kernel,
//! in overlays), loaded here with modprobe from where DKMS put it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ensure;
use crate::kmod_tests::delete_module;
use crate::util::*;
use crate::TestFn;

pub fn all() -> Vec<(String, TestFn)> {
    vec![
        ("install/dkms".into(), Box::new(dkms) as TestFn),
        (
            "install/memlock-limits-d".into(),
            Box::new(memlock_limits_d),
        ),
    ]
}

/// Runs a command and returns its stdout, failing with all of its output
/// unless it succeeds.
fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        return Err(format!("{cmd} {args:?}: {}\n{out}{err}", o.status));
    }
    Ok(out)
}

/// What `make -C kmod dkms-install` installed for this kernel goes where
/// DKMS put it (/lib/modules/KVER, writable here), `modprobe dmafile`
/// loads it, and it is this version and answers
/// QUERY. The module the harness loaded is put back afterwards.
fn dkms(c: &Ctx) -> TestResult {
    let dir = PathBuf::from(std::env::var_os("DMAFILE_DKMS").ok_or("DMAFILE_DKMS is not set")?);
    if !dir.exists() {
        crate::skip!("no DKMS install for this kernel (run.sh installs with DKMS for Debian's packaged kernels, not for the debug build)");
    }
    let status = std::fs::read_to_string(dir.join("status.txt"))?;
    ensure!(
        status.contains(": installed"),
        "dkms status after install: {status}"
    );
    let after = std::fs::read_to_string(dir.join("status-after-remove.txt"))?;
    ensure!(after.trim().is_empty(), "dkms status after remove: {after}");
    let kmod = c.ko.parent().ok_or("DMAFILE_KO has no directory")?;
    let version = run("make", &["-s", "-C", kmod.to_str().unwrap(), "version"])?
        .trim()
        .to_string();
    let kver = run("uname", &["-r"])?.trim().to_string();
    let modules = Path::new("/lib/modules").join(&kver);
    run(
        "cp",
        &[
            "-a",
            dir.join("installed/updates").to_str().unwrap(),
            modules.to_str().unwrap(),
        ],
    )?;
    run("depmod", &["-a", &kver])?;
    delete_module().map_err(|e| format!("rmmod dmafile before modprobe: {e}"))?;
    let result = (|| -> TestResult {
        run("modprobe", &["dmafile"])?;
        let path = run("modinfo", &["-n", "dmafile"])?;
        ensure!(
            path.contains("/updates/dkms/dmafile.ko"),
            "modprobe found {path}, not DKMS's build"
        );
        let loaded = std::fs::read_to_string("/sys/module/dmafile/version")?;
        ensure!(
            loaded.trim() == version,
            "loaded version {loaded:?}, dkms.conf says {version}"
        );
        let q = c.module().query()?;
        ensure!(
            q.abi_version == dmafile::kmod::ABI_VERSION,
            "ABI {}",
            q.abi_version
        );
        let signer = run("modinfo", &["-F", "signer", "dmafile"]).unwrap_or_default();
        println!(
            "     DKMS's dmafile.ko {version} loaded from {} (signer: {})",
            path.trim(),
            signer.trim()
        );
        // Loaded at boot: what systemd-modules-load does with the file
        // docs/kmod.md says to write.
        delete_module().map_err(|e| format!("rmmod of DKMS's module: {e}"))?;
        let conf = Path::new("/etc/modules-load.d/dmafile.conf");
        std::fs::write(conf, "dmafile\n")?;
        let loaded = run("/lib/systemd/systemd-modules-load", &[]);
        std::fs::remove_file(conf)?;
        loaded?;
        ensure!(
            Path::new("/sys/module/dmafile").exists() && Path::new(dmafile::kmod::DEVICE).exists(),
            "systemd-modules-load did not load dmafile from /etc/modules-load.d/dmafile.conf"
        );
        Ok(())
    })();
    let _ = delete_module();
    crate::kmod_tests::load_module(&c.ko, "")
        .map_err(|e| format!("reloading {}: {e}", c.ko.display()))?;
    result
}

/// The memlock step of docs/kmod.md: a line in
/// /etc/security/limits.d/dmafile.conf raises a user's RLIMIT_MEMLOCK in
/// the sessions PAM opens for them (here `runuser`, whose PAM stack has
/// pam_limits as login's has), and `dmafile info` then finds no memlock
/// problem for the default 16 MiB chunks, three in flight.
fn memlock_limits_d(_c: &Ctx) -> TestResult {
    let limit = |who: &str| -> Result<String, String> {
        Ok(run("runuser", &["-u", who, "--", "sh", "-c", "ulimit -l"])?
            .trim()
            .to_string())
    };
    let before = limit("nobody")?;
    ensure!(
        before != "65536",
        "nobody's memlock limit is already 65536 KiB"
    );
    let conf = Path::new("/etc/security/limits.d/dmafile.conf");
    std::fs::write(conf, "nobody - memlock 65536\n")?;
    let result = (|| -> TestResult {
        let after = limit("nobody")?;
        ensure!(
            after == "65536",
            "after limits.d: {after} (before: {before})"
        );
        let dmafile = sibling("dmafile");
        let info = run(
            "runuser",
            &[
                "-u",
                "nobody",
                "--",
                dmafile.to_str().unwrap(),
                "info",
                "--json",
            ],
        )?;
        let v: serde_json::Value = serde_json::from_str(&info)
            .map_err(|e| format!("dmafile info --json as nobody: {e}:\n{info}"))?;
        ensure!(
            v["module"]["memlock_limit"] == 65536u64 * 1024,
            "module: {}",
            v["module"]
        );
        ensure!(
            !v["checks"]["problems"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["check"] == "memlock")),
            "info still finds a memlock problem: {}",
            v["checks"]
        );
        println!("     nobody's memlock limit: {before} KiB, with limits.d {after} KiB");
        Ok(())
    })();
    std::fs::remove_file(conf)?;
    result
}
