//! Every kernel against a straightforward f64 reference on random data with awkward sizes
//! (columns not a multiple of any SIMD width, rows not a multiple of the row block, weights
//! offset by one bf16 so they are only 2-byte aligned), on every ISA path this CPU supports and
//! on pools of 1, 2 and 3 threads.
//!
//! Tolerance: f32 accumulation of `n` products differs from the exact (f64) value by roughly
//! `eps32 · sqrt(n) · Σ|wᵢxᵢ|` for random data; we allow `TOL · sqrt(n) · Σ|wᵢxᵢ|` with
//! `TOL = 1e-6` (≈ 17 · eps32), scaled by the conditioning sum so cancellation near zero does
//! not make the bound meaningless.

use swarmlm_kernels::*;

const TOL: f64 = 1e-6;

/// xorshift64*: deterministic, dependency-free test data.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
    /// bf16 weights, returned inside a buffer with one leading element so the weight slice
    /// starts at a 2-byte (not 4/16/32-byte) aligned address.
    fn bf16_unaligned(&mut self, n: usize, scale: f32) -> Vec<bf16> {
        (0..n + 1)
            .map(|_| bf16::from_f32(self.f() * scale))
            .collect()
    }
}

fn dot_ref(w: &[bf16], x: &[f32]) -> (f64, f64) {
    let mut s = 0f64;
    let mut a = 0f64;
    for (wi, xi) in w.iter().zip(x) {
        let p = wi.to_f64() * *xi as f64;
        s += p;
        a += p.abs();
    }
    (s, a)
}

fn assert_close(got: f32, want: f64, abs_sum: f64, n: usize, what: &str) {
    let tol = TOL * (n.max(1) as f64).sqrt() * abs_sum + 1e-30;
    let err = (got as f64 - want).abs();
    assert!(
        err <= tol,
        "{what}: got {got}, want {want}, err {err:e} > tol {tol:e}"
    );
}

fn pools() -> Vec<Pool> {
    vec![Pool::single(), Pool::new(1), Pool::new(2), Pool::new(3)]
}

const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (3, 7),
    (5, 33),
    (17, 129),
    (37, 250),
    (64, 1000),
    (131, 517),
    (300, 1031),
];

#[test]
fn isa_reports_a_supported_path() {
    let name = isa();
    let chosen = Isa::from_name(name).expect("known name");
    assert!(chosen.is_supported());
    assert_eq!(*Isa::available().last().unwrap(), Isa::Scalar);
    assert!(Isa::available().contains(&chosen));
    // The emulated-AVX-512 run (scripts/emulate/avx512.sh) sets this so that a guest which
    // silently lacks the feature fails instead of skipping the AVX-512 comparisons.
    println!("isa: chosen {name}, available {:?}", Isa::available());
    if let Ok(want) = std::env::var("SWARMLM_KERNELS_EXPECT_ISA") {
        let want = Isa::from_name(&want).expect("SWARMLM_KERNELS_EXPECT_ISA names a known path");
        assert!(
            Isa::available().contains(&want),
            "SWARMLM_KERNELS_EXPECT_ISA={}: not available here ({:?})",
            want.name(),
            Isa::available()
        );
    }
}

#[test]
fn matvec_matches_f64_reference_on_every_isa_and_pool() {
    let mut rng = Rng::new(1);
    for &(rows, cols) in SHAPES {
        let wbuf = rng.bf16_unaligned(rows * cols, 1.0);
        let w = &wbuf[1..];
        // Activations offset by one f32 too: 4-byte but not vector aligned.
        let xbuf = rng.vec(cols + 1);
        let x = &xbuf[1..];
        let want: Vec<(f64, f64)> = (0..rows)
            .map(|r| dot_ref(&w[r * cols..(r + 1) * cols], x))
            .collect();
        for isa in Isa::available() {
            let mut first: Option<Vec<f32>> = None;
            for pool in pools() {
                let mut y = vec![f32::NAN; rows];
                try_matvec_bf16_with(isa, &pool, w, x, &mut y).unwrap();
                for r in 0..rows {
                    assert_close(
                        y[r],
                        want[r].0,
                        want[r].1,
                        cols,
                        &format!("matvec {rows}x{cols} {isa:?} t={} row {r}", pool.threads()),
                    );
                }
                // Rows are independent, so the result must not depend on the thread split.
                match &first {
                    None => first = Some(y),
                    Some(f) => assert!(
                        f.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "matvec {rows}x{cols} {isa:?}: not bitwise identical across pools"
                    ),
                }
            }
        }
    }
}

