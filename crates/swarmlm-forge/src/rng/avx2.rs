//! The generator on eight pairs at a time with AVX2, because the scalar one (about 250 MB/s of
//! bf16 per core) cannot keep up with a disk. It is the same computation as the scalar
//! definition in [`super`], operation for operation: the same integer hashing (64-bit
//! multiplies built from 32-bit ones, exact modulo 2^64), and the same f32 `+ - * / sqrt` in the
//! same order, each correctly rounded by IEEE 754 in a vector lane exactly as in a scalar
//! register. No fused multiply-add is used (only `avx2` is enabled here, not `fma`), so every
//! output is bit-for-bit the scalar one; the tests in [`super`] check that.

use core::arch::x86_64::*;

use super::{GAMMA, STD};

/// Whether this CPU can run the vector path (the answer is cached by std).
pub(super) fn detected() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Bytes written per step: eight pairs of bf16.
const STEP: usize = 32;

/// Fill the whole 32-byte blocks of `out` with pairs `j, j+1, ...` of the stream `key` (four
/// bytes per pair, as the scalar path lays them out) and return how many pairs were written.
/// Writes nothing and returns 0 when the CPU lacks AVX2.
pub(super) fn fill_pairs(key: u64, j: u64, out: &mut [u8]) -> usize {
    if !detected() {
        return 0;
    }
    // SAFETY: AVX2 was detected just above.
    unsafe { fill_pairs_avx2(key, j, out) }
}

/// The bf16 words of eight pairs from their random words (`z[i]` is pair `i`); for tests of
/// the floating-point part on chosen words. `None` when the CPU lacks AVX2.
#[cfg(test)]
pub(super) fn words_from_z(z: &[u64; 8]) -> Option<[u32; 8]> {
    if !detected() {
        return None;
    }
    // SAFETY: AVX2 was detected just above; the loads read 4 u64 each from an array of 8.
    let out = unsafe {
        let z0 = _mm256_loadu_si256(z.as_ptr().cast());
        let z1 = _mm256_loadu_si256(z.as_ptr().add(4).cast());
        to_array(words(z0, z1))
    };
    Some(out)
}

#[cfg(test)]
#[target_feature(enable = "avx2")]
fn to_array(v: __m256i) -> [u32; 8] {
    let mut out = [0u32; 8];
    // SAFETY: `out` has room for 32 bytes.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
    out
}

#[target_feature(enable = "avx2")]
fn fill_pairs_avx2(key: u64, j: u64, out: &mut [u8]) -> usize {
    // Counters of pairs j..j+3 and j+4..j+7: key + (j+1+i)·G, all modulo 2^64.
    let base = key.wrapping_add(j.wrapping_add(1).wrapping_mul(GAMMA));
    let lane = |i: u64| base.wrapping_add(i.wrapping_mul(GAMMA)) as i64;
    let mut c0 = _mm256_setr_epi64x(lane(0), lane(1), lane(2), lane(3));
    let mut c1 = _mm256_setr_epi64x(lane(4), lane(5), lane(6), lane(7));
    let step = _mm256_set1_epi64x(GAMMA.wrapping_mul(8) as i64);
    let mut blocks = out.chunks_exact_mut(STEP);
    let mut pairs = 0;
    for block in &mut blocks {
        let w = words(mix64(c0), mix64(c1));
        // SAFETY: `block` is exactly 32 bytes; the store is unaligned.
        unsafe { _mm256_storeu_si256(block.as_mut_ptr().cast(), w) };
        c0 = _mm256_add_epi64(c0, step);
        c1 = _mm256_add_epi64(c1, step);
        pairs += 8;
    }
    pairs
}

/// The low 64 bits of `a · c` in each lane (AVX2 has no 64-bit multiply): with a = ah·2^32 + al
/// and c = ch·2^32 + cl, a·c mod 2^64 = al·cl + ((al·ch + ah·cl) mod 2^32)·2^32.
#[target_feature(enable = "avx2")]
#[inline]
fn mul64(a: __m256i, c: u64) -> __m256i {
    let cl = _mm256_set1_epi64x(i64::from(c as u32));
    let ch = _mm256_set1_epi64x((c >> 32) as i64);
    let ah = _mm256_srli_epi64::<32>(a);
    let cross = _mm256_add_epi64(_mm256_mul_epu32(a, ch), _mm256_mul_epu32(ah, cl));
    _mm256_add_epi64(_mm256_mul_epu32(a, cl), _mm256_slli_epi64::<32>(cross))
}

/// [`super::mix64`] in each 64-bit lane.
#[target_feature(enable = "avx2")]
#[inline]
fn mix64(z: __m256i) -> __m256i {
    let z = mul64(
        _mm256_xor_si256(z, _mm256_srli_epi64::<30>(z)),
        0xbf58_476d_1ce4_e5b9,
    );
    let z = mul64(
        _mm256_xor_si256(z, _mm256_srli_epi64::<27>(z)),
        0x94d0_49bb_1331_11eb,
    );
    _mm256_xor_si256(z, _mm256_srli_epi64::<31>(z))
}

#[target_feature(enable = "avx2")]
#[inline]
fn splat(x: f32) -> __m256 {
    _mm256_set1_ps(x)
}

