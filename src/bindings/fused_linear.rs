//! Fused-linear log-probs (SPEC §4): from the last hidden states and the `lm_head` weight, in
//! chunks of positions, so that the `[B, T, V]` logits never exist.
//!
//! Forward, per chunk of labelled positions: logits_c = h_c·Wᵀ (+ b), then the per-row math of
//! the fused kernel (CPU or CUDA) or of the libtorch reference (elsewhere); only the log-probs and
//! the logsumexp (one float per position) outlive the chunk. Backward recomputes logits_c, forms
//! the row gradients G_c, and accumulates grad h_c = G_c·W, grad W += G_cᵀ·h_c, grad b += Σ G_c.
//! Positions whose label is ignored are skipped entirely (no matmul, no softmax).
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::bindings::{fused_cpu, fused_cuda};
use crate::bindings::torch::{accumulation_kind, check_labels, dtype_name, is_float, reference_token_logps, reference_token_stats, shifted_labels, LabelSource};

/// Bytes of one chunk's logits that the automatic chunk size never exceeds. One such buffer is
/// alive at a time: the backward overwrites the chunk's logits with their gradient (on CPU).
const CHUNK_TARGET_BYTES: i64 = 64 << 20;

/// Fewest rows of an automatic chunk: smaller chunk matmuls re-read the whole weight too often.
const MIN_CHUNK_ROWS: i64 = 128;

/// Rows per chunk: `chunk_size` when given, else [`linear_chunk_rows`].
pub(crate) fn chunk_rows(positions: i64, hidden_size: i64, vocab: i64, kind: Kind, chunk_size: Option<i64>) -> i64 {
    chunk_size.unwrap_or_else(|| linear_chunk_rows(positions, hidden_size, vocab, kind.elt_size_in_bytes() as i64))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn check_linear_inputs(hidden: &Tensor, weight: &Tensor, bias: Option<&Tensor>, labels: &Tensor, ignore_index: i64, shift: bool, chunk_size: Option<i64>, require_tokens: bool) -> Result<()> {
    let hsize = hidden.size();
    if hsize.len() != 3 {
        return Err(Error::value(format!("hidden must be a 3-D tensor [batch, seq_len, hidden_size], got shape {hsize:?}")));
    }
    let wsize = weight.size();
    if wsize.len() != 2 {
        return Err(Error::value(format!("weight must be a 2-D tensor [vocab, hidden_size] (an lm_head.weight), got shape {wsize:?}")));
    }
    for (name, t) in [("hidden", hidden), ("weight", weight)] {
        if !is_float(t.kind()) {
            return Err(Error::type_(format!("{name} must be a floating-point tensor, got {}", dtype_name(t.kind()))));
        }
    }
    if weight.kind() != hidden.kind() {
        return Err(Error::type_(format!(
            "weight dtype {} must equal hidden dtype {} (cast one of them, as the model's lm_head would)",
            dtype_name(weight.kind()),
            dtype_name(hidden.kind())
        )));
    }
    if wsize[1] != hsize[2] {
        return Err(Error::value(format!(
            "weight is [vocab, hidden_size] = {wsize:?}, but hidden has hidden_size {} (shape {hsize:?})",
            hsize[2]
        )));
    }
    if weight.device() != hidden.device() {
        return Err(Error::value(format!("weight is on {:?} but hidden on {:?}", weight.device(), hidden.device())));
    }
    if let Some(b) = bias {
        if b.size() != [wsize[0]] {
            return Err(Error::value(format!("bias must be a 1-D tensor [vocab] = [{}], got shape {:?}", wsize[0], b.size())));
        }
        if b.kind() != hidden.kind() {
            return Err(Error::type_(format!("bias dtype {} must equal hidden dtype {}", dtype_name(b.kind()), dtype_name(hidden.kind()))));
        }
        if b.device() != hidden.device() {
            return Err(Error::value(format!("bias is on {:?} but hidden on {:?}", b.device(), hidden.device())));
        }
    }
    if let Some(c) = chunk_size {
        if c < 1 {
            return Err(Error::value(format!("chunk_size must be a positive number of positions, got {c}")));
        }
    }
    let source = LabelSource { name: "hidden", batch: hsize[0], seq_len: hsize[1], vocab: wsize[0], device: hidden.device() };
    check_labels(labels, &source, ignore_index, shift, require_tokens).map(|_| ())
}

/// Which hidden rows (flattened [B·T]) predict a label, and where their results go in the
/// flattened [B·T'] outputs.
pub(crate) struct LabelledRows {
    pub(crate) hidden_rows: Tensor,
    pub(crate) output_rows: Tensor,
    pub(crate) targets: Tensor,
}

pub(crate) fn labelled_rows(labels: &Tensor, ignore_index: i64, shift: bool) -> LabelledRows {
    let used = shifted_labels(labels, shift);
    let positions = used.size()[1];
    let flat = used.reshape([-1]);
    let output_rows = flat.ne(ignore_index).nonzero().reshape([-1]);
    // Output row b·T' + t reads hidden row b·T + t: add b once per batch row when shifting.
    let hidden_rows = if shift { &output_rows + output_rows.divide_scalar_mode(positions, "floor") } else { output_rows.shallow_clone() };
    let targets = flat.index_select(0, &output_rows);
    LabelledRows { hidden_rows, output_rows, targets }
}

/// Logits of one chunk of rows at a time, into one reusable buffer: no allocation (and no page
/// faults) per chunk. Chunks are `[start, start + n)` ranges over the labelled rows.
pub(crate) struct ChunkedLogits<'a> {
    weight_t: Tensor,
    bias: Option<&'a Tensor>,
    buffer: Tensor,
    step: i64,
    total: i64,
}

