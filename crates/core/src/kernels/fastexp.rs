//! A branch-free float32 `exp` that LLVM vectorises (std's `exp` is a scalar libm call).
//!
//! Range reduction x = n·ln2 + r with |r| ≤ ln2/2, a degree-7 Taylor polynomial for e^r
//! (relative error below 2 ulp), and 2^n built in the exponent bits. Below the float32 range
//! the result is exactly 0 (so exp(-inf) = 0, as softmax needs); NaN stays NaN.
//!
//! The polynomial uses `mul_add`: one instruction where FMA is enabled (the kernels' AVX2 and
//! aarch64 builds); x86-64 CPUs without FMA (before 2013) take a slower libm call.
//!
//! `tanh_f32` (for softcapped logits) is built on it: an odd polynomial near 0, where
//! 1 − 2/(e^{2|x|} + 1) would cancel, and that expression elsewhere.

const LOG2_E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75; // ln 2 split so that n·LN2_HI is exact (0x3f317200)
const LN2_LO: f32 = 1.428_606_8e-6;
const ROUND_MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to the nearest integer
const MAX_INPUT: f32 = 88.0; // e^88 < f32::MAX
const MIN_INPUT: f32 = -87.33; // e^-87.33 ≈ 1.2e-38, the smallest normal float32

#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let clamped = if x > MAX_INPUT { MAX_INPUT } else { x };
    let clamped = if clamped < MIN_INPUT { MIN_INPUT } else { clamped };
    let shifted = clamped * LOG2_E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, clamped));
    let p = (1.0 / 5040.0f32).mul_add(r, 1.0 / 720.0);
    let p = p.mul_add(r, 1.0 / 120.0);
    let p = p.mul_add(r, 1.0 / 24.0);
    let p = p.mul_add(r, 1.0 / 6.0);
    let p = p.mul_add(r, 0.5);
    let p = p.mul_add(r, 1.0);
    let p = p.mul_add(r, 1.0);
    // The low bits of `shifted` hold n (plus the magic's mantissa); rebuild 2^n from them.
    let n_int = (shifted.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let scale = f32::from_bits(((n_int + 127) << 23) as u32);
    let result = p * scale;
    let result = if x < MIN_INPUT { 0.0 } else { result };
    let result = if x > MAX_INPUT { f32::INFINITY } else { result };
    if x.is_nan() {
        x
    } else {
        result
    }
}

/// Below this |x| the odd Taylor polynomial of tanh is used (its first dropped term is under
/// 1e-9 there); above it 1 − 2/(e^{2|x|} + 1) has no cancellation to speak of.
const TANH_SERIES_BELOW: f32 = 0.25;

/// A branch-free float32 tanh that LLVM vectorises: within 2e-7 of the exact value (absolute,
/// and relative near 0); ±1 for large |x|, NaN stays NaN.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let e = exp_f32(2.0 * a); // +inf for large a: 1 − 2/inf = 1
    let far = 1.0 - 2.0 / (e + 1.0);
    let a2 = a * a;
    let p = (62.0 / 2835.0f32).mul_add(a2, -17.0 / 315.0);
    let p = p.mul_add(a2, 2.0 / 15.0);
    let p = p.mul_add(a2, -1.0 / 3.0);
    let near = (p * a2).mul_add(a, a);
    let r = if a < TANH_SERIES_BELOW { near } else { far };
    r.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_std_exp_within_2_ulp() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp_f32(x), x.exp());
            let ulp = (want.to_bits() as i64 - got.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {got}, std gives {want} ({ulp} ulp)");
            x += 0.0137;
        }
    }

    #[test]
    fn tanh_matches_std_tanh() {
        // relative error near 0 (the series), absolute elsewhere (|tanh| > 0.24 there)
        let tolerance = |x: f32, want: f64| if x.abs() < TANH_SERIES_BELOW { 3e-7 * want.abs() } else { 3e-7 };
        let mut x = -20.0f32;
        while x < 20.0 {
            let (got, want) = (tanh_f32(x) as f64, (x as f64).tanh());
            assert!((got - want).abs() <= tolerance(x, want), "tanh({x}) = {got}, std gives {want}");
            x += 0.00731;
        }
        for x in [1e-30f32, -1e-8, 1e-4, 0.2499, 0.25, 0.2501, -0.25] {
            let (got, want) = (tanh_f32(x) as f64, (x as f64).tanh());
            assert!((got - want).abs() <= tolerance(x, want), "tanh({x}) = {got}, std gives {want}");
        }
        assert_eq!(tanh_f32(0.0), 0.0);
        assert_eq!(tanh_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
        assert_eq!(tanh_f32(100.0), 1.0);
        assert!(tanh_f32(f32::NAN).is_nan());
    }

    #[test]
    fn special_values() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }
}
