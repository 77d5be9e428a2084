//! AVX2+FMA and AVX-512 micro-kernels.
//!
//! bf16 → f32 widening is a zero-extend of each u16 to 32 bits and a left shift by 16
//! (`vpmovzxwd` + `vpslld`), which is exact; the product is accumulated with FMA in f32. Each
//! row keeps its own vector accumulator(s) with the same summation order whatever R is, so a
//! row's result does not depend on which rows share the call. (AVX2 uses one accumulator per
//! row so that 8 rows fit the 16 ymm registers; the R rows are the independent FMA chains.) Weights come straight from a memory map
//! and are only 2-byte aligned, so every load is unaligned.
//!
//! The backends are zero-sized tokens that can only be created after run-time detection of the
//! features, which is what makes the safe trait methods sound wrappers of the
//! `#[target_feature]` functions.

use crate::backend::{widen, Backend};
use half::bf16;
use std::arch::x86_64::*;

/// Proof that AVX2 and FMA are available.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    pub(crate) fn new() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Avx2(()))
    }
}

/// Proof that AVX-512F is available, and AVX2+FMA with it (every AVX-512F CPU has them): the
/// attention primitives without an AVX-512 version (vectorised `exp`, grouped scores and
/// weighted sums) run the AVX2 ones rather than the trait's scalar defaults.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(Avx2);

impl Avx512 {
    pub(crate) fn new() -> Option<Self> {
        if is_x86_feature_detected!("avx512f") {
            Avx2::new().map(Avx512)
        } else {
            None
        }
    }
}

/// The micro-kernels read `x.len()` elements of every row; make that a checked precondition so
/// the raw-pointer loops below can never read out of bounds.
#[inline(always)]
fn check_rows<const R: usize>(rows: &[&[bf16]; R], n: usize) {
    assert!(
        rows.iter().all(|r| r.len() >= n),
        "weight row shorter than the activation vector"
    );
}

impl Backend for Avx2 {
    #[inline]
    fn dot_rows<const R: usize>(self, rows: [&[bf16]; R], x: &[f32]) -> [f32; R] {
        check_rows(&rows, x.len());
        // SAFETY: the token proves AVX2+FMA; every row has at least x.len() elements.
        unsafe { avx2_dot_rows(rows, x) }
    }

    #[inline]
    fn dot_tile<const R: usize, const T: usize>(
        self,
        rows: [&[bf16]; R],
        xs: [&[f32]; T],
    ) -> [[f32; T]; R] {
        let n = xs.iter().map(|x| x.len()).min().unwrap_or(0);
        check_rows(&rows, n);
        // SAFETY: the token proves AVX2+FMA; rows and xs all have at least n elements.
        unsafe { avx2_dot_tile(rows, xs, n) }
    }

    #[inline]
    fn dot_rows_bx<const R: usize>(self, rows: [&[bf16]; R], x: &[bf16]) -> [f32; R] {
        check_rows(&rows, x.len());
        // SAFETY: the token proves AVX2+FMA; every row has at least x.len() elements.
        unsafe { avx2_dot_rows_bx(rows, x) }
    }

    #[inline]
    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: the token proves AVX2+FMA; both slices have at least n elements.
        unsafe { avx2_dot_f32(&a[..n], &b[..n]) }
    }

    #[inline]
    fn axpy_f32(self, a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: the token proves AVX2+FMA; both slices have at least n elements.
        unsafe { avx2_axpy(a, &x[..n], &mut y[..n]) }
    }

    fn exp_shift_sum(self, x: &mut [f32], shift: f32) -> f32 {
        // SAFETY: the token proves AVX2+FMA; the kernel stays within x.
        unsafe { avx2_exp_shift_sum(x, shift) }
    }

    fn scores_group(
        self,
        qs: &[f32],
        keys: &[f32],
        d: usize,
        scale: f32,
        out: &mut [f32],
        stride: usize,
    ) {
        if d == 0 {
            return;
        }
        let (g_n, rows) = (qs.len() / d, keys.len() / d);
        // The kernel indexes out[g * stride + j] for g < g_n, j < rows.
        assert!(
            g_n == 0 || rows == 0 || (g_n - 1) * stride + rows <= out.len(),
            "scores_group: output too short"
        );
        // SAFETY: the token proves AVX2+FMA; qs has g_n*d, keys rows*d elements and out is
        // long enough (checked above).
        unsafe { avx2_scores_group(qs, keys, d, g_n, rows, scale, out, stride) }
    }

    fn weighted_sum_group(
        self,
        ps: &[f32],
        stride: usize,
        values: &[f32],
        d: usize,
        outs: &mut [f32],
    ) {
        if d == 0 {
            return;
        }
        let (g_n, rows) = (outs.len() / d, values.len() / d);
        assert!(
            g_n == 0 || rows == 0 || (g_n - 1) * stride + rows <= ps.len(),
            "weighted_sum_group: probabilities too short"
        );
        // SAFETY: the token proves AVX2+FMA; lengths checked above.
        unsafe { avx2_weighted_sum_group(ps, stride, values, d, g_n, rows, outs) }
    }
}

