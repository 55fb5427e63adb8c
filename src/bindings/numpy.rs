//! numpy entry points (`simper_rs.numpy`): the fused kernels and the loss formulas straight on
//! arrays' memory, with no torch involved and no copy of the logits (unless their vocabulary
//! dimension is not contiguous).
use numpy::ndarray::Array2;
use numpy::{
    Element, IntoPyArray, PyArray1, PyArray3, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::error::{Error, Result};
use crate::losses::{self, check_beta};
use crate::threads;
use simper_rs_core::kernels::element::{Accum, Logit};
use simper_rs_core::kernels::logps::{self, ForwardOutputs, LogitsRows};
use simper_rs_core::kernels::transform::LogitTransform;
use simper_rs_core::losses::Reduction;

/// Logits as a [`LogitsRows`] view of the array's memory, or of a contiguous copy when the
/// strides cannot be expressed (negative, or a non-contiguous vocabulary dimension).
fn with_rows<E, R>(logits: &Bound<'_, PyArray3<E>>, f: impl FnOnce(LogitsRows<'_, E>) -> Result<R>) -> Result<R>
where
    E: Logit + Element,
{
    let readonly = logits.readonly();
    let view = readonly.as_array();
    let shape = [view.shape()[0], view.shape()[1], view.shape()[2]];
    let strides = view.strides();
    let direct = strides.iter().all(|&s| s >= 0) && (strides[2] == 1 || shape[2] <= 1);
    if direct && shape.iter().all(|&n| n > 0) {
        let span = (shape[0] - 1) * strides[0] as usize + (shape[1] - 1) * strides[1] as usize + shape[2];
        // SAFETY: the view's first element starts a span of `span` elements inside the array,
        // which the readonly borrow keeps alive and unmodified for the duration of `f`.
        let data = unsafe { std::slice::from_raw_parts(view.as_ptr(), span) };
        return f(LogitsRows::new(data, shape, [strides[0] as usize, strides[1] as usize])?);
    }
    let owned = view.as_standard_layout();
    f(LogitsRows::contiguous(owned.as_slice().unwrap_or(&[]), shape)?)
}

fn check_labels_shape(
    labels: &PyReadonlyArray2<'_, i64>,
    batch: usize,
    positions: usize,
    shift: bool,
) -> Result<Vec<i64>> {
    let view = labels.as_array();
    if view.shape() != [batch, positions] {
        return Err(Error::value(format!(
            "labels shape {:?} must equal the first two dimensions of logits {:?}",
            view.shape(),
            [batch, positions]
        )));
    }
    if shift && positions < 2 {
        return Err(Error::value(format!(
            "with shift=True each sequence needs at least 2 positions, got seq_len = {positions}"
        )));
    }
    Ok(view.iter().copied().collect())
}

/// Token log-probs [B, T'] for one element type, or the error to raise.
fn token_logps_typed<'py, E>(
    py: Python<'py>,
    logits: &Bound<'py, PyArray3<E>>,
    labels: &PyReadonlyArray2<'py, i64>,
    ignore_index: i64,
    shift: bool,
    average: Option<bool>,
) -> Result<PyObject>
where
    E: Logit + Element,
    E::Acc: Element,
{
    let shape = logits.shape().to_vec();
    let (batch, positions) = (shape[0], shape[1]);
    let labels = check_labels_shape(labels, batch, positions, shift)?;
    let used = positions - shift as usize;
    let (logp, reduced) = with_rows(logits, |rows| {
        py.allow_threads(|| {
            let mut logp = vec![<E::Acc as Accum>::ZERO; batch * used];
            let mut lse = logp.clone();
            let out = ForwardOutputs { logps: &mut logp, lse: &mut lse, stats: None };
            threads::install(|| logps::forward(&rows, &labels, ignore_index, shift, LogitTransform::Identity, out))?;
            let reduced = match average {
                Some(average) => {
                    Some(logps::reduce_sequences(&logp, &labels, batch, positions, shift, ignore_index, average)?)
                }
                None => None,
            };
            Ok((logp, reduced))
        })
    })?;
    Ok(match reduced {
        Some(sequences) => sequences.into_pyarray(py).into_any().unbind(),
        None => Array2::from_shape_vec((batch, used), logp)
            .expect("the kernel fills batch × used values")
            .into_pyarray(py)
            .into_any()
            .unbind(),
    })
}

