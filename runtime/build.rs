//! Compiles shaders/*.comp (GLSL) to SPIR-V with glslangValidator and validates
//! the result with spirv-val. Both come from Debian's glslang-tools and
//! spirv-tools; `make setup` installs them.
use std::path::{Path, PathBuf};
use std::process::Command;

const SHADERS: &[&str] = &["crc32c", "sum64", "histogram", "invert"];

fn run(tool: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `{tool}` ({e}); install the shader tools with `make setup` (Debian: glslang-tools, spirv-tools)")
    });
    if !out.status.success() {
        panic!(
            "`{tool}` failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let shader_dir = manifest.join("../shaders");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    println!(
        "cargo:rerun-if-changed={}",
        shader_dir.join("common.glsl").display()
    );
    for name in SHADERS {
        let src = shader_dir.join(format!("{name}.comp"));
        let spv = out_dir.join(format!("{name}.spv"));
        println!("cargo:rerun-if-changed={}", src.display());
        compile(&src, &spv);
    }
}

fn compile(src: &Path, spv: &Path) {
    run(
        "glslangValidator",
        &[
            "-V".as_ref(),
            "--target-env".as_ref(),
            "vulkan1.1".as_ref(),
            "-o".as_ref(),
            spv.as_os_str(),
            src.as_os_str(),
        ],
    );
    run(
        "spirv-val",
        &[
            "--target-env".as_ref(),
            "vulkan1.1".as_ref(),
            spv.as_os_str(),
        ],
    );
}
