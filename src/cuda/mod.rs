//! The CUDA kernel of the fused log-prob reduction: its source, its compilation by NVRTC at run
//! time, and its launch through the CUDA driver API (both libraries loaded dynamically through
//! cudarc, so the package builds and imports on machines without CUDA).
//!
//! - [`compile`]: source -> CUBIN for one `sm_XY` (ptxas runs, so CPU CI catches any error), or
//!   PTX for a `compute_XY` the driver finishes for a GPU newer than this NVRTC knows;
//! - [`launch`]: one module per device, loaded once and cached, and the launches on a stream.
use std::ffi::CString;

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use crate::error::{Error, Result};

pub mod launch;

/// The kernel source, compiled by NVRTC at run time.
pub const KERNEL_SOURCE: &str = include_str!("logps.cu");

/// The kernels the source defines: for float32, bfloat16 and float16, for the plain logits, a
/// scale and a softcap (the logit transform's kind), forward and backward; the order
/// [`launch::Kernel`] indexes.
pub const KERNEL_NAMES: [&str; 18] = [
    "logps_forward_f32",
    "logps_backward_f32",
    "logps_forward_f32_scaled",
    "logps_backward_f32_scaled",
    "logps_forward_f32_softcapped",
    "logps_backward_f32_softcapped",
    "logps_forward_bf16",
    "logps_backward_bf16",
    "logps_forward_bf16_scaled",
    "logps_backward_bf16_scaled",
    "logps_forward_bf16_softcapped",
    "logps_backward_bf16_softcapped",
    "logps_forward_f16",
    "logps_backward_f16",
    "logps_forward_f16_scaled",
    "logps_backward_f16_scaled",
    "logps_forward_f16_softcapped",
    "logps_backward_f16_softcapped",
];

/// Whether the NVRTC library can be loaded in this process.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library; no NVRTC function is called.
    std::panic::catch_unwind(|| unsafe { nvrtc_sys::is_culib_present() }).unwrap_or(false)
}

fn require_nvrtc() -> Result<()> {
    if nvrtc_available() {
        Ok(())
    } else {
        Err(Error::runtime("NVRTC (libnvrtc) cannot be loaded in this process; it comes with the CUDA build of torch"))
    }
}

/// The `sm_XY` GPU architectures this NVRTC can compile for, as `10·X + Y`.
pub fn supported_archs() -> Result<Vec<i32>> {
    require_nvrtc()?;
    let mut count = 0;
    // SAFETY: NVRTC is loaded; the buffer has the length NVRTC reported.
    unsafe {
        check_nvrtc(nvrtc_sys::nvrtcGetNumSupportedArchs(&mut count), "nvrtcGetNumSupportedArchs")?;
        let mut archs = vec![0; count.max(0) as usize];
        check_nvrtc(nvrtc_sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()), "nvrtcGetSupportedArchs")?;
        Ok(archs)
    }
}

fn check_nvrtc(status: nvrtc_sys::nvrtcResult, call: &str) -> Result<()> {
    if status == nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(Error::runtime(format!("{call} failed: {status:?}")))
    }
}

/// What [`compile`] produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Machine code for `sm_XY` (given as `10·X + Y`).
    Cubin(i32),
    /// PTX for `compute_XY`, compiled further by the driver when loaded.
    Ptx(i32),
}

/// Compile the kernel source with NVRTC for `target`: the CUBIN or the PTX text, as bytes.
pub fn compile(target: Target) -> Result<Vec<u8>> {
    compile_with_log(target, &[]).map(|(image, _)| image)
}

/// ptxas's report for a CUBIN target: registers, shared memory, stack frame and spills of each
/// kernel (what decides occupancy, and whether a register array fell back to local memory).
pub fn resource_usage(sm: i32) -> Result<String> {
    compile_with_log(Target::Cubin(sm), &["--ptxas-options=-v"]).map(|(_, log)| log)
}

fn program_log(program: nvrtc_sys::nvrtcProgram) -> String {
    // SAFETY: `program` is a live NVRTC program.
    let log = unsafe { nvrtc::get_program_log(program) }.unwrap_or_default();
    let log: Vec<u8> = log.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
    String::from_utf8_lossy(&log).into_owned()
}

/// [`compile`] with `extra` NVRTC options, also returning NVRTC's log.
fn compile_with_log(target: Target, extra: &[&str]) -> Result<(Vec<u8>, String)> {
    require_nvrtc()?;
    let source = CString::new(KERNEL_SOURCE).expect("the kernel source has no NUL byte");
    let arch = match target {
        Target::Cubin(sm) => format!("--gpu-architecture=sm_{sm}"),
        Target::Ptx(sm) => format!("--gpu-architecture=compute_{sm}"),
    };
    let mut options = vec![arch.as_str(), "--std=c++17", "--extra-device-vectorization"];
    options.extend_from_slice(extra);
    let program = nvrtc::create_program(&source, Some(c"logps.cu"))
        .map_err(|err| Error::runtime(format!("NVRTC could not create the program: {err:?}")))?;
    // SAFETY: `program` is live until destroyed at the end of this block; buffers are sized by
    // the matching *Size calls.
    let result = unsafe {
        let compiled = nvrtc::compile_program(program, &options);
        let outcome = match compiled {
            Err(_) => Err(Error::runtime(format!(
                "the CUDA kernel did not compile for {target:?}:\n{}",
                program_log(program)
            ))),
            Ok(()) => match target {
                Target::Cubin(_) => {
                    let mut size = 0usize;
                    check_nvrtc(nvrtc_sys::nvrtcGetCUBINSize(program, &mut size), "nvrtcGetCUBINSize").and_then(|_| {
                        let mut cubin = vec![0u8; size];
                        check_nvrtc(nvrtc_sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast()), "nvrtcGetCUBIN")
                            .map(|_| cubin)
                    })
                }
                Target::Ptx(_) => nvrtc::get_ptx(program)
                    .map(|ptx| ptx.iter().map(|&c| c as u8).collect())
                    .map_err(|err| Error::runtime(format!("nvrtcGetPTX failed: {err:?}"))),
            },
        };
        let outcome = outcome.map(|image| (image, program_log(program)));
        let _ = nvrtc::destroy_program(program);
        outcome
    };
    result
}

/// The compilation target for a GPU of compute capability `sm`: its own CUBIN when this NVRTC
/// knows the architecture, else PTX for the newest one it knows below it (the driver JITs it).
pub fn target_for(sm: i32, supported: &[i32]) -> Result<Target> {
    if supported.contains(&sm) {
        return Ok(Target::Cubin(sm));
    }
    match supported.iter().copied().filter(|&a| a <= sm).max() {
        Some(older) => Ok(Target::Ptx(older)),
        None => Err(Error::runtime(format!(
            "this NVRTC cannot compile for compute capability {}.{} (it knows {supported:?})",
            sm / 10,
            sm % 10
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_prefers_native_cubin_then_older_ptx() {
        let known = [75, 80, 86, 89, 90];
        assert_eq!(target_for(90, &known), Ok(Target::Cubin(90)));
        assert_eq!(target_for(100, &known), Ok(Target::Ptx(90)));
        assert!(target_for(70, &known).is_err());
    }
}
