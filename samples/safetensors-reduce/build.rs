//! Compiles shaders/reduce.comp with glslangValidator and checks it with
//! spirv-val (both installed by `make setup`).
use std::path::PathBuf;
use std::process::Command;

fn run(tool: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `{tool}` ({e}); install the shader tools with `make setup`")
    });
    assert!(
        out.status.success(),
        "`{tool}` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let src = PathBuf::from("shaders/reduce.comp");
    let spv = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("reduce.spv");
    println!("cargo:rerun-if-changed={}", src.display());
    let env = ["--target-env".as_ref(), "vulkan1.1".as_ref()];
    run(
        "glslangValidator",
        &[
            &["-V".as_ref()],
            &env[..],
            &["-o".as_ref(), spv.as_os_str(), src.as_os_str()],
        ]
        .concat(),
    );
    run("spirv-val", &[&env[..], &[spv.as_os_str()]].concat());
}
