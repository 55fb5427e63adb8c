//! Fused-linear log-probs: from the last hidden states and the `lm_head` weight, in chunks of
//! positions, so that the `[B, T, V]` logits never exist (see docs/design.md).
//!
//! Forward, per chunk of labelled positions: logits_c = h_c·Wᵀ (+ b) (times a logit-scale tensor
//! where the model has one), then the per-row math of the fused kernel (CPU or CUDA), which also
//! applies the model's constant logit scale and softcap, or of the libtorch reference
//! (elsewhere); only the log-probs and
//! the logsumexp (one float per position) outlive the chunk. Backward recomputes logits_c, forms
//! the row gradients G_c, and accumulates grad h_c = G_c·W, grad W += G_cᵀ·h_c, grad b += Σ G_c.
//! Positions whose label is ignored are skipped entirely (no matmul, no softmax).
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::{Device, Kind, Tensor};

use crate::bindings::torch::{
    accumulation_kind, apply_transform, check_labels, dtype_name, is_float, logit_transform, reference_token_logps,
    reference_token_stats, shifted_labels, LabelSource,
};
use crate::bindings::{fused_cpu, fused_cuda};
use crate::error::{Error, Result};
use simper_rs_core::kernels::transform::LogitTransform;

/// Bytes of one chunk's logits that the automatic chunk size never exceeds. One such buffer is
/// alive at a time: the backward overwrites the chunk's logits with their gradient (on CPU).
const CHUNK_TARGET_BYTES: i64 = 64 << 20;

/// Fewest rows of an automatic chunk: smaller chunk matmuls re-read the whole weight too often.
const MIN_CHUNK_ROWS: i64 = 128;

/// Rows per chunk: `chunk_size` when given, else [`linear_chunk_rows`].
pub(crate) fn chunk_rows(positions: i64, hidden_size: i64, vocab: i64, kind: Kind, chunk_size: Option<i64>) -> i64 {
    chunk_size.unwrap_or_else(|| linear_chunk_rows(positions, hidden_size, vocab, kind.elt_size_in_bytes() as i64))
}

/// The output projection and what the model does to its logits: z = h·Wᵀ (+ b), then an
/// optional scale tensor s (`[V]` or one element, applied in the chunk buffer so that it can take
/// a gradient), then `transform` (a constant scale and/or a softcap, applied by the kernel as it
/// reads each row).
#[derive(Clone, Copy)]
pub(crate) struct Projection<'a> {
    pub(crate) weight: &'a Tensor,
    pub(crate) bias: Option<&'a Tensor>,
    pub(crate) scale: Option<&'a Tensor>,
    pub(crate) transform: LogitTransform,
}

impl<'a> Projection<'a> {
    /// From the Python arguments: `logit_scale` a number, or `logit_scale_tensor` a tensor, not both.
    pub(crate) fn new(
        weight: &'a Tensor,
        bias: Option<&'a Tensor>,
        logit_scale: Option<f64>,
        logit_scale_tensor: Option<&'a Tensor>,
        logit_softcap: Option<f64>,
    ) -> Result<Self> {
        if logit_scale.is_some() && logit_scale_tensor.is_some() {
            return Err(Error::value("give logit_scale as a number or as a tensor, not both"));
        }
        Ok(Projection {
            weight,
            bias,
            scale: logit_scale_tensor,
            transform: logit_transform(logit_scale, logit_softcap)?,
        })
    }

