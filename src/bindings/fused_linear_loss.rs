//! Fused-linear preference losses with the gradients computed in the forward (see docs/design.md).
//!
//! The log-prob op of `fused_linear.rs` is loss-agnostic: its backward must recompute every
//! chunk's logits (h·Wᵀ), four matmuls per chunk in all. Every loss here is a function of each
//! pair's two average log-probs alone, so a chunk holding whole pairs knows, right after its
//! softmax, the loss gradient of each of its tokens:
//!
//!   ∂L/∂logp(token of sequence s) = ∂L/∂ℓ_s / n_s,   ∂L/∂ℓ from `losses::{simper,dil}_grads`
//!
//! and can form its row gradients, grad h and the grad W / grad b contributions at once, while
//! its logits are still in the buffer: three matmuls per chunk. The caller's autograd function
//! returns these gradients from its backward, scaled by the incoming gradient of the loss.
//!
//! Most of the losses are separable (∂L/∂ℓ_w depends on ℓ_w alone, ∂L/∂ℓ_l on ℓ_l alone:
//! SimPER, LSIF, BCE, UKL), so their chunks need only hold whole sequences, half a pair's
//! logits; CPC (through ℓ_w − ℓ_l) needs whole pairs.
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::{Kind, Tensor};

use crate::bindings::fused_linear::{
    check_linear_inputs, chunk_row_grads, chunk_rows, chunk_softmax, cuda_kernel_stream, labelled_rows, ChunkedLogits,
    PositionOutputs, Projection, ProjectionGrads,
};
use crate::bindings::torch::{accumulation_kind, dtype_name, is_float, packed_sequences, shifted_labels};
use crate::error::{Error, Result};
use crate::losses::{self, check_beta, Tensors};
use simper_rs_core::losses::{Estimator, Reduction};

/// The pair loss whose gradient the chunks take, reduced by the mean over pairs.
#[derive(Clone, Copy)]
enum PairLoss {
    Simper,
    Dil { estimator: Estimator, beta: f64 },
}

impl PairLoss {
    fn parse(loss: &str, estimator: &str, beta: f64) -> Result<Self> {
        match loss {
            "simper" => Ok(Self::Simper),
            "dil" => {
                check_beta(beta)?;
                Ok(Self::Dil { estimator: losses::estimator(estimator)?, beta })
            }
            other => Err(Error::value(format!("loss must be one of ['simper', 'dil'], got '{other}'"))),
        }
    }

    /// Whether ∂L/∂ℓ of a sequence depends on that sequence's ℓ alone (not on its pair's other).
    fn separable(self) -> bool {
        !matches!(self, Self::Dil { estimator: Estimator::Cpc, .. })
    }

    /// (∂L/∂ℓ_w, ∂L/∂ℓ_l) per pair, float64; `refs` are the reference log-probs of the same pairs.
    fn grads(self, chosen: &Tensor, rejected: &Tensor, refs: Option<(&Tensor, &Tensor)>) -> (Tensor, Tensor) {
        let (w, l) = match self {
            Self::Simper => losses::simper_grads(&Tensors::of(chosen), &Tensors::of(rejected)),
            Self::Dil { estimator, beta } => match refs {
                Some((rc, rr)) => losses::dil_grads(estimator, beta, &Tensors(chosen - rc), &Tensors(rejected - rr)),
                None => losses::dil_grads(estimator, beta, &Tensors::of(chosen), &Tensors::of(rejected)),
            },
        };
        (w.0, l.0)
    }
}

/// The sequence each output position (flattened `[B·T']`) belongs to, and each sequence's
/// labelled-token count: a batch row per sequence, or the packed sequences of `position_ids`.
fn sequences(
    labels: &Tensor,
    position_ids: Option<&Tensor>,
    ignore_index: i64,
    shift: bool,
) -> Result<(Tensor, Vec<u64>)> {
    match position_ids {
        Some(ids) => {
            let (ids, tokens) = packed_sequences(labels, ids, ignore_index, shift, true)?;
            Ok((shifted_labels(&ids, shift).reshape([-1]), tokens))
        }
        None => {
            let used = shifted_labels(labels, shift);
            let (rows, positions) = (used.size()[0], used.size()[1]);
            let counts = Vec::<i64>::try_from(
                used.ne(ignore_index).sum_dim_intlist(1, false, Kind::Int64).to_device(tch::Device::Cpu),
            )
            .map_err(|e| Error::runtime(e.to_string()))?;
            let ids = Tensor::arange(rows, (Kind::Int64, labels.device()))
                .unsqueeze(1)
                .expand([rows, positions], false)
                .reshape([-1]);
            Ok((ids, counts.into_iter().map(|n| n as u64).collect()))
        }
    }
}