impl<'a> ChunkedLogits<'a> {
    fn new(hidden: &Tensor, weight: &Tensor, bias: Option<&'a Tensor>, chunk_size: Option<i64>, total: i64) -> Self {
        let step = chunk_rows(total, hidden.size()[hidden.dim() - 1], weight.size()[0], hidden.kind(), chunk_size).min(total.max(1));
        Self::with_rows(hidden, weight, bias, step, total)
    }

    /// A buffer of `rows` rows, for callers that choose their own chunk boundaries.
    pub(crate) fn with_rows(hidden: &Tensor, weight: &Tensor, bias: Option<&'a Tensor>, rows: i64, total: i64) -> Self {
        let buffer = Tensor::empty([rows, weight.size()[0]], (hidden.kind(), hidden.device()));
        Self { weight_t: weight.transpose(0, 1), bias, buffer, step: rows, total }
    }

    fn chunks(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        (0..self.total).step_by(self.step as usize).map(move |start| (start, self.step.min(self.total - start)))
    }

    /// h_c·Wᵀ (+ b) for the `n` rows of `h_c`, in the shared buffer.
    pub(crate) fn logits(&self, h_c: &Tensor) -> Tensor {
        let mut logits = self.buffer.narrow(0, 0, h_c.size()[0]);
        let _ = h_c.matmul_out(&logits, &self.weight_t);
        if let Some(b) = self.bias {
            logits += b;
        }
        logits
    }
}

type LinearForward = (Tensor, Tensor, Tensor, Tensor);

/// Per-row (log-prob of the target, logsumexp, entropy, argmax == target) of one chunk's logits
/// `[n, V]`, each `[1, n]` (the statistics empty unless `with_stats`): the fused CPU kernel, the
/// CUDA kernel on `cuda_stream`, or libtorch ops elsewhere.
pub(crate) fn chunk_softmax(logits: &Tensor, targets: &Tensor, ignore_index: i64, with_stats: bool, cuda_stream: Option<u64>) -> Result<LinearForward> {
    let (logits, targets) = (logits.unsqueeze(0), targets.unsqueeze(0));
    if logits.device() == Device::Cpu {
        return fused_cpu::forward_validated(&logits, &targets, ignore_index, false, with_stats);
    }
    if let Some(stream) = cuda_stream {
        return fused_cuda::forward_validated(&logits, &targets, ignore_index, false, with_stats, stream);
    }
    let acc = accumulation_kind(logits.kind());
    let lp = reference_token_logps(&logits, &targets, ignore_index, false);
    let ls = logits.to_kind(acc).logsumexp(-1, false);
    let none = || Tensor::zeros([0], (acc, logits.device()));
    let (ent, cor) = if with_stats { reference_token_stats(&logits, &targets, ignore_index, false) } else { (none(), none()) };
    Ok((lp, ls, ent, cor))
}

