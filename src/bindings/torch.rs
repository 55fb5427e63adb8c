//! Bindings for `torch.Tensor` arguments: validate, release the GIL, dispatch.
//!
//! Everything here goes through libtorch (via tch), so autograd is recorded by libtorch itself
//! and works on every device. The same code is the in-package reference that the fused kernels
//! are tested against, and the fallback where a fused kernel is not available.
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::losses::{self, check_beta, Tensors};
use simper_rs_core::kernels::transform::LogitTransform;
use simper_rs_core::losses::Reduction;

pub(crate) fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "torch.float32",
        Kind::Double => "torch.float64",
        Kind::Half => "torch.float16",
        Kind::BFloat16 => "torch.bfloat16",
        Kind::Int64 => "torch.int64",
        Kind::Int => "torch.int32",
        Kind::Int16 => "torch.int16",
        Kind::Int8 => "torch.int8",
        Kind::Uint8 => "torch.uint8",
        Kind::Bool => "torch.bool",
        Kind::ComplexFloat => "torch.complex64",
        Kind::ComplexDouble => "torch.complex128",
        _ => "an unsupported dtype",
    }
}

pub(crate) fn is_float(kind: Kind) -> bool {
    matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// float64 stays float64 (for gradcheck); every other float type accumulates in float32.
pub(crate) fn accumulation_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// The bad-input checks (docs/design.md, "Bad input") for a (logits, labels) pair, before any work is done.
///
/// Returns the number of positions per row that have a label after the shift.
pub(crate) fn check_logits_labels(
    logits: &Tensor,
    labels: &Tensor,
    ignore_index: i64,
    shift: bool,
    require_tokens: bool,
) -> Result<i64> {
    let source = logits_source(logits)?;
    check_labels(labels, &source, ignore_index, shift, require_tokens)
}

/// [`check_logits_labels`] without reading label values: shapes, dtypes, devices and the shift
/// only, so no device synchronisation (what a CUDA graph capture allows).
pub(crate) fn check_logits_labels_shapes(logits: &Tensor, labels: &Tensor, shift: bool) -> Result<()> {
    check_label_shapes(labels, &logits_source(logits)?, shift)
}

fn logits_source(logits: &Tensor) -> Result<LabelSource> {
    let lsize = logits.size();
    if lsize.len() != 3 {
        return Err(Error::value(format!("logits must be a 3-D tensor [batch, seq_len, vocab], got shape {lsize:?}")));
    }
    if !is_float(logits.kind()) {
        return Err(Error::type_(format!(
            "logits must be a floating-point tensor (float32, bfloat16, float16 or float64), got {}",
            dtype_name(logits.kind())
        )));
    }
    Ok(LabelSource { name: "logits", batch: lsize[0], seq_len: lsize[1], vocab: lsize[2], device: logits.device() })
}

/// What the labels are checked against: the tensor they pair with (logits, or hidden states for
/// the fused-linear op), its batch and sequence sizes, the vocabulary size and the device.
pub(crate) struct LabelSource {
    pub name: &'static str,
    pub batch: i64,
    pub seq_len: i64,
    pub vocab: i64,
    pub device: tch::Device,
}

/// Label checks shared by every op: dtype, shape, device, shift length, vocabulary range and,
/// with `require_tokens`, at least one response token per row.
pub(crate) fn check_labels(
    labels: &Tensor,
    source: &LabelSource,
    ignore_index: i64,
    shift: bool,
    require_tokens: bool,
) -> Result<i64> {
    check_label_shapes(labels, source, shift)?;
    let (seq_len, vocab) = (source.seq_len, source.vocab);
    let used = shifted_labels(labels, shift);
    let in_vocab = used.ge(0).logical_and(&used.lt(vocab));
    let bad = in_vocab.logical_not().logical_and(&used.ne(ignore_index));
    if bad.any().int64_value(&[]) != 0 {
        let first = bad.nonzero().get(0);
        let (row, col) = (first.int64_value(&[0]), first.int64_value(&[1]) + shift as i64);
        let value = labels.int64_value(&[row, col]);
        return Err(Error::value(format!(
            "labels[{row}, {col}] = {value} is outside the vocabulary [0, {vocab}) and is not ignore_index ({ignore_index})"
        )));
    }
    if require_tokens && source.batch > 0 {
        let counts = used.ne(ignore_index).sum_dim_intlist(1, false, Kind::Int64);
        let empty = counts.eq(0);
        if empty.any().int64_value(&[]) != 0 {
            let row = empty.nonzero().int64_value(&[0, 0]);
            return Err(Error::value(format!(
                "row {row} of labels has no response tokens (every label{} is ignore_index={ignore_index}), \
                 so its average log-probability is undefined",
                if shift { " after the shift" } else { "" }
            )));
        }
    }
    Ok(if shift { seq_len - 1 } else { seq_len })
}

/// The label checks that need no label values: dtype, shape, device and the shift length.
fn check_label_shapes(labels: &Tensor, source: &LabelSource, shift: bool) -> Result<()> {
    let ysize = labels.size();
    if ysize.len() != 2 {
        return Err(Error::value(format!("labels must be a 2-D tensor [batch, seq_len], got shape {ysize:?}")));
    }
    if labels.kind() != Kind::Int64 {
        return Err(Error::type_(format!(
            "labels must be an int64 (torch.long) tensor of token ids, got {}",
            dtype_name(labels.kind())
        )));
    }
    let expected = [source.batch, source.seq_len];
    if ysize[..] != expected[..] {
        return Err(Error::value(format!(
            "labels shape {ysize:?} must equal the first two dimensions of {} {expected:?}",
            source.name
        )));
    }
    if source.device != labels.device() {
        return Err(Error::value(format!(
            "{name} and labels must be on the same device, got {name} on {:?} and labels on {:?}",
            source.device,
            labels.device(),
            name = source.name
        )));
    }
    if source.vocab < 1 {
        return Err(Error::value("the vocabulary is empty (vocab = 0)"));
    }
    if shift && source.seq_len < 2 {
        return Err(Error::value(format!(
            "with shift=True each sequence needs at least 2 positions (logits at t predict the label at t+1), \
             got seq_len = {}; pass shift=False if logits and labels are already aligned",
            source.seq_len
        )));
    }
    Ok(())
}

/// Labels aligned with the logits rows that predict them: a view, never a copy.
pub(crate) fn shifted_labels(labels: &Tensor, shift: bool) -> Tensor {
    if shift {
        let t = labels.size()[1];
        labels.narrow(1, 1, t - 1)
    } else {
        labels.shallow_clone()
    }
}

/// Logits rows that have a label after the shift: a view, never a copy.
pub(crate) fn shifted_logits(logits: &Tensor, shift: bool) -> Tensor {
    if shift {
        let t = logits.size()[1];
        logits.narrow(1, 0, t - 1)
    } else {
        logits.shallow_clone()
    }
}

/// The logit transform of the public `logit_scale` and `logit_softcap` arguments (a scale, then
/// a softcap c·tanh(z/c)), checked.
pub(crate) fn logit_transform(logit_scale: Option<f64>, logit_softcap: Option<f64>) -> Result<LogitTransform> {
    LogitTransform::from_parts(logit_scale, logit_softcap).map_err(Error::value)
}

/// t(x) through libtorch ops, in `x`'s dtype (autograd recorded by libtorch).
pub(crate) fn apply_transform(x: &Tensor, transform: LogitTransform) -> Tensor {
    match transform {
        LogitTransform::Identity => x.shallow_clone(),
        LogitTransform::Scale(s) => x * s,
        LogitTransform::Softcap { scale, cap } => (x * (scale / cap)).tanh() * cap,
    }
}

/// Per-token log-probs of log_softmax(t(logits)) through plain libtorch ops (autograd recorded
/// by libtorch).
pub(crate) fn reference_token_logps(
    logits: &Tensor,
    labels: &Tensor,
    ignore_index: i64,
    shift: bool,
    transform: LogitTransform,
) -> Tensor {
    let x = apply_transform(&shifted_logits(logits, shift).to_kind(accumulation_kind(logits.kind())), transform);
    let y = shifted_labels(labels, shift);
    let mask = y.ne(ignore_index);
    let safe = y.where_scalarother(&mask, 0);
    let picked = x.gather(2, &safe.unsqueeze(2), false).squeeze_dim(2);
    let lse = x.logsumexp(2, false);
    (picked - lse).where_scalarother(&mask, 0.0)
}

/// Sum (or mean) over the response tokens of per-token log-probs that are 0 where ignored.
pub(crate) fn reduce_to_sequences(
    token_logps: &Tensor,
    labels: &Tensor,
    ignore_index: i64,
    shift: bool,
    average: bool,
) -> Tensor {
    let total = token_logps.sum_dim_intlist(1, false, None);
    if !average {
        return total;
    }
    let count = shifted_labels(labels, shift).ne(ignore_index).sum_dim_intlist(1, false, token_logps.kind());
    total / count
}

/// Per-token log-probs through libtorch ops: `log_softmax(t(logits))[label]`, 0 where ignored,
/// for the transform t of `logit_scale` and `logit_softcap`.
#[pyfunction]
// Every signature with `ignore_index = -100` spells out its text_signature: pyo3 renders a negative
// default as `...`, which help() shows and stubtest rejects.
#[pyo3(signature = (logits, labels, ignore_index = -100, shift = true, logit_scale = None, logit_softcap = None), text_signature = "(logits, labels, ignore_index=-100, shift=True, logit_scale=None, logit_softcap=None)")]
#[allow(clippy::too_many_arguments)]
pub fn token_logps_torch(
    py: Python<'_>,
    logits: PyTensor,
    labels: PyTensor,
    ignore_index: i64,
    shift: bool,
    logit_scale: Option<f64>,
    logit_softcap: Option<f64>,
) -> PyResult<PyTensor> {
    let out = py.allow_threads(move || -> Result<Tensor> {
        let transform = logit_transform(logit_scale, logit_softcap)?;
        check_logits_labels(&logits, &labels, ignore_index, shift, false)?;
        Ok(reference_token_logps(&logits, &labels, ignore_index, shift, transform))
    })?;
    Ok(PyTensor(out))
}

/// Validate a (logits, labels) pair as the public functions do; raises on bad input.
#[pyfunction]
#[pyo3(signature = (logits, labels, ignore_index = -100, shift = true, require_tokens = false), text_signature = "(logits, labels, ignore_index=-100, shift=True, require_tokens=False)")]
pub fn check_logps_inputs(
    py: Python<'_>,
    logits: PyTensor,
    labels: PyTensor,
    ignore_index: i64,
    shift: bool,
    require_tokens: bool,
) -> PyResult<()> {
    py.allow_threads(move || check_logits_labels(&logits, &labels, ignore_index, shift, require_tokens))?;
    Ok(())
}

/// Reduce per-token log-probs [B, T'] to per-sequence log-probs [B].
#[pyfunction]
#[pyo3(signature = (token_logps, labels, ignore_index = -100, shift = true, average = true), text_signature = "(token_logps, labels, ignore_index=-100, shift=True, average=True)")]
pub fn reduce_sequence_logps(
    py: Python<'_>,
    token_logps: PyTensor,
    labels: PyTensor,
    ignore_index: i64,
    shift: bool,
    average: bool,
) -> PyResult<PyTensor> {
    let out = py.allow_threads(move || reduce_to_sequences(&token_logps, &labels, ignore_index, shift, average));
    Ok(PyTensor(out))
}

/// `position_ids` of packed rows checked against `labels` and split into sequences (read to
/// the host: O(B·T) integers). Returns each position's sequence index (on the labels' device)
/// and each sequence's labelled-token count.
pub(crate) fn packed_sequences(
    labels: &Tensor,
    position_ids: &Tensor,
    ignore_index: i64,
    shift: bool,
    require_tokens: bool,
) -> Result<(Tensor, Vec<u64>)> {
    if is_float(position_ids.kind()) || position_ids.kind() == Kind::Bool {
        return Err(Error::type_(format!(
            "position_ids must be an integer tensor, got {}",
            dtype_name(position_ids.kind())
        )));
    }
    if position_ids.size() != labels.size() {
        return Err(Error::value(format!(
            "position_ids must have the shape of labels {:?} (one position per token of each packed row), got {:?}",
            labels.size(),
            position_ids.size()
        )));
    }
    if position_ids.device() != labels.device() {
        return Err(Error::value(format!(
            "position_ids is on {:?} but labels are on {:?}",
            position_ids.device(),
            labels.device()
        )));
    }
    let host = |t: &Tensor| -> Result<Vec<i64>> {
        Vec::<i64>::try_from(t.to_kind(Kind::Int64).to_device(tch::Device::Cpu).contiguous().view(-1))
            .map_err(|e| Error::runtime(e.to_string()))
    };
    let cols = labels.size().get(1).copied().unwrap_or(0) as usize;
    let segments = simper_rs_core::kernels::segments::packed_segments(
        &host(position_ids)?,
        &host(labels)?,
        cols,
        ignore_index,
        shift,
        require_tokens,
    )
    .map_err(|err| Error::value(err.to_string()))?;
    let ids = Tensor::from_slice(&segments.ids).view(labels.size().as_slice()).to_device(labels.device());
    Ok((ids, segments.tokens))
}

/// Validate the `position_ids` of packed rows against `labels`; the number of packed sequences.
#[pyfunction]
#[pyo3(signature = (labels, position_ids, ignore_index = -100, shift = true, require_tokens = false), text_signature = "(labels, position_ids, ignore_index=-100, shift=True, require_tokens=False)")]
pub fn check_packed_inputs(
    py: Python<'_>,
    labels: PyTensor,
    position_ids: PyTensor,
    ignore_index: i64,
    shift: bool,
    require_tokens: bool,
) -> PyResult<usize> {
    let count = py.allow_threads(move || {
        packed_sequences(&labels, &position_ids, ignore_index, shift, require_tokens).map(|(_, tokens)| tokens.len())
    })?;
    Ok(count)
}

/// Reduce per-token log-probs [B, T'] of packed rows to one log-prob per packed sequence [S], in
/// order of appearance (row by row): an index_add over the tokens, differentiable.
#[pyfunction]
#[pyo3(signature = (token_logps, labels, position_ids, ignore_index = -100, shift = true, average = true), text_signature = "(token_logps, labels, position_ids, ignore_index=-100, shift=True, average=True)")]
pub fn reduce_packed_logps(
    py: Python<'_>,
    token_logps: PyTensor,
    labels: PyTensor,
    position_ids: PyTensor,
    ignore_index: i64,
    shift: bool,
    average: bool,
) -> PyResult<PyTensor> {
    let out = py.allow_threads(move || -> Result<Tensor> {
        let (ids, tokens) = packed_sequences(&labels, &position_ids, ignore_index, shift, average)?;
        // The token at column c of a shifted row scores the label at c + 1, which is in that label's sequence.
        let ids = shifted_labels(&ids, shift).reshape([-1]).to_device(token_logps.device());
        let options = (token_logps.kind(), token_logps.device());
        let total = Tensor::zeros([tokens.len() as i64], options).index_add(0, &ids, &token_logps.reshape([-1]));
        if !average {
            return Ok(total);
        }
        let counts: Vec<f64> = tokens.iter().map(|&n| n as f64).collect();
        Ok(total / Tensor::from_slice(&counts).to_kind(token_logps.kind()).to_device(token_logps.device()))
    })?;
    Ok(PyTensor(out))
}

/// A [P] vector of per-sequence log-probs, checked, as float64: the loss formulas run in float64
/// so that exp(2u) of LSIF (and the like) cannot overflow into inf − inf = NaN on the way.
fn check_pair_vector(name: &str, value: &Tensor, like: Option<(&str, &Tensor)>) -> Result<Tensor> {
    if !is_float(value.kind()) {
        return Err(Error::type_(format!(
            "{name} must be a floating-point tensor of per-sequence log-probs, got {}",
            dtype_name(value.kind())
        )));
    }
    let size = value.size();
    if size.len() != 1 {
        return Err(Error::value(format!("{name} must be a 1-D tensor [pairs], got shape {size:?}")));
    }
    match like {
        None if size[0] == 0 => {
            return Err(Error::value(format!("{name} is empty: a preference loss needs at least one pair")))
        }
        Some((other_name, other)) => {
            if size != other.size() {
                return Err(Error::value(format!(
                    "{name} must have the same shape as {other_name} {:?}, got {size:?}",
                    other.size()
                )));
            }
            if value.device() != other.device() {
                return Err(Error::value(format!(
                    "{name} must be on the same device as {other_name} ({:?}), got {:?}",
                    other.device(),
                    value.device()
                )));
            }
        }
        None => {}
    }
    Ok(value.to_kind(Kind::Double))
}

fn reduce(loss: Tensor, reduction: Reduction) -> Tensor {
    match reduction {
        Reduction::Mean => loss.mean(None),
        Reduction::Sum => loss.sum(None),
        Reduction::None => loss,
    }
}

/// Policy log-probs and, with a reference, the log-ratios u = ℓ_θ − ℓ_ref (reference detached).
struct PairInputs {
    /// The dtype the loss is returned in: float32, or float64 for float64 inputs.
    out_kind: Kind,
    chosen: Tensor,
    rejected: Tensor,
    u_chosen: Tensor,
    u_rejected: Tensor,
}

fn pair_inputs(
    chosen: &Tensor,
    rejected: &Tensor,
    ref_chosen: Option<&Tensor>,
    ref_rejected: Option<&Tensor>,
) -> Result<PairInputs> {
    let c = check_pair_vector("chosen_logps", chosen, None)?;
    let r = check_pair_vector("rejected_logps", rejected, Some(("chosen_logps", chosen)))?;
    let (u_c, u_r) = match (ref_chosen, ref_rejected) {
        (None, None) => (c.shallow_clone(), r.shallow_clone()),
        (Some(rc), Some(rr)) => {
            let rc = check_pair_vector("ref_chosen_logps", rc, Some(("chosen_logps", chosen)))?.detach();
            let rr = check_pair_vector("ref_rejected_logps", rr, Some(("chosen_logps", chosen)))?.detach();
            (&c - rc, &r - rr)
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::value(
                "ref_chosen_logps and ref_rejected_logps must be given together (both or neither)",
            ))
        }
    };
    Ok(PairInputs {
        out_kind: accumulation_kind(chosen.kind()),
        chosen: c,
        rejected: r,
        u_chosen: u_c,
        u_rejected: u_r,
    })
}