/// A `[P]` reference vector as float64, checked against the number of pairs.
fn reference_vector(name: &str, value: &Tensor, pairs: i64) -> Result<Tensor> {
    if !is_float(value.kind()) {
        return Err(Error::type_(format!("{name} must be a floating-point tensor, got {}", dtype_name(value.kind()))));
    }
    if value.size() != [pairs] {
        return Err(Error::value(format!(
            "{name} must be a 1-D tensor [pairs] = [{pairs}], got shape {:?}",
            value.size()
        )));
    }
    Ok(value.detach().to_kind(Kind::Double).to_device(tch::Device::Cpu))
}

/// Rows per chunk for consecutive runs of whole units (sequences or pairs) of `unit_rows` rows
/// each: about `target` rows per chunk, at least one unit however long.
fn unit_chunks(unit_rows: &[i64], target: i64) -> Vec<i64> {
    let mut chunks = Vec::new();
    let (mut units, mut rows) = (0usize, 0i64);
    for &n in unit_rows {
        if units > 0 && rows + n > target {
            chunks.push(rows);
            (units, rows) = (0, 0);
        }
        units += 1;
        rows += n;
    }
    if units > 0 {
        chunks.push(rows);
    }
    chunks
}

/// What the forward returns: token log-probs, logsumexp, entropy, correct, mean logit (`[B, T']`,
/// the statistics and means empty unless asked), and the gradients of the mean pair loss with
/// respect to hidden (`[B, T, H]`), weight, bias and the logit-scale tensor (None where not needed).
type PairLossForward =
    (Tensor, Tensor, Tensor, Tensor, Tensor, Option<Tensor>, Option<Tensor>, Option<Tensor>, Option<Tensor>);

#[allow(clippy::too_many_arguments)]
fn forward(
    hidden: &Tensor,
    projection: Projection<'_>,
    labels: &Tensor,
    position_ids: Option<&Tensor>,
    loss: PairLoss,
    refs: Option<(&Tensor, &Tensor)>,
    ignore_index: i64,
    shift: bool,
    chunk_size: Option<i64>,
    with_stats: bool,
    with_means: bool,
    needs: [bool; 4],
    cuda_stream: Option<u64>,
) -> Result<PairLossForward> {
    let cuda_stream = cuda_kernel_stream(hidden, cuda_stream);
    check_linear_inputs(hidden, &projection, labels, ignore_index, shift, chunk_size, position_ids.is_none())?;
    let (seq_ids, counts) = sequences(labels, position_ids, ignore_index, shift)?;
    let sequences = counts.len() as i64;
    if sequences == 0 || sequences % 2 == 1 {
        let source = if position_ids.is_some() { "position_ids hold" } else { "the batch holds" };
        return Err(Error::value(format!(
            "{source} {sequences} sequences; a [chosen; rejected] batch needs an even, non-zero number: the P chosen sequences, then the P rejected ones"
        )));
    }
    let pairs = sequences / 2;
    let refs = match refs {
        Some((c, r)) => {
            Some((reference_vector("ref_chosen_logps", c, pairs)?, reference_vector("ref_rejected_logps", r, pairs)?))
        }
        None => None,
    };
    let _guard = tch::no_grad_guard();
    let (b, t, h) = (hidden.size()[0], hidden.size()[1], hidden.size()[2]);
    let device = hidden.device();
    let acc = accumulation_kind(hidden.kind());
    let options = (acc, device);
    let mut outputs = PositionOutputs::new(hidden, shift, with_stats, with_means);
    let [needs_hidden, needs_weight, needs_bias, needs_scale] = needs;
    let mut grad_hidden = needs_hidden.then(|| Tensor::zeros([b * t, h], (hidden.kind(), device)));
    let mut grads = ProjectionGrads::new(&projection, acc, [needs_weight, needs_bias, needs_scale]);

    // The labelled rows grouped by unit: a sequence, or a pair (chosen sequence p, rejected
    // sequence P + p) for a loss that is not separable; a stable sort keeps each unit's order.
    let rows = labelled_rows(labels, ignore_index, shift);
    let row_sequence = seq_ids.index_select(0, &rows.output_rows);
    let (units, unit_rows): (Tensor, Vec<i64>) = if loss.separable() {
        (row_sequence.shallow_clone(), counts.iter().map(|&n| n as i64).collect())
    } else {
        (
            row_sequence.remainder(pairs),
            (0..pairs as usize).map(|p| (counts[p] + counts[p + pairs as usize]) as i64).collect(),
        )
    };
    let (_, order) = units.sort_stable(true, 0, false);
    let (hidden_rows, output_rows, targets) = (
        rows.hidden_rows.index_select(0, &order),
        rows.output_rows.index_select(0, &order),
        rows.targets.index_select(0, &order),
    );
    let row_sequence = row_sequence.index_select(0, &order);
    let total = output_rows.size()[0];
    let chunks = unit_chunks(&unit_rows, chunk_rows(total, h, projection.weight.size()[0], hidden.kind(), chunk_size));
    let widest = chunks.iter().copied().max().unwrap_or(1).max(1);
    let chunked = ChunkedLogits::with_rows(hidden, projection, widest, total);

    // ∂(mean over pairs)/∂ℓ_s, then per token of s divided by n_s, as autograd would through
    // the average and the mean: in the log-probs' dtype after the float64 loss formulas.
    let count_values: Vec<f64> = counts.iter().map(|&n| n as f64).collect();
    let counts_acc = Tensor::from_slice(&count_values).to_kind(acc);
    let mean_scale = Reduction::Mean.grad_scale(pairs as usize);
    let hidden_flat = hidden.reshape([b * t, h]);
    let mut start = 0;
    for n in chunks {
        let (h_rows, out_rows, seq) =
            (hidden_rows.narrow(0, start, n), output_rows.narrow(0, start, n), row_sequence.narrow(0, start, n));
        let chunk_targets = targets.narrow(0, start, n);
        start += n;
        let h_c = hidden_flat.index_select(0, &h_rows);
        let logits = chunked.logits(&h_c);
        let chunk = chunk_softmax(
            &logits,
            &chunk_targets,
            ignore_index,
            with_stats,
            with_means,
            projection.transform,
            cuda_stream,
        )?;
        let (lp, ls) = (chunk.0.reshape([-1]), chunk.1.reshape([-1]));

        // Every sequence's average from this chunk's tokens, on the host: complete for the chunk's
        // own sequences (the only ones whose gradients are read below), partial or 0 elsewhere.
        let sums = Tensor::zeros([sequences], options).index_add(0, &seq, &lp).to_device(tch::Device::Cpu);
        let averages = (sums / &counts_acc).to_kind(Kind::Double);
        let (g_w, g_l) = loss.grads(
            &averages.narrow(0, 0, pairs),
            &averages.narrow(0, pairs, pairs),
            refs.as_ref().map(|(c, r)| (c, r)),
        );
        let seq_grads = (Tensor::cat(&[g_w, g_l], 0) * mean_scale).to_kind(acc) / &counts_acc;
        let g = seq_grads.to_device(device).index_select(0, &seq);

        let row_grads =
            chunk_row_grads(logits, &chunk_targets, ignore_index, projection.transform, &g, &ls, cuda_stream)?;
        let row_grads = grads.accumulate(row_grads, &h_c, &projection);
        if let Some(gh) = &mut grad_hidden {
            let _ = gh.index_copy_(0, &h_rows, &row_grads.matmul(projection.weight));
        }
        outputs.store(&out_rows, &chunk);
    }
    let (logps, lse, entropy, correct, means) = outputs.finish();
    let (grad_weight, grad_bias, grad_scale) = grads.finish(&projection);
    Ok((
        logps,
        lse,
        entropy,
        correct,
        means,
        grad_hidden.map(|gh| gh.reshape([b, t, h])),
        grad_weight,
        grad_bias,
        grad_scale,
    ))
}