/// The row gradients g·(onehot(y) − softmax(x)) of one chunk's logits `[n, V]`, given each row's
/// incoming gradient `g` and logsumexp `l` (`[n]`): written over the logits by the fused kernels
/// (they are not needed again), through libtorch ops elsewhere.
pub(crate) fn chunk_row_grads(mut logits: Tensor, targets: &Tensor, ignore_index: i64, g: &Tensor, l: &Tensor, cuda_stream: Option<u64>) -> Result<Tensor> {
    if logits.device() == Device::Cpu {
        fused_cpu::backward_in_place(&mut logits, targets, ignore_index, g, l)?;
        Ok(logits)
    } else if let Some(stream) = cuda_stream {
        fused_cuda::backward_in_place(&logits, targets, ignore_index, g, l, stream)?;
        Ok(logits)
    } else {
        Ok(reference_row_grads(&logits, targets, l, g))
    }
}

/// The stream to run the chunks' softmax on in the CUDA kernel, or None for libtorch ops: the
/// caller's stream when it gave one and the dtype is one the kernel takes (not float64).
pub(crate) fn cuda_kernel_stream(hidden: &Tensor, cuda_stream: Option<u64>) -> Option<u64> {
    cuda_stream.filter(|_| matches!(hidden.kind(), Kind::Float | Kind::BFloat16 | Kind::Half))
}

#[allow(clippy::too_many_arguments)]
fn forward(hidden: &Tensor, weight: &Tensor, bias: Option<&Tensor>, labels: &Tensor, ignore_index: i64, shift: bool, chunk_size: Option<i64>, with_stats: bool, cuda_stream: Option<u64>) -> Result<LinearForward> {
    let cuda_stream = cuda_kernel_stream(hidden, cuda_stream);
    check_linear_inputs(hidden, weight, bias, labels, ignore_index, shift, chunk_size, false)?;
    let _guard = tch::no_grad_guard();
    let (b, t, h) = (hidden.size()[0], hidden.size()[1], hidden.size()[2]);
    let used = t - shift as i64;
    let acc = accumulation_kind(hidden.kind());
    let options = (acc, hidden.device());
    let mut logps = Tensor::zeros([b * used], options);
    let mut lse = Tensor::zeros([b * used], options);
    let stats_len = if with_stats { b * used } else { 0 };
    let mut entropy = Tensor::zeros([stats_len], options);
    let mut correct = Tensor::zeros([stats_len], options);
    let rows = labelled_rows(labels, ignore_index, shift);
    let hidden_flat = hidden.reshape([b * t, h]);
    let chunked = ChunkedLogits::new(hidden, weight, bias, chunk_size, rows.output_rows.size()[0]);
    for (start, n) in chunked.chunks() {
        let logits = chunked.logits(&hidden_flat.index_select(0, &rows.hidden_rows.narrow(0, start, n)));
        let (lp, ls, ent, cor) = chunk_softmax(&logits, &rows.targets.narrow(0, start, n), ignore_index, with_stats, cuda_stream)?;
        let out_rows = rows.output_rows.narrow(0, start, n);
        let _ = logps.index_copy_(0, &out_rows, &lp.reshape([-1]));
        let _ = lse.index_copy_(0, &out_rows, &ls.reshape([-1]));
        if with_stats {
            let _ = entropy.index_copy_(0, &out_rows, &ent.reshape([-1]));
            let _ = correct.index_copy_(0, &out_rows, &cor.reshape([-1]));
        }
    }
    let shape = [b, used];
    let stats_shape: &[i64] = if with_stats { &shape } else { &[0] };
    Ok((logps.reshape(shape), lse.reshape(shape), entropy.reshape(stats_shape), correct.reshape(stats_shape)))
}

/// grad W += G_cᵀ·h_c and grad b += Σ G_c, in the accumulators' dtype (float32, or float64).
pub(crate) fn accumulate_parameter_grads(row_grads: &Tensor, h_c: &Tensor, grad_weight: Option<&mut Tensor>, grad_bias: Option<&mut Tensor>) {
    if let Some(gw) = grad_weight {
        if gw.kind() == row_grads.kind() {
            let _ = gw.addmm_(&row_grads.transpose(0, 1), h_c); // accumulate, no temporary
        } else {
            let _ = gw.g_add_(&row_grads.transpose(0, 1).matmul(h_c).to_kind(gw.kind()));
        }
    }
    if let Some(gb) = grad_bias {
        let _ = gb.g_add_(&row_grads.sum_dim_intlist(0, false, gb.kind()));
    }
}