/// SimPER loss from per-sequence average log-probs.
#[pyfunction]
#[pyo3(signature = (chosen_logps, rejected_logps, reduction = "mean"))]
pub fn simper_loss(
    py: Python<'_>,
    chosen_logps: PyTensor,
    rejected_logps: PyTensor,
    reduction: &str,
) -> PyResult<PyTensor> {
    let reduction = losses::reduction(reduction)?;
    let out = py.allow_threads(move || -> Result<Tensor> {
        let p = pair_inputs(&chosen_logps, &rejected_logps, None, None)?;
        Ok(reduce(losses::simper(&Tensors::of(&p.chosen), &Tensors::of(&p.rejected)).0, reduction).to_kind(p.out_kind))
    })?;
    Ok(PyTensor(out))
}

/// Check DIL's options as every DIL entry point does: `estimator` one of the names of
/// `ESTIMATORS`, `beta` a positive finite number; raises `ValueError` naming the argument.
#[pyfunction]
pub fn check_dil_options(estimator: &str, beta: f64) -> PyResult<()> {
    losses::estimator(estimator)?;
    check_beta(beta)?;
    Ok(())
}

/// DIL loss from per-sequence average log-probs, optionally against a reference model.
#[pyfunction]
#[pyo3(signature = (chosen_logps, rejected_logps, ref_chosen_logps = None, ref_rejected_logps = None, estimator = "lsif", beta = 1.0, reduction = "mean"))]
#[allow(clippy::too_many_arguments)]
pub fn dil_loss(
    py: Python<'_>,
    chosen_logps: PyTensor,
    rejected_logps: PyTensor,
    ref_chosen_logps: Option<PyTensor>,
    ref_rejected_logps: Option<PyTensor>,
    estimator: &str,
    beta: f64,
    reduction: &str,
) -> PyResult<PyTensor> {
    let estimator = losses::estimator(estimator)?;
    let reduction = losses::reduction(reduction)?;
    check_beta(beta)?;
    let out = py.allow_threads(move || -> Result<Tensor> {
        let p =
            pair_inputs(&chosen_logps, &rejected_logps, ref_chosen_logps.as_deref(), ref_rejected_logps.as_deref())?;
        let (chosen, u_chosen, u_rejected) =
            (Tensors::of(&p.chosen), Tensors::of(&p.u_chosen), Tensors::of(&p.u_rejected));
        Ok(reduce(losses::dil(estimator, beta, &chosen, &u_chosen, &u_rejected).0, reduction).to_kind(p.out_kind))
    })?;
    Ok(PyTensor(out))
}

