//! The counter-based weight generator: every element of every tensor is a pure function of
//! `(seed, tensor name, element index)`, so forged files are byte-identical on any machine, with
//! any number of threads, in any chunking.
//!
//! # Definition (generator `splitmix64-boxmuller-f32-v1`)
//!
//! All integer arithmetic is modulo 2^64.
//!
//! - `fnv1a64(name)`: FNV-1a 64 of the tensor name's UTF-8 bytes (offset basis
//!   `0xcbf29ce484222325`, prime `0x100000001b3`).
//! - `mix64(z)`: the SplitMix64 finaliser: `z = (z ^ z>>30) * 0xbf58476d1ce4e5b9;
//!   z = (z ^ z>>27) * 0x94d049bb133111eb; z ^ z>>31`.
//! - `key = mix64(fnv1a64(name) ^ mix64(seed + G))` with `G = 0x9e3779b97f4a7c15`.
//! - Elements come in pairs: elements `2j` and `2j+1` share `z = mix64(key + (j+1)·G)` (output `j`
//!   of a SplitMix64 stream whose state starts at `key`).
//! - From `z`: `u1 = ((z >> 40) + 1) · 2^-24` in (0, 1], `u2 = ((z >> 16) & 0xffffff) · 2^-24` in
//!   [0, 1), sign `s = -1` if bit 0 of `z` is set, else `+1`.
//! - Box–Muller in f32: `r = sqrt(-2 ln u1)`, `φ = π·u2 - π/2` in [-π/2, π/2) (the sign bit turns
//!   this half circle into the full one: `s·(cos φ, sin φ)` is a uniform direction);
//!   `x[2j] = (0.02 · r) · (s · cos φ)`, `x[2j+1] = (0.02 · r) · (s · sin φ)`.
//! - `ln`, `sin`, `cos` are the fixed polynomials below (not the platform's libm, whose last bits
//!   differ between systems), evaluated in f32 with `+ - * / sqrt` only. IEEE 754 makes each of
//!   those correctly rounded, and Rust never fuses `a*b+c` on its own, so the results are
//!   bit-for-bit the same on every conforming machine, scalar or vectorised.
//! - The f32 is rounded to bf16 by round-to-nearest-even (the values are always finite).
//!
//! RMSNorm weights are not drawn: they are exactly 1.0 (bf16 `0x3f80`).

/// The name written into each shard's metadata, so a reader can tell which generator made it.
pub const GENERATOR: &str = "splitmix64-boxmuller-f32-v1";

/// Standard deviation of the drawn weights (the hub's `initializer_range`).
pub const STD: f32 = 0.02;

#[cfg(target_arch = "x86_64")]
mod avx2;

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// bf16 bits of 1.0, the value of every RMSNorm weight.
pub const BF16_ONE: u16 = 0x3f80;

/// FNV-1a 64 of `bytes`: the fixed hash that turns a tensor name into part of its key.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The SplitMix64 output function.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The per-tensor key: the stream of a tensor depends only on the seed and its name.
pub fn tensor_key(seed: u64, name: &str) -> u64 {
    mix64(fnv1a64(name.as_bytes()) ^ mix64(seed.wrapping_add(GAMMA)))
}

/// Natural log of `x` in (0, 1] (normal floats only), from the exponent and an atanh series of
/// the mantissa in [1, 2): `ln m = 2·atanh((m-1)/(m+1))`, truncated after the s^11 term
/// (error below 1e-7, i.e. about one f32 ulp).
#[inline(always)]
fn ln_unit(x: f32) -> f32 {
    let bits = x.to_bits();
    let e = ((bits >> 23) as i32 - 127) as f32;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let p = 1.0 / 11.0;
    let p = 1.0 / 9.0 + s2 * p;
    let p = 1.0 / 7.0 + s2 * p;
    let p = 1.0 / 5.0 + s2 * p;
    let p = 1.0 / 3.0 + s2 * p;
    let p = 1.0 + s2 * p;
    e * core::f32::consts::LN_2 + 2.0 * s * p
}

