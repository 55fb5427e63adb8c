//! Tensor bindings of the CUDA kernel (`cuda/logps.cu`): validate, release the GIL, allocate the
//! outputs with PyTorch's allocator, and queue the kernel on the stream the caller names (PyTorch's
//! current stream, passed from Python as `torch.cuda.current_stream().cuda_stream`).
//!
//! The Python entry points are in `fused_ops.rs`; autograd and the fallback when the kernel is
//! unavailable live in Python (`simper_rs.ops`). The kernel's tools (NVRTC compilation, resource
//! report, supported architectures, status) are at the end.
use std::ffi::c_void;

use pyo3::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::bindings::fused_cpu::{rows_view, ForwardTensors};
use crate::bindings::torch::dtype_name;
use crate::cuda::launch::{kernels, ElementKind, Kernel, Rows, Transform};
use crate::error::{Error, Result};
use simper_rs_core::kernels::transform::LogitTransform;

fn cuda_ordinal(name: &str, tensor: &Tensor) -> Result<i32> {
    match tensor.device() {
        Device::Cuda(i) => Ok(i as i32),
        other => Err(Error::value(format!("the CUDA kernel needs {name} on a CUDA device, got {other:?}"))),
    }
}

fn element_kind(kind: Kind) -> Result<ElementKind> {
    match kind {
        Kind::Float => Ok(ElementKind::F32),
        Kind::BFloat16 => Ok(ElementKind::Bf16),
        Kind::Half => Ok(ElementKind::F16),
        other => Err(Error::type_(format!(
            "the CUDA kernel takes float32, bfloat16 or float16 logits, got {} (float64 runs through libtorch ops)",
            dtype_name(other)
        ))),
    }
}

/// The kernel's view of [B, T, V] logits (vocabulary axis contiguous) and their contiguous [B, T]
/// labels: the positions with a label after the shift, and the strides to reach their rows.
fn kernel_rows(logits: &Tensor, shift: bool) -> Rows {
    let (size, stride) = (logits.size(), logits.stride());
    Rows {
        used: size[1] - shift as i64,
        vocab: size[2],
        batch_stride: stride[0],
        position_stride: stride[1],
        labels_stride: size[1],
        shift: shift as i64,
    }
}

/// A pointer to a kernel parameter, as cuLaunchKernel takes them.
fn param<T>(value: &T) -> *mut c_void {
    value as *const T as *mut c_void
}

/// Forward on CUDA after the caller's validation: (logps, lse, entropy, correct), float32 [B, T'].
/// `logits` is [B, T, V] with any batch and position strides; `labels` [B, T].
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_validated(
    logits: &Tensor,
    labels: &Tensor,
    ignore_index: i64,
    shift: bool,
    with_stats: bool,
    transform: LogitTransform,
    stream: u64,
) -> Result<ForwardTensors> {
    let ordinal = cuda_ordinal("logits", logits)?;
    let element = element_kind(logits.kind())?;
    let logits = rows_view(logits);
    let labels = labels.contiguous();
    let rows = kernel_rows(&logits, shift);
    let (size, used) = (logits.size(), rows.used);
    let options = (Kind::Float, logits.device());
    let logps = Tensor::empty([size[0], used], options);
    let lse = Tensor::empty([size[0], used], options);
    let stats_shape: &[i64] = if with_stats { &[size[0], used] } else { &[0] };
    let entropy = Tensor::empty(stats_shape, options);
    let correct = Tensor::empty(stats_shape, options);
    let kernels = kernels(ordinal)?;
    let (logits_ptr, labels_ptr) = (logits.data_ptr(), labels.data_ptr());
    let (logps_ptr, lse_ptr, entropy_ptr, correct_ptr) =
        (logps.data_ptr(), lse.data_ptr(), entropy.data_ptr(), correct.data_ptr());
    let with_stats = with_stats as i32;
    let transform = Transform::from(transform);
    let mut params = [
        param(&logits_ptr),
        param(&labels_ptr),
        param(&rows),
        param(&transform),
        param(&ignore_index),
        param(&with_stats),
        param(&logps_ptr),
        param(&lse_ptr),
        param(&entropy_ptr),
        param(&correct_ptr),
    ];
    // SAFETY: the parameters match `logps_forward_*`; every buffer lives on this device and is
    // held by a tensor that PyTorch's caching allocator keeps for the stream the kernel runs on.
    unsafe {
        kernels.launch(Kernel::Forward(element, transform.kind), size[0] * used, &mut params, stream as usize as _)?
    };
    Ok((logps, lse, entropy, correct))
}

