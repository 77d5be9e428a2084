//! Turning next-token logits into a token id: greedy, or seeded random sampling with the usual
//! filters.
//!
//! Why in-crate: generation must be reproducible (a seed gives the same tokens on every run
//! and machine), so the random source is specified here rather than borrowed from a crate
//! whose stream may change between versions: xoshiro256++ (Blackman & Vigna, 2019), seeded by
//! expanding the `u64` seed with SplitMix64, as its authors recommend. Floating-point work
//! that decides which token is drawn is done in `f64` with a fixed order of operations.
//!
//! The pipeline follows llama.cpp / Hugging Face: repeat penalty → temperature → top-k →
//! top-p → min-p → renormalise → draw.

use std::cmp::Ordering;
use std::collections::HashSet;

/// How to pick the next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax, lowest id on ties).
    pub temperature: f32,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probabilities sum to at least p.
    pub top_p: Option<f32>,
    /// Drop tokens whose probability is below `min_p` × the most likely token's.
    pub min_p: Option<f32>,
    /// Divide positive logits (multiply negative ones) of recently seen tokens by this;
    /// 1.0 = off.
    pub repeat_penalty: f32,
    /// How many of the most recent history tokens the repeat penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the random stream; the same seed and inputs give the same tokens.
    pub seed: u64,
}

impl SamplingParams {
    /// Deterministic argmax decoding (no penalty).
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl Default for SamplingParams {
    /// llama.cpp's defaults: T 0.8, top-k 40, top-p 0.95, min-p 0.05, no repeat penalty.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: Some(40),
            top_p: Some(0.95),
            min_p: Some(0.05),
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// A parameter outside its valid range (checked once, in [`Sampler::new`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    #[error("temperature must be a finite number >= 0 (0 = greedy), got {0}")]
    Temperature(f32),
    #[error("top_k must be at least 1 (leave it unset to disable), got 0")]
    TopK,
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("min_p must be in [0, 1], got {0}")]
    MinP(f32),
    #[error("repeat_penalty must be a finite number > 0 (1 = off), got {0}")]
    RepeatPenalty(f32),
}

/// xoshiro256++ 1.0 (<https://prng.di.unimi.it/xoshiro256plusplus.c>), state seeded by
/// SplitMix64 (<https://prng.di.unimi.it/splitmix64.c>).
#[derive(Debug, Clone)]
pub struct Xoshiro256PlusPlus {
    s: [u64; 4],
}

