//! Perplexity over a token sequence, computed exactly as the shipped reference does, so a
//! number from `swarmlm perplexity` can be compared with transformers' to five digits.
//!
//! X is cut to a multiple of `ctx`; each chunk of `ctx` tokens runs alone as `[BOS] + chunk`
//! with a fresh cache; the logits at positions `0..ctx` predict the chunk's `ctx` tokens (so
//! every token is predicted exactly once, the first of each chunk from BOS alone). The NLL of a
//! token is `-log_softmax(logits)[target]` in f32, summed in f32 per chunk; the chunk sums are
//! added in f64.

use crate::error::{EngineError, Result};
use crate::model::Model;
use crate::session::Session;

/// Result of a perplexity run.
#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    /// Tokens predicted (a multiple of `ctx`).
    pub n_tokens: usize,
    /// Σ NLL over all predicted tokens (nats).
    pub nll_sum: f64,
    /// `exp(nll_sum / n_tokens)`.
    pub ppl: f64,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Σ NLL of each chunk, in f32 as accumulated.
    pub chunk_nll_sums: Vec<f32>,
}

/// `-log_softmax(logits)[target]` in f32, arranged as torch does (`x - max - ln Σ e^(x-max)`)
/// so large logits lose no precision.
pub fn token_nll(logits: &[f32], target: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
    sum.ln() - (logits[target as usize] - max)
}

/// Perplexity of `ids` (no BOS) in non-overlapping chunks of `ctx` tokens, each prefixed with
/// `bos`. `limit` caps the tokens used before cutting to a multiple of `ctx`. `progress` is
/// called with (chunks done, chunks total) after each chunk.
pub fn perplexity(
    model: &Model<'_>,
    ids: &[u32],
    ctx: usize,
    limit: Option<usize>,
    bos: u32,
    mut progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    let max_pos = model.shape().max_positions;
    if ctx == 0 {
        return Err(EngineError::InvalidArgument {
            name: "ctx",
            value: "0".into(),
            expected: "at least 1".into(),
        });
    }
    if ctx + 1 > max_pos {
        return Err(EngineError::ContextOverflow {
            what: "a perplexity chunk ([BOS] + ctx tokens)",
            needed: ctx + 1,
            limit: max_pos,
        });
    }
    model.check_ids(&[bos])?;
    model.check_ids(ids)?;
    let usable = limit.map_or(ids.len(), |l| l.min(ids.len()));
    let n_chunks = usable / ctx;
    if n_chunks == 0 {
        return Err(EngineError::InvalidArgument {
            name: "ctx",
            value: ctx.to_string(),
            expected: format!("at most the number of tokens available ({usable})"),
        });
    }
    let mut session = Session::new(model, ctx + 1);
    let mut input = Vec::with_capacity(ctx + 1);
    let mut chunk_nll_sums = Vec::with_capacity(n_chunks);
    for c in 0..n_chunks {
        let chunk = &ids[c * ctx..(c + 1) * ctx];
        input.clear();
        input.push(bos);
        input.extend_from_slice(chunk);
        session.reset();
        let logits = session.prefill_all(&input)?;
        let mut sum = 0f32;
        for (i, &target) in chunk.iter().enumerate() {
            sum += token_nll(logits.row(i), target);
        }
        chunk_nll_sums.push(sum);
        progress(c + 1, n_chunks);
    }
    let n_tokens = n_chunks * ctx;
    let nll_sum: f64 = chunk_nll_sums.iter().map(|&s| s as f64).sum();
    Ok(Perplexity {
        n_tokens,
        nll_sum,
        ppl: (nll_sum / n_tokens as f64).exp(),
        ctx,
        chunk_nll_sums,
    })
}

#[cfg(test)]
mod tests {
    use super::token_nll;

    #[test]
    fn nll_matches_closed_form() {
        let logits = [1.0f32, 2.0, 3.0];
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        for t in 0..3u32 {
            let want = lse - (t + 1) as f64;
            assert!((token_nll(&logits, t) as f64 - want).abs() < 1e-6);
        }
        // Large logits must not overflow.
        assert!((token_nll(&[1000.0, 1000.0], 0) - std::f32::consts::LN_2).abs() < 1e-6);
    }
}
