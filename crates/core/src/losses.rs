//! The preference-loss formulas (docs/design.md), written once, generically over [`LossMath`].
//!
//! The same functions run on `f64` (the numpy entry points and the tests) and, through the
//! extension's implementation of [`LossMath`] for tensors, on `tch::Tensor` (so libtorch
//! records autograd through them). Inputs are per-sequence average log-probs:
//! `chosen`/`rejected` are the policy's ℓ_w and ℓ_l; `u_w`/`u_l` are the log-ratios against the
//! reference (equal to ℓ_w and ℓ_l in reference-free mode).

/// The few element-wise operations the loss formulas need.
pub trait LossMath: Sized {
    fn exp(&self) -> Self;
    /// log(1 + exp(x)), computed without overflow.
    fn softplus(&self) -> Self;
    /// 1 / (1 + exp(-x)).
    fn sigmoid(&self) -> Self;
    fn add(&self, other: &Self) -> Self;
    fn sub(&self, other: &Self) -> Self;
    fn scale(&self, factor: f64) -> Self;
    /// A value of the same shape filled with `value`.
    fn filled(&self, value: f64) -> Self;
    fn neg(&self) -> Self {
        self.scale(-1.0)
    }
}

impl LossMath for f64 {
    fn exp(&self) -> Self {
        f64::exp(*self)
    }
    fn softplus(&self) -> Self {
        // max(x, 0) + log1p(exp(-|x|)) never overflows.
        self.max(0.0) + (-self.abs()).exp().ln_1p()
    }
    fn sigmoid(&self) -> Self {
        if *self >= 0.0 {
            1.0 / (1.0 + (-self).exp())
        } else {
            let e = self.exp();
            e / (1.0 + e)
        }
    }
    fn add(&self, other: &Self) -> Self {
        self + other
    }
    fn sub(&self, other: &Self) -> Self {
        self - other
    }
    fn scale(&self, factor: f64) -> Self {
        self * factor
    }
    fn filled(&self, value: f64) -> Self {
        value
    }
}

/// Which density-ratio estimator a DIL loss uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Estimator {
    /// Least-squares importance fitting: −exp(u_w) + ½·exp(2·u_l). The DIL default.
    Lsif,
    /// Logistic regression: softplus(−u_w) + softplus(u_l).
    Bce,
    /// Unnormalised KL: −ℓ_θ(y_w) + exp(u_l).
    Ukl,
    /// Contrastive predictive coding: −log σ(β·(u_w − u_l)), DPO on length-normalised ratios.
    Cpc,
}

impl Estimator {
    /// The estimators, by the names every API takes (the one list: Python's `ESTIMATORS` is this).
    pub const ALL: [Estimator; 4] = [Estimator::Lsif, Estimator::Bce, Estimator::Ukl, Estimator::Cpc];

    pub fn name(self) -> &'static str {
        match self {
            Estimator::Lsif => "lsif",
            Estimator::Bce => "bce",
            Estimator::Ukl => "ukl",
            Estimator::Cpc => "cpc",
        }
    }

    /// The estimator called `name`, or a message naming the argument and the choices.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|e| e.name() == name).ok_or_else(|| {
            let names: Vec<String> = Self::ALL.iter().map(|e| format!("'{}'", e.name())).collect();
            format!("estimator must be one of [{}], got '{name}'", names.join(", "))
        })
    }
}

/// Checks DIL's `beta` (used by `cpc`): a positive finite number.
pub fn check_beta(beta: f64) -> Result<(), String> {
    if beta.is_finite() && beta > 0.0 {
        Ok(())
    } else {
        Err(format!("beta must be a positive finite number, got {beta}"))
    }
}

/// How per-pair losses are reduced, as in `torch.nn.functional`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    Mean,
    Sum,
    None,
}

impl Reduction {
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "mean" => Ok(Self::Mean),
            "sum" => Ok(Self::Sum),
            "none" => Ok(Self::None),
            other => Err(format!("reduction must be one of ['mean', 'sum', 'none'], got '{other}'")),
        }
    }

    /// The factor that multiplies each per-pair gradient when `pairs` losses are reduced.
    pub fn grad_scale(self, pairs: usize) -> f64 {
        match self {
            Reduction::Mean => 1.0 / pairs as f64,
            Reduction::Sum | Reduction::None => 1.0,
        }
    }
}

/// SimPER: L = −exp(ℓ_w) + exp(ℓ_l), per pair.
pub fn simper<T: LossMath>(chosen: &T, rejected: &T) -> T {
    rejected.exp().sub(&chosen.exp())
}

/// (∂L/∂ℓ_w, ∂L/∂ℓ_l) of [`simper`].
pub fn simper_grads<T: LossMath>(chosen: &T, rejected: &T) -> (T, T) {
    (chosen.exp().neg(), rejected.exp())
}

