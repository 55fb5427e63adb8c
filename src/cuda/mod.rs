//! The CUDA kernel of the fused log-prob reduction: its source, and its compilation by NVRTC at
//! run time through cudarc (loaded dynamically, so the package builds and imports on machines
//! without CUDA).
//!
//! Status: the kernel compiles under NVRTC (checked on every CI run, on CPU); launching it on
//! PyTorch's stream is not written yet, so CUDA tensors take the libtorch-ops path today.
use crate::error::{Error, Result};

/// The kernel source, compiled by NVRTC at run time.
pub const KERNEL_SOURCE: &str = include_str!("logps.cu");

/// The kernels the source defines: forward and backward for float32, bfloat16 and float16.
pub const KERNEL_NAMES: [&str; 6] = [
    "logps_forward_f32",
    "logps_backward_f32",
    "logps_forward_bf16",
    "logps_backward_bf16",
    "logps_forward_f16",
    "logps_backward_f16",
];

/// Whether the NVRTC library can be loaded in this process.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library; no NVRTC function is called.
    std::panic::catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
}

/// Compile the kernel source to PTX for `arch` (e.g. "compute_90"), or say why not.
pub fn compile_ptx(arch: &'static str) -> Result<String> {
    if !nvrtc_available() {
        return Err(Error::value(
            "NVRTC (libnvrtc) cannot be loaded in this process; it comes with the CUDA build of torch",
        ));
    }
    let options = cudarc::nvrtc::CompileOptions { arch: Some(arch), options: vec!["--std=c++17".into()], ..Default::default() };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(KERNEL_SOURCE, options)
        .map_err(|err| Error::value(format!("the CUDA kernel did not compile for {arch}: {err}")))?;
    Ok(ptx.to_src())
}
