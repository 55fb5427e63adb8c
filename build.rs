//! Link libtorch the way pyo3-tch's own build script does, so that the extension finds the
//! libtorch of the installed `torch` wheel at run time (through an rpath), and record which torch
//! release that is (`simper_rs._core.TORCH_VERSION`, checked at import).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let mut torch_version = String::from("unknown");
    // Set by torch-sys (links = "tch") for crates that depend on it directly.
    if let Some(lib_dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        let lib_dir = std::path::PathBuf::from(lib_dir);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
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
