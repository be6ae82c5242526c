//! No panic crosses the C boundary: with the test-only feature
//! `test-panic` armed, every entry point panics as it starts, and each must
//! return -ENOTRECOVERABLE with DMAFILE_CODE_INTERNAL_PANIC, keep the
//! message for dmafile_last_error(), and leave the process running.
//! Run by scripts/test-capi.sh: cargo test -p dmafile-capi --features test-panic
#![cfg(feature = "test-panic")]
use std::ffi::CStr;
use std::ptr::{null, null_mut};

use dmafile_capi::*;

fn last_error() -> String {
    // SAFETY: a valid NUL-terminated string until the next call.
    unsafe { CStr::from_ptr(dmafile_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_entry_point_turns_a_panic_into_an_error() {
    let name = |c| {
        // SAFETY: static or NULL.
        let p = dmafile_code_name(c);
        assert!(!p.is_null());
        unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
    };
    panic_hook::arm(true);
    // Out-parameters the calls could write (they do not: they panic first).
    let out_gpu: *mut *mut dmafile_gpu = Box::into_raw(Box::new(null_mut()));
    let out_region: *mut *mut dmafile_region = Box::into_raw(Box::new(null_mut()));
    let out_queue: *mut *mut dmafile_queue = Box::into_raw(Box::new(null_mut()));
    let count: *mut u32 = Box::into_raw(Box::new(0));
    let ticket: *mut u64 = Box::into_raw(Box::new(0));
    let done: *mut u32 = Box::into_raw(Box::new(0));
    // Each entry point with arguments that would otherwise fail early
    // (NULL handles): the panic must come first and be caught.
    // SAFETY: the arguments are NULL or valid; the hook panics first.
    type Call<'a> = Box<dyn Fn(*mut i32) -> i32 + 'a>;
    let calls: Vec<(&str, Call)> = unsafe {
        vec![
            (
                "dmafile_device_extensions",
                Box::new(|r| {
                    dmafile_device_extensions(
                        None,
                        VkInstance::null(),
                        VkPhysicalDevice::null(),
                        count,
                        null_mut(),
                        r,
                    )
                }),
            ),
            (
                "dmafile_gpu_borrow",
                Box::new(|r| dmafile_gpu_borrow(null(), out_gpu, r)),
            ),
            (
                "dmafile_gpu_free",
                Box::new(|r| dmafile_gpu_free(null_mut(), r)),
            ),
            (
                "dmafile_gpu_path_available",
                Box::new(|r| dmafile_gpu_path_available(null(), 1, r, null_mut(), 0)),
            ),
            (
                "dmafile_region_open",
                Box::new(|r| {
                    dmafile_region_open(null(), c"/dev/null".as_ptr(), 0, 1, 0, out_region, r)
                }),
            ),
            (
                "dmafile_region_raw",
                Box::new(|r| dmafile_region_raw(null(), null_mut(), r)),
            ),
            (
                "dmafile_region_cmd_barrier",
                Box::new(|r| {
                    dmafile_region_cmd_barrier(null(), VkCommandBuffer::null(), 0, 0, 0, r)
                }),
            ),
            (
                "dmafile_region_free",
                Box::new(|r| dmafile_region_free(null_mut(), r)),
            ),
            (
                "dmafile_queue_new",
                Box::new(|r| dmafile_queue_new(null(), null(), out_queue, r)),
            ),
            (
                "dmafile_queue_submit",
                Box::new(|r| dmafile_queue_submit(null(), null(), 0, null(), ticket, r)),
            ),
            (
                "dmafile_queue_submit_after",
                Box::new(|r| {
                    dmafile_queue_submit_after(null(), null(), 0, null(), 0, null(), ticket, r)
                }),
            ),
            (
                "dmafile_queue_redeem",
                Box::new(|r| {
                    dmafile_queue_redeem(null(), 1, 1, done, null_mut(), 0, null_mut(), r)
                }),
            ),
            (
                "dmafile_queue_free",
                Box::new(|r| dmafile_queue_free(null_mut(), r)),
            ),
        ]
    };
    for (f, call) in &calls {
        let mut reason = -1;
        let rc = call(&mut reason);
        assert_eq!(rc, -libc::ENOTRECOVERABLE, "{f}");
        assert_eq!(
            reason,
            dmafile_code::DMAFILE_CODE_INTERNAL_PANIC as i32,
            "{f}"
        );
        assert_eq!(name(reason), "internal-panic");
        let msg = last_error();
        assert!(
            msg.starts_with(&format!("{f}: internal error")) && msg.contains("forced panic"),
            "{f}: {msg}"
        );
    }
    // Disarmed, the same calls fail as they should (a bad handle), which
    // shows the panic, not the arguments, made the error above.
    panic_hook::arm(false);
    let mut reason = -1;
    assert_eq!(dmafile_gpu_free(null_mut(), &mut reason), -libc::EBADF);
    assert_eq!(name(reason), "bad-handle");
    assert_eq!(calls.len(), 13, "every entry point that returns an errno");
}
