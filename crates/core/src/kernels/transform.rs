//! Logit transforms: what some model families apply to the output projection's logits z before
//! the softmax, computed by the kernels per element as they read a row.
//!
//! - [`LogitTransform::Scale`]: s·z (Cohere's `logit_scale`, Granite's `1 / logits_scaling`, ...);
//! - [`LogitTransform::Softcap`]: c·tanh(s·z / c), a scale s then a softcap c (Gemma 2's
//!   `final_logit_softcapping` with s = 1; a pre-scale and a softcap together where a model
//!   applies both, in that order).
//!
//! The forward computes log_softmax(t(z)); the backward returns the gradient with respect to z,
//! g·(onehot(y) − softmax(t(z)))·t'(z). Which model attribute maps to which transform is
//! `simper_rs.integrations.transforms` on the Python side (see docs/design.md).
use super::element::Accum;

/// A transform t applied to every logit before the log-softmax.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LogitTransform {
    /// t(z) = z.
    Identity,
    /// t(z) = s·z.
    Scale(f64),
    /// t(z) = cap·tanh(scale·z / cap).
    Softcap { scale: f64, cap: f64 },
}

impl LogitTransform {
    /// Checks the parameters: finite, and a positive cap.
    pub fn validate(self) -> Result<Self, String> {
        match self {
            LogitTransform::Identity => Ok(self),
            LogitTransform::Scale(s) if s.is_finite() => Ok(self),
            LogitTransform::Scale(s) => Err(format!("logit_scale must be a finite number, got {s}")),
            LogitTransform::Softcap { scale, .. } if !scale.is_finite() => {
                Err(format!("logit_scale must be a finite number, got {scale}"))
            }
            LogitTransform::Softcap { cap, .. } if !(cap.is_finite() && cap > 0.0) => {
                Err(format!("logit_softcap must be a positive finite number, got {cap}"))
            }
            LogitTransform::Softcap { .. } => Ok(self),
        }
    }

    /// The transform from an optional scale and an optional softcap, applied in that order.
    pub fn from_parts(scale: Option<f64>, softcap: Option<f64>) -> Result<Self, String> {
        let t = match (scale, softcap) {
            (None, None) => LogitTransform::Identity,
            (Some(1.0), None) => LogitTransform::Identity,
            (Some(s), None) => LogitTransform::Scale(s),
            (s, Some(cap)) => LogitTransform::Softcap { scale: s.unwrap_or(1.0), cap },
        };
        t.validate()
    }

    /// Whether this is the identity (the kernels then run their plain code).
    pub fn is_identity(self) -> bool {
        self == LogitTransform::Identity
    }
}

/// A transform specialised to an accumulation type, so the row code is compiled once per kind
/// (the identity compiles to exactly the plain kernel).
pub trait RowTransform<A: Accum>: Copy + Send + Sync {
    /// t(z).
    fn apply(self, z: A) -> A;
    /// t'(z), given z and y = t(z).
    fn derivative(self, z: A, y: A) -> A;
}

/// t(z) = z.
#[derive(Clone, Copy)]
pub struct Plain;

impl<A: Accum> RowTransform<A> for Plain {
    #[inline(always)]
    fn apply(self, z: A) -> A {
        z
    }
    #[inline(always)]
    fn derivative(self, _z: A, _y: A) -> A {
        A::ONE
    }
}

/// t(z) = s·z.
#[derive(Clone, Copy)]
pub struct Scaled<A>(pub A);

impl<A: Accum> RowTransform<A> for Scaled<A> {
    #[inline(always)]
    fn apply(self, z: A) -> A {
        self.0 * z
    }
    #[inline(always)]
    fn derivative(self, _z: A, _y: A) -> A {
        self.0
    }
}

/// t(z) = c·tanh(a·z) with a = scale / cap: the derivative is a·c·(1 − (y / c)²).
#[derive(Clone, Copy)]
pub struct Capped<A> {
    a: A,
    c: A,
    inv_c: A,
}

impl<A: Accum> Capped<A> {
    pub fn new(scale: f64, cap: f64) -> Self {
        Capped { a: A::from_f64(scale / cap), c: A::from_f64(cap), inv_c: A::from_f64(1.0 / cap) }
    }
}

impl<A: Accum> RowTransform<A> for Capped<A> {
    #[inline(always)]
    fn apply(self, z: A) -> A {
        self.c * (self.a * z).tanh()
    }
    #[inline(always)]
    fn derivative(self, _z: A, y: A) -> A {
        let r = y * self.inv_c;
        self.a * self.c * (A::ONE - r * r)
    }
}

/// Calls `$body` with `$t` bound to the [`RowTransform`] of `$transform` for accumulation type `$A`.
#[macro_export]
macro_rules! with_row_transform {
    ($transform:expr, $A:ty, $t:ident => $body:expr) => {
        match $transform {
            $crate::kernels::transform::LogitTransform::Identity => {
                let $t = $crate::kernels::transform::Plain;
                $body
            }
            $crate::kernels::transform::LogitTransform::Scale(s) => {
                let $t = $crate::kernels::transform::Scaled(<$A as $crate::kernels::element::Accum>::from_f64(s));
                $body
            }
            $crate::kernels::transform::LogitTransform::Softcap { scale, cap } => {
                let $t = $crate::kernels::transform::Capped::<$A>::new(scale, cap);
                $body
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_combine_in_order_and_are_checked() {
        assert_eq!(LogitTransform::from_parts(None, None), Ok(LogitTransform::Identity));
        assert_eq!(LogitTransform::from_parts(Some(1.0), None), Ok(LogitTransform::Identity));
        assert_eq!(LogitTransform::from_parts(Some(0.5), None), Ok(LogitTransform::Scale(0.5)));
        assert_eq!(LogitTransform::from_parts(None, Some(30.0)), Ok(LogitTransform::Softcap { scale: 1.0, cap: 30.0 }));
        assert!(LogitTransform::from_parts(None, Some(0.0)).is_err());
        assert!(LogitTransform::from_parts(None, Some(-1.0)).is_err());
        assert!(LogitTransform::from_parts(Some(f64::NAN), None).is_err());
        assert!(LogitTransform::from_parts(Some(f64::INFINITY), Some(3.0)).is_err());
    }

    #[test]
    fn softcap_value_and_derivative_match_finite_differences() {
        let t = Capped::<f64>::new(0.5, 3.0);
        for z in [-40.0, -2.0, -1e-3, 0.0, 0.7, 9.0] {
            let want = 3.0 * (0.5 * z / 3.0f64).tanh();
            assert!((t.apply(z) - want).abs() < 1e-12);
            let h = 1e-6;
            let numeric = (t.apply(z + h) - t.apply(z - h)) / (2.0 * h);
            assert!((t.derivative(z, t.apply(z)) - numeric).abs() < 1e-8, "z = {z}");
        }
        // saturated: ±cap, no gradient; NaN stays NaN
        assert_eq!(t.apply(f64::NEG_INFINITY), -3.0);
        assert_eq!(t.derivative(f64::NEG_INFINITY, -3.0), 0.0);
        assert!(t.apply(f64::NAN).is_nan());
    }
}