fn dispatch_logits(
    py: Python<'_>,
    logits: &Bound<'_, PyAny>,
    labels: &Bound<'_, PyAny>,
    ignore_index: i64,
    shift: bool,
    average: Option<bool>,
) -> PyResult<PyObject> {
    let array = logits
        .downcast::<PyUntypedArray>()
        .map_err(|_| Error::type_(format!("logits must be a numpy.ndarray, got {}", type_name(logits))))?;
    if array.ndim() != 3 {
        return Err(Error::value(format!(
            "logits must be a 3-D array [batch, seq_len, vocab], got shape {:?}",
            array.shape()
        ))
        .into());
    }
    let labels: PyReadonlyArray2<'_, i64> = labels.extract().map_err(|_| {
        Error::type_(format!("labels must be a 2-D int64 numpy array [batch, seq_len], got {}", describe_array(labels)))
    })?;
    if let Ok(x) = logits.downcast::<PyArray3<f32>>() {
        return Ok(token_logps_typed(py, x, &labels, ignore_index, shift, average)?);
    }
    if let Ok(x) = logits.downcast::<PyArray3<f64>>() {
        return Ok(token_logps_typed(py, x, &labels, ignore_index, shift, average)?);
    }
    Err(Error::type_(format!("logits must be a float32 or float64 array, got dtype {}", array.dtype())).into())
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "an unknown type".into())
}

fn describe_array(value: &Bound<'_, PyAny>) -> String {
    match value.downcast::<PyUntypedArray>() {
        Ok(a) => format!("an array of dtype {} and shape {:?}", a.dtype(), a.shape()),
        Err(_) => type_name(value),
    }
}

/// Per-token log-probs [B, T'] (float32 for float32 logits, float64 for float64).
#[pyfunction]
#[pyo3(signature = (logits, labels, ignore_index = -100, shift = true), text_signature = "(logits, labels, ignore_index=-100, shift=True)")]
pub fn numpy_token_logps(
    py: Python<'_>,
    logits: &Bound<'_, PyAny>,
    labels: &Bound<'_, PyAny>,
    ignore_index: i64,
    shift: bool,
) -> PyResult<PyObject> {
    dispatch_logits(py, logits, labels, ignore_index, shift, None)
}

/// Per-sequence log-probs [B]: the mean (or sum) over response tokens.
#[pyfunction]
#[pyo3(signature = (logits, labels, average = true, ignore_index = -100, shift = true), text_signature = "(logits, labels, average=True, ignore_index=-100, shift=True)")]
pub fn numpy_sequence_logps(
    py: Python<'_>,
    logits: &Bound<'_, PyAny>,
    labels: &Bound<'_, PyAny>,
    average: bool,
    ignore_index: i64,
    shift: bool,
) -> PyResult<PyObject> {
    dispatch_logits(py, logits, labels, ignore_index, shift, Some(average))
}

/// (chosen, rejected, reference chosen, reference rejected) as vectors.
type PairVectors = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

fn pair_arrays(
    chosen: &PyReadonlyArray1<'_, f64>,
    rejected: &PyReadonlyArray1<'_, f64>,
    refs: Option<(&PyReadonlyArray1<'_, f64>, &PyReadonlyArray1<'_, f64>)>,
) -> Result<PairVectors> {
    let c: Vec<f64> = chosen.as_array().to_vec();
    let r: Vec<f64> = rejected.as_array().to_vec();
    if c.is_empty() {
        return Err(Error::value("chosen_logps is empty: a preference loss needs at least one pair"));
    }
    if r.len() != c.len() {
        return Err(Error::value(format!(
            "rejected_logps must have the same shape as chosen_logps [{}], got [{}]",
            c.len(),
            r.len()
        )));
    }
    let (u_c, u_r) = match refs {
        None => (c.clone(), r.clone()),
        Some((rc, rr)) => {
            for (name, a) in [("ref_chosen_logps", rc), ("ref_rejected_logps", rr)] {
                if a.len() != c.len() {
                    return Err(Error::value(format!(
                        "{name} must have the same shape as chosen_logps [{}], got [{}]",
                        c.len(),
                        a.len()
                    )));
                }
            }
            let uc = c.iter().zip(rc.as_array()).map(|(x, y)| x - y).collect();
            let ur = r.iter().zip(rr.as_array()).map(|(x, y)| x - y).collect();
            (uc, ur)
        }
    };
    Ok((c, r, u_c, u_r))
}

