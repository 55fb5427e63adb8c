//! The fused masked log-prob reduction (docs/design.md, "The fused op"), on slices.
//!
//! Forward, per row x (the logits that predict one label y, after the row's logit transform
//! t, see [`super::transform`], which the identity compiles away): m = max x, s = Σ exp(x − m),
//! lse = m + ln s, logp = x[y] − lse; optionally the entropy ln s − Σ (x−m)·exp(x−m)/s and
//! whether argmax x == y. Backward: grad z = g·(onehot(y) − exp(x − lse))·t'(z) for x = t(z),
//! written into a fresh buffer. Ignored rows (label == ignore_index) output 0 and never read their logits.
//!
//! The forward reads each row once: per-lane running maxima and sums, rescaled when a lane's max
//! grows (see [`row_online`]). Each row is reduced sequentially in a fixed lane order, so results
//! are bit-identical for any number of threads. Rows are spread over rayon's current pool.
use rayon::prelude::*;

use super::element::{Accum, Logit};
use super::transform::{LogitTransform, Plain, RowTransform};
use crate::with_row_transform;

/// Why a kernel refused its arguments (the bindings validate first; this is the last line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// A buffer is shorter than its layout needs.
    BufferTooShort { name: &'static str, needed: usize, got: usize },
    /// A label is neither ignore_index nor a valid vocabulary index.
    LabelOutOfRange { batch: usize, position: usize, value: i64, vocab: usize },
    /// The layout itself is impossible (sizes overflow, or shift on fewer than 2 positions).
    BadLayout(String),
    /// A row has no response tokens, so it has no average log-probability.
    EmptyRow { row: usize },
    /// A logit transform's parameters are out of range (a softcap that is not positive, ...).
    BadTransform(String),
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelError::BufferTooShort { name, needed, got } => {
                write!(f, "{name} holds {got} elements but its shape needs {needed}")
            }
            KernelError::LabelOutOfRange { batch, position, value, vocab } => write!(
                f,
                "labels[{batch}, {position}] = {value} is outside the vocabulary [0, {vocab}) and is not ignore_index"
            ),
            KernelError::BadLayout(msg) | KernelError::BadTransform(msg) => f.write_str(msg),
            KernelError::EmptyRow { row } => write!(
                f,
                "row {row} of labels has no response tokens (every label is ignore_index), so its average log-probability is undefined"
            ),
        }
    }
}

impl std::error::Error for KernelError {}

/// Logits `[batch, positions, vocab]` in a slice, with any batch and position strides (in
/// elements) and a contiguous vocabulary dimension: the causal shift is a view, not a copy.
#[derive(Clone, Copy, Debug)]
pub struct LogitsRows<'a, E> {
    data: &'a [E],
    pub batch: usize,
    pub positions: usize,
    pub vocab: usize,
    batch_stride: usize,
    position_stride: usize,
}

impl<'a, E: Copy> LogitsRows<'a, E> {
    pub fn new(
        data: &'a [E],
        [batch, positions, vocab]: [usize; 3],
        [batch_stride, position_stride]: [usize; 2],
    ) -> Result<Self, KernelError> {
        let needed = if batch == 0 || positions == 0 || vocab == 0 {
            0
        } else {
            (batch - 1)
                .checked_mul(batch_stride)
                .and_then(|a| (positions - 1).checked_mul(position_stride).and_then(|b| a.checked_add(b)))
                .and_then(|a| a.checked_add(vocab))
                .ok_or_else(|| KernelError::BadLayout("logits layout overflows the address space".into()))?
        };
        if data.len() < needed {
            return Err(KernelError::BufferTooShort { name: "logits", needed, got: data.len() });
        }
        Ok(Self { data, batch, positions, vocab, batch_stride, position_stride })
    }

    /// A contiguous `[batch, positions, vocab]` buffer.
    pub fn contiguous(data: &'a [E], shape: [usize; 3]) -> Result<Self, KernelError> {
        Self::new(data, shape, [shape[1] * shape[2], shape[2]])
    }

    #[inline(always)]
    fn row(&self, b: usize, t: usize) -> &'a [E] {
        let start = b * self.batch_stride + t * self.position_stride;
        &self.data[start..start + self.vocab]
    }
}

/// Positions per row that carry a label: `positions - 1` when shifting.
fn labelled_positions(positions: usize, shift: bool) -> Result<usize, KernelError> {
    if shift {
        positions
            .checked_sub(1)
            .filter(|_| positions >= 2 || positions == 0)
            .ok_or_else(|| KernelError::BadLayout("shift needs at least 2 positions per sequence".into()))
    } else {
        Ok(positions)
    }
}

/// The label each logits row predicts, `None` where ignored; `labels` is `[batch, positions]`.
fn check_labels(
    labels: &[i64],
    batch: usize,
    positions: usize,
    vocab: usize,
    shift: bool,
    ignore_index: i64,
) -> Result<(), KernelError> {
    let needed = batch * positions;
    if labels.len() != needed {
        return Err(KernelError::BufferTooShort { name: "labels", needed, got: labels.len() });
    }
    let first = shift as usize;
    for b in 0..batch {
        for t in first..positions {
            let value = labels[b * positions + t];
            if value != ignore_index && (value < 0 || value as u64 >= vocab as u64) {
                return Err(KernelError::LabelOutOfRange { batch: b, position: t, value, vocab });
            }
        }
    }
    Ok(())
}

const LANES: usize = 16;
/// Elements per block of the single-pass forward: small enough to stay in L1 between the block's
/// max sweep and its exp sweep, large enough that the per-block lane rescale (one exp per lane)
/// is negligible.
const BLOCK: usize = LANES * 16;

/// Per-lane online softmax state: running max `m`, Σ exp(x − m) and Σ (x − m)·exp(x − m).
#[derive(Clone, Copy)]
struct Lanes<A> {
    max: [A; LANES],
    sum: [A; LANES],
    weighted: [A; LANES],
}