/// Sine and cosine on [-π/2, π/2] from their Taylor series in nested (Horner) form, through
/// x^15 and x^16: truncation error below 1e-9, under an f32 ulp of the result.
#[inline(always)]
fn sin_cos_half(x: f32) -> (f32, f32) {
    let x2 = x * x;
    // Each factor is the ratio of consecutive series terms: x²/((2k)(2k+1)) for sine.
    let s = 1.0 - x2 * (1.0 / 210.0);
    let s = 1.0 - x2 * (1.0 / 156.0) * s;
    let s = 1.0 - x2 * (1.0 / 110.0) * s;
    let s = 1.0 - x2 * (1.0 / 72.0) * s;
    let s = 1.0 - x2 * (1.0 / 42.0) * s;
    let s = 1.0 - x2 * (1.0 / 20.0) * s;
    let s = 1.0 - x2 * (1.0 / 6.0) * s;
    // ... and x²/((2k-1)(2k)) for cosine.
    let c = 1.0 - x2 * (1.0 / 240.0);
    let c = 1.0 - x2 * (1.0 / 182.0) * c;
    let c = 1.0 - x2 * (1.0 / 132.0) * c;
    let c = 1.0 - x2 * (1.0 / 90.0) * c;
    let c = 1.0 - x2 * (1.0 / 56.0) * c;
    let c = 1.0 - x2 * (1.0 / 30.0) * c;
    let c = 1.0 - x2 * (1.0 / 12.0) * c;
    let c = 1.0 - x2 * 0.5 * c;
    (x * s, c)
}