/// `exp` of 8 lanes, Cephes `expf` scheme: `2^n · p(r)` with `r = x - n·ln 2` split in two
/// constants and a degree-6 polynomial; ~1 ulp on the clamped range. Inputs below -87.3 give
/// ~1e-38 instead of 0 (immaterial next to the softmax maximum's exp(0) = 1).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp256(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.336_55)),
        _mm256_set1_ps(88.376_26),
    );
    let n = _mm256_floor_ps(_mm256_fmadd_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
        _mm256_set1_ps(0.5),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    )));
    _mm256_mul_ps(y, pow2n)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
    let n = x.len();
    let p = x.as_mut_ptr();
    let sv = _mm256_set1_ps(shift);
    let mut acc = _mm256_setzero_ps();
    let mut c = 0;
    while c + 8 <= n {
        let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.add(c)), sv));
        _mm256_storeu_ps(p.add(c), e);
        acc = _mm256_add_ps(acc, e);
        c += 8;
    }
    let mut sum = hsum256(acc);
    while c < n {
        let e = (*p.add(c) - shift).exp();
        *p.add(c) = e;
        sum += e;
        c += 1;
    }
    sum
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_scores_group(
    qs: &[f32],
    keys: &[f32],
    d: usize,
    g_n: usize,
    rows: usize,
    scale: f32,
    out: &mut [f32],
    stride: usize,
) {
    let (qp, kp, op) = (qs.as_ptr(), keys.as_ptr(), out.as_mut_ptr());
    for j in 0..rows {
        let k = kp.add(j * d);
        for g in 0..g_n {
            let q = qp.add(g * d);
            let mut a0 = _mm256_setzero_ps();
            let mut a1 = _mm256_setzero_ps();
            let mut c = 0;
            while c + 16 <= d {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(c)), _mm256_loadu_ps(k.add(c)), a0);
                a1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(q.add(c + 8)),
                    _mm256_loadu_ps(k.add(c + 8)),
                    a1,
                );
                c += 16;
            }
            if c + 8 <= d {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(c)), _mm256_loadu_ps(k.add(c)), a0);
                c += 8;
            }
            let mut s = hsum256(_mm256_add_ps(a0, a1));
            while c < d {
                s += *q.add(c) * *k.add(c);
                c += 1;
            }
            *op.add(g * stride + j) = s * scale;
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_weighted_sum_group(
    ps: &[f32],
    stride: usize,
    values: &[f32],
    d: usize,
    g_n: usize,
    rows: usize,
    outs: &mut [f32],
) {
    let (pp, vp, op) = (ps.as_ptr(), values.as_ptr(), outs.as_mut_ptr());
    for j in 0..rows {
        let v = vp.add(j * d);
        for g in 0..g_n {
            let p = *pp.add(g * stride + j);
            let pv = _mm256_set1_ps(p);
            let o = op.add(g * d);
            let mut c = 0;
            while c + 8 <= d {
                let r = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v.add(c)), _mm256_loadu_ps(o.add(c)));
                _mm256_storeu_ps(o.add(c), r);
                c += 8;
            }
            while c < d {
                *o.add(c) += p * *v.add(c);
                c += 1;
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn widen8(p: *const bf16) -> __m256 {
    let v = _mm_loadu_si128(p as *const __m128i);
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_dot_rows<const R: usize>(rows: [&[bf16]; R], x: &[f32]) -> [f32; R] {
    let n = x.len();
    let xp = x.as_ptr();
    let wp: [*const bf16; R] = std::array::from_fn(|r| rows[r].as_ptr());
    let mut a0 = [_mm256_setzero_ps(); R];
    let mut c = 0;
    while c + 16 <= n {
        let x0 = _mm256_loadu_ps(xp.add(c));
        let x1 = _mm256_loadu_ps(xp.add(c + 8));
        for r in 0..R {
            a0[r] = _mm256_fmadd_ps(widen8(wp[r].add(c)), x0, a0[r]);
        }
        for r in 0..R {
            a0[r] = _mm256_fmadd_ps(widen8(wp[r].add(c + 8)), x1, a0[r]);
        }
        c += 16;
    }
    if c + 8 <= n {
        let x0 = _mm256_loadu_ps(xp.add(c));
        for r in 0..R {
            a0[r] = _mm256_fmadd_ps(widen8(wp[r].add(c)), x0, a0[r]);
        }
        c += 8;
    }
    let mut out = [0f32; R];
    for r in 0..R {
        let mut s = hsum256(a0[r]);
        for k in c..n {
            s += widen(*rows[r].get_unchecked(k)) * *x.get_unchecked(k);
        }
        out[r] = s;
    }
    out
}

#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_dot_rows_bx<const R: usize>(rows: [&[bf16]; R], x: &[bf16]) -> [f32; R] {
    let n = x.len();
    let xp = x.as_ptr();
    let wp: [*const bf16; R] = std::array::from_fn(|r| rows[r].as_ptr());
    let mut a0 = [_mm256_setzero_ps(); R];
    let mut a1 = [_mm256_setzero_ps(); R];
    let mut c = 0;
    while c + 16 <= n {
        let x0 = widen8(xp.add(c));
        let x1 = widen8(xp.add(c + 8));
        for r in 0..R {
            a0[r] = _mm256_fmadd_ps(widen8(wp[r].add(c)), x0, a0[r]);
            a1[r] = _mm256_fmadd_ps(widen8(wp[r].add(c + 8)), x1, a1[r]);
        }
        c += 16;
    }
    let mut out = [0f32; R];
    for r in 0..R {
        let mut s = hsum256(_mm256_add_ps(a0[r], a1[r]));
        for k in c..n {
            s += widen(*rows[r].get_unchecked(k)) * widen(*x.get_unchecked(k));
        }
        out[r] = s;
    }
    out
}

#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_dot_tile<const R: usize, const T: usize>(
    rows: [&[bf16]; R],
    xs: [&[f32]; T],
    n: usize,
) -> [[f32; T]; R] {
    let wp: [*const bf16; R] = std::array::from_fn(|r| rows[r].as_ptr());
    let xp: [*const f32; T] = std::array::from_fn(|t| xs[t].as_ptr());
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut c = 0;
    while c + 8 <= n {
        let xv: [__m256; T] = std::array::from_fn(|t| _mm256_loadu_ps(xp[t].add(c)));
        for r in 0..R {
            let w = widen8(wp[r].add(c));
            for t in 0..T {
                acc[r][t] = _mm256_fmadd_ps(w, xv[t], acc[r][t]);
            }
        }
        c += 8;
    }
    let mut out = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            let mut s = hsum256(acc[r][t]);
            for k in c..n {
                s += widen(*rows[r].get_unchecked(k)) * *xs[t].get_unchecked(k);
            }
            out[r][t] = s;
        }
    }
    out
}