/// Moves a lane's sums from max `m` to the larger max `new_m`: s·c and c·(sw + (m − new_m)·s)
/// with c = exp(m − new_m). Where both are equal (including both −inf) nothing changes, and an
/// empty lane (s = 0, m = −inf) stays empty instead of turning into −inf·0 = NaN.
#[inline(always)]
fn rescale<A: Accum>(m: A, new_m: A, s: A, sw: A) -> (A, A) {
    let zero = A::ZERO;
    let delta = if m == new_m { zero } else { m - new_m };
    let c = delta.exp();
    let sw = if s == zero { zero } else { c * (sw + delta * s) };
    (s * c, sw)
}

/// Folds a block (a whole number of `LANES` chunks) into the lanes: a max sweep, one rescale per
/// lane, then the exp sweep over data that is still in L1. One exp per element, one pass over
/// memory.
// The lane loops index fixed-size arrays on purpose: that is the shape LLVM vectorises.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn fold_block<E: Logit, T: RowTransform<E::Acc>, const WEIGHTED: bool>(state: &mut Lanes<E::Acc>, block: &[E], t: T) {
    let zero = E::Acc::ZERO;
    let mut block_max = state.max;
    for chunk in block.chunks_exact(LANES) {
        for i in 0..LANES {
            block_max[i] = block_max[i].max(t.apply(chunk[i].load()));
        }
    }
    for i in 0..LANES {
        let (s, sw) = rescale(state.max[i], block_max[i], state.sum[i], state.weighted[i]);
        state.sum[i] = s;
        if WEIGHTED {
            state.weighted[i] = sw;
        }
    }
    state.max = block_max;
    for chunk in block.chunks_exact(LANES) {
        for i in 0..LANES {
            let x = t.apply(chunk[i].load());
            let d = x - block_max[i];
            // A lane that has seen only −inf has max −inf and d = NaN: its −inf adds 0.
            let e = if x == E::Acc::NEG_INFINITY { zero } else { d.exp() };
            state.sum[i] = state.sum[i] + e;
            if WEIGHTED {
                // 0 where exp underflows to 0, so that −inf logits add 0, not −inf·0.
                state.weighted[i] = state.weighted[i] + if e == zero { zero } else { d * e };
            }
        }
    }
}

/// max x, Σ exp(x − max) and (with `WEIGHTED`) Σ (x − max)·exp(x − max) of one row in a single
/// pass. The lanes are combined in a fixed order, so the result depends only on the row.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn row_online<E: Logit, T: RowTransform<E::Acc>, const WEIGHTED: bool>(row: &[E], t: T) -> (E::Acc, E::Acc, E::Acc) {
    let zero = E::Acc::ZERO;
    let mut state = Lanes { max: [E::Acc::NEG_INFINITY; LANES], sum: [zero; LANES], weighted: [zero; LANES] };
    let whole = row.len() / LANES * LANES;
    for block in row[..whole].chunks(BLOCK) {
        fold_block::<E, T, WEIGHTED>(&mut state, block, t);
    }
    // The last partial chunk, padded with −inf (which adds exp(−inf) = 0 and weight 0).
    let tail = &row[whole..];
    if !tail.is_empty() {
        let mut padded = [E::Acc::NEG_INFINITY; LANES];
        for (p, x) in padded.iter_mut().zip(tail) {
            *p = t.apply(x.load());
        }
        let mut m = state.max;
        for i in 0..LANES {
            m[i] = m[i].max(padded[i]);
        }
        for i in 0..LANES {
            let (s, sw) = rescale(state.max[i], m[i], state.sum[i], state.weighted[i]);
            let d = padded[i] - m[i];
            let e = if padded[i] == E::Acc::NEG_INFINITY { zero } else { d.exp() };
            state.sum[i] = s + e;
            state.weighted[i] = sw + if e == zero { zero } else { d * e };
        }
        state.max = m;
    }
    let mut m = E::Acc::NEG_INFINITY;
    for v in state.max {
        m = m.max(v);
    }
    let (mut s, mut sw) = (zero, zero);
    for i in 0..LANES {
        let (li, lw) = rescale(state.max[i], m, state.sum[i], state.weighted[i]);
        s = s + li;
        sw = sw + lw;
    }
    (m, s, sw)
}

/// One row's forward results.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowForward<A> {
    pub logp: A,
    pub lse: A,
    pub entropy: A,
    pub correct: bool,
}

#[inline(always)]
fn forward_row_impl<E: Logit, T: RowTransform<E::Acc>>(
    row: &[E],
    label: usize,
    stats: bool,
    t: T,
) -> RowForward<E::Acc> {
    let (m, s, sw) = if stats { row_online::<E, T, true>(row, t) } else { row_online::<E, T, false>(row, t) };
    let log_s = s.ln();
    let lse = m + log_s;
    let target = t.apply(row[label].load());
    let (entropy, correct) = if stats {
        // argmax is the first maximal index, as torch.argmax.
        let correct = target == m && !row[..label].iter().any(|x| t.apply(x.load()) == m);
        (log_s - sw / s, correct)
    } else {
        (E::Acc::ZERO, false)
    };
    // (x[y] − m) − ln s, not x[y] − lse: at logits of magnitude 1e4, lse = m + ln s has lost
    // the low bits of ln s, while x[y] − m is exact when x[y] is near the max.
    RowForward { logp: (target - m) - log_s, lse, entropy, correct }
}

/// −g·softmax(t(z))·t'(z) for one element z (the label's entry adds g·t'(z) to it).
#[inline(always)]
fn element_grad<A: Accum, T: RowTransform<A>>(z: A, grad: A, lse: A, t: T) -> A {
    let y = t.apply(z);
    -(grad * (y - lse).exp()) * t.derivative(z, y)
}

/// The label's entry: g·(1 − p)·t'(z).
#[inline(always)]
fn label_grad<A: Accum, T: RowTransform<A>>(z: A, grad: A, lse: A, t: T) -> A {
    let y = t.apply(z);
    grad * (A::ONE - (y - lse).exp()) * t.derivative(z, y)
}

#[inline(always)]
fn backward_row_impl<E: Logit, T: RowTransform<E::Acc>>(
    row: &[E],
    out: &mut [E],
    label: usize,
    grad: E::Acc,
    lse: E::Acc,
    t: T,
) {
    for (o, &x) in out.iter_mut().zip(row) {
        *o = E::store(element_grad(x.load(), grad, lse, t));
    }
    out[label] = E::store(label_grad(row[label].load(), grad, lse, t));
}