/// Row gradients g·(onehot(y) − softmax(x)) of one chunk through libtorch ops (non-CPU devices).
fn reference_row_grads(logits: &Tensor, targets: &Tensor, lse: &Tensor, grad: &Tensor) -> Tensor {
    let acc = accumulation_kind(logits.kind());
    let probs = (logits.to_kind(acc) - lse.unsqueeze(-1)).exp();
    let g = grad.unsqueeze(-1);
    let rows = -(&probs * &g);
    rows.scatter_add(-1, &targets.unsqueeze(-1), &g).to_kind(logits.kind())
}

#[allow(clippy::too_many_arguments)]
fn backward(grad_logps: &Tensor, hidden: &Tensor, weight: &Tensor, bias: Option<&Tensor>, labels: &Tensor, lse: &Tensor, ignore_index: i64, shift: bool, chunk_size: Option<i64>, cuda_stream: Option<u64>) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let cuda_stream = cuda_kernel_stream(hidden, cuda_stream);
    let _guard = tch::no_grad_guard();
    let (b, t, h) = (hidden.size()[0], hidden.size()[1], hidden.size()[2]);
    let acc = accumulation_kind(hidden.kind());
    let rows = labelled_rows(labels, ignore_index, shift);
    let hidden_flat = hidden.reshape([b * t, h]);
    let grad_flat = grad_logps.to_kind(acc).reshape([-1]);
    let lse_flat = lse.to_kind(acc).reshape([-1]);
    // Each labelled hidden row belongs to exactly one chunk: its gradient is written once, in the
    // hidden dtype. The weight and bias gradients sum over chunks, in float32 (float64 for
    // float64), cast once at the end.
    let mut grad_hidden = Tensor::zeros([b * t, h], (hidden.kind(), hidden.device()));
    let mut grad_weight = Tensor::zeros(weight.size(), (acc, weight.device()));
    let mut grad_bias = bias.map(|bb| Tensor::zeros(bb.size(), (acc, bb.device())));
    let chunked = ChunkedLogits::new(hidden, weight, bias, chunk_size, rows.output_rows.size()[0]);
    for (start, n) in chunked.chunks() {
        let hidden_rows = rows.hidden_rows.narrow(0, start, n);
        let out_rows = rows.output_rows.narrow(0, start, n);
        let h_c = hidden_flat.index_select(0, &hidden_rows);
        let logits = chunked.logits(&h_c);
        let g = grad_flat.index_select(0, &out_rows);
        let l = lse_flat.index_select(0, &out_rows);
        let row_grads = chunk_row_grads(logits, &rows.targets.narrow(0, start, n), ignore_index, &g, &l, cuda_stream)?;
        let _ = grad_hidden.index_copy_(0, &hidden_rows, &row_grads.matmul(weight));
        accumulate_parameter_grads(&row_grads, &h_c, Some(&mut grad_weight), grad_bias.as_mut());
    }
    Ok((
        grad_hidden.reshape([b, t, h]),
        grad_weight.to_kind(weight.kind()),
        grad_bias.map(|gb| gb.to_kind(weight.kind())),
    ))
}

/// Validate fused-linear inputs as the public functions do; raises on bad input.
#[pyfunction]
#[pyo3(signature = (hidden, weight, bias, labels, ignore_index = -100, shift = true, require_tokens = false), text_signature = "(hidden, weight, bias, labels, ignore_index=-100, shift=True, require_tokens=False)")]
#[allow(clippy::too_many_arguments)]
pub fn check_linear_logps_inputs(
    py: Python<'_>,
    hidden: PyTensor,
    weight: PyTensor,
    bias: Option<PyTensor>,
    labels: PyTensor,
    ignore_index: i64,
    shift: bool,
    require_tokens: bool,
) -> PyResult<()> {
    py.allow_threads(move || check_linear_inputs(&hidden, &weight, bias.as_deref(), &labels, ignore_index, shift, None, require_tokens))?;
    Ok(())
}

