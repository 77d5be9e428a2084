//! Small element-wise pieces of the Mixtral block: SiLU, softmax, RMSNorm.
//!
//! They touch only activation-sized vectors (a few KiB per token), so they stay simple and
//! single-threaded; accuracy matters more than speed here (f64 accumulation for RMSNorm).

use crate::backend::widen;
use crate::error::{check_len, or_panic, KernelError};
use half::bf16;

/// `x * sigmoid(x)`, written as `x / (1 + e^-x)` which is finite for every finite `x`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Numerically stable softmax in place (max subtracted before `exp`). An empty slice is left
/// as is; a slice whose maximum is `-inf` (everything masked) becomes uniform.
pub fn softmax_in_place(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        let u = 1.0 / x.len() as f32;
        x.iter_mut().for_each(|v| *v = u);
        return;
    }
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `out = x * rsqrt(mean(x²) + eps) * w`.
///
/// # Panics
/// If `w` or `out` differ in length from `x` (see [`try_rms_norm`]).
#[track_caller]
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    or_panic(try_rms_norm(x, w, eps, out));
}

/// [`rms_norm`] returning an error on mismatched lengths.
pub fn try_rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
    check_len("rms_norm", "w", x.len(), w.len())?;
    check_len("rms_norm", "out", x.len(), out.len())?;
    let inv = inv_rms(x, eps);
    for ((o, xi), wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * inv * wi;
    }
    Ok(())
}

/// [`rms_norm`] with the weight straight from a bf16 checkpoint (widened on the fly).
///
/// # Panics
/// If `w` or `out` differ in length from `x` (see [`try_rms_norm_bf16`]).
#[track_caller]
pub fn rms_norm_bf16(x: &[f32], w: &[bf16], eps: f32, out: &mut [f32]) {
    or_panic(try_rms_norm_bf16(x, w, eps, out));
}

/// [`rms_norm_bf16`] returning an error on mismatched lengths.
pub fn try_rms_norm_bf16(
    x: &[f32],
    w: &[bf16],
    eps: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_len("rms_norm_bf16", "w", x.len(), w.len())?;
    check_len("rms_norm_bf16", "out", x.len(), out.len())?;
    let inv = inv_rms(x, eps);
    for ((o, xi), wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * inv * widen(*wi);
    }
    Ok(())
}

/// `1 / sqrt(mean(x²) + eps)`, accumulated in f64 (the vector is short; this removes the
/// summation-order question entirely).
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    (1.0 / (ss / x.len() as f64 + eps as f64).sqrt()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_values() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((silu(-1.0) + 0.268_941_43).abs() < 1e-6);
        assert_eq!(silu(-200.0), -0.0);
        assert_eq!(silu(200.0), 200.0);
    }

    #[test]
    fn softmax_matches_reference_and_survives_large_inputs() {
        let mut x = vec![1000.0f32, 1001.0, 999.0, f32::NEG_INFINITY];
        softmax_in_place(&mut x);
        let e = [(-1f64).exp(), 1.0, (-2f64).exp(), 0.0];
        let s: f64 = e.iter().sum();
        for (a, b) in x.iter().zip(e) {
            assert!((*a as f64 - b / s).abs() < 1e-6, "{a} vs {}", b / s);
        }
        let mut m = vec![f32::NEG_INFINITY; 4];
        softmax_in_place(&mut m);
        assert_eq!(m, vec![0.25; 4]);
        let mut empty: Vec<f32> = vec![];
        softmax_in_place(&mut empty);
    }

    #[test]
    fn rms_norm_matches_reference() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let w: Vec<f32> = (0..37).map(|i| 0.5 + i as f32 * 0.01).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let mut out = vec![0f32; 37];
        rms_norm(&x, &w, 1e-5, &mut out);
        let ms: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 37.0;
        let inv = 1.0 / (ms + 1e-5).sqrt();
        for i in 0..37 {
            let r = x[i] as f64 * inv * w[i] as f64;
            assert!((out[i] as f64 - r).abs() <= 1e-6 * r.abs().max(1.0));
        }
        let mut out2 = vec![0f32; 37];
        rms_norm_bf16(&x, &wb, 1e-5, &mut out2);
        for i in 0..37 {
            let r = x[i] as f64 * inv * wb[i].to_f64();
            assert!((out2[i] as f64 - r).abs() <= 1e-6 * r.abs().max(1.0));
        }
        assert!(try_rms_norm(&x, &w[..36], 1e-5, &mut out).is_err());
    }
}