/// [`backward_row_impl`] over a row that holds the logits on entry and the gradient on exit.
#[inline(always)]
fn backward_row_in_place_impl<E: Logit, T: RowTransform<E::Acc>>(
    row: &mut [E],
    label: usize,
    grad: E::Acc,
    lse: E::Acc,
    t: T,
) {
    let label_value = label_grad(row[label].load(), grad, lse, t);
    for x in row.iter_mut() {
        *x = E::store(element_grad(x.load(), grad, lse, t));
    }
    row[label] = E::store(label_value);
}

/// A compilation of the row code. Wheels target baseline x86-64; the same Rust is compiled again
/// with AVX2 + FMA and with AVX-512 enabled and picked at run time, since wider vectors divide the
/// time of the exp-bound loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowCode {
    /// 512-bit vectors (AVX-512 F/BW/DQ/VL) plus FMA and F16C.
    Avx512,
    /// 256-bit vectors with FMA and F16C.
    Avx2,
    /// Whatever the build targets (SSE2 on x86-64, NEON on aarch64).
    Baseline,
}

impl RowCode {
    /// Every compilation, widest first.
    pub const ALL: [RowCode; 3] = [RowCode::Avx512, RowCode::Avx2, RowCode::Baseline];

    /// Whether this CPU can run this compilation.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            match self {
                RowCode::Avx512 => avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl"),
                RowCode::Avx2 => avx2,
                RowCode::Baseline => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == RowCode::Baseline
        }
    }

    /// The name `SIMPER_RS_ROW_CODE` takes.
    pub fn name(self) -> &'static str {
        match self {
            RowCode::Avx512 => "avx512",
            RowCode::Avx2 => "avx2",
            RowCode::Baseline => "baseline",
        }
    }

    fn description(self) -> &'static str {
        match self {
            RowCode::Avx512 => "AVX-512 + FMA + F16C",
            RowCode::Avx2 => "AVX2 + FMA + F16C",
            RowCode::Baseline => "baseline (no AVX2)",
        }
    }

    /// The widest compilation this CPU runs, capped by `SIMPER_RS_ROW_CODE` (avx512, avx2 or
    /// baseline; for tests and benchmarks) when set: a request for code the CPU lacks gets the
    /// widest it has below it. Read once per process.
    pub fn selected() -> RowCode {
        static SELECTED: std::sync::OnceLock<RowCode> = std::sync::OnceLock::new();
        *SELECTED.get_or_init(|| {
            let cap = std::env::var("SIMPER_RS_ROW_CODE")
                .ok()
                .and_then(|v| RowCode::ALL.into_iter().find(|c| c.name() == v.trim().to_ascii_lowercase()));
            let start = cap.map_or(0, |c| RowCode::ALL.iter().position(|&x| x == c).unwrap_or(0));
            RowCode::ALL[start..].iter().copied().find(|c| c.available()).unwrap_or(RowCode::Baseline)
        })
    }
}

// The row code compiled with each instruction set. Each function is the generic code above; the
// target features let LLVM vectorise it for that width.
macro_rules! row_code {
    ($forward:ident, $backward:ident, $in_place:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $forward<E: Logit, T: RowTransform<E::Acc>>(
            row: &[E],
            label: usize,
            stats: bool,
            t: T,
        ) -> RowForward<E::Acc> {
            forward_row_impl(row, label, stats, t)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $backward<E: Logit, T: RowTransform<E::Acc>>(
            row: &[E],
            out: &mut [E],
            label: usize,
            grad: E::Acc,
            lse: E::Acc,
            t: T,
        ) {
            backward_row_impl(row, out, label, grad, lse, t)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $in_place<E: Logit, T: RowTransform<E::Acc>>(
            row: &mut [E],
            label: usize,
            grad: E::Acc,
            lse: E::Acc,
            t: T,
        ) {
            backward_row_in_place_impl(row, label, grad, lse, t)
        }
    };
}

row_code!(forward_row_avx2, backward_row_avx2, backward_row_in_place_avx2, "avx2,fma,f16c");
row_code!(
    forward_row_avx512,
    backward_row_avx512,
    backward_row_in_place_avx512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl"
);

/// Which compilation of the row code runs on this CPU (picked at run time, as the kernels do).
pub fn row_code_path() -> &'static str {
    RowCode::selected().description()
}

/// Forward of one logits row for `label` (which must be `< row.len()`).
pub fn forward_row<E: Logit>(row: &[E], label: usize, stats: bool) -> RowForward<E::Acc> {
    forward_row_with(RowCode::selected(), row, label, stats)
}

/// [`forward_row`] with a given compilation (falls back to the baseline where `code` is not
/// available on this CPU).
pub fn forward_row_with<E: Logit>(code: RowCode, row: &[E], label: usize, stats: bool) -> RowForward<E::Acc> {
    forward_row_transformed(code, row, label, stats, Plain)
}

/// [`forward_row_with`] of the transformed row t(z).
pub fn forward_row_transformed<E: Logit, T: RowTransform<E::Acc>>(
    code: RowCode,
    row: &[E],
    label: usize,
    stats: bool,
    t: T,
) -> RowForward<E::Acc> {
    assert!(label < row.len(), "label {label} outside a row of {}", row.len());
    #[cfg(target_arch = "x86_64")]
    if code.available() {
        // SAFETY: the CPU supports the enabled features (checked just above).
        match code {
            RowCode::Avx512 => return unsafe { forward_row_avx512(row, label, stats, t) },
            RowCode::Avx2 => return unsafe { forward_row_avx2(row, label, stats, t) },
            RowCode::Baseline => {}
        }
    }
    forward_row_impl(row, label, stats, t)
}

fn backward_row<E: Logit, T: RowTransform<E::Acc>>(
    code: RowCode,
    row: &[E],
    out: &mut [E],
    label: usize,
    grad: E::Acc,
    lse: E::Acc,
    t: T,
) {
    #[cfg(target_arch = "x86_64")]
    if code.available() {
        // SAFETY: the CPU supports the enabled features (checked just above).
        match code {
            RowCode::Avx512 => return unsafe { backward_row_avx512(row, out, label, grad, lse, t) },
            RowCode::Avx2 => return unsafe { backward_row_avx2(row, out, label, grad, lse, t) },
            RowCode::Baseline => {}
        }
    }
    backward_row_impl(row, out, label, grad, lse, t)
}

fn backward_row_in_place<E: Logit, T: RowTransform<E::Acc>>(
    code: RowCode,
    row: &mut [E],
    label: usize,
    grad: E::Acc,
    lse: E::Acc,
    t: T,
) {
    #[cfg(target_arch = "x86_64")]
    if code.available() {
        // SAFETY: the CPU supports the enabled features (checked just above).
        match code {
            RowCode::Avx512 => return unsafe { backward_row_in_place_avx512(row, label, grad, lse, t) },
            RowCode::Avx2 => return unsafe { backward_row_in_place_avx2(row, label, grad, lse, t) },
            RowCode::Baseline => {}
        }
    }
    backward_row_in_place_impl(row, label, grad, lse, t)
}

/// Outputs of [`forward`], each `[batch, labelled positions]` (row-major, contiguous).
pub struct ForwardOutputs<'a, A> {
    pub logps: &'a mut [A],
    pub lse: &'a mut [A],
    /// Per-token entropy and argmax-equals-label (1 or 0), computed only when present.
    pub stats: Option<(&'a mut [A], &'a mut [A])>,
}