    fn vocab(&self) -> i64 {
        self.weight.size()[0]
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn check_linear_inputs(
    hidden: &Tensor,
    projection: &Projection<'_>,
    labels: &Tensor,
    ignore_index: i64,
    shift: bool,
    chunk_size: Option<i64>,
    require_tokens: bool,
) -> Result<()> {
    let (weight, bias) = (projection.weight, projection.bias);
    let hsize = hidden.size();
    if hsize.len() != 3 {
        return Err(Error::value(format!(
            "hidden must be a 3-D tensor [batch, seq_len, hidden_size], got shape {hsize:?}"
        )));
    }
    let wsize = weight.size();
    if wsize.len() != 2 {
        return Err(Error::value(format!(
            "weight must be a 2-D tensor [vocab, hidden_size] (an lm_head.weight), got shape {wsize:?}"
        )));
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
            return Err(Error::value(format!(
                "bias must be a 1-D tensor [vocab] = [{}], got shape {:?}",
                wsize[0],
                b.size()
            )));
        }
        if b.kind() != hidden.kind() {
            return Err(Error::type_(format!(
                "bias dtype {} must equal hidden dtype {}",
                dtype_name(b.kind()),
                dtype_name(hidden.kind())
            )));
        }
        if b.device() != hidden.device() {
            return Err(Error::value(format!("bias is on {:?} but hidden on {:?}", b.device(), hidden.device())));
        }
    }
    if let Some(scale) = projection.scale {
        if !(scale.size() == [wsize[0]] || scale.numel() == 1 && scale.dim() <= 1) {
            return Err(Error::value(format!(
                "a logit_scale tensor must hold one number or one per vocabulary entry ([{}]), got shape {:?}",
                wsize[0],
                scale.size()
            )));
        }
        if scale.kind() != hidden.kind() {
            return Err(Error::type_(format!(
                "logit_scale dtype {} must equal hidden dtype {}",
                dtype_name(scale.kind()),
                dtype_name(hidden.kind())
            )));
        }
        if scale.device() != hidden.device() {
            return Err(Error::value(format!(
                "logit_scale is on {:?} but hidden on {:?}",
                scale.device(),
                hidden.device()
            )));
        }
    }
    if let Some(c) = chunk_size {
        if c < 1 {
            return Err(Error::value(format!("chunk_size must be a positive number of positions, got {c}")));
        }
    }
    let source =
        LabelSource { name: "hidden", batch: hsize[0], seq_len: hsize[1], vocab: wsize[0], device: hidden.device() };
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
    let hidden_rows = if shift {
        &output_rows + output_rows.divide_scalar_mode(positions, "floor")
    } else {
        output_rows.shallow_clone()
    };
    let targets = flat.index_select(0, &output_rows);
    LabelledRows { hidden_rows, output_rows, targets }
}

/// Logits of one chunk of rows at a time, into one reusable buffer: no allocation (and no page
/// faults) per chunk. Chunks are `[start, start + n)` ranges over the labelled rows.
pub(crate) struct ChunkedLogits<'a> {
    weight_t: Tensor,
    projection: Projection<'a>,
    buffer: Tensor,
    step: i64,
    total: i64,
}

impl<'a> ChunkedLogits<'a> {
    fn new(hidden: &Tensor, projection: Projection<'a>, chunk_size: Option<i64>, total: i64) -> Self {
        let step = chunk_rows(total, hidden.size()[hidden.dim() - 1], projection.vocab(), hidden.kind(), chunk_size)
            .min(total.max(1));
        Self::with_rows(hidden, projection, step, total)
    }

    /// A buffer of `rows` rows, for callers that choose their own chunk boundaries.
    pub(crate) fn with_rows(hidden: &Tensor, projection: Projection<'a>, rows: i64, total: i64) -> Self {
        let buffer = Tensor::empty([rows, projection.vocab()], (hidden.kind(), hidden.device()));
        Self { weight_t: projection.weight.transpose(0, 1), projection, buffer, step: rows, total }
    }

    fn chunks(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        (0..self.total).step_by(self.step as usize).map(move |start| (start, self.step.min(self.total - start)))
    }

    /// (h_c·Wᵀ + b)·s for the `n` rows of `h_c`, in the shared buffer: what the kernel reads
    /// (it applies the projection's remaining transform itself).
    pub(crate) fn logits(&self, h_c: &Tensor) -> Tensor {
        let mut logits = self.buffer.narrow(0, 0, h_c.size()[0]);
        let _ = h_c.matmul_out(&logits, &self.weight_t);
        if let Some(b) = self.projection.bias {
            logits += b;
        }
        if let Some(s) = self.projection.scale {
            logits *= s;
        }
        logits
    }
}