/// Fused-linear forward: (token log-probs, logsumexp, entropy, argmax == label), each [B, T']
/// (the statistics empty unless `with_stats`). No autograd: see `simper_rs.ops`. On CUDA,
/// `cuda_stream` (PyTorch's current stream) runs the per-chunk softmax in the CUDA kernel; None
/// runs it through libtorch ops.
#[pyfunction]
#[pyo3(signature = (hidden, weight, bias, labels, ignore_index = -100, shift = true, chunk_size = None, with_stats = false, cuda_stream = None), text_signature = "(hidden, weight, bias, labels, ignore_index=-100, shift=True, chunk_size=None, with_stats=False, cuda_stream=None)")]
#[allow(clippy::too_many_arguments)]
pub fn linear_token_logps_forward(
    py: Python<'_>,
    hidden: PyTensor,
    weight: PyTensor,
    bias: Option<PyTensor>,
    labels: PyTensor,
    ignore_index: i64,
    shift: bool,
    chunk_size: Option<i64>,
    with_stats: bool,
    cuda_stream: Option<u64>,
) -> PyResult<(PyTensor, PyTensor, PyTensor, PyTensor)> {
    let (a, b, c, d) = py.allow_threads(move || forward(&hidden, &weight, bias.as_deref(), &labels, ignore_index, shift, chunk_size, with_stats, cuda_stream))?;
    Ok((PyTensor(a), PyTensor(b), PyTensor(c), PyTensor(d)))
}

/// Fused-linear backward: (grad hidden, grad weight, grad bias or None); `cuda_stream` as in the
/// forward.
#[pyfunction]
#[pyo3(signature = (grad_logps, hidden, weight, bias, labels, lse, ignore_index = -100, shift = true, chunk_size = None, cuda_stream = None), text_signature = "(grad_logps, hidden, weight, bias, labels, lse, ignore_index=-100, shift=True, chunk_size=None, cuda_stream=None)")]
#[allow(clippy::too_many_arguments)]
pub fn linear_token_logps_backward(
    py: Python<'_>,
    grad_logps: PyTensor,
    hidden: PyTensor,
    weight: PyTensor,
    bias: Option<PyTensor>,
    labels: PyTensor,
    lse: PyTensor,
    ignore_index: i64,
    shift: bool,
    chunk_size: Option<i64>,
    cuda_stream: Option<u64>,
) -> PyResult<(PyTensor, PyTensor, Option<PyTensor>)> {
    let (gh, gw, gb) = py.allow_threads(move || backward(&grad_logps, &hidden, &weight, bias.as_deref(), &labels, &lse, ignore_index, shift, chunk_size, cuda_stream))?;
    Ok((PyTensor(gh), PyTensor(gw), gb.map(PyTensor)))
}

/// The chunk size (positions) the fused-linear op picks for `positions` labelled positions: one
/// chunk's logits about the size of the hidden states they come from (rows·V ≈ positions·H, as
/// chunked losses elsewhere pick it), so small batches do not pay a fixed buffer; at least
/// MIN_CHUNK_ROWS rows; at most what keeps the chunk's logits under CHUNK_TARGET_BYTES.
#[pyfunction]
pub fn linear_chunk_rows(positions: i64, hidden_size: i64, vocab: i64, dtype_bytes: i64) -> i64 {
    let vocab = vocab.max(1);
    let cap = (CHUNK_TARGET_BYTES / (vocab * dtype_bytes.max(1))).clamp(1, 1 << 16);
    let like_hidden = (positions.max(1) * hidden_size.max(1) + vocab - 1) / vocab;
    like_hidden.max(MIN_CHUNK_ROWS).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_chunk_follows_the_hidden_states_within_bounds() {
        // 1024 positions, H = 512, V = 32000: logits of 1024·512 elements would be 17 rows; the floor is 128.
        assert_eq!(linear_chunk_rows(1024, 512, 32000, 4), MIN_CHUNK_ROWS);
        // 16384 positions, H = 4096: 2097 rows like the hidden states, capped by 64 MiB of bf16 logits.
        assert_eq!(linear_chunk_rows(16384, 4096, 128256, 2), CHUNK_TARGET_BYTES / (128256 * 2));
        // in between, rows·V ≈ positions·H
        let rows = linear_chunk_rows(8192, 1024, 32000, 4);
        assert_eq!(rows, (8192 * 1024 + 31999) / 32000);
        assert!(rows * 32000 * 4 <= CHUNK_TARGET_BYTES);
        // degenerate sizes never give zero rows
        assert!(linear_chunk_rows(0, 0, 0, 0) >= 1);
    }
}
