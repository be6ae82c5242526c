//! The sample's real job: write a manifest, check it, and catch a changed file.
use std::ffi::OsStr;
use std::process::{Command, Output};

#[path = "../../../tests/common/mod.rs"]
mod common;
use common::{data, TempDir};

fn crc32c_sum<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crc32c-sum"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn manifest_round_trip_and_mismatch() {
    let dir = TempDir::new("crc32c-sum");
    let da = data(200_003, 21);
    let a = dir.file("a.bin", &da);
    let b = dir.file("b.bin", b"hello");
    let o = crc32c_sum([&a, &b]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest = String::from_utf8(o.stdout).unwrap();
    let want = format!(
        "{:08x}  {}\n{:08x}  {}\n",
        dmafile::cpu::crc32c(&da),
        a.display(),
        dmafile::cpu::crc32c(b"hello"),
        b.display()
    );
    assert_eq!(manifest, want);

    let m = dir.file("manifest", manifest.as_bytes());
    let check = || crc32c_sum([OsStr::new("-c"), m.as_os_str()]);
    let o = check();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).matches(": OK").count(),
        2
    );

    std::fs::write(&b, b"hellO").unwrap();
    let o = check();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("b.bin: FAILED"));

    std::fs::write(&m, "not a manifest\n").unwrap();
    let o = check();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("manifest line 1"));
}