/// Per-row (log-prob of the target, logsumexp, entropy, argmax == target, mean logit) of one
/// chunk's logits `[n, V]`, each `[1, n]` (the statistics empty unless `with_stats`, the mean
/// unless `with_means`).
pub(crate) type ChunkForward = (Tensor, Tensor, Tensor, Tensor, Tensor);

/// [`ChunkForward`] of one chunk, for log_softmax(t(logits)) with t = `transform`: the fused CPU
/// kernel, the CUDA kernel on `cuda_stream`, or libtorch ops elsewhere.
pub(crate) fn chunk_softmax(
    logits: &Tensor,
    targets: &Tensor,
    ignore_index: i64,
    with_stats: bool,
    with_means: bool,
    transform: LogitTransform,
    cuda_stream: Option<u64>,
) -> Result<ChunkForward> {
    let (logits, targets) = (logits.unsqueeze(0), targets.unsqueeze(0));
    let acc = accumulation_kind(logits.kind());
    let (lp, ls, ent, cor) = if logits.device() == Device::Cpu {
        fused_cpu::forward_validated(&logits, &targets, ignore_index, false, with_stats, transform)?
    } else if let Some(stream) = cuda_stream {
        fused_cuda::forward_validated(&logits, &targets, ignore_index, false, with_stats, transform, stream)?
    } else {
        let lp = reference_token_logps(&logits, &targets, ignore_index, false, transform);
        let ls = apply_transform(&logits.to_kind(acc), transform).logsumexp(-1, false);
        let none = || Tensor::zeros([0], (acc, logits.device()));
        let (ent, cor) = if with_stats {
            reference_token_stats(&logits, &targets, ignore_index, false, transform)
        } else {
            (none(), none())
        };
        (lp, ls, ent, cor)
    };
    // The mean over the vocabulary of the model's logits t(z), for TRL's logits/* metrics.
    let means = if with_means {
        if transform.is_identity() {
            logits.mean_dim(-1, false, acc)
        } else {
            apply_transform(&logits.to_kind(acc), transform).mean_dim(-1, false, None)
        }
    } else {
        Tensor::zeros([0], (acc, logits.device()))
    };
    Ok((lp, ls, ent, cor, means))
}

/// The row gradients g·(onehot(y) − softmax(t(z)))·t'(z) of one chunk's logits z `[n, V]`, given
/// each row's incoming gradient `g` and logsumexp `l` (`[n]`): written over the logits by the
/// fused kernels (they are not needed again), through libtorch ops elsewhere.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_row_grads(
    mut logits: Tensor,
    targets: &Tensor,
    ignore_index: i64,
    transform: LogitTransform,
    g: &Tensor,
    l: &Tensor,
    cuda_stream: Option<u64>,
) -> Result<Tensor> {
    if logits.device() == Device::Cpu {
        fused_cpu::backward_in_place(&mut logits, targets, ignore_index, transform, g, l)?;
        Ok(logits)
    } else if let Some(stream) = cuda_stream {
        fused_cuda::backward_in_place(&logits, targets, ignore_index, transform, g, l, stream)?;
        Ok(logits)
    } else {
        Ok(reference_row_grads(&logits, targets, transform, l, g))
    }
}

/// The stream to run the chunks' softmax on in the CUDA kernel, or None for libtorch ops: the
/// caller's stream when it gave one and the dtype is one the kernel takes (not float64).
pub(crate) fn cuda_kernel_stream(hidden: &Tensor, cuda_stream: Option<u64>) -> Option<u64> {
    cuda_stream.filter(|_| matches!(hidden.kind(), Kind::Float | Kind::BFloat16 | Kind::Half))
}

/// What the forward returns: token log-probs, logsumexp, entropy, correct, mean logit, each
/// `[B, T']` (the statistics and the means empty unless asked).
type LinearForward = (Tensor, Tensor, Tensor, Tensor, Tensor);

/// Per-position outputs `[B·T']` filled chunk by chunk (0 where the label is ignored).
pub(crate) struct PositionOutputs {
    logps: Tensor,
    lse: Tensor,
    entropy: Tensor,
    correct: Tensor,
    means: Tensor,
    with_stats: bool,
    with_means: bool,
    shape: [i64; 2],
}

