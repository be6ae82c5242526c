//! The sample's real job: write a manifest, check it, and catch a changed file.
use std::process::Command;

#[test]
fn manifest_round_trip_and_mismatch() {
    let dir = std::env::temp_dir().join(format!("crc32c-sum-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.bin");
    let b = dir.join("b.bin");
    let da: Vec<u8> = (0..200_003u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&a, &da).unwrap();
    std::fs::write(&b, b"hello").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_crc32c-sum"))
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
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
    let m = dir.join("manifest");
    std::fs::write(&m, &manifest).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_crc32c-sum"))
        .arg("-c")
        .arg(&m)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).matches(": OK").count(),
        2
    );
    std::fs::write(&b, b"hellO").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_crc32c-sum"))
        .arg("-c")
        .arg(&m)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("b.bin: FAILED"));
    std::fs::write(&m, "not a manifest\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_crc32c-sum"))
        .arg("-c")
        .arg(&m)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("manifest line 1"));
    std::fs::remove_dir_all(&dir).unwrap();
}
