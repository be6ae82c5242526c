//! The reason table of dmafile.h is the kernel's and the runtime's: every
//! `DMAFILE_CODE_X = n` of the checked-in header has the name `x` (in
//! kebab case) from dmafile_code_name(n), every kernel number is the uapi
//! header's `DMAFILE_REASON_X = n`, and every reason the runtime knows is
//! in the header.
use std::collections::BTreeMap;
use std::ffi::CStr;

use dmafile::kmod::MapReason;
use dmafile::ReasonCode;
use dmafile_capi::*;

fn constants(text: &str, prefix: &str) -> BTreeMap<i32, String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim().trim_end_matches(',');
            let (k, v) = l.split_once(" = ")?;
            let k = k.strip_prefix(prefix)?;
            Some((v.parse().ok()?, k.to_lowercase().replace('_', "-")))
        })
        .collect()
}

fn name(c: i32) -> Option<String> {
    let p = dmafile_code_name(c);
    // SAFETY: static or NULL.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string())
}

#[test]
fn header_constants_name_the_table() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let h = std::fs::read_to_string(format!("{root}/capi/dmafile.h")).unwrap();
    let uapi =
        std::fs::read_to_string(format!("{root}/kmod/include/uapi/linux/dmafile.h")).unwrap();
    let ours = constants(&h, "DMAFILE_CODE_");
    let kernel = constants(&uapi, "DMAFILE_REASON_");
    assert_eq!(kernel.len(), MapReason::ALL.len());
    for (n, k) in &kernel {
        assert_eq!(ours.get(n), Some(k), "kernel reason {n}");
    }
    for (n, k) in &ours {
        assert_eq!(name(*n).as_deref(), Some(k.as_str()), "code {n}");
        // SAFETY: static or NULL.
        let d = unsafe { CStr::from_ptr(dmafile_code_description(*n)) };
        assert!(!d.to_bytes().is_empty(), "code {n}");
    }
    for c in ReasonCode::RUNTIME {
        assert_eq!(
            ours.get(&(c.number() as i32)).map(String::as_str),
            Some(c.name())
        );
    }
    assert_eq!(ours.len(), kernel.len() + ReasonCode::RUNTIME.len() + 11);
    for n in [-1, 26, 99, 109, 199, 211, 1000] {
        assert_eq!(name(n), None, "{n}");
        assert!(dmafile_code_description(n).is_null());
    }
    assert_eq!(dmafile_abi_version(), DMAFILE_ABI_VERSION);
}
