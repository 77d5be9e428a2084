//! bf16-weight × f32-activation products: matvec (decode), tiled matmul (prefill) and the fused
//! SwiGLU expert FFN built from them.
//!
//! At batch 1 these loops stream every active weight byte from memory once per token, so they
//! are written to keep the memory system busy: several rows per micro-kernel share the x loads,
//! work is split by output rows over the persistent [`Pool`], and nothing allocates per call.

use crate::backend::Backend;
use crate::error::{check_len, check_min_len, mul, or_panic, KernelError};
use crate::isa::Isa;
use crate::math::silu;
use crate::pool::{Pool, SharedMut};
use half::bf16;
use std::ops::Range;

/// Below this many weight elements an op runs on the calling thread: waking workers costs a
/// few microseconds, more than the op.
const PAR_MIN_ELEMS: usize = 1 << 16;

/// Output rows per chunk are multiples of this: 16 f32 = one 64-byte cache line, so threads
/// never write to the same line.
const ROW_ALIGN: usize = 16;

/// Weight elements per dynamically claimed chunk (~2 MB of bf16): long enough that each of the
/// micro-kernel's read streams runs for hundreds of KB, small enough to balance well (56
/// chunks for a 14336 × 4096 expert matrix).
const CHUNK_ELEMS: usize = 1 << 20;

/// Runs `f` over `0..rows` split into chunks (guided: large first, shrinking to one cache line
/// of output rows) claimed dynamically by the pool's threads, or inline when the op
/// (`rows * work_per_row` weight elements) is too small to wake workers.
pub(crate) fn par_rows(
    pool: &Pool,
    rows: usize,
    work_per_row: usize,
    f: impl Fn(Range<usize>) + Sync,
) {
    if rows == 0 {
        return;
    }
    if rows.saturating_mul(work_per_row) < PAR_MIN_ELEMS || pool.threads() == 1 {
        f(0..rows);
        return;
    }
    let max_chunk = (CHUNK_ELEMS / work_per_row.max(1))
        .max(1)
        .div_ceil(ROW_ALIGN)
        * ROW_ALIGN;
    pool.run_chunks_guided(rows, max_chunk, ROW_ALIGN, f);
}

/// Runs `$body` with `$b` bound to the backend of `$isa` (falling back to scalar when the
/// requested ISA is not implemented or not supported by this CPU).
macro_rules! with_backend {
    ($isa:expr, $b:ident => $body:expr) => {{
        match $isa {
            #[cfg(target_arch = "x86_64")]
            $crate::isa::Isa::Avx512Bf16 => match $crate::x86::Avx512Bf16::new() {
                Some($b) => $body,
                None => {
                    let $b = $crate::backend::Scalar;
                    $body
                }
            },
            #[cfg(target_arch = "x86_64")]
            $crate::isa::Isa::Avx512 => match $crate::x86::Avx512::new() {
                Some($b) => $body,
                None => {
                    let $b = $crate::backend::Scalar;
                    $body
                }
            },
            #[cfg(target_arch = "x86_64")]
            $crate::isa::Isa::Avx2 => match $crate::x86::Avx2::new() {
                Some($b) => $body,
                None => {
                    let $b = $crate::backend::Scalar;
                    $body
                }
            },
            _ => {
                let $b = $crate::backend::Scalar;
                $body
            }
        }
    }};
}
pub(crate) use with_backend;

/// What a kernel does with each computed dot product.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `y = dot`
    Store,
    /// `y += scale * dot`
    AddScaled(f32),
}

// ---------------------------------------------------------------------------------------------
// matvec

/// `y[r] = Σ_c w[r*cols + c] * x[c]` with `rows = y.len()`, `cols = x.len()`, split by output
/// rows over the pool. Results are bitwise identical for any pool size.
///
/// # Panics
/// If `w.len() != y.len() * x.len()` (see [`try_matvec_bf16`]).
#[track_caller]
pub fn matvec_bf16(pool: &Pool, w: &[bf16], x: &[f32], y: &mut [f32]) {
    or_panic(try_matvec_bf16_with(Isa::detect(), pool, w, x, y));
}