#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut a0 = _mm256_setzero_ps();
    let mut a1 = _mm256_setzero_ps();
    let mut c = 0;
    while c + 16 <= n {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(c)), _mm256_loadu_ps(bp.add(c)), a0);
        a1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(ap.add(c + 8)),
            _mm256_loadu_ps(bp.add(c + 8)),
            a1,
        );
        c += 16;
    }
    if c + 8 <= n {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(c)), _mm256_loadu_ps(bp.add(c)), a0);
        c += 8;
    }
    let mut s = hsum256(_mm256_add_ps(a0, a1));
    for k in c..n {
        s += *a.get_unchecked(k) * *b.get_unchecked(k);
    }
    s
}

#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len();
    let av = _mm256_set1_ps(a);
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    let mut c = 0;
    while c + 8 <= n {
        let v = _mm256_fmadd_ps(av, _mm256_loadu_ps(xp.add(c)), _mm256_loadu_ps(yp.add(c)));
        _mm256_storeu_ps(yp.add(c), v);
        c += 8;
    }
    for k in c..n {
        *y.get_unchecked_mut(k) += a * *x.get_unchecked(k);
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512

impl Backend for Avx512 {
    #[inline]
    fn dot_rows<const R: usize>(self, rows: [&[bf16]; R], x: &[f32]) -> [f32; R] {
        check_rows(&rows, x.len());
        // SAFETY: the token proves AVX-512F; every row has at least x.len() elements.
        unsafe { avx512_dot_rows(rows, x) }
    }

    #[inline]
    fn dot_tile<const R: usize, const T: usize>(
        self,
        rows: [&[bf16]; R],
        xs: [&[f32]; T],
    ) -> [[f32; T]; R] {
        let n = xs.iter().map(|x| x.len()).min().unwrap_or(0);
        check_rows(&rows, n);
        // SAFETY: the token proves AVX-512F; rows and xs all have at least n elements.
        unsafe { avx512_dot_tile(rows, xs, n) }
    }

    #[inline]
    fn dot_rows_bx<const R: usize>(self, rows: [&[bf16]; R], x: &[bf16]) -> [f32; R] {
        check_rows(&rows, x.len());
        // SAFETY: the token proves AVX-512F; every row has at least x.len() elements.
        unsafe { avx512_dot_rows_bx(rows, x) }
    }

    #[inline]
    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: the token proves AVX-512F; both slices have at least n elements.
        unsafe { avx512_dot_f32(&a[..n], &b[..n]) }
    }

    #[inline]
    fn axpy_f32(self, a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: the token proves AVX-512F; both slices have at least n elements.
        unsafe { avx512_axpy(a, &x[..n], &mut y[..n]) }
    }

    fn exp_shift_sum(self, x: &mut [f32], shift: f32) -> f32 {
        self.0.exp_shift_sum(x, shift)
    }

    fn scores_group(
        self,
        qs: &[f32],
        keys: &[f32],
        d: usize,
        scale: f32,
        out: &mut [f32],
        stride: usize,
    ) {
        self.0.scores_group(qs, keys, d, scale, out, stride)
    }

    fn weighted_sum_group(
        self,
        ps: &[f32],
        stride: usize,
        values: &[f32],
        d: usize,
        outs: &mut [f32],
    ) {
        self.0.weighted_sum_group(ps, stride, values, d, outs)
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn widen16(p: *const bf16) -> __m512 {
    let v = _mm256_loadu_si256(p as *const __m256i);
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
}

#[target_feature(enable = "avx512f")]
unsafe fn avx512_dot_rows<const R: usize>(rows: [&[bf16]; R], x: &[f32]) -> [f32; R] {
    let n = x.len();
    let xp = x.as_ptr();
    let wp: [*const bf16; R] = std::array::from_fn(|r| rows[r].as_ptr());
    let mut a0 = [_mm512_setzero_ps(); R];
    let mut a1 = [_mm512_setzero_ps(); R];
    let mut c = 0;
    while c + 32 <= n {
        let x0 = _mm512_loadu_ps(xp.add(c));
        let x1 = _mm512_loadu_ps(xp.add(c + 16));
        for r in 0..R {
            a0[r] = _mm512_fmadd_ps(widen16(wp[r].add(c)), x0, a0[r]);
            a1[r] = _mm512_fmadd_ps(widen16(wp[r].add(c + 16)), x1, a1[r]);
        }
        c += 32;
    }
    if c + 16 <= n {
        let x0 = _mm512_loadu_ps(xp.add(c));
        for r in 0..R {
            a0[r] = _mm512_fmadd_ps(widen16(wp[r].add(c)), x0, a0[r]);
        }
        c += 16;
    }
    let mut out = [0f32; R];
    for r in 0..R {
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
        for k in c..n {
            s += widen(*rows[r].get_unchecked(k)) * *x.get_unchecked(k);
        }
        out[r] = s;
    }
    out
}

#[target_feature(enable = "avx512f")]
unsafe fn avx512_dot_rows_bx<const R: usize>(rows: [&[bf16]; R], x: &[bf16]) -> [f32; R] {
    let n = x.len();
    let xp = x.as_ptr();
    let wp: [*const bf16; R] = std::array::from_fn(|r| rows[r].as_ptr());
    let mut a0 = [_mm512_setzero_ps(); R];
    let mut c = 0;
    while c + 16 <= n {
        let x0 = widen16(xp.add(c));
        for r in 0..R {
            a0[r] = _mm512_fmadd_ps(widen16(wp[r].add(c)), x0, a0[r]);
        }
        c += 16;
    }
    let mut out = [0f32; R];
    for r in 0..R {
        let mut s = _mm512_reduce_add_ps(a0[r]);
        for k in c..n {
            s += widen(*rows[r].get_unchecked(k)) * widen(*x.get_unchecked(k));
        }
        out[r] = s;
    }
    out
}

#[target_feature(enable = "avx512f")]
unsafe fn avx512_dot_tile<const R: usize, const T: usize>(
    rows: [&[bf16]; R],
    xs: [&[f32]; T],
    n: usize,
) -> [[f32; T]; R] {
    let wp: [*const bf16; R] = std::array::from_fn(|r| rows[r].as_ptr());
    let xp: [*const f32; T] = std::array::from_fn(|t| xs[t].as_ptr());
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let mut c = 0;
    while c + 16 <= n {
        let xv: [__m512; T] = std::array::from_fn(|t| _mm512_loadu_ps(xp[t].add(c)));
        for r in 0..R {
            let w = widen16(wp[r].add(c));
            for t in 0..T {
                acc[r][t] = _mm512_fmadd_ps(w, xv[t], acc[r][t]);
            }
        }
        c += 16;
    }
    let mut out = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            let mut s = _mm512_reduce_add_ps(acc[r][t]);
            for k in c..n {
                s += widen(*rows[r].get_unchecked(k)) * *xs[t].get_unchecked(k);
            }
            out[r][t] = s;
        }
    }
    out
}

