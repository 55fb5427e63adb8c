//! Link libtorch the way pyo3-tch's own build script does, so that the extension finds the
//! libtorch of the installed `torch` wheel at run time (through an rpath).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Set by torch-sys (links = "tch") for crates that depend on it directly.
    if let Some(lib_dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        let lib_dir = lib_dir.to_string_lossy();
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