/// Rows per rayon task: enough work to amortise scheduling, few enough to balance.
fn rows_per_task(vocab: usize) -> usize {
    (16_384 / vocab.max(1)).clamp(1, 256)
}

/// Fused forward. `labels` is `[batch, positions]` contiguous; with `shift` the logits at
/// position t predict the label at t + 1, and outputs have `positions - 1` columns.
/// The log-probs are those of log_softmax(t(logits)) for the logit `transform` t.
pub fn forward<E: Logit>(
    logits: &LogitsRows<'_, E>,
    labels: &[i64],
    ignore_index: i64,
    shift: bool,
    transform: LogitTransform,
    out: ForwardOutputs<'_, E::Acc>,
) -> Result<(), KernelError> {
    forward_with(RowCode::selected(), logits, labels, ignore_index, shift, transform, out)
}

/// [`forward`] with a given compilation of the row code.
pub fn forward_with<E: Logit>(
    code: RowCode,
    logits: &LogitsRows<'_, E>,
    labels: &[i64],
    ignore_index: i64,
    shift: bool,
    transform: LogitTransform,
    out: ForwardOutputs<'_, E::Acc>,
) -> Result<(), KernelError> {
    let transform = transform.validate().map_err(KernelError::BadTransform)?;
    let (batch, positions, vocab) = (logits.batch, logits.positions, logits.vocab);
    let used = labelled_positions(positions, shift)?;
    check_labels(labels, batch, positions, vocab, shift, ignore_index)?;
    let rows = batch * used;
    for (name, len) in [("logps", out.logps.len()), ("lse", out.lse.len())]
        .into_iter()
        .chain(out.stats.as_ref().map(|(e, c)| [("entropy", e.len()), ("correct", c.len())]).into_iter().flatten())
    {
        if len != rows {
            return Err(KernelError::BufferTooShort { name, needed: rows, got: len });
        }
    }
    let stats = out.stats.is_some();
    let results: Vec<Option<RowForward<E::Acc>>> = with_row_transform!(transform, E::Acc, tf => {
        (0..rows)
            .into_par_iter()
            .with_min_len(rows_per_task(vocab))
            .map(|r| {
                let (b, t) = (r / used, r % used);
                let label = labels[b * positions + t + shift as usize];
                (label != ignore_index).then(|| forward_row_transformed(code, logits.row(b, t), label as usize, stats, tf))
            })
            .collect()
    });
    let zero = E::Acc::ZERO;
    for (r, result) in results.iter().enumerate() {
        let row = result.unwrap_or(RowForward { logp: zero, lse: zero, entropy: zero, correct: false });
        out.logps[r] = row.logp;
        out.lse[r] = row.lse;
    }
    if let Some((entropy, correct)) = out.stats {
        for (r, result) in results.iter().enumerate() {
            entropy[r] = result.map_or(zero, |row| row.entropy);
            correct[r] = if result.is_some_and(|row| row.correct) { E::Acc::ONE } else { zero };
        }
    }
    Ok(())
}

/// Fused backward into `grad` (`[batch, positions, vocab]`, contiguous, fully overwritten).
/// `grad_logps` and `lse` are `[batch, labelled positions]` as [`forward`] produced them with
/// the same `transform`; `grad` is the gradient with respect to the untransformed logits.
#[allow(clippy::too_many_arguments)]
pub fn backward<E: Logit>(
    logits: &LogitsRows<'_, E>,
    labels: &[i64],
    ignore_index: i64,
    shift: bool,
    transform: LogitTransform,
    grad_logps: &[E::Acc],
    lse: &[E::Acc],
    grad: &mut [E],
) -> Result<(), KernelError> {
    backward_with(RowCode::selected(), logits, labels, ignore_index, shift, transform, grad_logps, lse, grad)
}

/// [`backward`] with a given compilation of the row code.
#[allow(clippy::too_many_arguments)]
pub fn backward_with<E: Logit>(
    code: RowCode,
    logits: &LogitsRows<'_, E>,
    labels: &[i64],
    ignore_index: i64,
    shift: bool,
    transform: LogitTransform,
    grad_logps: &[E::Acc],
    lse: &[E::Acc],
    grad: &mut [E],
) -> Result<(), KernelError> {
    let transform = transform.validate().map_err(KernelError::BadTransform)?;
    let (batch, positions, vocab) = (logits.batch, logits.positions, logits.vocab);
    let used = labelled_positions(positions, shift)?;
    check_labels(labels, batch, positions, vocab, shift, ignore_index)?;
    let rows = batch * used;
    for (name, len) in [("grad_logps", grad_logps.len()), ("lse", lse.len())] {
        if len != rows {
            return Err(KernelError::BufferTooShort { name, needed: rows, got: len });
        }
    }
    let needed = batch * positions * vocab;
    if grad.len() != needed {
        return Err(KernelError::BufferTooShort { name: "grad", needed, got: grad.len() });
    }
    if vocab == 0 {
        return Ok(());
    }
    let zero = E::store(E::Acc::ZERO);
    with_row_transform!(transform, E::Acc, tf => {
        grad.par_chunks_mut(vocab)
            .with_min_len(rows_per_task(vocab))
            .enumerate()
            .for_each(|(r, out)| {
                let (b, t) = (r / positions, r % positions);
                // The last position predicts nothing when shifting; ignored labels get no gradient.
                let label = if t < used { labels[b * positions + t + shift as usize] } else { ignore_index };
                if label == ignore_index {
                    out.fill(zero);
                } else {
                    let p = b * used + t;
                    backward_row(code, logits.row(b, t), out, label as usize, grad_logps[p], lse[p], tf);
                }
            })
    });
    Ok(())
}