#[target_feature(enable = "avx512f")]
unsafe fn avx512_dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut a0 = _mm512_setzero_ps();
    let mut c = 0;
    while c + 16 <= n {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(ap.add(c)), _mm512_loadu_ps(bp.add(c)), a0);
        c += 16;
    }
    let mut s = _mm512_reduce_add_ps(a0);
    for k in c..n {
        s += *a.get_unchecked(k) * *b.get_unchecked(k);
    }
    s
}

#[target_feature(enable = "avx512f")]
unsafe fn avx512_axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len();
    let av = _mm512_set1_ps(a);
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    let mut c = 0;
    while c + 16 <= n {
        let v = _mm512_fmadd_ps(av, _mm512_loadu_ps(xp.add(c)), _mm512_loadu_ps(yp.add(c)));
        _mm512_storeu_ps(yp.add(c), v);
        c += 16;
    }
    for k in c..n {
        *y.get_unchecked_mut(k) += a * *x.get_unchecked(k);
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 + AVX512-BF16

/// Proof that AVX-512F and AVX512-BF16 are available. Everything but the bf16-activation dot
/// is the AVX-512 path (f32 activations must not be rounded to bf16 behind the caller's back).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512Bf16(Avx512);

impl Avx512Bf16 {
    pub(crate) fn new() -> Option<Self> {
        if is_x86_feature_detected!("avx512bf16") {
            Avx512::new().map(Avx512Bf16)
        } else {
            None
        }
    }
}

impl Backend for Avx512Bf16 {
    #[inline]
    fn dot_rows<const R: usize>(self, rows: [&[bf16]; R], x: &[f32]) -> [f32; R] {
        self.0.dot_rows(rows, x)
    }

    #[inline]
    fn dot_tile<const R: usize, const T: usize>(
        self,
        rows: [&[bf16]; R],
        xs: [&[f32]; T],
    ) -> [[f32; T]; R] {
        self.0.dot_tile(rows, xs)
    }

    #[inline]
    fn dot_rows_bx<const R: usize>(self, rows: [&[bf16]; R], x: &[bf16]) -> [f32; R] {
        check_rows(&rows, x.len());
        // SAFETY: the token proves AVX-512F + AVX512-BF16; rows have at least x.len() elements.
        unsafe { avx512bf16_dot_rows_bx(rows, x) }
    }

    #[inline]
    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32 {
        self.0.dot_f32(a, b)
    }

    #[inline]
    fn axpy_f32(self, a: f32, x: &[f32], y: &mut [f32]) {
        self.0.axpy_f32(a, x, y)
    }

    fn exp_shift_sum(self, x: &mut [f32], shift: f32) -> f32 {
        self.0.exp_shift_sum(x, shift)
    }

    fn scores_group(
        self,
        qs: &[f32],
        keys: &[f32],
        d: usize,
        scale: f32,
        out: &mut [f32],
        stride: usize,
    ) {
        self.0.scores_group(qs, keys, d, scale, out, stride)
    }

    fn weighted_sum_group(
        self,
        ps: &[f32],
        stride: usize,
        values: &[f32],
        d: usize,
        outs: &mut [f32],
    ) {
        self.0.weighted_sum_group(ps, stride, values, d, outs)
    }
}

/// Unaligned load of 32 bf16.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn ld_bh(p: *const bf16) -> __m512bh {
    // __m512bh and __m512i are both plain 64-byte vectors.
    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const _))
}

