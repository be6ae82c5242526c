//! The library reads no environment behind the app's back: the defaults
//! ignore DMAFILE_DEVICE and DMAFILE_FORCE_STAGING, and only the
//! `from_env` constructors the `dmafile` command uses read them. One test
//! in its own binary, so setting the variables races with nothing.
use dmafile::{Error, Gpu, StreamConfig};

#[test]
fn defaults_read_no_environment() {
    std::env::set_var("DMAFILE_FORCE_STAGING", "1");
    std::env::set_var(dmafile::DEVICE_ENV, "no-such-gpu");
    assert!(!StreamConfig::default().force_staging);
    assert!(StreamConfig::from_env().force_staging);
    Gpu::open_default().expect("the default device, whatever DMAFILE_DEVICE says");
    match Gpu::open_from_env() {
        Err(Error::NoSuchDevice { wanted, .. }) => assert_eq!(wanted, "no-such-gpu"),
        Err(e) => panic!("open_from_env: {e}"),
        Ok(_) => panic!("open_from_env ignored DMAFILE_DEVICE=no-such-gpu"),
    }
}