/// (loss, grad_chosen, grad_rejected): the loss reduced as asked (an array for "none"), the
/// gradients of that reduced loss (of each per-pair loss for "none").
type LossAndGrads<'py> = (PyObject, Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>);

fn finish<'py>(
    py: Python<'py>,
    per_pair: Vec<f64>,
    grads: (Vec<f64>, Vec<f64>),
    reduction: Reduction,
) -> PyResult<LossAndGrads<'py>> {
    let scale = reduction.grad_scale(per_pair.len());
    let loss: PyObject = match reduction {
        Reduction::Mean => {
            (per_pair.iter().sum::<f64>() / per_pair.len() as f64).into_pyobject(py)?.into_any().unbind()
        }
        Reduction::Sum => per_pair.iter().sum::<f64>().into_pyobject(py)?.into_any().unbind(),
        Reduction::None => per_pair.into_pyarray(py).into_any().unbind(),
    };
    let scaled = |g: Vec<f64>| g.into_iter().map(|x| x * scale).collect::<Vec<_>>().into_pyarray(py);
    Ok((loss, scaled(grads.0), scaled(grads.1)))
}

/// SimPER loss and its gradients with respect to the chosen and rejected average log-probs.
#[pyfunction]
#[pyo3(signature = (chosen_logps, rejected_logps, reduction = "mean"))]
pub fn numpy_simper_loss<'py>(
    py: Python<'py>,
    chosen_logps: PyReadonlyArray1<'py, f64>,
    rejected_logps: PyReadonlyArray1<'py, f64>,
    reduction: &str,
) -> PyResult<LossAndGrads<'py>> {
    let reduction = losses::reduction(reduction)?;
    let (c, r, ..) = pair_arrays(&chosen_logps, &rejected_logps, None)?;
    let per_pair = c.iter().zip(&r).map(|(w, l)| losses::simper(w, l)).collect();
    let grads = c.iter().zip(&r).map(|(w, l)| losses::simper_grads(w, l)).unzip();
    finish(py, per_pair, grads, reduction)
}

/// DIL loss and its gradients with respect to the policy's chosen and rejected log-probs.
#[pyfunction]
#[pyo3(signature = (chosen_logps, rejected_logps, ref_chosen_logps = None, ref_rejected_logps = None, estimator = "lsif", beta = 1.0, reduction = "mean"))]
#[allow(clippy::too_many_arguments)]
pub fn numpy_dil_loss<'py>(
    py: Python<'py>,
    chosen_logps: PyReadonlyArray1<'py, f64>,
    rejected_logps: PyReadonlyArray1<'py, f64>,
    ref_chosen_logps: Option<PyReadonlyArray1<'py, f64>>,
    ref_rejected_logps: Option<PyReadonlyArray1<'py, f64>>,
    estimator: &str,
    beta: f64,
    reduction: &str,
) -> PyResult<LossAndGrads<'py>> {
    let estimator = losses::estimator(estimator)?;
    let reduction = losses::reduction(reduction)?;
    check_beta(beta)?;
    let refs = match (&ref_chosen_logps, &ref_rejected_logps) {
        (None, None) => None,
        (Some(a), Some(b)) => Some((a, b)),
        _ => {
            return Err(Error::value(
                "ref_chosen_logps and ref_rejected_logps must be given together (both or neither)",
            )
            .into())
        }
    };
    let (c, _, u_c, u_r) = pair_arrays(&chosen_logps, &rejected_logps, refs)?;
    let per_pair = (0..c.len()).map(|i| losses::dil(estimator, beta, &c[i], &u_c[i], &u_r[i])).collect();
    let grads = (0..c.len()).map(|i| losses::dil_grads(estimator, beta, &u_c[i], &u_r[i])).unzip();
    finish(py, per_pair, grads, reduction)
}
