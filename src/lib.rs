//! `simper_rs._core`: the Rust extension behind the `simper_rs` Python package.
//!
//! This file only registers functions; the work lives in three layers:
//! - pure Rust, no torch and no Python: the `simper_rs_core` crate (crates/core: the fused
//!   log-prob kernels on slices, the logit transforms, fast exp and tanh, packed-row segments,
//!   and the loss formulas, one source of truth for tensors and plain numbers); `losses.rs` here
//!   runs those formulas on tensors;
//! - device code: `cuda/` (the CUDA kernel's source, its NVRTC compilation, its launch through
//!   the driver API);
//! - `bindings/`: what Python calls, on `torch.Tensor` and numpy arguments: validation, GIL
//!   release, dispatch to the CPU kernel, the CUDA kernel or libtorch (see `bindings/mod.rs`).
//!
//! `error.rs` maps every failure to a Python exception; `threads.rs` is the kernels' thread pool.
use pyo3::prelude::*;

pub mod bindings;
pub mod cuda;
pub mod error;
pub mod losses;
pub mod threads;

use bindings::{fused_cpu, fused_cuda, fused_linear, fused_linear_loss, fused_ops, numpy, torch};

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The torch release whose libtorch this extension was compiled against (set by build.rs).
    m.add("TORCH_VERSION", env!("SIMPER_RS_TORCH_VERSION"))?;
    // The DIL estimators' names: the one list (simper_rs.ESTIMATORS is this).
    m.add("ESTIMATORS", simper_rs_core::losses::Estimator::ALL.map(|e| e.name()).to_vec())?;
    m.add_function(wrap_pyfunction!(torch::check_dil_options, m)?)?;
    m.add_function(wrap_pyfunction!(torch::check_logps_inputs, m)?)?;
    m.add_function(wrap_pyfunction!(torch::token_logps_torch, m)?)?;
    m.add_function(wrap_pyfunction!(torch::reduce_sequence_logps, m)?)?;
    m.add_function(wrap_pyfunction!(torch::check_packed_inputs, m)?)?;
    m.add_function(wrap_pyfunction!(torch::reduce_packed_logps, m)?)?;
    m.add_function(wrap_pyfunction!(torch::simper_loss, m)?)?;
    m.add_function(wrap_pyfunction!(torch::dil_loss, m)?)?;
    m.add_function(wrap_pyfunction!(torch::preference_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(torch::token_stats_torch, m)?)?;
    m.add_function(wrap_pyfunction!(fused_ops::fused_token_logps_forward, m)?)?;
    m.add_function(wrap_pyfunction!(fused_ops::fused_token_logps_backward, m)?)?;
    m.add_function(wrap_pyfunction!(fused_cpu::kernel_threads, m)?)?;
    m.add_function(wrap_pyfunction!(fused_cpu::cpu_kernel_path, m)?)?;
    m.add_function(wrap_pyfunction!(fused_linear::linear_token_logps_forward, m)?)?;
    m.add_function(wrap_pyfunction!(fused_linear::linear_token_logps_backward, m)?)?;
    m.add_function(wrap_pyfunction!(fused_linear::linear_chunk_rows, m)?)?;
    m.add_function(wrap_pyfunction!(fused_linear::check_linear_logps_inputs, m)?)?;
    m.add_function(wrap_pyfunction!(fused_linear_loss::linear_pair_loss_forward, m)?)?;
    m.add_function(wrap_pyfunction!(fused_cuda::cuda_compile_kernel, m)?)?;
    m.add_function(wrap_pyfunction!(fused_cuda::cuda_supported_archs, m)?)?;
    m.add_function(wrap_pyfunction!(fused_cuda::cuda_kernel_resource_usage, m)?)?;
    m.add_function(wrap_pyfunction!(fused_cuda::cuda_kernel_status, m)?)?;
    m.add_function(wrap_pyfunction!(fused_cuda::cuda_backward_in_place, m)?)?;
    m.add_function(wrap_pyfunction!(numpy::numpy_token_logps, m)?)?;
    m.add_function(wrap_pyfunction!(numpy::numpy_sequence_logps, m)?)?;
    m.add_function(wrap_pyfunction!(numpy::numpy_simper_loss, m)?)?;
    m.add_function(wrap_pyfunction!(numpy::numpy_dil_loss, m)?)?;
    Ok(())
}