/// DIL, per pair. `chosen` is the policy's ℓ_w (used alone by `ukl`), `u_w`/`u_l` the log-ratios.
pub fn dil<T: LossMath>(estimator: Estimator, beta: f64, chosen: &T, u_w: &T, u_l: &T) -> T {
    match estimator {
        Estimator::Lsif => u_l.scale(2.0).exp().scale(0.5).sub(&u_w.exp()),
        Estimator::Bce => u_w.neg().softplus().add(&u_l.softplus()),
        Estimator::Ukl => u_l.exp().sub(chosen),
        Estimator::Cpc => u_w.sub(u_l).scale(-beta).softplus(),
    }
}

/// (∂L/∂ℓ_w, ∂L/∂ℓ_l) of [`dil`]; reference log-probs are constants, so ∂u/∂ℓ = 1.
pub fn dil_grads<T: LossMath>(estimator: Estimator, beta: f64, u_w: &T, u_l: &T) -> (T, T) {
    match estimator {
        Estimator::Lsif => (u_w.exp().neg(), u_l.scale(2.0).exp()),
        Estimator::Bce => (u_w.neg().sigmoid().neg(), u_l.sigmoid()),
        Estimator::Ukl => (u_w.filled(-1.0), u_l.exp()),
        Estimator::Cpc => {
            let weight = u_w.sub(u_l).scale(-beta).sigmoid().scale(beta);
            (weight.neg(), weight)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_grads(f: impl Fn(f64, f64) -> f64, a: f64, b: f64) -> (f64, f64) {
        let h = 1e-6;
        ((f(a + h, b) - f(a - h, b)) / (2.0 * h), (f(a, b + h) - f(a, b - h)) / (2.0 * h))
    }

    const POINTS: [(f64, f64); 5] = [(-0.1, -2.0), (-3.0, -0.5), (0.0, 0.0), (0.7, -1.2), (-8.0, -9.0)];

    #[test]
    fn simper_values() {
        let (w, l) = (-0.5f64, -2.0f64);
        assert!((simper(&w, &l) - (-(w.exp()) + l.exp())).abs() < 1e-15);
        assert!(simper(&0.0, &0.0).abs() < 1e-15);
    }

    #[test]
    fn simper_grads_match_finite_differences() {
        for (w, l) in POINTS {
            let (gw, gl) = simper_grads(&w, &l);
            let (nw, nl) = numeric_grads(|a, b| simper(&a, &b), w, l);
            assert!((gw - nw).abs() < 1e-7 && (gl - nl).abs() < 1e-7);
        }
    }

    #[test]
    fn dil_values_match_spec() {
        let (w, l) = (-0.4f64, -1.5f64);
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let cases = [
            (Estimator::Lsif, -(w.exp()) + 0.5 * (2.0 * l).exp()),
            (Estimator::Bce, sp(-w) + sp(l)),
            (Estimator::Ukl, -w + l.exp()),
            (Estimator::Cpc, -(sig(2.0 * (w - l))).ln()),
        ];
        for (est, want) in cases {
            let got = dil(est, 2.0, &w, &w, &l);
            assert!((got - want).abs() < 1e-12, "{est:?}: {got} vs {want}");
        }
    }

    #[test]
    fn dil_grads_match_finite_differences() {
        for est in [Estimator::Lsif, Estimator::Bce, Estimator::Ukl, Estimator::Cpc] {
            for (w, l) in POINTS {
                let (gw, gl) = dil_grads(est, 1.7, &w, &l);
                let (nw, nl) = numeric_grads(|a, b| dil(est, 1.7, &a, &a, &b), w, l);
                assert!((gw - nw).abs() < 1e-6 && (gl - nl).abs() < 1e-6, "{est:?} at {w},{l}");
            }
        }
    }

    #[test]
    fn softplus_is_stable() {
        assert_eq!(LossMath::softplus(&1000.0f64), 1000.0);
        assert_eq!(LossMath::softplus(&-1000.0f64), 0.0);
        assert!((LossMath::sigmoid(&-1000.0f64)).abs() < 1e-300);
    }

    #[test]
    fn unknown_names_are_rejected() {
        assert_eq!(
            Estimator::parse("dpo").unwrap_err(),
            "estimator must be one of ['lsif', 'bce', 'ukl', 'cpc'], got 'dpo'"
        );
        assert!(Reduction::parse("avg").unwrap_err().contains("reduction"));
        assert!(check_beta(0.0).is_err() && check_beta(f64::INFINITY).is_err() && check_beta(0.1).is_ok());
        for e in Estimator::ALL {
            assert_eq!(Estimator::parse(e.name()), Ok(e));
        }
    }
}
