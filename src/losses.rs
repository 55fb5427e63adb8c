//! The preference-loss formulas on tensors: `simper_rs_core::losses` over [`Tensors`], so that
//! libtorch records autograd through the same formulas the numpy entry points run on numbers.
use tch::Tensor;

use crate::error::{Error, Result};
use simper_rs_core::losses::{check_beta as check_beta_value, Estimator, Reduction};
pub use simper_rs_core::losses::{dil, dil_grads, simper, simper_grads, LossMath};

/// A tensor as the loss formulas take it (the core crate's [`LossMath`] on `tch::Tensor`).
pub struct Tensors(pub Tensor);

impl Tensors {
    pub fn of(tensor: &Tensor) -> Self {
        Tensors(tensor.shallow_clone())
    }
}

impl LossMath for Tensors {
    fn exp(&self) -> Self {
        Tensors(self.0.exp())
    }
    fn softplus(&self) -> Self {
        Tensors(self.0.softplus())
    }
    fn sigmoid(&self) -> Self {
        Tensors(self.0.sigmoid())
    }
    fn add(&self, other: &Self) -> Self {
        Tensors(&self.0 + &other.0)
    }
    fn sub(&self, other: &Self) -> Self {
        Tensors(&self.0 - &other.0)
    }
    fn scale(&self, factor: f64) -> Self {
        Tensors(&self.0 * factor)
    }
    fn filled(&self, value: f64) -> Self {
        Tensors(self.0.detach().zeros_like() + value)
    }
}

/// The estimator called `name` (a `ValueError` naming the choices otherwise).
pub fn estimator(name: &str) -> Result<Estimator> {
    Estimator::parse(name).map_err(Error::value)
}

/// The reduction called `name` (a `ValueError` naming the choices otherwise).
pub fn reduction(name: &str) -> Result<Reduction> {
    Reduction::parse(name).map_err(Error::value)
}

/// DIL's `beta`: a positive finite number (a `ValueError` otherwise).
pub fn check_beta(beta: f64) -> Result<()> {
    check_beta_value(beta).map_err(Error::value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_and_f64_agree() {
        let w = Tensor::from_slice(&[-0.3f64, -2.0]);
        let l = Tensor::from_slice(&[-1.1f64, -0.2]);
        for est in Estimator::ALL {
            let t = dil(est, 0.5, &Tensors::of(&w), &Tensors::of(&w), &Tensors::of(&l)).0;
            for i in 0..2 {
                let (a, b) = (w.double_value(&[i]), l.double_value(&[i]));
                assert!((t.double_value(&[i]) - dil(est, 0.5, &a, &a, &b)).abs() < 1e-12);
            }
        }
    }
}
