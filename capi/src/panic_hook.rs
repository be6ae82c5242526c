//! Test-only (feature `test-panic`): makes every entry point panic on
//! demand, so a test can prove that no panic crosses the C boundary.
use std::sync::atomic::{AtomicBool, Ordering};

static ARMED: AtomicBool = AtomicBool::new(false);

/// From now on every entry point panics as it starts (or stops, `false`).
pub fn arm(on: bool) {
    ARMED.store(on, Ordering::SeqCst);
}

pub(crate) fn maybe_panic(entry: &'static str) {
    if ARMED.load(Ordering::SeqCst) {
        panic!("test-panic: forced panic in {entry}");
    }
}