impl PositionOutputs {
    pub(crate) fn new(hidden: &Tensor, shift: bool, with_stats: bool, with_means: bool) -> Self {
        let (b, t) = (hidden.size()[0], hidden.size()[1]);
        let used = t - shift as i64;
        let options = (accumulation_kind(hidden.kind()), hidden.device());
        let len = |on: bool| if on { b * used } else { 0 };
        PositionOutputs {
            logps: Tensor::zeros([b * used], options),
            lse: Tensor::zeros([b * used], options),
            entropy: Tensor::zeros([len(with_stats)], options),
            correct: Tensor::zeros([len(with_stats)], options),
            means: Tensor::zeros([len(with_means)], options),
            with_stats,
            with_means,
            shape: [b, used],
        }
    }

    /// Stores one chunk's results at the flattened output positions `rows`.
    pub(crate) fn store(&mut self, rows: &Tensor, chunk: &ChunkForward) {
        let (lp, ls, ent, cor, means) = chunk;
        let _ = self.logps.index_copy_(0, rows, &lp.reshape([-1]));
        let _ = self.lse.index_copy_(0, rows, &ls.reshape([-1]));
        if self.with_stats {
            let _ = self.entropy.index_copy_(0, rows, &ent.reshape([-1]));
            let _ = self.correct.index_copy_(0, rows, &cor.reshape([-1]));
        }
        if self.with_means {
            let _ = self.means.index_copy_(0, rows, &means.reshape([-1]));
        }
    }

