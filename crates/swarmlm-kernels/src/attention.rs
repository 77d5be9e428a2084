//! Decode-time attention for one query token over a per-layer KV cache, with grouped-query
//! heads and an optional sliding window.
//!
//! Work is split over KV heads so each cached K/V row is read from memory once for all the query
//! heads that share it (Mixtral: 32 query heads over 8 KV heads). The cache is a ring of
//! `capacity` slots (position `p` lives in slot `p % capacity`), so a sliding-window model needs
//! only `window` slots while a full-context cache is simply `capacity >= max positions`.

use crate::backend::Backend;
use crate::error::{check_len, check_min_len, mul, or_panic, KernelError};
use crate::isa::Isa;
use crate::linear::with_backend;
use crate::pool::{Pool, SharedMut};

/// One layer's K and V cache, f32, laid out `[n_kv_heads][capacity][head_dim]`.
#[derive(Clone, Debug)]
pub struct KvCacheLayer {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
}

impl KvCacheLayer {
    /// A zeroed cache of `capacity` positions.
    pub fn new(n_kv_heads: usize, head_dim: usize, capacity: usize) -> Self {
        let n = n_kv_heads * head_dim * capacity;
        KvCacheLayer {
            k: vec![0.0; n],
            v: vec![0.0; n],
            n_kv_heads,
            head_dim,
            capacity,
        }
    }

    /// Stores the keys and values of position `pos` (`k`, `v`: `[n_kv_heads * head_dim]`, as
    /// produced by the k/v projections) into slot `pos % capacity`.
    ///
    /// # Panics
    /// On wrong lengths or a zero-capacity cache (see [`KvCacheLayer::try_write`]).
    #[track_caller]
    pub fn write(&mut self, pos: usize, k: &[f32], v: &[f32]) {
        or_panic(self.try_write(pos, k, v));
    }

    /// [`KvCacheLayer::write`] returning an error on wrong lengths.
    pub fn try_write(&mut self, pos: usize, k: &[f32], v: &[f32]) -> Result<(), KernelError> {
        let kd = "kv_cache_write";
        self.check_layout(kd)?;
        check_min_len(kd, "capacity", 1, self.capacity)?;
        let row = self.n_kv_heads * self.head_dim;
        check_len(kd, "k", row, k.len())?;
        check_len(kd, "v", row, v.len())?;
        let d = self.head_dim;
        let slot = pos % self.capacity;
        for h in 0..self.n_kv_heads {
            let dst = (h * self.capacity + slot) * d;
            self.k[dst..dst + d].copy_from_slice(&k[h * d..(h + 1) * d]);
            self.v[dst..dst + d].copy_from_slice(&v[h * d..(h + 1) * d]);
        }
        Ok(())
    }

    /// Keys of KV head `h`: `[capacity * head_dim]`.
    pub fn k_head(&self, h: usize) -> &[f32] {
        let n = self.capacity * self.head_dim;
        &self.k[h * n..(h + 1) * n]
    }

    /// Values of KV head `h`: `[capacity * head_dim]`.
    pub fn v_head(&self, h: usize) -> &[f32] {
        let n = self.capacity * self.head_dim;
        &self.v[h * n..(h + 1) * n]
    }

    /// The public fields can be edited; make sure they still describe the buffers.
    fn check_layout(&self, kernel: &'static str) -> Result<(), KernelError> {
        let n = mul(kernel, "cache", self.n_kv_heads, self.head_dim)?;
        let n = mul(kernel, "cache", n, self.capacity)?;
        check_len(kernel, "cache.k", n, self.k.len())?;
        check_len(kernel, "cache.v", n, self.v.len())
    }
}

/// Attention of one query token over cached positions `[start, end)`:
/// for each query head `h` (KV head `h / (n_heads / n_kv_heads)`),
/// `out_h = Σ_j softmax_j(q_h·k_j / sqrt(d)) v_j`. `q`, `out`: `[n_heads * d]`;
/// `scratch` needs at least `n_heads * (end - start)` floats. An empty range writes zeros.
///
/// # Panics
/// On inconsistent arguments (see [`try_attention_decode`]).
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn attention_decode(
    pool: &Pool,
    q: &[f32],
    cache: &KvCacheLayer,
    n_heads: usize,
    start: usize,
    end: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    or_panic(try_attention_decode_with(
        Isa::detect(),
        pool,
        q,
        cache,
        n_heads,
        start,
        end,
        out,
        scratch,
    ));
}