/// Backward in place over contiguous rows `[labels.len(), vocab]` that hold logits on entry
/// (a buffer the caller owns, such as one chunk of the fused-linear op): each row becomes
/// g·(onehot(y) − exp(t(z) − lse))·t'(z), or zeros where its label is `ignore_index`. Saves a
/// second logits-sized buffer where the logits are not needed afterwards.
pub fn backward_in_place<E: Logit>(
    rows: &mut [E],
    vocab: usize,
    labels: &[i64],
    ignore_index: i64,
    transform: LogitTransform,
    grad_logps: &[E::Acc],
    lse: &[E::Acc],
) -> Result<(), KernelError> {
    let code = RowCode::selected();
    let transform = transform.validate().map_err(KernelError::BadTransform)?;
    let n = labels.len();
    check_labels(labels, n, 1, vocab, false, ignore_index)?;
    for (name, len) in [("grad_logps", grad_logps.len()), ("lse", lse.len())] {
        if len != n {
            return Err(KernelError::BufferTooShort { name, needed: n, got: len });
        }
    }
    if rows.len() != n * vocab {
        return Err(KernelError::BufferTooShort { name: "rows", needed: n * vocab, got: rows.len() });
    }
    if vocab == 0 {
        return Ok(());
    }
    let zero = E::store(E::Acc::ZERO);
    with_row_transform!(transform, E::Acc, tf => {
        rows.par_chunks_mut(vocab).with_min_len(rows_per_task(vocab)).enumerate().for_each(|(r, row)| {
            if labels[r] == ignore_index {
                row.fill(zero);
            } else {
                backward_row_in_place(code, row, labels[r] as usize, grad_logps[r], lse[r], tf);
            }
        })
    });
    Ok(())
}

