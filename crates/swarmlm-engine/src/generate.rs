//! Text generation: prefill the prompt as one batch, then sample and decode token by token
//! until EOS, a stop string, or the token budget.
//!
//! Text is streamed as it becomes final. With stop strings, any tail that could still grow
//! into a stop string is held back, so the streamed text never contains (part of) a stop string
//! and equals [`Generation::text`] at the end.

use std::time::{Duration, Instant};

use crate::error::{EngineError, Result};
use crate::model::Model;
use crate::sampling::Sampler;
use crate::session::Session;
use crate::tokenizer::Tokenizer;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced its end-of-sequence token (included in `generated_ids`).
    Eos,
    /// `max_tokens` were generated, or the context (max_position_embeddings) is full.
    MaxTokens,
    /// The text contains one of the stop strings (the text is cut before it).
    Stop,
    /// The caller asked to stop (see [`generate_cancellable`]), e.g. its client went away.
    Cancelled,
}

impl StopReason {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::MaxTokens => "max_tokens",
            StopReason::Stop => "stop",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// Wall-clock split of a generation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Time to run the prompt (one batch) and sample the first token.
    pub prefill: Duration,
    /// Prompt tokens processed in `prefill`.
    pub prefill_tokens: usize,
    /// Time spent in decode steps (forward + sampling) after the first token.
    pub decode: Duration,
    /// Decode steps run (each consumes one token and yields the next).
    pub decode_tokens: usize,
}

fn rate(tokens: usize, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if tokens == 0 || s <= 0.0 {
        0.0
    } else {
        tokens as f64 / s
    }
}

impl Timings {
    /// Prompt tokens per second.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        rate(self.prefill_tokens, self.prefill)
    }

    /// Generated tokens per second after the first.
    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.decode_tokens, self.decode)
    }
}

/// What to generate.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    /// Upper bound on generated tokens.
    pub max_tokens: usize,
    /// Generation stops when the text contains any of these (empty strings are ignored).
    pub stop: Vec<String>,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// Every sampled token, in order (an EOS that ended generation included).
    pub generated_ids: Vec<u32>,
    /// The generated text (without the EOS, cut before a stop string).
    pub text: String,
    pub stop_reason: StopReason,
    pub timings: Timings,
}

/// Holds back the tail of the text that could still become a stop string.
struct StopFilter<'s> {
    stops: Vec<&'s str>,
    text: String,
    emitted: usize,
}

impl<'s> StopFilter<'s> {
    fn new(stops: &'s [String]) -> Self {
        StopFilter {
            stops: stops
                .iter()
                .map(String::as_str)
                .filter(|s| !s.is_empty())
                .collect(),
            text: String::new(),
            emitted: 0,
        }
    }

