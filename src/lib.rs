//! `simper_rs._core`: the Rust extension behind the `simper_rs` Python package.
//!
//! This file only registers functions; the work lives in:
//! - `kernels/`: pure Rust on slices (no torch, no Python), covered by `cargo test`;
//! - `losses.rs`: the loss formulas, one source of truth for tensors and plain numbers;
//! - `torch.rs`: bindings for `torch.Tensor` arguments (validation, GIL release, libtorch ops);
//! - `cuda/`: the CUDA kernel's source and its NVRTC compilation;
//! - `numpy.rs`: the same kernels and formulas on numpy arrays;
//! - `fused_cpu.rs`: tensor bindings of the fused CPU kernels; `threads.rs`: their thread pool;
//! - `fused_linear.rs`: log-probs from hidden states and the lm_head weight, chunked.
use pyo3::prelude::*;

pub mod cuda;
pub mod error;
pub mod fused_cpu;
pub mod fused_linear;
pub mod kernels;
pub mod losses;
pub mod numpy;
pub mod threads;
pub mod torch;

/// Compile the CUDA kernel's source with NVRTC for `arch` and return the PTX (no GPU needed).
#[pyfunction]
#[pyo3(signature = (arch = "compute_90"))]
fn cuda_compile_kernel(py: Python<'_>, arch: &str) -> PyResult<String> {
    let arch: &'static str = match arch {
        "compute_80" => "compute_80",
        "compute_86" => "compute_86",
        "compute_89" => "compute_89",
        "compute_90" => "compute_90",
        other => return Err(error::Error::value(format!("arch must be one of compute_80, compute_86, compute_89, compute_90, got '{other}'")).into()),
    };
    Ok(py.allow_threads(|| cuda::compile_ptx(arch))?)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(torch::check_logps_inputs, m)?)?;
    m.add_function(wrap_pyfunction!(torch::token_logps_torch, m)?)?;
    m.add_function(wrap_pyfunction!(torch::reduce_sequence_logps, m)?)?;
    m.add_function(wrap_pyfunction!(torch::simper_loss, m)?)?;
    m.add_function(wrap_pyfunction!(torch::dil_loss, m)?)?;
    m.add_function(wrap_pyfunction!(torch::preference_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(torch::token_stats_torch, m)?)?;
    m.add_function(wrap_pyfunction!(fused_cpu::fused_token_logps_forward, m)?)?;
    m.add_function(wrap_pyfunction!(fused_cpu::fused_token_logps_backward, m)?)?;
    m.add_function(wrap_pyfunction!(fused_cpu::kernel_threads, m)?)?;
    m.add_function(wrap_pyfunction!(fused_linear::linear_token_logps_forward, m)?)?;
    m.add_function(wrap_pyfunction!(fused_linear::linear_token_logps_backward, m)?)?;
    m.add_function(wrap_pyfunction!(fused_linear::linear_chunk_rows, m)?)?;
    m.add_function(wrap_pyfunction!(fused_linear::check_linear_logps_inputs, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_compile_kernel, m)?)?;
    m.add_function(wrap_pyfunction!(numpy::numpy_token_logps, m)?)?;
    m.add_function(wrap_pyfunction!(numpy::numpy_sequence_logps, m)?)?;
    m.add_function(wrap_pyfunction!(numpy::numpy_simper_loss, m)?)?;
    m.add_function(wrap_pyfunction!(numpy::numpy_dil_loss, m)?)?;
    Ok(())
}
