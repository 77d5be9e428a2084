//! The few inner primitives every ISA implements, and the portable (scalar) implementation.
//!
//! All drivers (matvec, matmul, expert FFN, attention) are written once, generic over a
//! [`Backend`]; an ISA only supplies these micro-kernels. A row's result never depends on which
//! other rows share a micro-kernel call (each row has its own accumulators and a fixed
//! summation order), which is what makes matvec bitwise identical across thread counts.

use half::bf16;

/// Micro-kernels of one ISA. Implementors are zero-sized "proof" tokens that can only be
/// constructed when the CPU supports the ISA, so calling a method is always sound.
pub(crate) trait Backend: Copy + Send + Sync {
    /// `out[i] = Σ_c rows[i][c] * x[c]`; every row has `x.len()` elements.
    fn dot_rows<const R: usize>(self, rows: [&[bf16]; R], x: &[f32]) -> [f32; R];

    /// `out[i][t] = Σ_c rows[i][c] * xs[t][c]`; a register tile of R rows × T tokens that reads
    /// each weight element once for T tokens.
    fn dot_tile<const R: usize, const T: usize>(
        self,
        rows: [&[bf16]; R],
        xs: [&[f32]; T],
    ) -> [[f32; T]; R];

    /// `out[i] = Σ_c rows[i][c] * x[c]` with bf16 activations (the opt-in bf16-activation
    /// mode; on AVX512-BF16 this is `vdpbf16ps`).
    fn dot_rows_bx<const R: usize>(self, rows: [&[bf16]; R], x: &[bf16]) -> [f32; R];

    /// `Σ a[i] * b[i]` over f32 (attention scores).
    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32;

    /// `y[i] += a * x[i]` (attention value accumulation).
    fn axpy_f32(self, a: f32, x: &[f32], y: &mut [f32]);

    /// `x[i] = exp(x[i] - shift)`, returning `Σ x[i]` (the softmax numerator and denominator;
    /// `shift` is the maximum, so every argument is ≤ 0).
    fn exp_shift_sum(self, x: &mut [f32], shift: f32) -> f32 {
        let mut sum = 0f32;
        for v in x.iter_mut() {
            *v = (*v - shift).exp();
            sum += *v;
        }
        sum
    }

    /// Attention scores for a group of query heads sharing one KV head, over `keys.len() / d`
    /// contiguous cached rows: `out[g * stride + j] = scale * (qs[g] · keys[j])`, where `qs` is
    /// `[G, d]`. One call per contiguous run of rows, so no per-position call overhead.
    #[allow(clippy::too_many_arguments)]
    fn scores_group(
        self,
        qs: &[f32],
        keys: &[f32],
        d: usize,
        scale: f32,
        out: &mut [f32],
        stride: usize,
    ) {
        let g_n = qs.len() / d.max(1);
        for (j, k) in keys.chunks_exact(d.max(1)).enumerate() {
            for g in 0..g_n {
                out[g * stride + j] = self.dot_f32(&qs[g * d..(g + 1) * d], k) * scale;
            }
        }
    }

    /// `outs[g] += Σ_j ps[g * stride + j] * values[j]` for a group of query heads (`outs` is
    /// `[G, d]`) over `values.len() / d` contiguous cached rows.
    fn weighted_sum_group(
        self,
        ps: &[f32],
        stride: usize,
        values: &[f32],
        d: usize,
        outs: &mut [f32],
    ) {
        let g_n = outs.len() / d.max(1);
        for (j, v) in values.chunks_exact(d.max(1)).enumerate() {
            for g in 0..g_n {
                self.axpy_f32(ps[g * stride + j], v, &mut outs[g * d..(g + 1) * d]);
            }
        }
    }
}

/// Exact bf16 → f32 widening (bf16 is the top half of an f32).
#[inline(always)]
pub(crate) fn widen(b: bf16) -> f32 {
    f32::from_bits((b.to_bits() as u32) << 16)
}

/// The portable path.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Scalar;

impl Backend for Scalar {
    #[inline]
    fn dot_rows<const R: usize>(self, rows: [&[bf16]; R], x: &[f32]) -> [f32; R] {
        let mut out = [0f32; R];
        for (o, row) in out.iter_mut().zip(rows) {
            *o = dot_bf16_scalar(row, x);
        }
        out
    }

    #[inline]
    fn dot_tile<const R: usize, const T: usize>(
        self,
        rows: [&[bf16]; R],
        xs: [&[f32]; T],
    ) -> [[f32; T]; R] {
        let mut out = [[0f32; T]; R];
        for (o, row) in out.iter_mut().zip(rows) {
            for (ot, x) in o.iter_mut().zip(xs) {
                *ot = dot_bf16_scalar(row, x);
            }
        }
        out
    }

    #[inline]
    fn dot_rows_bx<const R: usize>(self, rows: [&[bf16]; R], x: &[bf16]) -> [f32; R] {
        let mut out = [0f32; R];
        for (o, row) in out.iter_mut().zip(rows) {
            let mut acc = [0f32; 4];
            let n = row.len().min(x.len());
            let mut c = 0;
            while c + 4 <= n {
                for k in 0..4 {
                    acc[k] += widen(row[c + k]) * widen(x[c + k]);
                }
                c += 4;
            }
            let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
            while c < n {
                s += widen(row[c]) * widen(x[c]);
                c += 1;
            }
            *o = s;
        }
        out
    }

    #[inline]
    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [0f32; 4];
        let mut i = 0;
        while i + 4 <= n {
            for k in 0..4 {
                acc[k] += a[i + k] * b[i + k];
            }
            i += 4;
        }
        let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    #[inline]
    fn axpy_f32(self, a: f32, x: &[f32], y: &mut [f32]) {
        for (yi, xi) in y.iter_mut().zip(x) {
            *yi += a * xi;
        }
    }
}

/// Four independent accumulators so the scalar path is not one long latency chain.
#[inline]
fn dot_bf16_scalar(w: &[bf16], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (w, x) = (&w[..n], &x[..n]);
    let mut acc = [0f32; 4];
    let mut wc = w.chunks_exact(4);
    let mut xc = x.chunks_exact(4);
    for (wq, xq) in (&mut wc).zip(&mut xc) {
        for k in 0..4 {
            acc[k] += widen(wq[k]) * xq[k];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (wi, xi) in wc.remainder().iter().zip(xc.remainder()) {
        s += widen(*wi) * xi;
    }
    s
}