/// Fused-linear pair loss forward with its gradients: (token log-probs, logsumexp, entropy,
/// correct, mean logit, grad hidden, grad weight, grad bias, grad logit_scale_tensor) for the mean
/// over pairs of `loss` ("simper" or "dil" with `estimator` and `beta`) on a [chosen; rejected]
/// batch (or packed sequences with `position_ids`, chosen ones first). `needs` = which of
/// (hidden, weight, bias, logit_scale_tensor) get a gradient (None for the others); the logit
/// transform as in `linear_token_logps_forward`. No autograd: see `simper_rs.fused_loss`.
#[pyfunction]
#[pyo3(
    signature = (hidden, weight, bias, labels, position_ids, loss, estimator = "lsif", beta = 1.0, ref_chosen_logps = None, ref_rejected_logps = None, ignore_index = -100, shift = true, chunk_size = None, with_stats = false, needs = (true, true, true, true), cuda_stream = None, logit_scale = None, logit_scale_tensor = None, logit_softcap = None, with_means = false),
    text_signature = "(hidden, weight, bias, labels, position_ids, loss, estimator='lsif', beta=1.0, ref_chosen_logps=None, ref_rejected_logps=None, ignore_index=-100, shift=True, chunk_size=None, with_stats=False, needs=(True, True, True, True), cuda_stream=None, logit_scale=None, logit_scale_tensor=None, logit_softcap=None, with_means=False)"
)]
#[allow(clippy::too_many_arguments)]
pub fn linear_pair_loss_forward(
    py: Python<'_>,
    hidden: PyTensor,
    weight: PyTensor,
    bias: Option<PyTensor>,
    labels: PyTensor,
    position_ids: Option<PyTensor>,
    loss: &str,
    estimator: &str,
    beta: f64,
    ref_chosen_logps: Option<PyTensor>,
    ref_rejected_logps: Option<PyTensor>,
    ignore_index: i64,
    shift: bool,
    chunk_size: Option<i64>,
    with_stats: bool,
    needs: (bool, bool, bool, bool),
    cuda_stream: Option<u64>,
    logit_scale: Option<f64>,
    logit_scale_tensor: Option<PyTensor>,
    logit_softcap: Option<f64>,
    with_means: bool,
) -> PyResult<PyObject> {
    let loss = PairLoss::parse(loss, estimator, beta)?;
    if ref_chosen_logps.is_some() != ref_rejected_logps.is_some() {
        return Err(
            Error::value("ref_chosen_logps and ref_rejected_logps must be given together (both or neither)").into()
        );
    }
    if ref_chosen_logps.is_some() && matches!(loss, PairLoss::Simper) {
        return Err(
            Error::value("SimPER uses no reference log-probs; pass only chosen_logps and rejected_logps").into()
        );
    }
    let needs = [needs.0, needs.1, needs.2, needs.3];
    let out = py.allow_threads(move || {
        let projection =
            Projection::new(&weight, bias.as_deref(), logit_scale, logit_scale_tensor.as_deref(), logit_softcap)?;
        let refs = ref_chosen_logps.as_deref().zip(ref_rejected_logps.as_deref());
        forward(
            &hidden,
            projection,
            &labels,
            position_ids.as_deref(),
            loss,
            refs,
            ignore_index,
            shift,
            chunk_size,
            with_stats,
            with_means,
            needs,
            cuda_stream,
        )
    })?;
    let (lp, ls, ent, cor, means, gh, gw, gb, gs) = out;
    let values = (
        PyTensor(lp),
        PyTensor(ls),
        PyTensor(ent),
        PyTensor(cor),
        PyTensor(means),
        gh.map(PyTensor),
        gw.map(PyTensor),
        gb.map(PyTensor),
        gs.map(PyTensor),
    );
    Ok(values.into_pyobject(py)?.into_any().unbind())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_whole_units_of_about_the_target_rows() {
        assert_eq!(unit_chunks(&[3, 3, 3, 3], 6), vec![6, 6]);
        assert_eq!(unit_chunks(&[3, 3, 3, 3], 7), vec![6, 6]);
        // a unit longer than the target gets a chunk of its own
        assert_eq!(unit_chunks(&[2, 10, 2], 4), vec![2, 10, 2]);
        assert_eq!(unit_chunks(&[5], 1), vec![5]);
        assert!(unit_chunks(&[], 4).is_empty());
    }

    #[test]
    fn only_cpc_couples_the_two_sequences_of_a_pair() {
        assert!(PairLoss::Simper.separable());
        for estimator in [Estimator::Lsif, Estimator::Bce, Estimator::Ukl] {
            assert!(PairLoss::Dil { estimator, beta: 1.0 }.separable());
        }
        assert!(!PairLoss::Dil { estimator: Estimator::Cpc, beta: 1.0 }.separable());
        // separable: the chosen gradient does not move when the rejected average does
        let lsif = PairLoss::Dil { estimator: Estimator::Lsif, beta: 1.0 };
        let w = Tensor::from_slice(&[-0.7f64]);
        let (a, _) = lsif.grads(&w, &Tensor::from_slice(&[-1.0f64]), None);
        let (b, _) = lsif.grads(&w, &Tensor::from_slice(&[-3.0f64]), None);
        assert_eq!(a.double_value(&[0]), b.double_value(&[0]));
    }

    #[test]
    fn pair_loss_grads_follow_the_loss_formulas() {
        let (w, l) = (Tensor::from_slice(&[-0.5f64]), Tensor::from_slice(&[-1.5f64]));
        let (gw, gl) = PairLoss::Simper.grads(&w, &l, None);
        assert!((gw.double_value(&[0]) + (-0.5f64).exp()).abs() < 1e-12);
        assert!((gl.double_value(&[0]) - (-1.5f64).exp()).abs() < 1e-12);
        // with references, DIL's gradient is taken at the log-ratios u = ℓ − ℓ_ref
        let (rc, rr) = (Tensor::from_slice(&[-0.25f64]), Tensor::from_slice(&[-1.0f64]));
        let lsif = PairLoss::Dil { estimator: Estimator::Lsif, beta: 1.0 };
        let (gw, gl) = lsif.grads(&w, &l, Some((&rc, &rr)));
        assert!((gw.double_value(&[0]) + (-0.25f64).exp()).abs() < 1e-12);
        assert!((gl.double_value(&[0]) - (2.0 * -0.5f64).exp()).abs() < 1e-12);
    }
}
