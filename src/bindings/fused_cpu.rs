//! Tensor bindings of the fused CPU kernels (`kernels::logps`): validate, release the GIL,
//! borrow the tensors' memory as slices (honouring strides), and run on the kernel pool.
//!
//! The Python entry points are in `fused_ops.rs`; autograd is registered in Python
//! (`simper_rs.ops`, `torch.library.custom_op`).
use half::{bf16, f16};
use pyo3::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::bindings::torch::{accumulation_kind, dtype_name};
use crate::error::{Error, Result};
use crate::threads;
use simper_rs_core::kernels::element::Logit;
use simper_rs_core::kernels::logps::{self, ForwardOutputs, KernelError, LogitsRows};
use simper_rs_core::kernels::transform::LogitTransform;

impl From<KernelError> for Error {
    fn from(err: KernelError) -> Self {
        Error::value(err.to_string())
    }
}

/// Calls `$body` with `$E` bound to the Rust element type of a logits dtype.
macro_rules! with_logit_type {
    ($kind:expr, $E:ident => $body:expr) => {
        match $kind {
            Kind::Float => {
                type $E = f32;
                $body
            }
            Kind::Double => {
                type $E = f64;
                $body
            }
            Kind::BFloat16 => {
                type $E = bf16;
                $body
            }
            Kind::Half => {
                type $E = f16;
                $body
            }
            other => Err(Error::type_(format!(
                "logits must be float32, float64, bfloat16 or float16, got {}",
                dtype_name(other)
            ))),
        }
    };
}

fn require_cpu(name: &str, tensor: &Tensor) -> Result<()> {
    if tensor.device() != Device::Cpu {
        return Err(Error::value(format!(
            "backend='rust' runs on CPU tensors, but {name} is on {:?}; use backend='auto' to pick the right kernel",
            tensor.device()
        )));
    }
    Ok(())
}

/// The tensor's elements from its first one to its last one, as a slice.
///
/// SAFETY: `tensor` must hold elements of type `T` and outlive the slice; `len` must not reach
/// past its storage.
unsafe fn raw_slice<T>(tensor: &Tensor, len: usize) -> &[T] {
    if len == 0 {
        return &[];
    }
    std::slice::from_raw_parts(tensor.data_ptr() as *const T, len)
}

/// SAFETY: as [`raw_slice`], and nothing else may access the tensor meanwhile.
unsafe fn raw_slice_mut<T>(tensor: &mut Tensor, len: usize) -> &mut [T] {
    if len == 0 {
        return &mut [];
    }
    std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut T, len)
}

/// A logits tensor whose vocabulary dimension is contiguous (copied only if it is not).
pub(crate) fn rows_view(logits: &Tensor) -> Tensor {
    if logits.stride()[2] == 1 || logits.size()[2] <= 1 {
        logits.shallow_clone()
    } else {
        logits.contiguous()
    }
}

fn logits_rows<E: Logit>(logits: &Tensor) -> Result<LogitsRows<'_, E>> {
    let (size, stride) = (logits.size(), logits.stride());
    let shape = [size[0] as usize, size[1] as usize, size[2] as usize];
    let strides = [stride[0] as usize, stride[1] as usize];
    let span =
        if shape.contains(&0) { 0 } else { (shape[0] - 1) * strides[0] + (shape[1] - 1) * strides[1] + shape[2] };
    // SAFETY: the dtype was matched to E by the caller; the span ends at the last element.
    let data = unsafe { raw_slice::<E>(logits, span) };
    Ok(LogitsRows::new(data, shape, strides)?)
}

fn tensor_slice<T>(tensor: &Tensor) -> &[T] {
    debug_assert!(tensor.is_contiguous());
    // SAFETY: callers pass contiguous tensors of element type T.
    unsafe { raw_slice(tensor, tensor.numel()) }
}

fn tensor_slice_mut<T>(tensor: &mut Tensor) -> &mut [T] {
    let n = tensor.numel();
    // SAFETY: freshly allocated contiguous tensors of element type T, owned by the caller.
    unsafe { raw_slice_mut(tensor, n) }
}

pub(crate) type ForwardTensors = (Tensor, Tensor, Tensor, Tensor);

