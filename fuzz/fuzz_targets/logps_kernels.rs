//! Coverage-guided fuzzing of the fused log-prob kernels' entry points: any shape, stride,
//! buffer length, label (in or out of range), ignore_index, shift, dtype and logit transform
//! (identity, a scale, a softcap; some with parameters the kernels must refuse). The kernels must
//! return an error or a result, never panic or read out of bounds, and what they return must
//! hold: log-probs ≤ 0 for finite rows, gradients whose rows sum to ~0, in-place == out-of-place.
#![no_main]

use half::bf16;
use libfuzzer_sys::fuzz_target;

use simper_rs_core::kernels::element::{Accum, Logit};
use simper_rs_core::kernels::logps::{backward, backward_in_place, forward, reduce_sequences, ForwardOutputs, LogitsRows};
use simper_rs_core::kernels::transform::LogitTransform;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn float(&mut self) -> f32 {
        let raw = i16::from_le_bytes([self.byte(), self.byte()]);
        match raw {
            i16::MIN => f32::NEG_INFINITY,
            i16::MAX => f32::NAN,
            v => v as f32 / 256.0,
        }
    }
}

fn run<E: Logit>(input: &mut Bytes<'_>, convert: impl Fn(f32) -> E) {
    let batch = (input.byte() % 4) as usize;
    let positions = (input.byte() % 6) as usize;
    let vocab = (input.byte() % 40) as usize;
    let batch_pad = (input.byte() % 3) as usize;
    let position_pad = (input.byte() % 3) as usize;
    let shift = input.byte() % 2 == 0;
    let stats = input.byte() % 2 == 0;
    let ignore_index = [-100i64, -1, 0, 40][(input.byte() % 4) as usize];
    let transform = match input.byte() % 4 {
        0 | 1 => LogitTransform::Identity,
        2 => LogitTransform::Scale(input.float() as f64),
        // a cap of 0, negative or NaN must be refused
        _ => LogitTransform::Softcap { scale: input.float() as f64, cap: input.float() as f64 },
    };
    let position_stride = vocab + position_pad;
    let batch_stride = positions * position_stride + batch_pad;
    // Sometimes shorter than the layout needs: the kernel must refuse, not read past the end.
    let full = batch * batch_stride + 1;
    let len = if input.byte() % 8 == 0 { full / 2 } else { full };
    let data: Vec<E> = (0..len).map(|_| convert(input.float())).collect();
    let labels: Vec<i64> = (0..batch * positions)
        .map(|_| match input.byte() {
            250 => ignore_index,
            251 => -7,
            252 => vocab as i64 + 1,
            b => (b as usize % vocab.max(1)) as i64,
        })
        .collect();
    let Ok(rows) = LogitsRows::new(&data, [batch, positions, vocab], [batch_stride, position_stride]) else {
        return;
    };
    let used = if shift { positions.saturating_sub(1) } else { positions };
    let n = batch * used;
    let zero = E::Acc::ZERO;
    let (mut logps, mut lse, mut entropy, mut correct) = (vec![zero; n], vec![zero; n], vec![zero; n], vec![zero; n]);
    let out = ForwardOutputs { logps: &mut logps, lse: &mut lse, stats: stats.then_some((&mut entropy, &mut correct)) };
    if forward(&rows, &labels, ignore_index, shift, transform, out).is_err() {
        return;
    }
    for &lp in &logps {
        assert!(lp.is_nan() || lp.to_f64() <= 1e-4, "log-prob {lp:?} > 0");
    }
    let _ = reduce_sequences(&logps, &labels, batch, positions, shift, ignore_index, true);
    let upstream: Vec<E::Acc> = (0..n).map(|i| E::Acc::from_f64(1.0 - i as f64 * 0.25)).collect();
    let mut grad = vec![convert(0.0); batch * positions * vocab];
    backward(&rows, &labels, ignore_index, shift, transform, &upstream, &lse, &mut grad).expect("forward accepted these arguments");
    // In place on a contiguous copy of the labelled rows must give the same gradients.
    if !shift && n > 0 && vocab > 0 {
        let mut contiguous: Vec<E> = Vec::with_capacity(n * vocab);
        for b in 0..batch {
            for t in 0..positions {
                let start = b * batch_stride + t * position_stride;
                contiguous.extend_from_slice(&data[start..start + vocab]);
            }
        }
        backward_in_place(&mut contiguous, vocab, &labels, ignore_index, transform, &upstream, &lse).expect("same labels");
        for (a, b) in contiguous.iter().zip(&grad) {
            let (a, b) = (a.load().to_f64(), b.load().to_f64());
            assert!(a == b || (a.is_nan() && b.is_nan()), "in-place {a} != out-of-place {b}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    match input.byte() % 3 {
        0 => run::<f32>(&mut input, |x| x),
        1 => run::<f64>(&mut input, |x| x as f64),
        _ => run::<bf16>(&mut input, bf16::from_f32),
    }
});