/// [`super::pair_from_word`] and the bf16 rounding for eight words (`z0` pairs 0–3, `z1` pairs
/// 4–7): lane `i` of the result is `bf16(x[2i]) | bf16(x[2i+1]) << 16`, the four output bytes of
/// pair `i` in little-endian order.
#[target_feature(enable = "avx2")]
#[inline]
fn words(z0: __m256i, z1: __m256i) -> __m256i {
    // Low and high 32-bit halves of the eight words, in pair order.
    let halves = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    let p0 = _mm256_permutevar8x32_epi32(z0, halves);
    let p1 = _mm256_permutevar8x32_epi32(z1, halves);
    let lo = _mm256_permute2x128_si256::<0x20>(p0, p1);
    let hi = _mm256_permute2x128_si256::<0x31>(p0, p1);

    // u1 = ((z >> 40) + 1)·2^-24, u2 = ((z >> 16) & 0xffffff)·2^-24: integers below 2^24 + 1,
    // so the conversions are exact, as in the scalar `as f32`.
    let inv24 = splat(1.0 / 16_777_216.0);
    let u1i = _mm256_add_epi32(_mm256_srli_epi32::<8>(hi), _mm256_set1_epi32(1));
    let u2i = _mm256_and_si256(
        _mm256_or_si256(_mm256_srli_epi32::<16>(lo), _mm256_slli_epi32::<16>(hi)),
        _mm256_set1_epi32(0x00ff_ffff),
    );
    let u1 = _mm256_mul_ps(_mm256_cvtepi32_ps(u1i), inv24);
    let u2 = _mm256_mul_ps(_mm256_cvtepi32_ps(u2i), inv24);
    let sign = _mm256_castsi256_ps(_mm256_or_si256(
        _mm256_set1_epi32(0x3f80_0000),
        _mm256_slli_epi32::<31>(lo),
    ));

    let r = _mm256_sqrt_ps(_mm256_mul_ps(splat(-2.0), ln_unit(u1)));
    let phi = _mm256_sub_ps(
        _mm256_mul_ps(splat(core::f32::consts::PI), u2),
        splat(core::f32::consts::FRAC_PI_2),
    );
    let (s, c) = sin_cos_half(phi);
    let a = _mm256_mul_ps(splat(STD), r);
    let x0 = _mm256_mul_ps(a, _mm256_mul_ps(sign, c));
    let x1 = _mm256_mul_ps(a, _mm256_mul_ps(sign, s));
    _mm256_or_si256(bf16_low(x0), _mm256_slli_epi32::<16>(bf16_low(x1)))
}

/// [`super::ln_unit`] in each lane.
#[target_feature(enable = "avx2")]
#[inline]
fn ln_unit(x: __m256) -> __m256 {
    let bits = _mm256_castps_si256(x);
    let e = _mm256_cvtepi32_ps(_mm256_sub_epi32(
        _mm256_srli_epi32::<23>(bits),
        _mm256_set1_epi32(127),
    ));
    let m = _mm256_castsi256_ps(_mm256_or_si256(
        _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)),
        _mm256_set1_epi32(0x3f80_0000),
    ));
    let one = splat(1.0);
    let s = _mm256_div_ps(_mm256_sub_ps(m, one), _mm256_add_ps(m, one));
    let s2 = _mm256_mul_ps(s, s);
    let p = splat(1.0 / 11.0);
    let p = _mm256_add_ps(splat(1.0 / 9.0), _mm256_mul_ps(s2, p));
    let p = _mm256_add_ps(splat(1.0 / 7.0), _mm256_mul_ps(s2, p));
    let p = _mm256_add_ps(splat(1.0 / 5.0), _mm256_mul_ps(s2, p));
    let p = _mm256_add_ps(splat(1.0 / 3.0), _mm256_mul_ps(s2, p));
    let p = _mm256_add_ps(one, _mm256_mul_ps(s2, p));
    _mm256_add_ps(
        _mm256_mul_ps(e, splat(core::f32::consts::LN_2)),
        _mm256_mul_ps(_mm256_mul_ps(splat(2.0), s), p),
    )
}

/// [`super::sin_cos_half`] in each lane: `1 - (x²·k)·t` at every step, as in the scalar code.
#[target_feature(enable = "avx2")]
#[inline]
fn sin_cos_half(x: __m256) -> (__m256, __m256) {
    let one = splat(1.0);
    let x2 = _mm256_mul_ps(x, x);
    let step =
        |k: f32, t: __m256| _mm256_sub_ps(one, _mm256_mul_ps(_mm256_mul_ps(x2, splat(k)), t));
    let s = _mm256_sub_ps(one, _mm256_mul_ps(x2, splat(1.0 / 210.0)));
    let s = step(1.0 / 156.0, s);
    let s = step(1.0 / 110.0, s);
    let s = step(1.0 / 72.0, s);
    let s = step(1.0 / 42.0, s);
    let s = step(1.0 / 20.0, s);
    let s = step(1.0 / 6.0, s);
    let c = _mm256_sub_ps(one, _mm256_mul_ps(x2, splat(1.0 / 240.0)));
    let c = step(1.0 / 182.0, c);
    let c = step(1.0 / 132.0, c);
    let c = step(1.0 / 90.0, c);
    let c = step(1.0 / 56.0, c);
    let c = step(1.0 / 30.0, c);
    let c = step(1.0 / 12.0, c);
    let c = step(0.5, c);
    (_mm256_mul_ps(x, s), c)
}

/// [`super::bf16_bits`] in each lane, the result in the low 16 bits.
#[target_feature(enable = "avx2")]
#[inline]
fn bf16_low(x: __m256) -> __m256i {
    let b = _mm256_castps_si256(x);
    let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
    let rounded = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)), odd);
    _mm256_srli_epi32::<16>(rounded)
}