/// One SplitMix64 step: advances `state`, returns the next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Xoshiro256PlusPlus {
    /// The generator with exactly this state (must not be all zero; an all-zero state is
    /// replaced by the SplitMix64 expansion of 0).
    pub fn from_state(s: [u64; 4]) -> Self {
        if s == [0; 4] {
            return Self::seed_from_u64(0);
        }
        Xoshiro256PlusPlus { s }
    }

    /// Expands a 64-bit seed into the 256-bit state with four SplitMix64 outputs.
    pub fn seed_from_u64(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        // SplitMix64 is a bijection of its counter, so four outputs are never all zero.
        Xoshiro256PlusPlus { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Picks tokens from logits according to [`SamplingParams`]; owns the random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Xoshiro256PlusPlus,
}

/// Higher logit first; equal logits → lower id first (so every order here is total).
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler, SamplingError> {
        let t = params.temperature;
        if !t.is_finite() || t < 0.0 {
            return Err(SamplingError::Temperature(t));
        }
        if params.top_k == Some(0) {
            return Err(SamplingError::TopK);
        }
        if let Some(p) = params.top_p {
            // Written so that NaN fails too.
            if !(p > 0.0 && p <= 1.0) {
                return Err(SamplingError::TopP(p));
            }
        }
        if let Some(m) = params.min_p {
            if !(0.0..=1.0).contains(&m) {
                return Err(SamplingError::MinP(m));
            }
        }
        let rp = params.repeat_penalty;
        if !rp.is_finite() || rp <= 0.0 {
            return Err(SamplingError::RepeatPenalty(rp));
        }
        Ok(Sampler {
            rng: Xoshiro256PlusPlus::seed_from_u64(params.seed),
            params,
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Logits after the repeat penalty, with NaN treated as impossible (−∞).
    fn penalised(&self, logits: &[f32], history: &[u32]) -> Vec<f32> {
        let mut out: Vec<f32> = logits
            .iter()
            .map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l })
            .collect();
        let penalty = self.params.repeat_penalty;
        if penalty != 1.0 && self.params.repeat_last_n > 0 {
            let recent = &history[history.len().saturating_sub(self.params.repeat_last_n)..];
            // Each token is penalised once, however often it occurred.
            let seen: HashSet<u32> = recent.iter().copied().collect();
            for id in seen {
                if let Some(l) = out.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
                }
            }
        }
        out
    }

    /// Argmax of penalised logits, lowest id on ties; 0 when there are no logits.
    fn argmax(logits: &[f32]) -> u32 {
        let mut best = 0usize;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        best as u32
    }

    /// The filtered, renormalised candidates as `(id, probability)` in f64, most likely first.
    fn filtered(&self, logits: &[f32], history: &[u32]) -> Vec<(u32, f64)> {
        let penalised = self.penalised(logits, history);
        if penalised.is_empty() {
            return Vec::new();
        }
        if self.params.temperature == 0.0 {
            return vec![(Self::argmax(&penalised), 1.0)];
        }
        let inv_t = 1.0 / self.params.temperature;
        let mut cand: Vec<(u32, f32)> = penalised
            .iter()
            .enumerate()
            .filter(|(_, l)| **l != f32::NEG_INFINITY)
            .map(|(i, &l)| (i as u32, (l * inv_t).min(f32::MAX)))
            .collect();
        if cand.is_empty() {
            // Every token is impossible: fall back to the argmax rule.
            return vec![(Self::argmax(&penalised), 1.0)];
        }
        if let Some(k) = self.params.top_k {
            if k < cand.len() {
                cand.select_nth_unstable_by(k - 1, by_logit_desc);
                cand.truncate(k);
                // Back to id order, so the softmax sum below does not depend on how the
                // standard library's selection happened to arrange the kept tokens.
                cand.sort_unstable_by_key(|c| c.0);
            }
        }

        // Softmax weights relative to the best logit; the normaliser is summed in id order.
        let max = f64::from(cand.iter().fold(f32::MIN, |m, c| m.max(c.1)));
        let z: f64 = cand.iter().map(|c| (f64::from(c.1) - max).exp()).sum();
        let prob = |l: f32| (f64::from(l) - max).exp() / z;

        let mut sorted = false;
        if let Some(p) = self.params.top_p {
            let p = f64::from(p);
            // The nucleus is a prefix of the tokens by probability. Sort only a growing head
            // of them (selection, then sort) until the head reaches p: the first m of a full
            // sort, as the order is total, at a fraction of its cost for 32k-token vocabularies.
            let mut m = cand.len().min(64);
            loop {
                if m < cand.len() {
                    cand.select_nth_unstable_by(m - 1, by_logit_desc);
                }
                cand[..m].sort_unstable_by(by_logit_desc);
                let mut cum = 0.0;
                let keep = cand[..m].iter().position(|c| {
                    cum += prob(c.1);
                    cum >= p
                });
                if let Some(i) = keep {
                    cand.truncate(i + 1);
                    break;
                }
                if m == cand.len() {
                    // Rounding kept the total just below p: everything stays.
                    break;
                }
                m = (m * 2).min(cand.len());
            }
            sorted = true;
        }
        if let Some(m) = self.params.min_p {
            // The best token has weight exp(0) = 1, i.e. probability 1/z.
            let threshold = f64::from(m) / z;
            cand.retain(|c| prob(c.1) >= threshold);
        }
        if !sorted {
            cand.sort_unstable_by(by_logit_desc);
        }
        let mut probs: Vec<(u32, f64)> = cand.iter().map(|c| (c.0, prob(c.1))).collect();
        normalise(&mut probs);
        probs
    }

    /// The set of tokens `sample` may return and their probabilities (renormalised), most
    /// likely first. With temperature 0 it is the argmax alone.
    pub fn distribution(&self, logits: &[f32], history: &[u32]) -> Vec<(u32, f32)> {
        self.filtered(logits, history)
            .into_iter()
            .map(|(id, p)| (id, p as f32))
            .collect()
    }

    /// Picks the next token. `history` is every token so far (prompt included); the repeat
    /// penalty looks at its last `repeat_last_n`. Temperature 0 is argmax (lowest id on ties)
    /// and does not advance the random stream; otherwise exactly one draw is made.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let probs = self.filtered(logits, history);
        if self.params.temperature == 0.0 || probs.len() <= 1 {
            if self.params.temperature != 0.0 {
                // Keep the stream aligned: one draw per sampled token, whatever the filters.
                self.rng.next_u64();
            }
            return probs.first().map_or(0, |&(id, _)| id);
        }
        let u = self.rng.next_f64();
        let mut cum = 0.0;
        for &(id, p) in &probs {
            cum += p;
            if u < cum {
                return id;
            }
        }
        // Rounding left the sum a hair below 1 and u landed in the gap.
        probs[probs.len() - 1].0
    }
}

fn normalise(probs: &mut [(u32, f64)]) {
    let sum: f64 = probs.iter().map(|&(_, p)| p).sum();
    if sum > 0.0 {
        for (_, p) in probs.iter_mut() {
            *p /= sum;
        }
    }
}