/// [`matvec_bf16`] returning an error on mismatched lengths.
pub fn try_matvec_bf16(
    pool: &Pool,
    w: &[bf16],
    x: &[f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    try_matvec_bf16_with(Isa::detect(), pool, w, x, y)
}

/// [`matvec_bf16`] on an explicit code path (unsupported paths fall back to scalar).
pub fn try_matvec_bf16_with(
    isa: Isa,
    pool: &Pool,
    w: &[bf16],
    x: &[f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    let n = mul("matvec_bf16", "w", y.len(), x.len())?;
    check_len("matvec_bf16", "w", n, w.len())?;
    with_backend!(isa, b => matvec_driver(b, pool, w, x, y, Mode::Store));
    Ok(())
}

/// Opt-in bf16-activation matvec: `y[r] = Σ_c w[r*cols + c] * x[c]` with `x` already rounded
/// to bf16 by the caller (see [`round_to_bf16`]). On AVX512-BF16 CPUs this runs `vdpbf16ps`
/// (32 columns per instruction); elsewhere both operands are widened exactly and the result
/// equals [`matvec_bf16`] on the widened `x` up to summation order. The default kernels keep
/// f32 activations; use this only where the accuracy loss of bf16 activations is accepted.
///
/// # Panics
/// If `w.len() != y.len() * x.len()` (see [`try_matvec_bf16_bf16act`]).
#[track_caller]
pub fn matvec_bf16_bf16act(pool: &Pool, w: &[bf16], x: &[bf16], y: &mut [f32]) {
    or_panic(try_matvec_bf16_bf16act_with(Isa::detect(), pool, w, x, y));
}

/// [`matvec_bf16_bf16act`] returning an error on mismatched lengths.
pub fn try_matvec_bf16_bf16act(
    pool: &Pool,
    w: &[bf16],
    x: &[bf16],
    y: &mut [f32],
) -> Result<(), KernelError> {
    try_matvec_bf16_bf16act_with(Isa::detect(), pool, w, x, y)
}

/// [`matvec_bf16_bf16act`] on an explicit code path.
pub fn try_matvec_bf16_bf16act_with(
    isa: Isa,
    pool: &Pool,
    w: &[bf16],
    x: &[bf16],
    y: &mut [f32],
) -> Result<(), KernelError> {
    let k = "matvec_bf16_bf16act";
    let n = mul(k, "w", y.len(), x.len())?;
    check_len(k, "w", n, w.len())?;
    let rows = y.len();
    let cols = x.len();
    let ys = SharedMut::new(y);
    with_backend!(isa, b => par_rows(pool, rows, cols, |r| {
        // SAFETY: chunks are disjoint row ranges of `y`, which outlives the job.
        let y = unsafe { ys.slice(r.clone()) };
        let row = |i: usize| &w[r.start * cols + i * cols..r.start * cols + (i + 1) * cols];
        // Quarters of the chunk as four long read streams (see `matvec_rows`).
        let q = r.len() / 4;
        for i in 0..q {
            let v = b.dot_rows_bx::<4>([row(i), row(q + i), row(2 * q + i), row(3 * q + i)], x);
            for k in 0..4 {
                y[k * q + i] = v[k];
            }
        }
        for i in 4 * q..r.len() {
            y[i] = b.dot_rows_bx::<1>([row(i)], x)[0];
        }
    }));
    Ok(())
}

/// Rounds f32 activations to bf16 (round to nearest even) for the bf16-activation kernels.
///
/// # Panics
/// If the lengths differ.
#[track_caller]
pub fn round_to_bf16(x: &[f32], out: &mut [bf16]) {
    assert_eq!(
        x.len(),
        out.len(),
        "round_to_bf16: x and out lengths differ"
    );
    for (o, v) in out.iter_mut().zip(x) {
        *o = bf16::from_f32(*v);
    }
}

fn matvec_driver<B: Backend>(b: B, pool: &Pool, w: &[bf16], x: &[f32], y: &mut [f32], mode: Mode) {
    let rows = y.len();
    let cols = x.len();
    if rows == 0 {
        return;
    }
    let ys = SharedMut::new(y);
    par_rows(pool, rows, cols, |r| {
        // SAFETY: chunks are disjoint row ranges of `y`, which outlives the job (the pool
        // returns only after every chunk is done).
        let y = unsafe { ys.slice(r.clone()) };
        matvec_rows(b, &w[r.start * cols..r.end * cols], x, y, mode);
    });
}

/// Rows of `w` (exactly `y.len()` rows of `x.len()` columns) dotted with `x`.
fn matvec_rows<B: Backend>(b: B, w: &[bf16], x: &[f32], y: &mut [f32], mode: Mode) {
    let cols = x.len();
    let row = |r: usize| &w[r * cols..(r + 1) * cols];
    let emit = |y: &mut f32, v: f32| match mode {
        Mode::Store => *y = v,
        Mode::AddScaled(s) => *y += s * v,
    };
    let rows = y.len();
    // The four rows of a micro-kernel call come from the four quarters of the block, so each
    // of the four read streams runs contiguously through its part (consecutive rows are
    // adjacent in memory) instead of restarting every few rows, which keeps the hardware
    // prefetchers locked on. Four streams per core beat eight with both cores streaming
    // (session 6, same-process A/B on the mapped models: equal on 8x7B shapes, +1-5% on the
    // short rows of `small`; sixteen streams were 3-15% slower), since each stream is twice
    // as long per chunk and the memory system sees half as many at once.
    let q = rows / 4;
    for i in 0..q {
        let v = b.dot_rows::<4>(std::array::from_fn(|k| row(k * q + i)), x);
        for k in 0..4 {
            emit(&mut y[k * q + i], v[k]);
        }
    }
    for r in 4 * q..rows {
        let v = b.dot_rows::<1>([row(r)], x);
        emit(&mut y[r], v[0]);
    }
}

// ---------------------------------------------------------------------------------------------
// matmul

/// Batched product for prefill: `x` is `[n, cols]` row-major, `y` is `[n, rows]`;
/// `y[t*rows + r] = Σ_c w[r*cols + c] * x[t*cols + c]`. Weight rows are read once per block of
/// tokens (register tiles of 4 rows × 3 tokens), rows split over the pool.
///
/// # Panics
/// If `x.len()` is not a multiple of `n` or the lengths do not agree (see [`try_matmul_bf16`]).
#[track_caller]
pub fn matmul_bf16(pool: &Pool, w: &[bf16], x: &[f32], n: usize, y: &mut [f32]) {
    or_panic(try_matmul_bf16_with(Isa::detect(), pool, w, x, n, y));
}

/// [`matmul_bf16`] returning an error on mismatched lengths.
pub fn try_matmul_bf16(
    pool: &Pool,
    w: &[bf16],
    x: &[f32],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    try_matmul_bf16_with(Isa::detect(), pool, w, x, n, y)
}

/// `(rows, cols)` of a batched product, validated.
fn matmul_shape(
    kernel: &'static str,
    w: usize,
    x: usize,
    n: usize,
    y: usize,
) -> Result<(usize, usize), KernelError> {
    if n == 0 {
        check_len(kernel, "x", 0, x)?;
        check_len(kernel, "y", 0, y)?;
        return Ok((0, 0));
    }
    if !x.is_multiple_of(n) || !y.is_multiple_of(n) {
        return Err(KernelError::Invalid {
            kernel,
            arg: if !x.is_multiple_of(n) { "x" } else { "y" },
            what: format!(
                "length {} is not a multiple of n = {n}",
                if !x.is_multiple_of(n) { x } else { y }
            ),
        });
    }
    let (cols, rows) = (x / n, y / n);
    check_len(kernel, "w", mul(kernel, "w", rows, cols)?, w)?;
    Ok((rows, cols))
}

/// [`matmul_bf16`] on an explicit code path.
pub fn try_matmul_bf16_with(
    isa: Isa,
    pool: &Pool,
    w: &[bf16],
    x: &[f32],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let (rows, cols) = matmul_shape("matmul_bf16", w.len(), x.len(), n, y.len())?;
    if n == 0 || rows == 0 {
        return Ok(());
    }
    let ys = SharedMut::new(y);
    with_backend!(isa, b => matmul_driver(b, pool, w, rows, cols, x, n, |t, r, v| {
        // SAFETY: each thread owns a disjoint set of rows `r`, so the elements t*rows + r are
        // disjoint across threads; `y` outlives the job.
        unsafe { ys.set(t * rows + r, v) }
    }));
    Ok(())
}

/// Tokens per block: the weight rows of a tile are fetched from memory once per block and then
/// reused from L1/L2 for every token in it, so bigger blocks mean fewer passes over the
/// weights. The block's activations (up to 2 MiB of f32) stream from L2/L3, which measured
/// faster than smaller L2-resident blocks (64 tokens × 4096: 256 KiB blocks 63, 2 MiB 67-70
/// GFLOP/s per core on the AVX2 machine of record).
fn token_block(cols: usize) -> usize {
    let fit = (2 << 20) / (cols.max(1) * 4);
    (fit / 3 * 3).clamp(3, 96)
}

/// Generic prefill driver: `emit(t, r, dot(w[r], x[t]))` for every token and row, rows split
/// over the pool. `emit` must be safe to call concurrently for distinct rows.
#[allow(clippy::too_many_arguments)]
fn matmul_driver<B: Backend>(
    b: B,
    pool: &Pool,
    w: &[bf16],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    emit: impl Fn(usize, usize, f32) + Sync,
) {
    let row = |r: usize| &w[r * cols..(r + 1) * cols];
    par_rows(pool, rows, cols.saturating_mul(n), |rr| {
        // Unit u = rows s+u, s+q+u, s+2q+u, s+3q+u: four long read streams (see
        // `matvec_rows`), which matters when n is small and the op is bandwidth bound.
        let (s, q) = (rr.start, rr.len() / 4);
        run_tiles::<B, 4>(
            b,
            x,
            cols,
            n,
            0..q,
            |u| std::array::from_fn(|k| row(s + k * q + u)),
            |u, t, v| {
                for (k, vk) in v.into_iter().enumerate() {
                    emit(t, s + k * q + u, vk);
                }
            },
        );
        run_tiles::<B, 1>(
            b,
            x,
            cols,
            n,
            s + 4 * q..rr.end,
            |r| [row(r)],
            |r, t, v| emit(t, r, v[0]),
        );
    });
}

/// For each block of tokens, for each unit (a group of R weight rows), register tiles over the
/// block's tokens; `emit(unit, token, dots)`.
#[allow(clippy::too_many_arguments)]
fn run_tiles<'w, B: Backend, const R: usize>(
    b: B,
    x: &[f32],
    cols: usize,
    n: usize,
    units: impl Iterator<Item = usize> + Clone,
    rows_of: impl Fn(usize) -> [&'w [bf16]; R],
    emit: impl Fn(usize, usize, [f32; R]),
) {
    let xt = |t: usize| &x[t * cols..(t + 1) * cols];
    let tb = token_block(cols);
    let mut t0 = 0;
    while t0 < n {
        let t_end = (t0 + tb).min(n);
        for u in units.clone() {
            let rs = rows_of(u);
            let mut t = t0;
            while t + 3 <= t_end {
                let o = b.dot_tile::<R, 3>(rs, [xt(t), xt(t + 1), xt(t + 2)]);
                for k in 0..3 {
                    emit(u, t + k, std::array::from_fn(|r| o[r][k]));
                }
                t += 3;
            }
            match t_end - t {
                2 => {
                    let o = b.dot_tile::<R, 2>(rs, [xt(t), xt(t + 1)]);
                    for k in 0..2 {
                        emit(u, t + k, std::array::from_fn(|r| o[r][k]));
                    }
                }
                1 => {
                    let o = b.dot_tile::<R, 1>(rs, [xt(t)]);
                    emit(u, t, std::array::from_fn(|r| o[r][0]));
                }
                _ => {}
            }
        }
        t0 = t_end;
    }
}

// ---------------------------------------------------------------------------------------------
// expert FFN

/// One expert's SwiGLU FFN for one token:
/// `out += scale * w2 · (silu(w1·x) ⊙ (w3·x))`, `w1, w3: [I, H]`, `w2: [H, I]`, `H = x.len()`.
/// `w1` and `w3` are streamed in one pass sharing the x loads, SiLU·multiply is fused into it,
/// then `w2`. `scratch` needs at least `I` floats.
///
/// # Panics
/// On mismatched lengths (see [`try_expert_ffn_bf16`]).
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn expert_ffn_bf16(
    pool: &Pool,
    w1: &[bf16],
    w3: &[bf16],
    w2: &[bf16],
    x: &[f32],
    scale: f32,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    or_panic(try_expert_ffn_bf16_with(
        Isa::detect(),
        pool,
        w1,
        w3,
        w2,
        x,
        scale,
        out,
        scratch,
    ));
}

/// [`expert_ffn_bf16`] returning an error on mismatched lengths.
#[allow(clippy::too_many_arguments)]
pub fn try_expert_ffn_bf16(
    pool: &Pool,
    w1: &[bf16],
    w3: &[bf16],
    w2: &[bf16],
    x: &[f32],
    scale: f32,
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    try_expert_ffn_bf16_with(Isa::detect(), pool, w1, w3, w2, x, scale, out, scratch)
}

/// Validates expert weights against `h = x.len()`; returns the intermediate size I.
fn expert_shape(
    kernel: &'static str,
    w1: usize,
    w3: usize,
    w2: usize,
    h: usize,
) -> Result<usize, KernelError> {
    if h == 0 {
        return Err(KernelError::Invalid {
            kernel,
            arg: "x",
            what: "hidden size is 0".into(),
        });
    }
    if !w1.is_multiple_of(h) {
        return Err(KernelError::Invalid {
            kernel,
            arg: "w1",
            what: format!("length {w1} is not a multiple of the hidden size {h}"),
        });
    }
    let inter = w1 / h;
    check_len(kernel, "w3", w1, w3)?;
    check_len(kernel, "w2", w1, w2)?;
    Ok(inter)
}

/// [`expert_ffn_bf16`] on an explicit code path.
#[allow(clippy::too_many_arguments)]
pub fn try_expert_ffn_bf16_with(
    isa: Isa,
    pool: &Pool,
    w1: &[bf16],
    w3: &[bf16],
    w2: &[bf16],
    x: &[f32],
    scale: f32,
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let k = "expert_ffn_bf16";
    let hidden = x.len();
    let inter = expert_shape(k, w1.len(), w3.len(), w2.len(), hidden)?;
    check_len(k, "out", hidden, out.len())?;
    check_min_len(k, "scratch", inter, scratch.len())?;
    let h = &mut scratch[..inter];
    with_backend!(isa, b => {
        gate_up_driver(b, pool, w1, w3, x, h);
        matvec_driver(b, pool, w2, h, out, Mode::AddScaled(scale));
    });
    Ok(())
}

/// A block of rows of [`expert_ffn_bf16`]'s first phase, for an expert whose weights arrive
/// piece by piece: `h[i] = silu(w1[i]·x) * (w3[i]·x)` for the rows `w1` and `w3` hold (the
/// same rows of each; `h.len()` of them). Each row is computed exactly as the whole-expert
/// kernel computes it, so blocks covering all rows give bit-identical results.
///
/// # Panics
/// If `w1` or `w3` is not `h.len()` rows of `x.len()` columns.
#[track_caller]
pub fn expert_gate_up_rows_bf16(pool: &Pool, w1: &[bf16], w3: &[bf16], x: &[f32], h: &mut [f32]) {
    let k = "expert_gate_up_rows_bf16";
    or_panic((|| {
        let n = mul(k, "w1", h.len(), x.len())?;
        check_len(k, "w1", n, w1.len())?;
        check_len(k, "w3", n, w3.len())
    })());
    with_backend!(Isa::detect(), b => gate_up_driver(b, pool, w1, w3, x, h));
}

/// A block of rows of [`expert_ffn_bf16`]'s second phase: `out[r] += scale * (w2[r]·h)` for
/// the rows `w2` holds (`out.len()` of them; `h` is the whole intermediate vector).
///
/// # Panics
/// If `w2` is not `out.len()` rows of `h.len()` columns.
#[track_caller]
pub fn expert_down_rows_bf16(pool: &Pool, w2: &[bf16], h: &[f32], scale: f32, out: &mut [f32]) {
    let k = "expert_down_rows_bf16";
    or_panic((|| {
        check_len(k, "w2", mul(k, "w2", out.len(), h.len())?, w2.len())
    })());
    with_backend!(Isa::detect(), b => matvec_driver(b, pool, w2, h, out, Mode::AddScaled(scale)));
}

/// `h[i] = silu(w1[i]·x) * (w3[i]·x)`, two rows of each matrix per micro-kernel.
fn gate_up_driver<B: Backend>(
    b: B,
    pool: &Pool,
    w1: &[bf16],
    w3: &[bf16],
    x: &[f32],
    h: &mut [f32],
) {
    let inter = h.len();
    let cols = x.len();
    let hs = SharedMut::new(h);
    par_rows(pool, inter, 2 * cols, |r| {
        // SAFETY: chunks are disjoint row ranges; `h` outlives the job.
        let h = unsafe { hs.slice(r.clone()) };
        let g = |i: usize| &w1[i * cols..(i + 1) * cols];
        let u = |i: usize| &w3[i * cols..(i + 1) * cols];
        // Rows i and q + i of each matrix: four long contiguous read streams (see
        // `matvec_rows`).
        let q = r.len() / 2;
        for k in 0..q {
            let (i, j) = (r.start + k, r.start + q + k);
            let v = b.dot_rows::<4>([g(i), g(j), u(i), u(j)], x);
            h[k] = silu(v[0]) * v[2];
            h[q + k] = silu(v[1]) * v[3];
        }
        for k in 2 * q..r.len() {
            let i = r.start + k;
            let v = b.dot_rows::<2>([g(i), u(i)], x);
            h[k] = silu(v[0]) * v[1];
        }
    });
}

/// Batched expert FFN over `n` tokens routed to this expert (prefill): `x: [n, H]`,
/// `scales: [n]`, `out: [n, H]` accumulated: `out[t] += scales[t] * ffn(x[t])`.
/// `scratch` is grown to `n * I` floats if needed (reuse it across calls to avoid allocating).
///
/// # Panics
/// On mismatched lengths (see [`try_expert_ffn_bf16_batch`]).
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn expert_ffn_bf16_batch(
    pool: &Pool,
    w1: &[bf16],
    w3: &[bf16],
    w2: &[bf16],
    x: &[f32],
    n: usize,
    scales: &[f32],
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    or_panic(try_expert_ffn_bf16_batch_with(
        Isa::detect(),
        pool,
        w1,
        w3,
        w2,
        x,
        n,
        scales,
        out,
        scratch,
    ));
}

/// [`expert_ffn_bf16_batch`] returning an error on mismatched lengths.
#[allow(clippy::too_many_arguments)]
pub fn try_expert_ffn_bf16_batch(
    pool: &Pool,
    w1: &[bf16],
    w3: &[bf16],
    w2: &[bf16],
    x: &[f32],
    n: usize,
    scales: &[f32],
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Result<(), KernelError> {
    try_expert_ffn_bf16_batch_with(Isa::detect(), pool, w1, w3, w2, x, n, scales, out, scratch)
}

/// [`expert_ffn_bf16_batch`] on an explicit code path.
#[allow(clippy::too_many_arguments)]
pub fn try_expert_ffn_bf16_batch_with(
    isa: Isa,
    pool: &Pool,
    w1: &[bf16],
    w3: &[bf16],
    w2: &[bf16],
    x: &[f32],
    n: usize,
    scales: &[f32],
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Result<(), KernelError> {
    let k = "expert_ffn_bf16_batch";
    check_len(k, "scales", n, scales.len())?;
    check_len(k, "out", x.len(), out.len())?;
    if n == 0 {
        check_len(k, "x", 0, x.len())?;
        return Ok(());
    }
    if !x.len().is_multiple_of(n) {
        return Err(KernelError::Invalid {
            kernel: k,
            arg: "x",
            what: format!("length {} is not a multiple of n = {n}", x.len()),
        });
    }
    let hidden = x.len() / n;
    let inter = expert_shape(k, w1.len(), w3.len(), w2.len(), hidden)?;
    let need = mul(k, "scratch", n, inter)?;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let h = &mut scratch[..need];
    with_backend!(isa, b => {
        gate_up_batch_driver(b, pool, w1, w3, x, n, 0, h);
        down_batch_driver(b, pool, w2, h, n, scales, 0, out);
    });
    Ok(())
}

/// Phase 1 of the batched FFN for the rows `row0..` that `w1` and `w3` hold:
/// `h[t, i] = silu(w1[i]·x[t]) * (w3[i]·x[t])`, two rows of each matrix per tile; `h` is
/// `[n, I]`, `x` is `[n, H]`.
#[allow(clippy::too_many_arguments)]
fn gate_up_batch_driver<B: Backend>(
    b: B,
    pool: &Pool,
    w1: &[bf16],
    w3: &[bf16],
    x: &[f32],
    n: usize,
    row0: usize,
    h: &mut [f32],
) {
    let hidden = x.len() / n;
    let inter = h.len() / n;
    let rows = w1.len() / hidden;
    let hs = SharedMut::new(h);
    let g = |i: usize| &w1[i * hidden..(i + 1) * hidden];
    let u = |i: usize| &w3[i * hidden..(i + 1) * hidden];
    let at = |t: usize, i: usize| t * inter + row0 + i;
    par_rows(pool, rows, 2 * hidden * n, |rr| {
        // Unit k = rows s+k and s+half+k of w1 and of w3: four long read streams.
        let (s, half) = (rr.start, rr.len() / 2);
        run_tiles::<_, 4>(
            b,
            x,
            hidden,
            n,
            0..half,
            |k| [g(s + k), g(s + half + k), u(s + k), u(s + half + k)],
            |k, t, v| {
                // SAFETY: rows of this chunk only (chunks are thread-disjoint); `h`
                // outlives the job.
                unsafe {
                    hs.set(at(t, s + k), silu(v[0]) * v[2]);
                    hs.set(at(t, s + half + k), silu(v[1]) * v[3]);
                }
            },
        );
        run_tiles::<_, 2>(
            b,
            x,
            hidden,
            n,
            s + 2 * half..rr.end,
            |i| [g(i), u(i)],
            |i, t, v| {
                // SAFETY: as above.
                unsafe { hs.set(at(t, i), silu(v[0]) * v[1]) }
            },
        );
    });
}

/// Phase 2 of the batched FFN for the rows `row0..` that `w2` holds:
/// `out[t, r] += scales[t] * (w2[r] · h[t])`; `out` is `[n, H]`, `h` is `[n, I]`.
#[allow(clippy::too_many_arguments)]
fn down_batch_driver<B: Backend>(
    b: B,
    pool: &Pool,
    w2: &[bf16],
    h: &[f32],
    n: usize,
    scales: &[f32],
    row0: usize,
    out: &mut [f32],
) {
    let inter = h.len() / n;
    let hidden = out.len() / n;
    let rows = w2.len() / inter;
    let os = SharedMut::new(out);
    matmul_driver(b, pool, w2, rows, inter, h, n, |t, r, v| {
        // SAFETY: thread-disjoint rows r; `out` outlives the job.
        unsafe { os.add(t * hidden + row0 + r, scales[t] * v) }
    });
}

/// Checks a row block of a batched expert FFN: `input` (`[n, cols]`) and `output`
/// (`[n, total]`) are `n` rows each, and `w` holds whole rows of `cols` columns that fit below
/// `total` rows from `row0`.
fn check_block(
    k: &'static str,
    w: usize,
    input: usize,
    output: usize,
    n: usize,
    row0: usize,
) -> Result<(), KernelError> {
    if n == 0 || !input.is_multiple_of(n) || !output.is_multiple_of(n) {
        return Err(KernelError::Invalid {
            kernel: k,
            arg: "n",
            what: format!("activations of {input} and {output} elements are not {n} rows each"),
        });
    }
    let (cols, total) = (input / n, output / n);
    if cols == 0 || !w.is_multiple_of(cols) || row0 + w / cols > total {
        return Err(KernelError::Invalid {
            kernel: k,
            arg: "w",
            what: format!(
                "{w} elements are not whole rows of {cols} columns within rows {row0}..{total}"
            ),
        });
    }
    Ok(())
}

/// A block of rows of [`expert_ffn_bf16_batch`]'s first phase (see
/// [`expert_gate_up_rows_bf16`]): rows `row0..` of `h` (`[n, I]`) from the same rows of `w1`
/// and `w3`, for the `n` tokens of `x` (`[n, H]`). Bit-identical per row to the whole kernel.
///
/// # Panics
/// On shapes that do not agree.
#[track_caller]
pub fn expert_gate_up_rows_bf16_batch(
    pool: &Pool,
    w1: &[bf16],
    w3: &[bf16],
    x: &[f32],
    n: usize,
    row0: usize,
    h: &mut [f32],
) {
    let k = "expert_gate_up_rows_bf16_batch";
    or_panic((|| {
        check_block(k, w1.len(), x.len(), h.len(), n, row0)?;
        check_len(k, "w3", w1.len(), w3.len())
    })());
    with_backend!(Isa::detect(), b => gate_up_batch_driver(b, pool, w1, w3, x, n, row0, h));
}

/// A block of rows of [`expert_ffn_bf16_batch`]'s second phase: rows `row0..` of `out`
/// (`[n, H]`, accumulated) from the rows `w2` holds and the whole `h` (`[n, I]`).
///
/// # Panics
/// On shapes that do not agree.
#[track_caller]
pub fn expert_down_rows_bf16_batch(
    pool: &Pool,
    w2: &[bf16],
    h: &[f32],
    n: usize,
    scales: &[f32],
    row0: usize,
    out: &mut [f32],
) {
    let k = "expert_down_rows_bf16_batch";
    or_panic((|| {
        check_block(k, w2.len(), h.len(), out.len(), n, row0)?;
        check_len(k, "scales", n, scales.len())
    })());
    with_backend!(Isa::detect(), b => down_batch_driver(b, pool, w2, h, n, scales, row0, out));
}
