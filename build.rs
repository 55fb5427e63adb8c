//! Link libtorch the way pyo3-tch's own build script does, so that the extension finds the
//! libtorch of the installed `torch` wheel at run time (through an rpath), and record which torch
//! release that is (`simper_rs._core.TORCH_VERSION`, checked at import).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Installed from a wheel or by pip, the extension sits in site-packages/simper_rs/ beside
    // site-packages/torch/: that torch comes first, wherever the package was built.
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
    let mut torch_version = String::from("unknown");
    // The build backend (build_backend/simper_rs_build.py) names the torch being installed into;
    // torch-sys's own probe (DEP_TCH_LIBTORCH_LIB, for crates that depend on it directly) is
    // cached with its build and may name the environment of an earlier build.
    println!("cargo:rerun-if-env-changed=SIMPER_RS_TORCH_LIB");
    let lib_dir = std::env::var_os("SIMPER_RS_TORCH_LIB").or_else(|| std::env::var_os("DEP_TCH_LIBTORCH_LIB"));
    if let Some(lib_dir) = lib_dir {
        let lib_dir = std::path::PathBuf::from(lib_dir);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
        // torch-sys's own search path is cached with its build (see above), and that environment
        // may be gone: link against this one.
        println!("cargo:rustc-link-search=native={}", lib_dir.display());
        // torch/lib/.. holds torch/version.py: `__version__ = '2.13.0+cu130'`.
        let version_file = lib_dir.join("..").join("version.py");
        println!("cargo:rerun-if-changed={}", version_file.display());
        if let Ok(text) = std::fs::read_to_string(&version_file) {
            if let Some(line) = text.lines().find(|l| l.starts_with("__version__")) {
                torch_version = line.split(['\'', '"']).nth(1).unwrap_or("unknown").to_owned();
            }
        }
    }
    println!("cargo:rustc-env=SIMPER_RS_TORCH_VERSION={torch_version}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