/// The TRL-named metrics (docs/design.md, "Metrics"), as detached Python floats.
#[pyfunction]
#[pyo3(signature = (chosen_logps, rejected_logps, ref_chosen_logps = None, ref_rejected_logps = None))]
pub fn preference_metrics<'py>(
    py: Python<'py>,
    chosen_logps: PyTensor,
    rejected_logps: PyTensor,
    ref_chosen_logps: Option<PyTensor>,
    ref_rejected_logps: Option<PyTensor>,
) -> PyResult<Bound<'py, PyDict>> {
    let values = py.allow_threads(move || -> Result<Vec<(&'static str, f64)>> {
        let _guard = tch::no_grad_guard();
        let p =
            pair_inputs(&chosen_logps, &rejected_logps, ref_chosen_logps.as_deref(), ref_rejected_logps.as_deref())?;
        let mean = |t: &Tensor| t.mean(Kind::Double).double_value(&[]);
        let margins = &p.u_chosen - &p.u_rejected;
        Ok(vec![
            ("rewards/chosen", mean(&p.u_chosen)),
            ("rewards/rejected", mean(&p.u_rejected)),
            ("rewards/margins", mean(&margins)),
            ("rewards/accuracies", mean(&margins.gt(0.0))),
            ("logps/chosen", mean(&p.chosen)),
            ("logps/rejected", mean(&p.rejected)),
        ])
    })?;
    let dict = PyDict::new(py);
    for (name, value) in values {
        dict.set_item(name, value)?;
    }
    Ok(dict)
}