    /// Appends `piece`; returns the newly final text and whether a stop string was found.
    fn push(&mut self, piece: &str) -> (&str, bool) {
        self.text.push_str(piece);
        // A match cannot start before `emitted`: what was emitted was never a stop prefix.
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.text[self.emitted..].find(s).map(|i| self.emitted + i))
            .min();
        if let Some(at) = found {
            self.text.truncate(at);
            let start = self.emitted;
            self.emitted = at;
            return (&self.text[start..at], true);
        }
        let hold = self.held_back();
        let end = self.text.len() - hold;
        let start = self.emitted;
        self.emitted = end.max(start);
        (&self.text[start..self.emitted], false)
    }

    /// Length of the longest suffix of the unemitted text that is a proper prefix of a stop.
    fn held_back(&self) -> usize {
        let pending = &self.text[self.emitted..];
        let mut best = 0;
        for s in &self.stops {
            let max = (s.len() - 1).min(pending.len());
            for k in (best + 1..=max).rev() {
                let tail_start = pending.len() - k;
                if pending.is_char_boundary(tail_start) && s.starts_with(&pending[tail_start..]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }

    /// Emits everything held back (generation ended for another reason).
    fn flush(&mut self) -> &str {
        let start = self.emitted;
        self.emitted = self.text.len();
        &self.text[start..]
    }
}

/// Runs `prompt_ids` (used exactly as given) and samples up to `opts.max_tokens` tokens.
/// `on_text` receives text as it becomes final.
pub fn generate(
    model: &Model<'_>,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    sampler: &mut Sampler,
    on_text: impl FnMut(&str),
) -> Result<Generation> {
    generate_cancellable(
        model,
        tokenizer,
        prompt_ids,
        opts,
        sampler,
        || false,
        on_text,
    )
}

/// [`generate`] that asks `cancelled` before the prefill and before every decode step, and ends
/// with [`StopReason::Cancelled`] (keeping what was generated) as soon as it returns true: a
/// server stops spending the CPU on a client that went away within one token.
pub fn generate_cancellable(
    model: &Model<'_>,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    sampler: &mut Sampler,
    mut cancelled: impl FnMut() -> bool,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    let max_pos = model.shape().max_positions;
    if prompt_ids.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if prompt_ids.len() > max_pos {
        return Err(EngineError::ContextOverflow {
            what: "the prompt",
            needed: prompt_ids.len(),
            limit: max_pos,
        });
    }
    model.check_ids(prompt_ids)?;
    let eos = tokenizer
        .eos_id()
        .or(model.checkpoint().config().eos_token_id);
    let mut session = Session::new(model, prompt_ids.len() + opts.max_tokens);
    let mut history: Vec<u32> = prompt_ids.to_vec();
    let mut generated = Vec::with_capacity(opts.max_tokens);
    let mut timings = Timings {
        prefill_tokens: prompt_ids.len(),
        ..Timings::default()
    };
    // Decoding the new ids after the prompt keeps the first token's leading space: SentencePiece
    // drops a leading space only at the very start of a text, which the continuation is not.
    let mut decoder = tokenizer.stream_decoder_after(prompt_ids);
    let mut filter = StopFilter::new(&opts.stop);

    if opts.max_tokens == 0 {
        return Ok(Generation {
            generated_ids: generated,
            text: String::new(),
            stop_reason: StopReason::MaxTokens,
            timings,
        });
    }

    if cancelled() {
        return Ok(Generation {
            generated_ids: generated,
            text: String::new(),
            stop_reason: StopReason::Cancelled,
            timings,
        });
    }
    let t0 = Instant::now();
    let logits = session.prefill(prompt_ids)?;
    let mut next = sampler.sample(logits, &history);
    timings.prefill = t0.elapsed();
    let decode_start = Instant::now();
    let stop_reason = loop {
        generated.push(next);
        history.push(next);
        if Some(next) == eos {
            break StopReason::Eos;
        }
        if let Some(piece) = decoder.push(next) {
            let (text, stopped) = filter.push(&piece);
            if !text.is_empty() {
                on_text(text);
            }
            if stopped {
                break StopReason::Stop;
            }
        }
        if generated.len() >= opts.max_tokens || session.position() >= session.capacity() {
            break StopReason::MaxTokens;
        }
        if cancelled() {
            break StopReason::Cancelled;
        }
        let logits = session.decode_step(next)?;
        next = sampler.sample(logits, &history);
        timings.decode_tokens += 1;
    };
    timings.decode = decode_start.elapsed();
    if stop_reason != StopReason::Stop && stop_reason != StopReason::Cancelled {
        if let Some(rest) = decoder.finish() {
            let (text, stopped) = filter.push(&rest);
            if !text.is_empty() {
                on_text(text);
            }
            if stopped {
                return Ok(Generation {
                    generated_ids: generated,
                    text: filter.text,
                    stop_reason: StopReason::Stop,
                    timings,
                });
            }
        }
        let rest = filter.flush();
        if !rest.is_empty() {
            on_text(rest);
        }
    }
    Ok(Generation {
        generated_ids: generated,
        text: filter.text,
        stop_reason,
        timings,
    })
}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stops);
        let mut streamed = String::new();
        let mut stopped = false;
        for p in pieces {
            let (t, s) = f.push(p);
            streamed.push_str(t);
            if s {
                stopped = true;
                break;
            }
        }
        if !stopped {
            streamed.push_str(f.flush());
        }
        (streamed, f.text, stopped)
    }

    #[test]
    fn stop_string_split_across_pieces_is_never_streamed() {
        let (streamed, text, stopped) = run(&["END"], &["hello E", "N", "D tail"]);
        assert!(stopped);
        assert_eq!(streamed, "hello ");
        assert_eq!(text, "hello ");
    }

    #[test]
    fn false_prefix_is_released() {
        let (streamed, text, stopped) = run(&["END"], &["a E", "X b"]);
        assert!(!stopped);
        assert_eq!(streamed, "a EX b");
        assert_eq!(text, "a EX b");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_multibyte_is_safe() {
        let (streamed, _, stopped) = run(&["é!", "\n\n"], &["ab\n", "\ncd é!"]);
        assert!(stopped);
        assert_eq!(streamed, "ab");
        let (streamed, _, stopped) = run(&["xé"], &["aé", "é"]);
        assert!(!stopped);
        assert_eq!(streamed, "aéé");
    }

    #[test]
    fn no_stops_streams_everything_at_once() {
        let stops: Vec<String> = vec![String::new()];
        let mut f = StopFilter::new(&stops);
        assert_eq!(f.push("abc"), ("abc", false));
    }
}