/// Backward on CUDA: the gradient of `logits`, [B, T, V] contiguous, written by `grad` rows of the
/// kernel. `out` may be the logits themselves when they are a contiguous buffer the caller owns.
#[allow(clippy::too_many_arguments)]
fn backward_into(
    out: &Tensor,
    grad_logps: &Tensor,
    logits: &Tensor,
    labels: &Tensor,
    lse: &Tensor,
    ignore_index: i64,
    shift: bool,
    transform: LogitTransform,
    stream: u64,
) -> Result<()> {
    let ordinal = cuda_ordinal("logits", logits)?;
    let element = element_kind(logits.kind())?;
    let labels = labels.contiguous();
    let grad_logps = grad_logps.to_kind(Kind::Float).contiguous();
    let lse = lse.to_kind(Kind::Float).contiguous();
    let size = logits.size();
    let rows = kernel_rows(logits, shift);
    let kernels = kernels(ordinal)?;
    let (logits_ptr, labels_ptr, grad_logps_ptr, lse_ptr, out_ptr) =
        (logits.data_ptr(), labels.data_ptr(), grad_logps.data_ptr(), lse.data_ptr(), out.data_ptr());
    let positions = size[1];
    let transform = Transform::from(transform);
    let mut params = [
        param(&logits_ptr),
        param(&labels_ptr),
        param(&rows),
        param(&transform),
        param(&ignore_index),
        param(&grad_logps_ptr),
        param(&lse_ptr),
        param(&out_ptr),
        param(&positions),
    ];
    // SAFETY: as in `forward_validated`; `out` is a contiguous [B, T, V] buffer of the logits' dtype.
    unsafe {
        kernels.launch(Kernel::Backward(element, transform.kind), size[0] * size[1], &mut params, stream as usize as _)
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    grad_logps: &Tensor,
    logits: &Tensor,
    labels: &Tensor,
    lse: &Tensor,
    ignore_index: i64,
    shift: bool,
    transform: LogitTransform,
    stream: u64,
) -> Result<Tensor> {
    let logits = rows_view(logits);
    let grad = Tensor::empty(logits.size(), (logits.kind(), logits.device()));
    backward_into(&grad, grad_logps, &logits, labels, lse, ignore_index, shift, transform, stream)?;
    Ok(grad)
}

/// In-place backward over `logits` `[n, V]` (contiguous, owned by the caller, overwritten with
/// the gradient with respect to them, before `transform`); `targets`, `grad_logps` and `lse` are `[n]`.
pub(crate) fn backward_in_place(
    logits: &Tensor,
    targets: &Tensor,
    ignore_index: i64,
    transform: LogitTransform,
    grad_logps: &Tensor,
    lse: &Tensor,
    stream: u64,
) -> Result<()> {
    if !logits.is_contiguous() || logits.dim() != 2 {
        return Err(Error::value("in-place backward needs a contiguous [rows, vocab] buffer"));
    }
    let rows = logits.unsqueeze(0);
    backward_into(
        &rows,
        &grad_logps.unsqueeze(0),
        &rows,
        &targets.unsqueeze(0),
        &lse.unsqueeze(0),
        ignore_index,
        false,
        transform,
        stream,
    )
}

/// Why the CUDA kernel cannot run on device `ordinal`, or None when it is compiled, loaded and
/// ready (the first call compiles it: about a second).
#[pyfunction]
pub fn cuda_kernel_status(py: Python<'_>, ordinal: i32) -> Option<String> {
    py.allow_threads(|| kernels(ordinal).err().map(|err| err.to_string()))
}

/// Compile the CUDA kernel's source with NVRTC (no GPU needed): `arch` "sm_XY" gives the CUBIN
/// (NVRTC runs ptxas, so this checks the generated code too), "compute_XY" the PTX text.
#[pyfunction]
#[pyo3(signature = (arch = "sm_90"))]
pub fn cuda_compile_kernel(py: Python<'_>, arch: &str) -> PyResult<pyo3::Py<pyo3::types::PyBytes>> {
    let parse = |prefix: &str| {
        arch.strip_prefix(prefix).and_then(|n| n.parse::<i32>().ok()).filter(|&n| (50..=200).contains(&n))
    };
    let target = match (parse("sm_"), parse("compute_")) {
        (Some(sm), _) => crate::cuda::Target::Cubin(sm),
        (_, Some(sm)) => crate::cuda::Target::Ptx(sm),
        _ => {
            return Err(Error::value(format!(
                "arch must look like 'sm_90' (machine code) or 'compute_90' (PTX), got '{arch}'"
            ))
            .into())
        }
    };
    let image = py.allow_threads(|| crate::cuda::compile(target))?;
    Ok(pyo3::types::PyBytes::new(py, &image).unbind())
}

/// ptxas's resource report (registers, shared memory, stack frame, spills) of every kernel for
/// `sm_XY` given as `10·X + Y`.
#[pyfunction]
#[pyo3(signature = (sm = 90))]
pub fn cuda_kernel_resource_usage(py: Python<'_>, sm: i32) -> PyResult<String> {
    Ok(py.allow_threads(|| crate::cuda::resource_usage(sm))?)
}

/// The GPU architectures (`10·major + minor`) that the loaded NVRTC can compile for.
#[pyfunction]
pub fn cuda_supported_archs() -> PyResult<Vec<i32>> {
    Ok(crate::cuda::supported_archs()?)
}

/// The in-place backward the fused-linear op runs on each chunk of logits, for the kernel's
/// self-check (`simper_rs.cuda_check`): overwrites `rows` `[n, V]` (a contiguous CUDA tensor of
/// float32, bfloat16 or float16) with g·(onehot(target) − exp(row − lse)), zero where the target
/// is `ignore_index`; `targets` (int64), `grad_logps` and `lse` are `[n]` on the same device.
#[pyfunction]
#[pyo3(signature = (rows, targets, grad_logps, lse, ignore_index, cuda_stream, logit_scale = None, logit_softcap = None))]
#[allow(clippy::too_many_arguments)]
pub fn cuda_backward_in_place(
    py: Python<'_>,
    rows: pyo3_tch::PyTensor,
    targets: pyo3_tch::PyTensor,
    grad_logps: pyo3_tch::PyTensor,
    lse: pyo3_tch::PyTensor,
    ignore_index: i64,
    cuda_stream: u64,
    logit_scale: Option<f64>,
    logit_softcap: Option<f64>,
) -> PyResult<()> {
    py.allow_threads(move || -> Result<()> {
        let transform = crate::bindings::torch::logit_transform(logit_scale, logit_softcap)?;
        cuda_ordinal("rows", &rows)?;
        element_kind(rows.kind())?;
        if rows.dim() != 2 || !rows.is_contiguous() {
            return Err(Error::value(format!("rows must be a contiguous [n, V] tensor, got shape {:?}", rows.size())));
        }
        let n = rows.size()[0];
        for (name, tensor) in [("targets", &targets), ("grad_logps", &grad_logps), ("lse", &lse)] {
            if tensor.size() != [n] || tensor.device() != rows.device() {
                return Err(Error::value(format!(
                    "{name} must be [{n}] on {:?} like the rows, got {:?} on {:?}",
                    rows.device(),
                    tensor.size(),
                    tensor.device()
                )));
            }
        }
        if targets.kind() != Kind::Int64 {
            return Err(Error::type_(format!("targets must be int64, got {}", dtype_name(targets.kind()))));
        }
        backward_in_place(&rows, &targets, ignore_index, transform, &grad_logps, &lse, cuda_stream)
    })?;
    Ok(())
}