/// f32 → bf16 bits, round to nearest, ties to even. Only for finite inputs (all drawn values are).
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The random word behind pair `j` of the stream `key`.
#[inline(always)]
fn pair_word(key: u64, j: u64) -> u64 {
    mix64(key.wrapping_add(j.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// The two f32 values of pair `j` of the stream `key`.
#[inline(always)]
pub fn pair_f32(key: u64, j: u64) -> (f32, f32) {
    pair_from_word(pair_word(key, j))
}

/// Box–Muller from one random word: the part of the definition after the integer hashing.
#[inline(always)]
fn pair_from_word(z: u64) -> (f32, f32) {
    let u1 = (((z >> 40) + 1) as u32 as f32) * (1.0 / 16_777_216.0);
    let u2 = (((z >> 16) & 0x00ff_ffff) as u32 as f32) * (1.0 / 16_777_216.0);
    let sign = f32::from_bits(0x3f80_0000 | (((z & 1) as u32) << 31));
    let r = (-2.0 * ln_unit(u1)).sqrt();
    let phi = core::f32::consts::PI * u2 - core::f32::consts::FRAC_PI_2;
    let (s, c) = sin_cos_half(phi);
    let a = STD * r;
    (a * (sign * c), a * (sign * s))
}

/// Element `index` of the drawn tensor with key `key`, as bf16 bits.
pub fn element_bf16(key: u64, index: u64) -> u16 {
    let (a, b) = pair_f32(key, index / 2);
    bf16_bits(if index.is_multiple_of(2) { a } else { b })
}

/// Fill `out` with elements `first, first+1, ...` of the drawn tensor `key`, as little-endian
/// bf16 bytes (`out.len()` must be even; two bytes per element). Uses the AVX2 path when the CPU
/// has it; the bytes are the same either way.
pub fn fill_normal_bf16(key: u64, first: u64, out: &mut [u8]) {
    fill_normal_bf16_with(key, first, out, true)
}

fn fill_normal_bf16_with(key: u64, first: u64, out: &mut [u8], vector: bool) {
    debug_assert!(out.len().is_multiple_of(2));
    let mut idx = first;
    let mut rest = out;
    if idx % 2 == 1 && !rest.is_empty() {
        let (_, b) = pair_f32(key, idx / 2);
        rest[..2].copy_from_slice(&bf16_bits(b).to_le_bytes());
        rest = &mut rest[2..];
        idx += 1;
    }
    let mut j = idx / 2;
    let whole = rest.len() & !3;
    let (mut body, tail) = rest.split_at_mut(whole);
    #[cfg(target_arch = "x86_64")]
    if vector {
        let done = avx2::fill_pairs(key, j, body);
        body = &mut body[done * 4..];
        j += done as u64;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = vector;
    for q in body.chunks_exact_mut(4) {
        let (a, b) = pair_f32(key, j);
        let bits = u32::from(bf16_bits(a)) | (u32::from(bf16_bits(b)) << 16);
        q.copy_from_slice(&bits.to_le_bytes());
        j += 1;
    }
    if tail.len() == 2 {
        let (a, _) = pair_f32(key, j);
        tail.copy_from_slice(&bf16_bits(a).to_le_bytes());
    }
}

/// Fill `out` with bf16 1.0 (little-endian), for RMSNorm weights.
pub fn fill_ones_bf16(out: &mut [u8]) {
    for e in out.chunks_exact_mut(2) {
        e.copy_from_slice(&BF16_ONE.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_and_mix_match_their_published_definitions() {
        // FNV-1a 64 reference values (from the FNV test suite).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // SplitMix64 seeded with 0: first outputs of the reference implementation.
        assert_eq!(mix64(GAMMA), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix64(GAMMA.wrapping_mul(2)), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn ln_is_accurate_over_the_unit_interval() {
        for k in 1..=(1u32 << 12) {
            let x = (k as f32) / 4096.0;
            let got = ln_unit(x) as f64;
            let want = (x as f64).ln();
            assert!((got - want).abs() < 4e-7, "ln({x}) = {got}, want {want}");
        }
        let tiny = 1.0 / 16_777_216.0f32;
        assert!((ln_unit(tiny) as f64 - (tiny as f64).ln()).abs() < 4e-6);
        assert_eq!(ln_unit(1.0), 0.0);
    }

    #[test]
    fn sin_cos_are_accurate_on_the_half_circle() {
        for k in 0..=4096 {
            let x = -core::f32::consts::FRAC_PI_2 + core::f32::consts::PI * (k as f32) / 4096.0;
            let (s, c) = sin_cos_half(x);
            assert!((s as f64 - (x as f64).sin()).abs() < 3e-7, "sin({x})");
            assert!((c as f64 - (x as f64).cos()).abs() < 3e-7, "cos({x})");
        }
    }

    #[test]
    fn bf16_rounding_matches_half() {
        let mut z = 12345u64;
        for _ in 0..100_000 {
            z = mix64(z.wrapping_add(GAMMA));
            let x = f32::from_bits(z as u32);
            if !x.is_finite() {
                continue;
            }
            assert_eq!(bf16_bits(x), half::bf16::from_f32(x).to_bits(), "{x:e}");
        }
        // Ties go to even.
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
    }

    #[test]
    fn chunked_fill_equals_elementwise_definition() {
        let key = tensor_key(7, "model.layers.0.self_attn.q_proj.weight");
        let n = 1001u64;
        let mut whole = vec![0u8; (n * 2) as usize];
        fill_normal_bf16(key, 0, &mut whole);
        for i in 0..n {
            let want = element_bf16(key, i).to_le_bytes();
            assert_eq!(
                &whole[(i * 2) as usize..(i * 2 + 2) as usize],
                &want,
                "element {i}"
            );
        }
        // Any split point, odd or even, gives the same bytes.
        for split in [1u64, 2, 3, 500, 999] {
            let mut parts = vec![0u8; (n * 2) as usize];
            let (a, b) = parts.split_at_mut((split * 2) as usize);
            fill_normal_bf16(key, 0, a);
            fill_normal_bf16(key, split, b);
            assert_eq!(parts, whole, "split at {split}");
        }
    }

    /// The scalar definition of the four bytes of pair `j`.
    fn scalar_word(z: u64) -> u32 {
        let (a, b) = pair_from_word(z);
        u32::from(bf16_bits(a)) | (u32::from(bf16_bits(b)) << 16)
    }

    #[cfg(target_arch = "x86_64")]
    fn check_words(z: &[u64; 8]) {
        let Some(got) = avx2::words_from_z(z) else {
            return;
        };
        for i in 0..8 {
            assert_eq!(got[i], scalar_word(z[i]), "word {:#018x}", z[i]);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_words_equal_scalar_for_every_u1_and_u2() {
        if !avx2::detected() {
            eprintln!("no AVX2 on this CPU: only the scalar path exists here");
            return;
        }
        // Every 24-bit value of u1 (bits 40..64) meets a different u2 (bits 16..40, an odd
        // multiplier is a bijection mod 2^24), with both signs and noise in the unused bits.
        let mut z = [0u64; 8];
        for base in (0u64..1 << 24).step_by(8) {
            for (i, w) in z.iter_mut().enumerate() {
                let k = base + i as u64;
                let u2 = k.wrapping_mul(0x9e_3779) & 0xff_ffff;
                *w = (k << 40) | (u2 << 16) | (mix64(k) & 0xffff);
            }
            check_words(&z);
        }
        // The ends of both ranges, in every lane position.
        let ends = [0u64, 1, 0xff_fffe, 0xff_ffff, 0x80_0000, 0x7f_ffff];
        for &a in &ends {
            for &b in &ends {
                for low in [0u64, 1, 0xffff, 0xfffe] {
                    let w = (a << 40) | (b << 16) | low;
                    check_words(&[w, !w, w, w ^ 1, 0, u64::MAX, w, w]);
                }
            }
        }
    }

    #[test]
    fn vector_fill_equals_scalar_fill() {
        // Many keys, starts (odd and even, near the counter's wrap-around) and lengths (odd
        // numbers of elements, shorter and longer than one vector step).
        let mut z = 99u64;
        let mut rand = || {
            z = mix64(z.wrapping_add(GAMMA));
            z
        };
        let starts = [
            0u64,
            1,
            2,
            7,
            15,
            16,
            17,
            u64::MAX - 40,
            u64::MAX - 41,
            1 << 40,
        ];
        for seed in 0..20u64 {
            let key = tensor_key(seed, &format!("t{seed}"));
            for &first in starts.iter().chain(&[rand() >> 2, rand() >> 2]) {
                for n in [0usize, 1, 2, 3, 15, 16, 17, 31, 33, 64, 1000, 4099] {
                    let mut v = vec![0u8; n * 2];
                    let mut s = vec![0xa5u8; n * 2];
                    fill_normal_bf16_with(key, first, &mut v, true);
                    fill_normal_bf16_with(key, first, &mut s, false);
                    assert!(v == s, "seed {seed} first {first} n {n}");
                }
            }
        }
        // A long run: 2^20 elements of one stream.
        let key = tensor_key(5, "model.layers.1.block_sparse_moe.experts.7.w2.weight");
        let mut v = vec![0u8; 2 << 20];
        let mut s = vec![0u8; 2 << 20];
        fill_normal_bf16_with(key, 3, &mut v, true);
        fill_normal_bf16_with(key, 3, &mut s, false);
        assert!(v == s);
    }

    #[test]
    fn pinned_values_never_change() {
        // Changing these means every forged checkpoint changes: bump GENERATOR if you must.
        let key = tensor_key(0, "model.embed_tokens.weight");
        let first: Vec<u16> = (0..8).map(|i| element_bf16(key, i)).collect();
        assert_eq!(first, PINNED_FIRST_EIGHT);
    }

    const PINNED_FIRST_EIGHT: [u16; 8] = [48389, 15619, 15628, 48273, 48227, 15363, 47975, 48223];

    #[test]
    fn drawn_values_look_like_normal_0_02() {
        let key = tensor_key(3, "x");
        let n = 1u64 << 20;
        let (mut sum, mut sum2, mut beyond2) = (0f64, 0f64, 0u64);
        for j in 0..n / 2 {
            let (a, b) = pair_f32(key, j);
            for v in [a as f64, b as f64] {
                sum += v;
                sum2 += v * v;
                if v.abs() > 2.0 * 0.02 {
                    beyond2 += 1;
                }
            }
        }
        let mean = sum / n as f64;
        let std = (sum2 / n as f64 - mean * mean).sqrt();
        assert!(mean.abs() < 1e-4, "mean {mean}");
        assert!((std - 0.02).abs() < 1e-4, "std {std}");
        // P(|x| > 2σ) = 4.55 % for a normal.
        let frac = beyond2 as f64 / n as f64;
        assert!((frac - 0.0455).abs() < 0.002, "tail fraction {frac}");
    }
}