/// Fused forward on CPU for inputs the caller has validated (`fused_ops`; the fused-linear op checks
/// its labels once, not once per chunk). The kernel still refuses out-of-range labels and short
/// buffers.
pub(crate) fn forward_validated(
    logits: &Tensor,
    labels: &Tensor,
    ignore_index: i64,
    shift: bool,
    with_stats: bool,
    transform: LogitTransform,
) -> Result<ForwardTensors> {
    require_cpu("logits", logits)?;
    let logits = rows_view(logits);
    let labels = labels.contiguous();
    let size = logits.size();
    let used = size[1] - shift as i64;
    let options = (accumulation_kind(logits.kind()), Device::Cpu);
    let mut logps = Tensor::empty([size[0], used], options);
    let mut lse = Tensor::empty([size[0], used], options);
    let stats_shape: &[i64] = if with_stats { &[size[0], used] } else { &[0] };
    let mut entropy = Tensor::empty(stats_shape, options);
    let mut correct = Tensor::empty(stats_shape, options);
    with_logit_type!(logits.kind(), E => {
        let rows = logits_rows::<E>(&logits)?;
        let out = ForwardOutputs {
            logps: tensor_slice_mut(&mut logps),
            lse: tensor_slice_mut(&mut lse),
            stats: with_stats.then(|| (tensor_slice_mut(&mut entropy), tensor_slice_mut(&mut correct))),
        };
        let labels = tensor_slice::<i64>(&labels);
        threads::install(|| logps::forward::<E>(&rows, labels, ignore_index, shift, transform, out))?;
        Ok(())
    })?;
    Ok((logps, lse, entropy, correct))
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
) -> Result<Tensor> {
    require_cpu("logits", logits)?;
    let logits = rows_view(logits);
    let labels = labels.contiguous();
    let acc = accumulation_kind(logits.kind());
    let grad_logps = grad_logps.to_kind(acc).contiguous();
    let lse = lse.to_kind(acc).contiguous();
    let mut grad = Tensor::empty(logits.size(), (logits.kind(), Device::Cpu));
    advise_huge_pages(&grad);
    with_logit_type!(logits.kind(), E => {
        let rows = logits_rows::<E>(&logits)?;
        let out = tensor_slice_mut::<E>(&mut grad);
        let (labels, upstream, lse) = (tensor_slice::<i64>(&labels), tensor_slice(&grad_logps), tensor_slice(&lse));
        threads::install(|| logps::backward::<E>(&rows, labels, ignore_index, shift, transform, upstream, lse, out))?;
        Ok(())
    })?;
    Ok(grad)
}

/// Gradients at least this large are backed by transparent huge pages where the kernel allows.
const HUGE_PAGE_MIN_BYTES: usize = 32 << 20;

/// Asks Linux to back a freshly allocated (not yet touched) gradient with 2 MiB pages: the
/// backward writes every byte of it, and one fault per 2 MiB instead of per 4 KiB takes most of
/// the page-fault time off that write (see benchmarks/RESULTS.md). Only advice: where
/// transparent huge pages are off, or the call fails, nothing changes.
fn advise_huge_pages(tensor: &Tensor) {
    #[cfg(target_os = "linux")]
    {
        let bytes = tensor.numel() * tensor.kind().elt_size_in_bytes();
        if bytes < HUGE_PAGE_MIN_BYTES {
            return;
        }
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, length: usize, advice: std::ffi::c_int) -> std::ffi::c_int;
        }
        const MADV_HUGEPAGE: std::ffi::c_int = 14;
        const PAGE: usize = 4096;
        // madvise takes whole pages: the page-aligned part inside the buffer.
        let start = tensor.data_ptr() as usize;
        let first = start.div_ceil(PAGE) * PAGE;
        let last = (start + bytes) / PAGE * PAGE;
        if last > first {
            // SAFETY: the range lies inside the tensor's allocation, and MADV_HUGEPAGE changes
            // only how its pages are backed, never their contents.
            unsafe { madvise(first as *mut std::ffi::c_void, last - first, MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = tensor;
}

/// In-place backward over `logits` `[n, V]` (contiguous, owned by the caller, overwritten with
/// the gradient with respect to them, before `transform`); `targets`, `grad_logps` and `lse` are `[n]`.
pub(crate) fn backward_in_place(
    logits: &mut Tensor,
    targets: &Tensor,
    ignore_index: i64,
    transform: LogitTransform,
    grad_logps: &Tensor,
    lse: &Tensor,
) -> Result<()> {
    require_cpu("logits", logits)?;
    if !logits.is_contiguous() || logits.dim() != 2 {
        return Err(Error::value("in-place backward needs a contiguous [rows, vocab] buffer"));
    }
    let vocab = logits.size()[1] as usize;
    let acc = accumulation_kind(logits.kind());
    let (targets, grad_logps, lse) =
        (targets.contiguous(), grad_logps.to_kind(acc).contiguous(), lse.to_kind(acc).contiguous());
    with_logit_type!(logits.kind(), E => {
        let rows = tensor_slice_mut::<E>(logits);
        let (labels, upstream, lse) = (tensor_slice::<i64>(&targets), tensor_slice(&grad_logps), tensor_slice(&lse));
        threads::install(|| logps::backward_in_place::<E>(rows, vocab, labels, ignore_index, transform, upstream, lse))?;
        Ok(())
    })
}

/// The instruction set the CPU kernels' row code runs with on this machine.
#[pyfunction]
pub fn cpu_kernel_path() -> &'static str {
    simper_rs_core::kernels::logps::row_code_path()
}

/// Number of threads the CPU kernels use: `SIMPER_RS_NUM_THREADS`, else `torch.get_num_threads()`.
#[pyfunction]
pub fn kernel_threads() -> usize {
    threads::current_threads()
}
