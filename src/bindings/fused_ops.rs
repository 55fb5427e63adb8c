//! The Python entry points of the fused logits op, one forward and one backward for every device:
//! CPU tensors run the Rust kernels (`fused_cpu`), CUDA tensors the CUDA kernel (`fused_cuda`),
//! queued on `cuda_stream` (PyTorch's current stream, passed from `simper_rs.ops`).
use pyo3::prelude::*;
use pyo3_tch::PyTensor;

use crate::bindings::torch::{check_logits_labels, check_logits_labels_shapes, logit_transform};
use crate::bindings::{fused_cpu, fused_cuda};

/// Fused forward: (token log-probs, logsumexp, entropy, argmax == label) of
/// log_softmax(t(logits)), each [B, T'], float32 (float64 for float64 logits); the statistics
/// are empty tensors unless `with_stats`. t is `logit_scale` then `logit_softcap` (c·tanh(z/c)).
/// `check_values=False` skips the label-range check, which reads the labels back (a
/// synchronisation that CUDA graph capture forbids); the kernels then give NaN (CUDA) or an
/// error (CPU) for an out-of-range label.
#[pyfunction]
#[pyo3(signature = (logits, labels, ignore_index = -100, shift = true, with_stats = false, cuda_stream = None, check_values = true, logit_scale = None, logit_softcap = None), text_signature = "(logits, labels, ignore_index=-100, shift=True, with_stats=False, cuda_stream=None, check_values=True, logit_scale=None, logit_softcap=None)")]
#[allow(clippy::too_many_arguments)]
pub fn fused_token_logps_forward(
    py: Python<'_>,
    logits: PyTensor,
    labels: PyTensor,
    ignore_index: i64,
    shift: bool,
    with_stats: bool,
    cuda_stream: Option<u64>,
    check_values: bool,
    logit_scale: Option<f64>,
    logit_softcap: Option<f64>,
) -> PyResult<(PyTensor, PyTensor, PyTensor, PyTensor)> {
    let (a, b, c, d) = py.allow_threads(move || {
        let transform = logit_transform(logit_scale, logit_softcap)?;
        if check_values {
            check_logits_labels(&logits, &labels, ignore_index, shift, false)?;
        } else {
            check_logits_labels_shapes(&logits, &labels, shift)?;
        }
        match cuda_stream {
            Some(stream) => {
                fused_cuda::forward_validated(&logits, &labels, ignore_index, shift, with_stats, transform, stream)
            }
            None => fused_cpu::forward_validated(&logits, &labels, ignore_index, shift, with_stats, transform),
        }
    })?;
    Ok((PyTensor(a), PyTensor(b), PyTensor(c), PyTensor(d)))
}

/// Fused backward: the gradient of the (untransformed) logits, a fresh [B, T, V] tensor in
/// their dtype; `logit_scale` and `logit_softcap` as in the forward.
#[pyfunction]
#[pyo3(signature = (grad_logps, logits, labels, lse, ignore_index = -100, shift = true, cuda_stream = None, logit_scale = None, logit_softcap = None), text_signature = "(grad_logps, logits, labels, lse, ignore_index=-100, shift=True, cuda_stream=None, logit_scale=None, logit_softcap=None)")]
#[allow(clippy::too_many_arguments)]
pub fn fused_token_logps_backward(
    py: Python<'_>,
    grad_logps: PyTensor,
    logits: PyTensor,
    labels: PyTensor,
    lse: PyTensor,
    ignore_index: i64,
    shift: bool,
    cuda_stream: Option<u64>,
    logit_scale: Option<f64>,
    logit_softcap: Option<f64>,
) -> PyResult<PyTensor> {
    let grad = py.allow_threads(move || {
        let transform = logit_transform(logit_scale, logit_softcap)?;
        match cuda_stream {
            Some(stream) => {
                fused_cuda::backward(&grad_logps, &logits, &labels, &lse, ignore_index, shift, transform, stream)
            }
            None => fused_cpu::backward(&grad_logps, &logits, &labels, &lse, ignore_index, shift, transform),
        }
    })?;
    Ok(PyTensor(grad))
}
