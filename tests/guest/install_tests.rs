//! Installing the module the way users do: DKMS from a clean copy of
//! kmod/ (scripts/dkms-check.sh, run on the host for the guest's kernel,
//! in overlays), loaded here with modprobe from where DKMS put it.

use std::os::fd::AsFd;
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
        ("install/udev-narrow".into(), Box::new(udev_narrow)),
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

/// `dmafile info --json` run as nobody in a session PAM opens (runuser),
/// so that limits.d applies.
fn info_as_nobody() -> Result<serde_json::Value, String> {
    let dmafile = sibling("dmafile");
    let args = [
        "-u",
        "nobody",
        "--",
        dmafile.to_str().unwrap(),
        "info",
        "--json",
    ];
    let info = run("runuser", &args)?;
    serde_json::from_str(&info).map_err(|e| format!("dmafile info --json as nobody: {e}:\n{info}"))
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
        let v = info_as_nobody()?;
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

/// The optional udev rule of docs/kmod.md, "Device permissions", that
/// narrows /dev/dmafile to a group: applied by udev to the device node,
/// after which a user outside the group is told by `dmafile info` that
/// the device is closed to them and what to do, and root still maps.
fn udev_narrow(c: &Ctx) -> TestResult {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dev = Path::new(dmafile::kmod::DEVICE);
    let mode = |p: &Path| std::fs::metadata(p).map(|m| (m.permissions().mode() & 0o777, m.gid()));
    let (before, _) = mode(dev)?;
    ensure!(
        before == 0o666,
        "/dev/dmafile is {before:o} before the rule, not 0666"
    );
    let rule = Path::new("/etc/udev/rules.d/70-dmafile.rules");
    std::fs::write(
        rule,
        "KERNEL==\"dmafile\", SUBSYSTEM==\"misc\", GROUP=\"video\", MODE=\"0660\"\n",
    )?;
    let result = (|| -> TestResult {
        // What udevd runs for the device's "add" event, run here by hand:
        // the guest has no udevd.
        run("udevadm", &["test", "--action=add", "/class/misc/dmafile"])?;
        let (after, gid) = mode(dev)?;
        let video = nix::unistd::Group::from_name("video")?.ok_or("no group video")?;
        ensure!(
            after == 0o660 && gid == video.gid.as_raw(),
            "after the rule /dev/dmafile is {after:o} gid {gid}, not 0660 gid {} (video)",
            video.gid
        );
        let v = info_as_nobody()?;
        let problems = v["checks"]["problems"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let problem = problems
            .iter()
            .find(|p| p["check"] == "permissions")
            .ok_or_else(|| {
                format!(
                    "info as nobody finds no permissions problem: {}",
                    v["checks"]
                )
            })?;
        ensure!(
            problem["problem"]
                .as_str()
                .is_some_and(|s| s.contains("Permission denied")),
            "permissions problem: {problem}"
        );
        let direct = v["paths"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["path"] == "direct"))
            .ok_or("no direct path in info")?;
        ensure!(
            direct["available"] == false,
            "direct is available to nobody: {direct}"
        );
        // Root, outside the group too, still opens it and maps.
        let p = write_file(c.fs("ext4")?, "perm.bin", &[7u8; 8192]);
        let f = open_ro(&p);
        let buf = c.module().map(f.as_fd(), 0, 8192, 0)?;
        drop(buf);
        println!(
            "     /dev/dmafile 0666 -> 0660 root:video by the rule; nobody is told: {}",
            problem["problem"]
        );
        Ok(())
    })();
    std::fs::remove_file(rule)?;
    // Back to what the module made it.
    std::fs::set_permissions(dev, std::fs::Permissions::from_mode(0o666))?;
    nix::unistd::chown(dev, None, Some(nix::unistd::Gid::from_raw(0)))?;
    result
}
