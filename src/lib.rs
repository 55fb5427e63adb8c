//! `simper_rs._core`: the Rust extension behind the `simper_rs` Python package.
//!
//! This file only registers functions; the work lives in:
//! - `kernels/`: pure Rust on slices (no torch, no Python), covered by `cargo test`;
//! - `losses.rs`: the loss formulas, one source of truth for tensors and plain numbers;
//! - `torch.rs`: bindings for `torch.Tensor` arguments (validation, GIL release, libtorch ops);
//! - `cuda/`: the CUDA kernel's source, its NVRTC compilation and its launch (driver API);
//! - `fused_cuda.rs`: tensor bindings of the CUDA kernel (PyTorch's allocator and stream);
//! - `fused_ops.rs`: the Python entry points of the fused op, dispatching on the device;
//! - `numpy.rs`: the same kernels and formulas on numpy arrays;
//! - `fused_cpu.rs`: tensor bindings of the fused CPU kernels; `threads.rs`: their thread pool;
//! - `fused_linear.rs`: log-probs from hidden states and the lm_head weight, chunked;
//! - `fused_linear_loss.rs`: the pair losses from hidden states, gradients taken in the forward.
use pyo3::prelude::*;

pub mod cuda;
pub mod error;
pub mod fused_cpu;
pub mod fused_cuda;
pub mod fused_ops;
pub mod fused_linear;
pub mod fused_linear_loss;
pub mod kernels;
pub mod losses;
pub mod numpy;
pub mod threads;
pub mod torch;

/// Compile the CUDA kernel's source with NVRTC (no GPU needed): `arch` "sm_XY" gives the CUBIN
/// (NVRTC runs ptxas, so this checks the generated code too), "compute_XY" the PTX text.
#[pyfunction]
#[pyo3(signature = (arch = "sm_90"))]
fn cuda_compile_kernel(py: Python<'_>, arch: &str) -> PyResult<pyo3::Py<pyo3::types::PyBytes>> {
    let parse = |prefix: &str| arch.strip_prefix(prefix).and_then(|n| n.parse::<i32>().ok()).filter(|&n| (50..=200).contains(&n));
    let target = match (parse("sm_"), parse("compute_")) {
        (Some(sm), _) => cuda::Target::Cubin(sm),
        (_, Some(sm)) => cuda::Target::Ptx(sm),
        _ => return Err(error::Error::value(format!("arch must look like 'sm_90' (machine code) or 'compute_90' (PTX), got '{arch}'")).into()),
    };
    let image = py.allow_threads(|| cuda::compile(target))?;
    Ok(pyo3::types::PyBytes::new(py, &image).unbind())
}

/// ptxas's resource report (registers, shared memory, stack frame, spills) of every kernel for
/// `sm_XY` given as `10·X + Y`.
#[pyfunction]
#[pyo3(signature = (sm = 90))]
fn cuda_kernel_resource_usage(py: Python<'_>, sm: i32) -> PyResult<String> {
    Ok(py.allow_threads(|| cuda::resource_usage(sm))?)
}

/// The GPU architectures (`10·major + minor`) that the loaded NVRTC can compile for.
#[pyfunction]
fn cuda_supported_archs() -> PyResult<Vec<i32>> {
    Ok(cuda::supported_archs()?)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The torch release whose libtorch this extension was compiled against (set by build.rs).
    m.add("TORCH_VERSION", env!("SIMPER_RS_TORCH_VERSION"))?;
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
    m.add_function(wrap_pyfunction!(cuda_compile_kernel, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_supported_archs, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_kernel_resource_usage, m)?)?;
    m.add_function(wrap_pyfunction!(fused_cuda::cuda_kernel_status, m)?)?;
    m.add_function(wrap_pyfunction!(numpy::numpy_token_logps, m)?)?;
    m.add_function(wrap_pyfunction!(numpy::numpy_sequence_logps, m)?)?;
    m.add_function(wrap_pyfunction!(numpy::numpy_simper_loss, m)?)?;
    m.add_function(wrap_pyfunction!(numpy::numpy_dil_loss, m)?)?;
    Ok(())
}
