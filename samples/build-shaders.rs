//! The samples' build script: compiles every shaders/*.comp of the sample
//! with glslangValidator into OUT_DIR/<name>.spv and checks it with
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
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=shaders");
    let env = ["--target-env".as_ref(), "vulkan1.1".as_ref()];
    let mut sources: Vec<PathBuf> = std::fs::read_dir("shaders")
        .expect("the sample's shaders/ folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "comp"))
        .collect();
    sources.sort();
    for src in sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let spv = out_dir.join(src.with_extension("spv").file_name().unwrap());
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
}
