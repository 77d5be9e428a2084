//! Hugging Face `tokenizer.json`, through the `tokenizers` crate, plus an exact incremental
//! decoder for it.
//!
//! Why a custom stream decoder: `tokenizers`' decoders (Metaspace, ByteFallback, Strip, ...) work
//! on whole sequences, so the text a new id adds is only known relative to what precedes it.
//! [`HfStream`] decodes a short window of recent ids and emits the difference from the window's
//! previous decode. It holds text back while the window ends in a byte-fallback token: the
//! `ByteFallback` decoder turns a whole run of byte tokens into U+FFFD (one per byte) as soon as
//! any byte of the run is invalid, so a later byte can still change text that looked final.
//! It also holds back text that ends in U+FFFD (e.g. an incomplete byte-level character).

use std::path::Path;

use tokenizers::Model;

use super::TokenizerError;

pub(crate) struct HfTokenizer {
    pub(crate) inner: tokenizers::Tokenizer,
    /// One past the largest id (added tokens included); `tokenizers` recomputes this from a
    /// fresh vocabulary map on every call, so it is cached.
    vocab_size: usize,
    /// `is_byte[id]`: the token is a byte-fallback token `<0xNN>`.
    pub(super) is_byte: Vec<bool>,
    /// `is_special[id]`: decode skips the token (so it does not end a run of byte tokens).
    pub(super) is_special: Vec<bool>,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

/// What [`HfTokenizer`] keeps about a vocabulary (model and added tokens): one past the
/// largest id, and the ids of byte-fallback tokens `<0xNN>`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct VocabFacts {
    pub(crate) size: usize,
    pub(crate) byte_ids: Vec<u32>,
}

impl VocabFacts {
    pub(crate) fn of<'a>(entries: impl IntoIterator<Item = (&'a str, u32)>) -> VocabFacts {
        let mut facts = VocabFacts::default();
        for (token, id) in entries {
            facts.add(token, id);
        }
        facts
    }

    pub(crate) fn add(&mut self, token: &str, id: u32) {
        self.size = self.size.max(id as usize + 1);
        let hex = token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'));
        if hex.is_some_and(|h| h.len() == 2 && u8::from_str_radix(h, 16).is_ok()) {
            self.byte_ids.push(id);
        }
    }
}