/// Per-sequence sums (or means, with `average`) of token log-probs `[batch, used]` that are 0
/// where the label (`labels`, `[batch, positions]`) is ignored.
pub fn reduce_sequences<A: Accum>(
    token_logps: &[A],
    labels: &[i64],
    batch: usize,
    positions: usize,
    shift: bool,
    ignore_index: i64,
    average: bool,
) -> Result<Vec<A>, KernelError> {
    let used = labelled_positions(positions, shift)?;
    if token_logps.len() != batch * used {
        return Err(KernelError::BufferTooShort { name: "token_logps", needed: batch * used, got: token_logps.len() });
    }
    if labels.len() != batch * positions {
        return Err(KernelError::BufferTooShort { name: "labels", needed: batch * positions, got: labels.len() });
    }
    (0..batch)
        .map(|b| {
            let row_labels = &labels[b * positions + shift as usize..(b + 1) * positions];
            let count = row_labels.iter().filter(|&&y| y != ignore_index).count();
            let total = token_logps[b * used..(b + 1) * used].iter().fold(A::ZERO, |acc, &x| acc + x);
            match (average, count) {
                (false, _) => Ok(total),
                (true, 0) => Err(KernelError::EmptyRow { row: b }),
                (true, n) => Ok(total / A::from_f64(n as f64)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// Straightforward float64 log-softmax, the reference for everything below.
    fn naive_log_softmax(row: &[f64]) -> Vec<f64> {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        row.iter().map(|x| x - lse).collect()
    }

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    struct Case {
        batch: usize,
        positions: usize,
        vocab: usize,
        logits: Vec<f64>,
        labels: Vec<i64>,
    }

    fn case(batch: usize, positions: usize, vocab: usize, scale: f64, seed: u64) -> Case {
        let mut s = seed;
        let logits = (0..batch * positions * vocab).map(|_| lcg(&mut s) * scale).collect();
        let labels = (0..batch * positions)
            .map(|i| if i % 5 == 1 { -100 } else { ((lcg(&mut s) + 1.0) * 0.5 * vocab as f64) as i64 % vocab as i64 })
            .collect();
        Case { batch, positions, vocab, logits, labels }
    }

    /// The row-code compilations this CPU runs; every test that checks values runs each one.
    fn codes() -> Vec<RowCode> {
        RowCode::ALL.into_iter().filter(|c| c.available()).collect()
    }

    fn run_forward<E: Logit>(c: &Case, shift: bool) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        run_forward_with::<E>(RowCode::selected(), c, shift)
    }

    fn run_forward_with<E: Logit>(code: RowCode, c: &Case, shift: bool) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let data: Vec<E> = c.logits.iter().map(|&x| E::store(E::Acc::from_f64(x as f32 as f64))).collect();
        let rows = LogitsRows::contiguous(&data, [c.batch, c.positions, c.vocab]).unwrap();
        let n = c.batch * (c.positions - shift as usize);
        let zero = E::Acc::ZERO;
        let (mut lp, mut lse, mut ent, mut cor) = (vec![zero; n], vec![zero; n], vec![zero; n], vec![zero; n]);
        forward_with(
            code,
            &rows,
            &c.labels,
            -100,
            shift,
            LogitTransform::Identity,
            ForwardOutputs { logps: &mut lp, lse: &mut lse, stats: Some((&mut ent, &mut cor)) },
        )
        .unwrap();
        let f = |v: Vec<E::Acc>| v.into_iter().map(|x| x.to_f64()).collect();
        (f(lp), f(lse), f(ent), f(cor))
    }

    /// Reference forward on the values as `E` rounds them.
    fn naive_forward(c: &Case, shift: bool, round: impl Fn(f64) -> f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let used = c.positions - shift as usize;
        let (mut lp, mut ent, mut cor) = (vec![], vec![], vec![]);
        for b in 0..c.batch {
            for t in 0..used {
                let label = c.labels[b * c.positions + t + shift as usize];
                let start = (b * c.positions + t) * c.vocab;
                let row: Vec<f64> = c.logits[start..start + c.vocab].iter().map(|&x| round(x)).collect();
                if label == -100 {
                    lp.push(0.0);
                    ent.push(0.0);
                    cor.push(0.0);
                    continue;
                }
                let ls = naive_log_softmax(&row);
                lp.push(ls[label as usize]);
                ent.push(-ls.iter().map(|l| l.exp() * l).sum::<f64>());
                let argmax = (0..row.len()).fold(0, |best, j| if row[j] > row[best] { j } else { best });
                cor.push((argmax == label as usize) as i32 as f64);
            }
        }
        (lp, ent, cor)
    }

    fn assert_close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "index {i}: {x} vs {y}");
        }
    }

    #[test]
    fn forward_matches_naive_for_each_dtype_and_row_code() {
        // Vocabularies below one chunk, with a tail, exactly one block, and several blocks + tail.
        for code in codes() {
            for (vocab, shift) in [(1usize, true), (7, true), (33, false), (256, true), (1000, true)] {
                let c = case(3, 6, vocab, 4.0, vocab as u64);
                let (want, want_ent, want_cor) = naive_forward(&c, shift, |x| x as f32 as f64);
                let (lp, _, ent, cor) = run_forward_with::<f32>(code, &c, shift);
                assert_close(&lp, &want, 1e-5);
                assert_close(&ent, &want_ent, 1e-5);
                assert_eq!(cor, want_cor, "{code:?}");
                let (lp, _, ent, _) = run_forward_with::<f64>(code, &c, shift);
                assert_close(&lp, &want, 1e-6);
                assert_close(&ent, &want_ent, 1e-6);
                let (want, ..) = naive_forward(&c, shift, |x| bf16::from_f32(x as f32).to_f64());
                let (lp, ..) = run_forward_with::<bf16>(code, &c, shift);
                assert_close(&lp, &want, 1e-5);
                let (want, ..) = naive_forward(&c, shift, |x| f16::from_f32(x as f32).to_f64());
                let (lp, ..) = run_forward_with::<f16>(code, &c, shift);
                assert_close(&lp, &want, 1e-5);
            }
        }
    }

    #[test]
    fn a_growing_maximum_rescales_the_sums() {
        // Increasing logits raise every lane's max in every block: the online rescale at its most.
        let row: Vec<f32> = (0..2000).map(|i| i as f32 * 0.01).collect();
        let wide: Vec<f64> = row.iter().map(|&x| x as f64).collect();
        let ls = naive_log_softmax(&wide);
        let want_entropy = -ls.iter().map(|l| l.exp() * l).sum::<f64>();
        for code in codes() {
            for label in [0usize, 1999] {
                let r = forward_row_with(code, &row, label, true);
                assert!(
                    (r.logp as f64 - ls[label]).abs() < 1e-5 * (1.0 + ls[label].abs()),
                    "{code:?}: {} vs {}",
                    r.logp,
                    ls[label]
                );
                assert!((r.entropy as f64 - want_entropy).abs() < 1e-5 * (1.0 + want_entropy), "{code:?}");
                assert_eq!(r.correct, label == 1999);
            }
        }
    }

    #[test]
    fn lanes_that_hold_only_negative_infinity_add_nothing() {
        // Masked vocabulary entries: every other chunk of 16 and whole blocks are −inf.
        let row: Vec<f32> =
            (0..1100).map(|i| if (i / 16) % 2 == 0 || i < 300 { f32::NEG_INFINITY } else { (i % 7) as f32 }).collect();
        let wide: Vec<f64> = row.iter().map(|&x| x as f64).collect();
        let ls = naive_log_softmax(&wide);
        let finite: Vec<f64> = ls.iter().cloned().filter(|l| l.is_finite()).collect();
        let want_entropy = -finite.iter().map(|l| l.exp() * l).sum::<f64>();
        for code in codes() {
            let r = forward_row_with(code, &row, 1010, true);
            assert!((r.logp as f64 - ls[1010]).abs() < 1e-5, "{code:?}: {} vs {}", r.logp, ls[1010]);
            assert!((r.entropy as f64 - want_entropy).abs() < 1e-5 * (1.0 + want_entropy), "{code:?}: {}", r.entropy);
            assert_eq!(forward_row_with(code, &row, 0, false).logp, f32::NEG_INFINITY);
        }
    }

    #[test]
    fn vocab_of_one_gives_log_prob_zero() {
        let c = case(2, 3, 1, 1.0, 1);
        let (lp, _, ent, _) = run_forward::<f32>(&c, false);
        assert!(lp.iter().all(|&x| x == 0.0) && ent.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn huge_and_tiny_logits_stay_finite() {
        for scale in [1e4, 1e-6] {
            let c = case(2, 4, 50, scale, 3);
            let (want, ..) = naive_forward(&c, true, |x| x as f32 as f64);
            let (lp, ..) = run_forward::<f32>(&c, true);
            assert!(lp.iter().all(|x| x.is_finite()));
            assert_close(&lp, &want, 1e-5);
        }
    }

    #[test]
    fn negative_infinity_entries_get_zero_probability() {
        let mut row = vec![0.5f32, f32::NEG_INFINITY, 1.5, f32::NEG_INFINITY];
        let r = forward_row(&row, 2, true);
        let want = naive_log_softmax(&[0.5, f64::NEG_INFINITY, 1.5, f64::NEG_INFINITY]);
        assert!((r.logp as f64 - want[2]).abs() < 1e-6);
        assert!(r.entropy.is_finite() && r.correct);
        assert_eq!(forward_row(&row, 1, false).logp, f32::NEG_INFINITY);
        row[0] = f32::NAN;
        assert!(forward_row(&row, 2, false).logp.is_nan());
    }

    #[test]
    fn argmax_ties_resolve_to_the_first_index() {
        let row = [2.0f32, 1.0, 2.0];
        assert!(forward_row(&row, 0, true).correct);
        assert!(!forward_row(&row, 2, true).correct);
    }

    #[test]
    fn strided_rows_equal_contiguous_rows() {
        let c = case(2, 5, 9, 2.0, 11);
        // Embed each [positions, vocab] block in a wider buffer: batch stride 70, position stride 12.
        let mut wide = vec![f32::NAN; 2 * 70];
        for b in 0..2 {
            for t in 0..5 {
                for v in 0..9 {
                    wide[b * 70 + t * 12 + v] = c.logits[(b * 5 + t) * 9 + v] as f32;
                }
            }
        }
        let rows = LogitsRows::new(&wide, [2, 5, 9], [70, 12]).unwrap();
        let (mut lp, mut lse) = (vec![0f32; 8], vec![0f32; 8]);
        forward(
            &rows,
            &c.labels,
            -100,
            true,
            LogitTransform::Identity,
            ForwardOutputs { logps: &mut lp, lse: &mut lse, stats: None },
        )
        .unwrap();
        let (want, ..) = run_forward::<f32>(&c, true);
        assert_close(&lp.iter().map(|&x| x as f64).collect::<Vec<_>>(), &want, 0.0);
    }

    #[test]
    fn backward_matches_naive_gradient() {
        for (code, (vocab, shift)) in codes()
            .into_iter()
            .flat_map(|code| [(1usize, true), (13, true), (64, false), (300, true)].map(|v| (code, v)))
        {
            let c = case(2, 4, vocab, 3.0, 5);
            let data: Vec<f64> = c.logits.clone();
            let rows = LogitsRows::contiguous(&data, [2, 4, vocab]).unwrap();
            let used = 4 - shift as usize;
            let n = 2 * used;
            let (mut lp, mut lse) = (vec![0.0; n], vec![0.0; n]);
            forward(
                &rows,
                &c.labels,
                -100,
                shift,
                LogitTransform::Identity,
                ForwardOutputs { logps: &mut lp, lse: &mut lse, stats: None },
            )
            .unwrap();
            let upstream: Vec<f64> = (0..n).map(|i| 0.3 + i as f64).collect();
            let mut grad = vec![f64::NAN; 2 * 4 * vocab];
            backward_with(code, &rows, &c.labels, -100, shift, LogitTransform::Identity, &upstream, &lse, &mut grad)
                .unwrap();
            for b in 0..2 {
                for t in 0..4 {
                    let g = &grad[(b * 4 + t) * vocab..(b * 4 + t + 1) * vocab];
                    let label = if t < used { c.labels[b * 4 + t + shift as usize] } else { -100 };
                    if label == -100 {
                        assert!(g.iter().all(|&x| x == 0.0));
                        continue;
                    }
                    let start = (b * 4 + t) * vocab;
                    let ls = naive_log_softmax(&c.logits[start..start + vocab]);
                    let up = upstream[b * used + t];
                    for (j, gj) in g.iter().enumerate() {
                        let want = up * ((j == label as usize) as i32 as f64 - ls[j].exp());
                        assert!((gj - want).abs() < 1e-9, "{gj} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn in_place_backward_equals_out_of_place() {
        let c = case(1, 6, 37, 3.0, 21);
        let rows = LogitsRows::contiguous(&c.logits, [1, 6, 37]).unwrap();
        let labels: Vec<i64> = c.labels.clone();
        let (mut lp, mut lse) = (vec![0.0; 6], vec![0.0; 6]);
        forward(
            &rows,
            &labels,
            -100,
            false,
            LogitTransform::Identity,
            ForwardOutputs { logps: &mut lp, lse: &mut lse, stats: None },
        )
        .unwrap();
        let upstream: Vec<f64> = (0..6).map(|i| 1.0 - 0.3 * i as f64).collect();
        let mut want = vec![0.0; 6 * 37];
        backward(&rows, &labels, -100, false, LogitTransform::Identity, &upstream, &lse, &mut want).unwrap();
        let mut in_place = c.logits.clone();
        backward_in_place(&mut in_place, 37, &labels, -100, LogitTransform::Identity, &upstream, &lse).unwrap();
        assert_eq!(in_place, want);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let c = case(4, 16, 300, 5.0, 9);
        for code in codes() {
            let one = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
                .install(|| run_forward_with::<f32>(code, &c, true));
            let four = rayon::ThreadPoolBuilder::new()
                .num_threads(4)
                .build()
                .unwrap()
                .install(|| run_forward_with::<f32>(code, &c, true));
            assert_eq!(one.0, four.0);
            assert_eq!(one.2, four.2);
        }
    }

    #[test]
    fn reduce_sequences_sums_and_averages_response_tokens() {
        let labels = [-100i64, 3, -100, 2, -100, 1, 1, 1];
        let tokens = [-1.0f64, 0.0, -2.0, -0.5, -0.5, -0.5];
        assert_eq!(reduce_sequences(&tokens, &labels, 2, 4, true, -100, false).unwrap(), vec![-3.0, -1.5]);
        assert_eq!(reduce_sequences(&tokens, &labels, 2, 4, true, -100, true).unwrap(), vec![-1.5, -0.5]);
        let empty = [-100i64, -100, -100, -100, 1, 1, 1, 1];
        assert_eq!(
            reduce_sequences(&tokens, &empty, 2, 4, true, -100, true).unwrap_err(),
            KernelError::EmptyRow { row: 0 }
        );
    }

    /// Float64 reference of the transformed row's log-softmax and of the gradient with respect
    /// to the untransformed logits, through the chain rule written out.
    fn naive_transformed(row: &[f64], label: usize, t: LogitTransform, upstream: f64) -> (f64, Vec<f64>) {
        type Function = Box<dyn Fn(f64) -> f64>;
        let (apply, derivative): (Function, Function) = match t {
            LogitTransform::Identity => (Box::new(|z| z), Box::new(|_| 1.0)),
            LogitTransform::Scale(s) => (Box::new(move |z| s * z), Box::new(move |_| s)),
            LogitTransform::Softcap { scale, cap } => (
                Box::new(move |z| cap * (scale * z / cap).tanh()),
                Box::new(move |z: f64| scale * (1.0 - (scale * z / cap).tanh().powi(2))),
            ),
        };
        let y: Vec<f64> = row.iter().map(|&z| apply(z)).collect();
        let ls = naive_log_softmax(&y);
        let grad = (0..row.len())
            .map(|j| upstream * ((j == label) as i32 as f64 - ls[j].exp()) * derivative(row[j]))
            .collect();
        (ls[label], grad)
    }

    #[test]
    fn transformed_logits_match_the_chain_rule_for_each_row_code() {
        let transforms = [
            LogitTransform::Scale(0.0625),
            LogitTransform::Scale(-2.5),
            LogitTransform::Softcap { scale: 1.0, cap: 3.0 },
            LogitTransform::Softcap { scale: 0.5, cap: 30.0 },
        ];
        for code in codes() {
            for t in transforms {
                for vocab in [5usize, 300] {
                    let c = case(2, 4, vocab, 8.0, vocab as u64 + 7);
                    let data: Vec<f32> = c.logits.iter().map(|&x| x as f32).collect();
                    let wide: Vec<f64> = data.iter().map(|&x| x as f64).collect();
                    let rows = LogitsRows::contiguous(&data, [2, 4, vocab]).unwrap();
                    let n = 2 * 3;
                    let (mut lp, mut lse, mut ent, mut cor) =
                        (vec![0f32; n], vec![0f32; n], vec![0f32; n], vec![0f32; n]);
                    forward_with(
                        code,
                        &rows,
                        &c.labels,
                        -100,
                        true,
                        t,
                        ForwardOutputs { logps: &mut lp, lse: &mut lse, stats: Some((&mut ent, &mut cor)) },
                    )
                    .unwrap();
                    let upstream: Vec<f32> = (0..n).map(|i| 0.5 + i as f32).collect();
                    let mut grad = vec![f32::NAN; 2 * 4 * vocab];
                    backward_with(code, &rows, &c.labels, -100, true, t, &upstream, &lse, &mut grad).unwrap();
                    let mut in_place: Vec<f32> = Vec::new();
                    let mut targets = Vec::new();
                    for b in 0..2 {
                        for p in 0..3 {
                            let label = c.labels[b * 4 + p + 1];
                            let start = (b * 4 + p) * vocab;
                            let g = &grad[start..start + vocab];
                            in_place.extend_from_slice(&data[start..start + vocab]);
                            targets.push(label);
                            if label == -100 {
                                assert_eq!(lp[b * 3 + p], 0.0);
                                continue;
                            }
                            let (want, want_grad) = naive_transformed(
                                &wide[start..start + vocab],
                                label as usize,
                                t,
                                upstream[b * 3 + p] as f64,
                            );
                            assert!(
                                (lp[b * 3 + p] as f64 - want).abs() < 2e-5 * (1.0 + want.abs()),
                                "{code:?} {t:?}: {} vs {want}",
                                lp[b * 3 + p]
                            );
                            for (j, (&got, want)) in g.iter().zip(&want_grad).enumerate() {
                                assert!(
                                    (got as f64 - want).abs() < 2e-5 * (1.0 + upstream[b * 3 + p] as f64),
                                    "{code:?} {t:?} [{j}]: {got} vs {want}"
                                );
                            }
                        }
                    }
                    // the in-place backward over the same rows gives the same gradients
                    let grads_in: Vec<f32> = (0..n).map(|r| upstream[r]).collect();
                    let lse_in: Vec<f32> = lse.clone();
                    backward_in_place(&mut in_place, vocab, &targets, -100, t, &grads_in, &lse_in).unwrap();
                    for (r, chunk) in in_place.chunks(vocab).enumerate() {
                        let (b, p) = (r / 3, r % 3);
                        let start = (b * 4 + p) * vocab;
                        assert_eq!(chunk, &grad[start..start + vocab], "{t:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn softcapped_rows_saturate_instead_of_overflowing() {
        // |z| far beyond the cap: every logit is ±cap, −inf becomes −cap (as c·tanh(−inf/c) does).
        let row = [1e30f32, -1e30, f32::NEG_INFINITY, 0.0];
        let t = LogitTransform::Softcap { scale: 1.0, cap: 2.0 };
        let r = with_row_transform!(t, f32, tf => forward_row_transformed(RowCode::Baseline, &row, 0, true, tf));
        let ls = naive_log_softmax(&[2.0, -2.0, -2.0, 0.0]);
        assert!((r.logp as f64 - ls[0]).abs() < 1e-6 && r.correct && r.entropy.is_finite());
        assert!(LogitTransform::from_parts(None, Some(0.0)).is_err());
        let rows = LogitsRows::contiguous(&row, [1, 1, 4]).unwrap();
        let (mut lp, mut lse) = (vec![0f32; 1], vec![0f32; 1]);
        let bad = LogitTransform::Softcap { scale: 1.0, cap: -1.0 };
        let err = forward(&rows, &[0], -100, false, bad, ForwardOutputs { logps: &mut lp, lse: &mut lse, stats: None })
            .unwrap_err();
        assert!(matches!(err, KernelError::BadTransform(_)), "{err:?}");
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        let data = vec![0f32; 2 * 3 * 4];
        assert!(matches!(LogitsRows::new(&data, [2, 3, 5], [15, 5]), Err(KernelError::BufferTooShort { .. })));
        let rows = LogitsRows::contiguous(&data, [2, 3, 4]).unwrap();
        let (mut lp, mut lse) = (vec![0f32; 4], vec![0f32; 4]);
        let labels = vec![0i64, 1, 4, 0, 0, 0];
        let err = forward(
            &rows,
            &labels,
            -100,
            true,
            LogitTransform::Identity,
            ForwardOutputs { logps: &mut lp, lse: &mut lse, stats: None },
        )
        .unwrap_err();
        assert_eq!(err, KernelError::LabelOutOfRange { batch: 0, position: 2, value: 4, vocab: 4 });
        let short = vec![0i64; 5];
        assert!(forward(
            &rows,
            &short,
            -100,
            true,
            LogitTransform::Identity,
            ForwardOutputs { logps: &mut lp, lse: &mut lse, stats: None }
        )
        .is_err());
        let one_position = LogitsRows::contiguous(&data[..8], [2, 1, 4]).unwrap();
        let (mut lp0, mut lse0) = (vec![0f32; 0], vec![0f32; 0]);
        assert!(forward(
            &one_position,
            &[0, 0],
            -100,
            true,
            LogitTransform::Identity,
            ForwardOutputs { logps: &mut lp0, lse: &mut lse0, stats: None }
        )
        .is_err());
    }
}
