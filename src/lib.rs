//! `simper_rs._core`: the Rust extension behind the `simper_rs` Python package.
//!
//! This file only registers functions; the work lives in:
//! - `kernels/`: pure Rust on slices (no torch, no Python), covered by `cargo test`;
//! - `losses.rs`: the loss formulas, one source of truth for tensors and plain numbers;
//! - `torch.rs`: bindings for `torch.Tensor` arguments (validation, GIL release, dispatch).
use pyo3::prelude::*;

pub mod error;
pub mod losses;
pub mod torch;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(torch::check_logps_inputs, m)?)?;
    m.add_function(wrap_pyfunction!(torch::token_logps_torch, m)?)?;
    m.add_function(wrap_pyfunction!(torch::reduce_sequence_logps, m)?)?;
    m.add_function(wrap_pyfunction!(torch::simper_loss, m)?)?;
    m.add_function(wrap_pyfunction!(torch::dil_loss, m)?)?;
    m.add_function(wrap_pyfunction!(torch::preference_metrics, m)?)?;
    Ok(())
}