    pub(crate) fn finish(self) -> LinearForward {
        let shape = self.shape;
        let stats_shape: &[i64] = if self.with_stats { &shape } else { &[0] };
        let means_shape: &[i64] = if self.with_means { &shape } else { &[0] };
        (
            self.logps.reshape(shape),
            self.lse.reshape(shape),
            self.entropy.reshape(stats_shape),
            self.correct.reshape(stats_shape),
            self.means.reshape(means_shape),
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn forward(
    hidden: &Tensor,
    projection: Projection<'_>,
    labels: &Tensor,
    ignore_index: i64,
    shift: bool,
    chunk_size: Option<i64>,
    with_stats: bool,
    with_means: bool,
    cuda_stream: Option<u64>,
) -> Result<LinearForward> {
    let cuda_stream = cuda_kernel_stream(hidden, cuda_stream);
    check_linear_inputs(hidden, &projection, labels, ignore_index, shift, chunk_size, false)?;
    let _guard = tch::no_grad_guard();
    let (b, t, h) = (hidden.size()[0], hidden.size()[1], hidden.size()[2]);
    let mut outputs = PositionOutputs::new(hidden, shift, with_stats, with_means);
    let rows = labelled_rows(labels, ignore_index, shift);
    let hidden_flat = hidden.reshape([b * t, h]);
    let chunked = ChunkedLogits::new(hidden, projection, chunk_size, rows.output_rows.size()[0]);
    for (start, n) in chunked.chunks() {
        let logits = chunked.logits(&hidden_flat.index_select(0, &rows.hidden_rows.narrow(0, start, n)));
        let chunk = chunk_softmax(
            &logits,
            &rows.targets.narrow(0, start, n),
            ignore_index,
            with_stats,
            with_means,
            projection.transform,
            cuda_stream,
        )?;
        outputs.store(&rows.output_rows.narrow(0, start, n), &chunk);
    }
    Ok(outputs.finish())
}

/// The projection's gradient accumulators over chunks, in float32 (float64 for float64).
///
/// Without a scale tensor: grad W += G_cᵀ·h_c and grad b += Σ G_c. With one (u = s⊙z): the
/// chunks give G_u = ∂L/∂u; P = Σ G_uᵀ·h_c and q = Σ G_u are accumulated, and at the end
/// grad W = s⊙P, grad b = s⊙q, and grad s_v = Σ_r G_u[r, v]·z[r, v] = W_v·P_v + b_v·q_v: the
/// scale's gradient from the same matmul, with no logits kept (see docs/design.md).
pub(crate) struct ProjectionGrads {
    /// grad W, or P with a scale tensor.
    weight: Option<Tensor>,
    /// grad b, or q with a scale tensor.
    bias: Option<Tensor>,
    needs: [bool; 4],
}

impl ProjectionGrads {
    /// `needs` = which of (weight, bias, scale) get a gradient (the bias and scale only where present).
    pub(crate) fn new(projection: &Projection<'_>, acc: Kind, needs: [bool; 3]) -> Self {
        let [weight, bias, scale] =
            [needs[0], needs[1] && projection.bias.is_some(), needs[2] && projection.scale.is_some()];
        let device = projection.weight.device();
        ProjectionGrads {
            weight: (weight || scale).then(|| Tensor::zeros(projection.weight.size(), (acc, device))),
            bias: projection.bias.filter(|_| bias || scale).map(|b| Tensor::zeros(b.size(), (acc, device))),
            needs: [weight, bias, scale, projection.scale.is_some()],
        }
    }

    /// Takes one chunk's row gradients (with respect to what the kernel read: z, or u = s⊙z) and
    /// its hidden rows; returns the row gradients with respect to z, for grad h = G·W.
    pub(crate) fn accumulate(&mut self, mut row_grads: Tensor, h_c: &Tensor, projection: &Projection<'_>) -> Tensor {
        if let Some(gw) = &mut self.weight {
            if gw.kind() == row_grads.kind() {
                let _ = gw.addmm_(&row_grads.transpose(0, 1), h_c); // accumulate, no temporary
            } else {
                let _ = gw.g_add_(&row_grads.transpose(0, 1).matmul(h_c).to_kind(gw.kind()));
            }
        }
        if let Some(gb) = &mut self.bias {
            let _ = gb.g_add_(&row_grads.sum_dim_intlist(0, false, gb.kind()));
        }
        if let Some(s) = projection.scale {
            row_grads *= s;
        }
        row_grads
    }

    /// (grad W, grad b, grad s) in the parameters' dtypes, None where not asked for.
    pub(crate) fn finish(self, projection: &Projection<'_>) -> (Option<Tensor>, Option<Tensor>, Option<Tensor>) {
        let [weight_needed, bias_needed, scale_needed, scaled] = self.needs;
        let kind = projection.weight.kind();
        if !scaled {
            return (self.weight.map(|gw| gw.to_kind(kind)), self.bias.map(|gb| gb.to_kind(kind)), None);
        }
        let scale = projection.scale.expect("scaled projections hold a scale tensor");
        let s = scale.reshape([-1]).to_kind(self.weight.as_ref().map_or(Kind::Float, |w| w.kind()));
        let grad_scale = self.weight.as_ref().filter(|_| scale_needed).map(|p| {
            let mut per_vocab = row_dots(projection.weight, p);
            if let (Some(b), Some(q)) = (projection.bias, &self.bias) {
                per_vocab += b.to_kind(q.kind()) * q;
            }
            let g = if scale.numel() == 1 { per_vocab.sum(per_vocab.kind()) } else { per_vocab };
            g.reshape(scale.size()).to_kind(scale.kind())
        });
        let column = if s.numel() == 1 { s.reshape([1, 1]) } else { s.reshape([-1, 1]) };
        let grad_weight = self.weight.filter(|_| weight_needed).map(|p| (p * &column).to_kind(kind));
        let grad_bias = self.bias.filter(|_| bias_needed).map(|q| (q * s.reshape([-1])).to_kind(kind));
        (grad_weight, grad_bias, grad_scale)
    }
}

/// Σ_h a[v, h]·b[v, h] for every row v, a few thousand rows at a time (no `[V, H]` temporary).
fn row_dots(a: &Tensor, b: &Tensor) -> Tensor {
    const ROWS: i64 = 4096;
    let vocab = a.size()[0];
    let parts: Vec<Tensor> = (0..vocab)
        .step_by(ROWS as usize)
        .map(|start| {
            let n = ROWS.min(vocab - start);
            let (x, y) = (a.narrow(0, start, n).to_kind(b.kind()), b.narrow(0, start, n));
            (x * y).sum_dim_intlist(1, false, b.kind())
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// Row gradients g·(onehot(y) − softmax(t(z)))·t'(z) of one chunk through libtorch ops (devices
/// without a fused kernel).
fn reference_row_grads(
    logits: &Tensor,
    targets: &Tensor,
    transform: LogitTransform,
    lse: &Tensor,
    grad: &Tensor,
) -> Tensor {
    let acc = accumulation_kind(logits.kind());
    let y = apply_transform(&logits.to_kind(acc), transform);
    let probs = (&y - lse.unsqueeze(-1)).exp();
    let g = grad.unsqueeze(-1);
    let rows = -(&probs * &g);
    let rows = rows.scatter_add(-1, &targets.unsqueeze(-1), &g);
    let rows = match transform {
        LogitTransform::Identity => rows,
        LogitTransform::Scale(s) => rows * s,
        LogitTransform::Softcap { scale, cap } => rows * ((y / cap).square().neg() + 1.0) * scale,
    };
    rows.to_kind(logits.kind())
}

type LinearBackward = (Tensor, Option<Tensor>, Option<Tensor>, Option<Tensor>);

#[allow(clippy::too_many_arguments)]
fn backward(
    grad_logps: &Tensor,
    hidden: &Tensor,
    projection: Projection<'_>,
    labels: &Tensor,
    lse: &Tensor,
    ignore_index: i64,
    shift: bool,
    chunk_size: Option<i64>,
    needs: [bool; 3],
    cuda_stream: Option<u64>,
) -> Result<LinearBackward> {
    let cuda_stream = cuda_kernel_stream(hidden, cuda_stream);
    let _guard = tch::no_grad_guard();
    let (b, t, h) = (hidden.size()[0], hidden.size()[1], hidden.size()[2]);
    let acc = accumulation_kind(hidden.kind());
    let rows = labelled_rows(labels, ignore_index, shift);
    let hidden_flat = hidden.reshape([b * t, h]);
    let grad_flat = grad_logps.to_kind(acc).reshape([-1]);
    let lse_flat = lse.to_kind(acc).reshape([-1]);
    // Each labelled hidden row belongs to exactly one chunk: its gradient is written once, in the
    // hidden dtype. The parameter gradients sum over chunks (ProjectionGrads).
    let mut grad_hidden = Tensor::zeros([b * t, h], (hidden.kind(), hidden.device()));
    let mut grads = ProjectionGrads::new(&projection, acc, needs);
    let chunked = ChunkedLogits::new(hidden, projection, chunk_size, rows.output_rows.size()[0]);
    for (start, n) in chunked.chunks() {
        let hidden_rows = rows.hidden_rows.narrow(0, start, n);
        let out_rows = rows.output_rows.narrow(0, start, n);
        let h_c = hidden_flat.index_select(0, &hidden_rows);
        let logits = chunked.logits(&h_c);
        let g = grad_flat.index_select(0, &out_rows);
        let l = lse_flat.index_select(0, &out_rows);
        let row_grads = chunk_row_grads(
            logits,
            &rows.targets.narrow(0, start, n),
            ignore_index,
            projection.transform,
            &g,
            &l,
            cuda_stream,
        )?;
        let row_grads = grads.accumulate(row_grads, &h_c, &projection);
        let _ = grad_hidden.index_copy_(0, &hidden_rows, &row_grads.matmul(projection.weight));
    }
    let (grad_weight, grad_bias, grad_scale) = grads.finish(&projection);
    Ok((grad_hidden.reshape([b, t, h]), grad_weight, grad_bias, grad_scale))
}

/// Validate fused-linear inputs as the public functions do; raises on bad input.
#[pyfunction]
#[pyo3(signature = (hidden, weight, bias, labels, ignore_index = -100, shift = true, require_tokens = false, logit_scale = None, logit_scale_tensor = None, logit_softcap = None), text_signature = "(hidden, weight, bias, labels, ignore_index=-100, shift=True, require_tokens=False, logit_scale=None, logit_scale_tensor=None, logit_softcap=None)")]
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
    logit_scale: Option<f64>,
    logit_scale_tensor: Option<PyTensor>,
    logit_softcap: Option<f64>,
) -> PyResult<()> {
    py.allow_threads(move || {
        let projection =
            Projection::new(&weight, bias.as_deref(), logit_scale, logit_scale_tensor.as_deref(), logit_softcap)?;
        check_linear_inputs(&hidden, &projection, &labels, ignore_index, shift, None, require_tokens)
    })?;
    Ok(())
}

/// Fused-linear forward: (token log-probs, logsumexp, entropy, argmax == label, mean logit), each
/// [B, T'] (the statistics empty unless `with_stats`, the means unless `with_means`), of
/// log_softmax(t(h·Wᵀ + b)) with t the logit scale (`logit_scale`, a number, or
/// `logit_scale_tensor`, one number or one per vocabulary entry) then the softcap
/// (`logit_softcap`). No autograd: see `simper_rs.ops`. On CUDA, `cuda_stream` (PyTorch's current
/// stream) runs the per-chunk softmax in the CUDA kernel; None runs it through libtorch ops.
#[pyfunction]
#[pyo3(signature = (hidden, weight, bias, labels, ignore_index = -100, shift = true, chunk_size = None, with_stats = false, cuda_stream = None, logit_scale = None, logit_scale_tensor = None, logit_softcap = None, with_means = false), text_signature = "(hidden, weight, bias, labels, ignore_index=-100, shift=True, chunk_size=None, with_stats=False, cuda_stream=None, logit_scale=None, logit_scale_tensor=None, logit_softcap=None, with_means=False)")]
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
    logit_scale: Option<f64>,
    logit_scale_tensor: Option<PyTensor>,
    logit_softcap: Option<f64>,
    with_means: bool,
) -> PyResult<(PyTensor, PyTensor, PyTensor, PyTensor, PyTensor)> {
    let (a, b, c, d, e) = py.allow_threads(move || {
        let projection =
            Projection::new(&weight, bias.as_deref(), logit_scale, logit_scale_tensor.as_deref(), logit_softcap)?;
        forward(&hidden, projection, &labels, ignore_index, shift, chunk_size, with_stats, with_means, cuda_stream)
    })?;
    Ok((PyTensor(a), PyTensor(b), PyTensor(c), PyTensor(d), PyTensor(e)))
}

/// (grad hidden, grad weight, grad bias, grad logit_scale_tensor) as Python receives them.
type LinearBackwardTensors = (PyTensor, Option<PyTensor>, Option<PyTensor>, Option<PyTensor>);

/// Fused-linear backward: (grad hidden, grad weight, grad bias, grad logit_scale_tensor), None
/// where `needs` (weight, bias, scale tensor) says no or the input is absent; the transform and
/// `cuda_stream` as in the forward.
#[pyfunction]
#[pyo3(signature = (grad_logps, hidden, weight, bias, labels, lse, ignore_index = -100, shift = true, chunk_size = None, cuda_stream = None, logit_scale = None, logit_scale_tensor = None, logit_softcap = None, needs = (true, true, true)), text_signature = "(grad_logps, hidden, weight, bias, labels, lse, ignore_index=-100, shift=True, chunk_size=None, cuda_stream=None, logit_scale=None, logit_scale_tensor=None, logit_softcap=None, needs=(True, True, True))")]
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
    logit_scale: Option<f64>,
    logit_scale_tensor: Option<PyTensor>,
    logit_softcap: Option<f64>,
    needs: (bool, bool, bool),
) -> PyResult<LinearBackwardTensors> {
    let (gh, gw, gb, gs) = py.allow_threads(move || {
        let projection =
            Projection::new(&weight, bias.as_deref(), logit_scale, logit_scale_tensor.as_deref(), logit_softcap)?;
        backward(
            &grad_logps,
            &hidden,
            projection,
            &labels,
            &lse,
            ignore_index,
            shift,
            chunk_size,
            [needs.0, needs.1, needs.2],
            cuda_stream,
        )
    })?;
    Ok((PyTensor(gh), gw.map(PyTensor), gb.map(PyTensor), gs.map(PyTensor)))
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