/// `vdpbf16ps`: each f32 lane accumulates the products of one adjacent bf16 pair, so 32
/// columns per instruction and no widening.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn avx512bf16_dot_rows_bx<const R: usize>(rows: [&[bf16]; R], x: &[bf16]) -> [f32; R] {
    let n = x.len();
    let xp = x.as_ptr();
    let wp: [*const bf16; R] = std::array::from_fn(|r| rows[r].as_ptr());
    let mut a0 = [_mm512_setzero_ps(); R];
    let mut a1 = [_mm512_setzero_ps(); R];
    let mut c = 0;
    while c + 64 <= n {
        let x0 = ld_bh(xp.add(c));
        let x1 = ld_bh(xp.add(c + 32));
        for r in 0..R {
            a0[r] = _mm512_dpbf16_ps(a0[r], ld_bh(wp[r].add(c)), x0);
            a1[r] = _mm512_dpbf16_ps(a1[r], ld_bh(wp[r].add(c + 32)), x1);
        }
        c += 64;
    }
    if c + 32 <= n {
        let x0 = ld_bh(xp.add(c));
        for r in 0..R {
            a0[r] = _mm512_dpbf16_ps(a0[r], ld_bh(wp[r].add(c)), x0);
        }
        c += 32;
    }
    let mut out = [0f32; R];
    for r in 0..R {
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
        for k in c..n {
            s += widen(*rows[r].get_unchecked(k)) * widen(*x.get_unchecked(k));
        }
        out[r] = s;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx2_exp_matches_f64_within_a_few_ulp() {
        let Some(b) = Avx2::new() else { return };
        // Softmax arguments: x - max ∈ [-100, 0], plus an unaligned tail.
        let src: Vec<f32> = (0..10_007).map(|i| -(i as f32) * 0.01).collect();
        let mut x = src.clone();
        let sum = b.exp_shift_sum(&mut x, 0.0);
        let mut want_sum = 0f64;
        for (got, s) in x.iter().zip(&src) {
            let want = (*s as f64).exp();
            want_sum += want;
            if *s > -87.0 {
                let rel = ((*got as f64) - want).abs() / want;
                assert!(rel < 4e-7, "exp({s}) = {got}, want {want}, rel {rel:e}");
            } else {
                assert!(*got >= 0.0 && *got < 2e-38, "exp({s}) = {got}");
            }
        }
        assert!(((sum as f64) - want_sum).abs() / want_sum < 1e-6);
        // The shift is subtracted before exponentiation.
        let mut y = vec![5.0f32; 9];
        let s = b.exp_shift_sum(&mut y, 5.0);
        assert!(y.iter().all(|v| (*v - 1.0).abs() < 1e-7));
        assert!((s - 9.0).abs() < 1e-5);
    }
}