#[test]
fn degenerate_shapes() {
    let pool = Pool::new(2);
    for isa in Isa::available() {
        // No columns: every dot product is the empty sum.
        let mut y = vec![f32::NAN; 3];
        try_matvec_bf16_with(isa, &pool, &[], &[], &mut y).unwrap();
        assert_eq!(y, vec![0.0; 3]);
        // No rows.
        try_matvec_bf16_with(isa, &pool, &[], &[1.0; 5], &mut []).unwrap();
        // No tokens.
        try_matmul_bf16_with(isa, &pool, &[], &[], 0, &mut []).unwrap();
        let mut s = Vec::new();
        try_expert_ffn_bf16_batch_with(isa, &pool, &[], &[], &[], &[], 0, &[], &mut [], &mut s)
            .unwrap();
    }
}

#[test]
fn matvec_large_is_bitwise_identical_across_threads() {
    // Big enough to actually run on the pool (the small shapes above run inline).
    let mut rng = Rng::new(2);
    let (rows, cols) = (1000, 333);
    let wbuf = rng.bf16_unaligned(rows * cols, 1.0);
    let w = &wbuf[1..];
    let x = rng.vec(cols);
    for isa in Isa::available() {
        let outs: Vec<Vec<f32>> = pools()
            .iter()
            .map(|p| {
                let mut y = vec![0f32; rows];
                try_matvec_bf16_with(isa, p, w, &x, &mut y).unwrap();
                y
            })
            .collect();
        for o in &outs[1..] {
            assert!(o
                .iter()
                .zip(&outs[0])
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        for r in (0..rows).step_by(37) {
            let (s, a) = dot_ref(&w[r * cols..(r + 1) * cols], &x);
            assert_close(outs[0][r], s, a, cols, "matvec large");
        }
    }
}

#[test]
fn simd_paths_agree_with_scalar() {
    let mut rng = Rng::new(3);
    let (rows, cols) = (77, 1234);
    let wbuf = rng.bf16_unaligned(rows * cols, 1.0);
    let w = &wbuf[1..];
    let x = rng.vec(cols);
    let pool = Pool::new(2);
    let mut ys = vec![0f32; rows];
    try_matvec_bf16_with(Isa::Scalar, &pool, w, &x, &mut ys).unwrap();
    for isa in Isa::available() {
        let mut y = vec![0f32; rows];
        try_matvec_bf16_with(isa, &pool, w, &x, &mut y).unwrap();
        for r in 0..rows {
            let (_, a) = dot_ref(&w[r * cols..(r + 1) * cols], &x);
            // Two f32 results each within TOL of exact are within 2·TOL of each other.
            assert_close(
                y[r],
                ys[r] as f64,
                2.0 * a,
                cols,
                &format!("{isa:?} vs scalar"),
            );
        }
    }
}

#[test]
fn bf16_activation_matvec_matches_reference_on_every_isa() {
    let mut rng = Rng::new(9);
    for &(rows, cols) in SHAPES {
        let wbuf = rng.bf16_unaligned(rows * cols, 1.0);
        let w = &wbuf[1..];
        let xf = rng.vec(cols + 1);
        let mut xb = vec![bf16::ZERO; cols + 1];
        round_to_bf16(&xf, &mut xb);
        // Offset by one element: the activations are only 2-byte aligned too.
        let x = &xb[1..];
        let xw: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        for isa in Isa::available() {
            for pool in pools() {
                let mut y = vec![f32::NAN; rows];
                try_matvec_bf16_bf16act_with(isa, &pool, w, x, &mut y).unwrap();
                for r in 0..rows {
                    let (s, a) = dot_ref(&w[r * cols..(r + 1) * cols], &xw);
                    assert_close(y[r], s, a, cols, &format!("bf16act {rows}x{cols} {isa:?}"));
                }
            }
        }
    }
}

#[test]
fn matmul_matches_reference_for_many_token_counts() {
    let mut rng = Rng::new(4);
    for &(rows, cols) in &[(5usize, 33usize), (37, 250), (131, 517)] {
        let wbuf = rng.bf16_unaligned(rows * cols, 1.0);
        let w = &wbuf[1..];
        for n in [1usize, 2, 3, 4, 5, 7, 11, 100] {
            let x = rng.vec(n * cols);
            for isa in Isa::available() {
                for pool in pools() {
                    let mut y = vec![f32::NAN; n * rows];
                    try_matmul_bf16_with(isa, &pool, w, &x, n, &mut y).unwrap();
                    for t in 0..n {
                        for r in 0..rows {
                            let (s, a) =
                                dot_ref(&w[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
                            assert_close(
                                y[t * rows + r],
                                s,
                                a,
                                cols,
                                &format!("matmul {rows}x{cols} n={n} {isa:?} t={t} r={r}"),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// f64 SwiGLU expert: returns (value, conditioning sum) per output row.
fn ffn_ref(
    w1: &[bf16],
    w3: &[bf16],
    w2: &[bf16],
    x: &[f32],
    hidden: usize,
    inter: usize,
) -> Vec<(f64, f64)> {
    let hmid: Vec<f64> = (0..inter)
        .map(|i| {
            let g = dot_ref(&w1[i * hidden..(i + 1) * hidden], x).0;
            let u = dot_ref(&w3[i * hidden..(i + 1) * hidden], x).0;
            g / (1.0 + (-g).exp()) * u
        })
        .collect();
    (0..hidden)
        .map(|r| {
            let mut s = 0f64;
            let mut a = 0f64;
            for i in 0..inter {
                let p = w2[r * inter + i].to_f64() * hmid[i];
                s += p;
                a += p.abs();
            }
            (s, a)
        })
        .collect()
}

#[test]
fn expert_ffn_matches_reference() {
    let mut rng = Rng::new(5);
    for &(hidden, inter) in &[(8usize, 3usize), (33, 71), (130, 347), (256, 700)] {
        let w1b = rng.bf16_unaligned(inter * hidden, 0.5);
        let w3b = rng.bf16_unaligned(inter * hidden, 0.5);
        let w2b = rng.bf16_unaligned(hidden * inter, 0.5);
        let (w1, w3, w2) = (&w1b[1..], &w3b[1..], &w2b[1..]);
        let x = rng.vec(hidden);
        let base = rng.vec(hidden);
        let scale = 0.37f32;
        let want = ffn_ref(w1, w3, w2, &x, hidden, inter);
        for isa in Isa::available() {
            for pool in pools() {
                let mut out = base.clone();
                let mut scratch = vec![0f32; inter + 5];
                try_expert_ffn_bf16_with(isa, &pool, w1, w3, w2, &x, scale, &mut out, &mut scratch)
                    .unwrap();
                for r in 0..hidden {
                    // The intermediate activations are rounded to f32 once, hence a looser
                    // factor than a single dot product.
                    let want_r = base[r] as f64 + scale as f64 * want[r].0;
                    assert_close(
                        out[r],
                        want_r,
                        4.0 * (scale as f64 * want[r].1 + (base[r] as f64).abs()),
                        inter + hidden,
                        &format!("ffn {hidden}x{inter} {isa:?} t={} r={r}", pool.threads()),
                    );
                }
            }
        }
    }
}

#[test]
fn expert_ffn_batch_matches_reference() {
    let mut rng = Rng::new(6);
    let (hidden, inter) = (65usize, 201usize);
    let w1b = rng.bf16_unaligned(inter * hidden, 0.5);
    let w3b = rng.bf16_unaligned(inter * hidden, 0.5);
    let w2b = rng.bf16_unaligned(hidden * inter, 0.5);
    let (w1, w3, w2) = (&w1b[1..], &w3b[1..], &w2b[1..]);
    for n in [1usize, 2, 3, 5, 8, 13] {
        let x = rng.vec(n * hidden);
        let scales = rng.vec(n);
        let base = rng.vec(n * hidden);
        for isa in Isa::available() {
            for pool in pools() {
                let mut out = base.clone();
                let mut scratch = Vec::new();
                try_expert_ffn_bf16_batch_with(
                    isa,
                    &pool,
                    w1,
                    w3,
                    w2,
                    &x,
                    n,
                    &scales,
                    &mut out,
                    &mut scratch,
                )
                .unwrap();
                for t in 0..n {
                    let want = ffn_ref(w1, w3, w2, &x[t * hidden..(t + 1) * hidden], hidden, inter);
                    for r in 0..hidden {
                        let b = base[t * hidden + r] as f64;
                        let s = scales[t] as f64;
                        assert_close(
                            out[t * hidden + r],
                            b + s * want[r].0,
                            4.0 * (s.abs() * want[r].1 + b.abs()),
                            inter + hidden,
                            &format!("ffn batch n={n} {isa:?} t={t} r={r}"),
                        );
                    }
                }
            }
        }
    }
}

fn rope_ref(x: &[f32], layout: RopeLayout, pos: usize, theta: f64) -> Vec<f64> {
    let d = x.len();
    let mut o: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for i in 0..d / 2 {
        let a = pos as f64 * theta.powf(-2.0 * i as f64 / d as f64);
        let (p, q) = match layout {
            RopeLayout::HalfSplit => (i, i + d / 2),
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
        };
        let (x0, x1) = (x[p] as f64, x[q] as f64);
        o[p] = x0 * a.cos() - x1 * a.sin();
        o[q] = x1 * a.cos() + x0 * a.sin();
    }
    o
}

#[test]
fn rope_matches_reference_in_both_layouts() {
    let mut rng = Rng::new(7);
    let d = 128;
    let table = RopeTable::new(d, 1e6, 512);
    for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
        // pos 1000 is beyond the table and exercises the on-the-fly path.
        for pos in [0usize, 1, 17, 511, 1000] {
            let x = rng.vec(2 * d);
            let mut y = x.clone();
            table.apply(layout, &mut y, pos);
            for h in 0..2 {
                let want = rope_ref(&x[h * d..(h + 1) * d], layout, pos, 1e6);
                for i in 0..d {
                    let err = (y[h * d + i] as f64 - want[i]).abs();
                    assert!(err < 2e-6, "{layout:?} pos {pos} i {i}: err {err}");
                }
            }
        }
    }
    // Position 0 is the identity.
    let x = rng.vec(d);
    let mut y = x.clone();
    table.apply(RopeLayout::HalfSplit, &mut y, 0);
    assert_eq!(x, y);
    assert!(table
        .try_apply(RopeLayout::HalfSplit, &mut y[..d - 1], 3)
        .is_err());
}

fn attention_ref(
    q: &[f32],
    cache: &KvCacheLayer,
    n_heads: usize,
    start: usize,
    end: usize,
) -> Vec<f64> {
    let d = cache.head_dim;
    let group = n_heads / cache.n_kv_heads;
    let mut out = vec![0f64; n_heads * d];
    for h in 0..n_heads {
        let kvh = h / group;
        let qh = &q[h * d..(h + 1) * d];
        let scores: Vec<f64> = (start..end)
            .map(|p| {
                let slot = p % cache.capacity;
                let k = &cache.k_head(kvh)[slot * d..(slot + 1) * d];
                qh.iter()
                    .zip(k)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    / (d as f64).sqrt()
            })
            .collect();
        let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for (j, p) in (start..end).enumerate() {
            let slot = p % cache.capacity;
            let v = &cache.v_head(kvh)[slot * d..(slot + 1) * d];
            for i in 0..d {
                out[h * d + i] += e[j] / z * v[i] as f64;
            }
        }
    }
    out
}

#[test]
fn attention_matches_naive_reference_with_gqa_and_window() {
    let mut rng = Rng::new(8);
    // (n_heads, n_kv_heads, d, capacity, start, end)
    let cases = [
        (4usize, 4usize, 16usize, 10usize, 0usize, 1usize),
        (4, 1, 33, 50, 0, 37),
        (8, 2, 64, 64, 10, 64),
        (32, 8, 128, 100, 0, 100),
        // Ring buffer: positions 150..190 live in slots p % 64.
        (6, 3, 20, 64, 150, 190),
        // ... and 100..160 wraps around the end of the ring (slots 36..64 then 0..32).
        (8, 2, 24, 64, 100, 160),
    ];
    for &(nh, nkv, d, cap, start, end) in &cases {
        let mut cache = KvCacheLayer::new(nkv, d, cap);
        for p in 0..end {
            let k = rng.vec(nkv * d);
            let v = rng.vec(nkv * d);
            cache.write(p, &k, &v);
        }
        let q: Vec<f32> = rng.vec(nh * d).iter().map(|v| v * 3.0).collect();
        let want = attention_ref(&q, &cache, nh, start, end);
        for isa in Isa::available() {
            for pool in pools() {
                let mut out = vec![f32::NAN; nh * d];
                let mut scratch = vec![f32::NAN; nh * (end - start) + 3];
                try_attention_decode_with(
                    isa,
                    &pool,
                    &q,
                    &cache,
                    nh,
                    start,
                    end,
                    &mut out,
                    &mut scratch,
                )
                .unwrap();
                for i in 0..nh * d {
                    let err = (out[i] as f64 - want[i]).abs();
                    assert!(
                        err < 1e-5,
                        "attn {nh}/{nkv} d={d} {start}..{end} {isa:?} t={}: i={i} err {err}",
                        pool.threads()
                    );
                }
            }
        }
    }
}

#[test]
fn attention_empty_range_writes_zeros() {
    for cap in [4, 0] {
        let cache = KvCacheLayer::new(2, 8, cap);
        let q = vec![1.0f32; 4 * 8];
        let mut out = vec![f32::NAN; 4 * 8];
        attention_decode(&Pool::single(), &q, &cache, 4, 2, 2, &mut out, &mut []);
        assert!(out.iter().all(|v| *v == 0.0));
    }
}

#[test]
fn bad_shapes_are_typed_errors() {
    let pool = Pool::single();
    let w = vec![bf16::ZERO; 10];
    let x = vec![0f32; 3];
    let mut y = vec![0f32; 3];
    let e = try_matvec_bf16(&pool, &w, &x, &mut y).unwrap_err();
    assert_eq!(
        e,
        KernelError::Length {
            kernel: "matvec_bf16",
            arg: "w",
            expected: 9,
            got: 10
        }
    );
    assert!(e.to_string().contains("`w`"));
    assert!(try_matmul_bf16(&pool, &w, &[0.0; 7], 2, &mut [0.0; 4]).is_err());
    let mut s = vec![0f32; 1];
    let e =
        try_expert_ffn_bf16(&pool, &w, &w, &w, &[0.0; 5], 1.0, &mut [0.0; 5], &mut s).unwrap_err();
    assert!(
        matches!(e, KernelError::Invalid { arg: "scratch", .. }),
        "{e}"
    );
    let cache = KvCacheLayer::new(2, 4, 8);
    let mut out = vec![0f32; 12];
    let e = try_attention_decode(&pool, &[0.0; 12], &cache, 3, 0, 1, &mut out, &mut [0.0; 3])
        .unwrap_err();
    assert!(
        matches!(e, KernelError::Invalid { arg: "n_heads", .. }),
        "{e}"
    );
    let mut out = vec![0f32; 16];
    let e = try_attention_decode(&pool, &[0.0; 16], &cache, 4, 0, 9, &mut out, &mut [0.0; 36])
        .unwrap_err();
    assert!(matches!(e, KernelError::Invalid { arg: "end", .. }), "{e}");
    let mut c = KvCacheLayer::new(1, 4, 0);
    assert!(c.try_write(0, &[0.0; 4], &[0.0; 4]).is_err());
}

#[test]
#[should_panic(expected = "matvec_bf16")]
fn plain_kernel_panics_with_the_error_message() {
    let mut y = vec![0f32; 2];
    matvec_bf16(&Pool::single(), &[bf16::ZERO; 3], &[0.0; 2], &mut y);
}