/// [`attention_decode`] returning an error on inconsistent arguments.
#[allow(clippy::too_many_arguments)]
pub fn try_attention_decode(
    pool: &Pool,
    q: &[f32],
    cache: &KvCacheLayer,
    n_heads: usize,
    start: usize,
    end: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    try_attention_decode_with(
        Isa::detect(),
        pool,
        q,
        cache,
        n_heads,
        start,
        end,
        out,
        scratch,
    )
}

/// [`attention_decode`] on an explicit code path.
#[allow(clippy::too_many_arguments)]
pub fn try_attention_decode_with(
    isa: Isa,
    pool: &Pool,
    q: &[f32],
    cache: &KvCacheLayer,
    n_heads: usize,
    start: usize,
    end: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let k = "attention_decode";
    cache.check_layout(k)?;
    let d = cache.head_dim;
    let nkv = cache.n_kv_heads;
    if nkv == 0 || n_heads == 0 || !n_heads.is_multiple_of(nkv) {
        return Err(KernelError::Invalid {
            kernel: k,
            arg: "n_heads",
            what: format!("{n_heads} query heads cannot be grouped over {nkv} KV heads"),
        });
    }
    let qlen = mul(k, "q", n_heads, d)?;
    check_len(k, "q", qlen, q.len())?;
    check_len(k, "out", qlen, out.len())?;
    if start > end {
        return Err(KernelError::Invalid {
            kernel: k,
            arg: "start",
            what: format!("start {start} is after end {end}"),
        });
    }
    let len = end - start;
    if len > cache.capacity {
        return Err(KernelError::Invalid {
            kernel: k,
            arg: "end",
            what: format!(
                "range {start}..{end} spans {len} positions but the cache holds only {}",
                cache.capacity
            ),
        });
    }
    check_min_len(
        k,
        "scratch",
        mul(k, "scratch", n_heads, len)?,
        scratch.len(),
    )?;
    let scratch = &mut scratch[..n_heads * len];
    with_backend!(isa, b => attention_driver(b, pool, q, cache, n_heads, start, end, out, scratch));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn attention_driver<B: Backend>(
    b: B,
    pool: &Pool,
    q: &[f32],
    cache: &KvCacheLayer,
    n_heads: usize,
    start: usize,
    end: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let d = cache.head_dim;
    let nkv = cache.n_kv_heads;
    let group = n_heads / nkv;
    let len = end - start;
    let cap = cache.capacity;
    let scale = 1.0 / (d as f32).sqrt();
    if len == 0 {
        // Nothing to attend to (also covers a zero-capacity cache): the empty weighted sum.
        out.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let outs = SharedMut::new(out);
    let scr = SharedMut::new(scratch);
    let job = |kv: std::ops::Range<usize>| {
        for kvh in kv {
            let (h0, h1) = (kvh * group, (kvh + 1) * group);
            // SAFETY: KV head chunks are disjoint across threads, hence so are the query-head
            // ranges of `out` and `scratch` derived from them; both outlive the job.
            let (o, s) = unsafe { (outs.slice(h0 * d..h1 * d), scr.slice(h0 * len..h1 * len)) };
            let kh = cache.k_head(kvh);
            let vh = cache.v_head(kvh);
            let qs = &q[h0 * d..h1 * d];
            // Positions start..end live in slots start%cap.. and may wrap around the ring
            // once: at most two contiguous runs of cached rows.
            let first = start % cap;
            let run1 = len.min(cap - first);
            let runs = [(first, run1, 0usize), (0, len - run1, run1)];
            for &(slot, n_rows, col) in runs.iter().filter(|r| r.1 > 0) {
                b.scores_group(
                    qs,
                    &kh[slot * d..(slot + n_rows) * d],
                    d,
                    scale,
                    &mut s[col..],
                    len,
                );
            }
            for g in 0..group {
                softmax_with(b, &mut s[g * len..(g + 1) * len]);
            }
            o.iter_mut().for_each(|v| *v = 0.0);
            for &(slot, n_rows, col) in runs.iter().filter(|r| r.1 > 0) {
                b.weighted_sum_group(&s[col..], len, &vh[slot * d..(slot + n_rows) * d], d, o);
            }
        }
    };
    if nkv == 1 || pool.threads() == 1 || len * nkv * d < 1 << 14 {
        job(0..nkv);
    } else {
        pool.run_chunks(nkv, 1, job);
    }
}

/// [`crate::softmax_in_place`] with the exponentials on the backend (vectorised on AVX2).
fn softmax_with<B: Backend>(b: B, x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        let u = 1.0 / x.len() as f32;
        x.iter_mut().for_each(|v| *v = u);
        return;
    }
    let inv = 1.0 / b.exp_shift_sum(x, max);
    x.iter_mut().for_each(|v| *v *= inv);
}