/// Per-token entropy and argmax == label (as 0/1) of t(logits) through libtorch ops, 0 where
/// ignored.
pub(crate) fn reference_token_stats(
    logits: &Tensor,
    labels: &Tensor,
    ignore_index: i64,
    shift: bool,
    transform: LogitTransform,
) -> (Tensor, Tensor) {
    let _guard = tch::no_grad_guard();
    let x = apply_transform(&shifted_logits(logits, shift).to_kind(accumulation_kind(logits.kind())), transform);
    let y = shifted_labels(labels, shift);
    let mask = y.ne(ignore_index);
    let logp = x.log_softmax(-1, None);
    // p·log p with p = 0 contributes 0 (not 0·-inf).
    let plogp = logp.exp() * &logp;
    let plogp = plogp.where_scalarother(&logp.isfinite(), 0.0);
    let entropy = plogp.sum_dim_intlist(-1, false, None).neg().where_scalarother(&mask, 0.0);
    let correct = x.argmax(-1, false).eq_tensor(&y).logical_and(&mask).to_kind(x.kind());
    (entropy, correct)
}

/// Per-token (entropy, argmax == label) through libtorch ops, each [B, T'], 0 where ignored.
#[pyfunction]
#[pyo3(signature = (logits, labels, ignore_index = -100, shift = true, logit_scale = None, logit_softcap = None), text_signature = "(logits, labels, ignore_index=-100, shift=True, logit_scale=None, logit_softcap=None)")]
#[allow(clippy::too_many_arguments)]
pub fn token_stats_torch(
    py: Python<'_>,
    logits: PyTensor,
    labels: PyTensor,
    ignore_index: i64,
    shift: bool,
    logit_scale: Option<f64>,
    logit_softcap: Option<f64>,
) -> PyResult<(PyTensor, PyTensor)> {
    let (entropy, correct) = py.allow_threads(move || -> Result<(Tensor, Tensor)> {
        let transform = logit_transform(logit_scale, logit_softcap)?;
        check_logits_labels(&logits, &labels, ignore_index, shift, false)?;
        Ok(reference_token_stats(&logits, &labels, ignore_index, shift, transform))
    })?;
    Ok((PyTensor(entropy), PyTensor(correct)))
}