/// The `tokenizers` crate's own parse of a whole `tokenizer.json`.
pub(crate) fn full_parse(
    bytes: &[u8],
    path: &Path,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::HfLoad {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl HfTokenizer {
    pub(crate) fn from_file(path: &Path) -> Result<HfTokenizer, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        HfTokenizer::from_bytes(&bytes, path)
    }

    /// `bytes` are the contents of `path` (named in errors).
    pub(crate) fn from_bytes(bytes: &[u8], path: &Path) -> Result<HfTokenizer, TokenizerError> {
        let (mut inner, mut facts) = match super::hf_fast::load(bytes) {
            Ok(loaded) => (loaded.tokenizer, loaded.model_vocab),
            Err(why) => {
                tracing::debug!(
                    "{}: fast BPE loader declined ({why}); using the full parse",
                    path.display()
                );
                let inner = full_parse(bytes, path)?;
                let vocab = inner.get_model().get_vocab();
                let facts = VocabFacts::of(vocab.iter().map(|(t, &id)| (t.as_str(), id)));
                (inner, facts)
            }
        };
        // A prompt must never be cut or padded behind the caller's back.
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::HfLoad {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        inner.with_padding(None);
        let added = inner.get_added_tokens_decoder();
        for (&id, token) in &added {
            facts.add(&token.content, id);
        }
        let vocab_size = facts.size;
        let mut is_byte = vec![false; vocab_size];
        for id in facts.byte_ids {
            is_byte[id as usize] = true;
        }
        let mut is_special = vec![false; vocab_size];
        for (&id, token) in &added {
            if token.special {
                if let Some(flag) = is_special.get_mut(id as usize) {
                    *flag = true;
                }
            }
        }
        Ok(HfTokenizer {
            inner,
            vocab_size,
            is_byte,
            is_special,
        })
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub(crate) fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Decodes without special tokens; `None` only if the tokenizer's decoder itself fails.
    pub(crate) fn try_decode(&self, ids: &[u32]) -> Option<String> {
        match self.inner.decode(ids, true) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("tokenizer.json decoder failed on {} ids: {e}", ids.len());
                None
            }
        }
    }
}

/// Incremental decoding state for [`HfTokenizer`].
///
/// Invariant: `prefix == decode(window[..prefix_len])`, and everything up to and including the
/// window's first `prefix_len` ids has been emitted. A push decodes the whole window and emits
/// what lies beyond `prefix`; then the window drops the ids before the last emitted group, so it
/// stays a few ids long while its first id keeps the context that decoders like `Strip` need.
#[derive(Debug, Clone, Default)]
pub(crate) struct HfStream {
    window: Vec<u32>,
    prefix: String,
    prefix_len: usize,
    /// The last id that decodes to something was a byte token.
    in_byte_run: bool,
}

impl HfStream {
    /// A stream that continues after `context` (already shown, not emitted again). If the
    /// context ends inside an incomplete byte-fallback character, that run of byte tokens is
    /// treated as not yet emitted: its character is emitted once the new ids complete it (as
    /// the SentencePiece stream does).
    pub(crate) fn with_context(tok: &HfTokenizer, context: &[u32]) -> HfStream {
        let flag = |v: &[bool], id: u32| v.get(id as usize).copied().unwrap_or(false);
        // Start of the trailing byte run (skipped special tokens do not interrupt it).
        let run_start = context
            .iter()
            .rposition(|&id| !flag(&tok.is_byte, id) && !flag(&tok.is_special, id))
            .map_or(0, |i| i + 1);
        let in_byte_run = context[run_start..]
            .iter()
            .any(|&id| flag(&tok.is_byte, id));
        let whole = tok.try_decode(context).unwrap_or_default();
        if in_byte_run && whole.ends_with('\u{FFFD}') {
            return HfStream {
                window: context.to_vec(),
                prefix: tok.try_decode(&context[..run_start]).unwrap_or_default(),
                prefix_len: run_start,
                in_byte_run,
            };
        }
        HfStream {
            window: context.to_vec(),
            prefix: whole,
            prefix_len: context.len(),
            in_byte_run,
        }
    }

    pub(crate) fn push(&mut self, tok: &HfTokenizer, id: u32) -> Option<String> {
        self.window.push(id);
        let flag = |v: &[bool]| v.get(id as usize).copied().unwrap_or(false);
        if flag(&tok.is_byte) {
            self.in_byte_run = true;
        } else if !flag(&tok.is_special) {
            self.in_byte_run = false;
        }
        if self.in_byte_run {
            // The byte run is not over (skipped special tokens do not end it), so its text is
            // not final yet.
            return None;
        }
        let text = tok.try_decode(&self.window)?;
        if text.len() <= self.prefix.len()
            || text.ends_with('\u{FFFD}')
            || !text.starts_with(&self.prefix)
        {
            // Nothing new yet, an incomplete character, or a decoder that rewrote earlier
            // text: wait for more ids.
            return None;
        }
        let new_text = text[self.prefix.len()..].to_string();
        let keep_from = self.prefix_len;
        self.window.drain(..keep_from);
        self.prefix_len = self.window.len();
        self.prefix = tok.try_decode(&self.window).unwrap_or_default();
        Some(new_text)
    }

    pub(crate) fn finish(&mut self, tok: &HfTokenizer) -> Option<String> {
        let text = tok.try_decode(&self.window)?;
        let out = if text.len() > self.prefix.len() && text.is_char_boundary(self.prefix.len()) {
            Some(text[self.prefix.len()..].to_string())
        } else {
            None
        };
        self.prefix = text;
        self.prefix_len = self.window.len();
        out
    }
}
