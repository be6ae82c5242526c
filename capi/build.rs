// The soname the installed library answers to: bumped with the ABI's
// major version (DMAFILE_ABI_VERSION's major), not with the crate's.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdmafile.so.0");
}
