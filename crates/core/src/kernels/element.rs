//! Logits element types and the floating type each one accumulates in.
use half::{bf16, f16};

/// The accumulation type: float32 for every logits dtype except float64, which keeps float64.
pub trait Accum:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn exp(self) -> Self;
    fn tanh(self) -> Self;
    fn ln(self) -> Self;
    fn is_nan(self) -> bool;
    fn from_f64(value: f64) -> Self;
    fn to_f64(self) -> f64;
    /// max that ignores NaN (NaN still reaches the result through the exp-sum).
    fn max(self, other: Self) -> Self;
}

/// float32 and float64 implement [`Accum`] alike, but for their exp and tanh: the vectorisable
/// approximations for float32, std's for float64 (used for gradcheck and numpy, not speed).
macro_rules! impl_accum {
    ($t:ident, $exp:expr, $tanh:expr) => {
        impl Accum for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = $t::NEG_INFINITY;
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            fn ln(self) -> Self {
                $t::ln(self)
            }
            fn is_nan(self) -> bool {
                $t::is_nan(self)
            }
            fn from_f64(value: f64) -> Self {
                value as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                if other > self {
                    other
                } else {
                    self
                }
            }
        }
    };
}

impl_accum!(f32, super::fastexp::exp_f32, super::fastexp::tanh_f32);
impl_accum!(f64, f64::exp, f64::tanh);

/// A logits element: loaded into, and stored from, its accumulation type.
pub trait Logit: Copy + Send + Sync + 'static {
    type Acc: Accum;
    const NAME: &'static str;
    fn load(self) -> Self::Acc;
    fn store(value: Self::Acc) -> Self;
}

impl Logit for f32 {
    type Acc = f32;
    const NAME: &'static str = "float32";
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
    #[inline(always)]
    fn store(value: f32) -> Self {
        value
    }
}

impl Logit for f64 {
    type Acc = f64;
    const NAME: &'static str = "float64";
    #[inline(always)]
    fn load(self) -> f64 {
        self
    }
    #[inline(always)]
    fn store(value: f64) -> Self {
        value
    }
}

impl Logit for bf16 {
    type Acc = f32;
    const NAME: &'static str = "bfloat16";
    #[inline(always)]
    fn load(self) -> f32 {
        // bfloat16 is the top half of a float32: a shift, which vectorises.
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn store(value: f32) -> Self {
        bf16::from_f32(value)
    }
}

impl Logit for f16 {
    type Acc = f32;
    const NAME: &'static str = "float16";
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn store(value: f32) -> Self {
        f16::from_f32(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_load_matches_half() {
        for v in [0.0f32, -1.5, 3.25e10, -7.0e-20, f32::INFINITY, f32::NEG_INFINITY] {
            let b = bf16::from_f32(v);
            assert_eq!(b.load(), b.to_f32());
        }
        assert!(bf16::from_f32(f32::NAN).load().is_nan());
    }
}
