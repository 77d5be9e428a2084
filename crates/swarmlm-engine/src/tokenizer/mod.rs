//! Text ↔ token ids for the models swarmlm runs.
//!
//! Why two back ends: Hugging Face checkpoints carry `tokenizer.json` (handled by the
//! `tokenizers` crate), while Mistral's original releases ship only a SentencePiece
//! `tokenizer.model`, which [`sentencepiece`] reads and runs itself, id-for-id equal to Google's
//! library. Both sit behind one [`Tokenizer`] with the same conventions: `encode` never adds
//! special tokens except an optional BOS, `decode` drops control tokens and the leading space
//! the encoder added, and [`StreamDecoder`] yields exactly the text of `decode` piece by piece
//! while tokens are generated.

mod hf;
mod hf_fast;
mod sentencepiece;

use std::path::{Path, PathBuf};

pub use swarmlm_weights::spm_proto::ProtoError;
// The SentencePiece wire-format reader lives in swarmlm-weights, so that the forge (which
// writes the same vocabulary into GGUF files) can read it without depending on the engine.
use swarmlm_weights::spm_proto as proto;

use hf::{HfStream, HfTokenizer};
use sentencepiece::{SentencePiece, SpDecodeState};

/// Why a tokenizer could not be loaded or could not encode.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("no tokenizer in {}: looked for {}", dir.display(), looked_for.join(" and "))]
    NotFound {
        dir: PathBuf,
        looked_for: Vec<&'static str>,
    },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid SentencePiece model: {source}", path.display())]
    Proto {
        path: PathBuf,
        #[source]
        source: ProtoError,
    },
    #[error("{}: {field} {reason}", path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("{} is not a usable tokenizer.json: {message}", path.display())]
    HfLoad { path: PathBuf, message: String },
    #[error("tokenizer.json failed to encode the text: {0}")]
    Encode(String),
}

/// Which file format a [`Tokenizer`] was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// Hugging Face `tokenizer.json`.
    HfJson,
    /// SentencePiece `tokenizer.model`.
    SentencePiece,
}

#[derive(Debug)]
enum Backend {
    Hf(Box<HfTokenizer>),
    Sp(Box<SentencePiece>),
}

/// A loaded tokenizer (either format). `Send + Sync`: share it by reference across threads.
#[derive(Debug)]
pub struct Tokenizer {
    backend: Backend,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos_by_default: bool,
}

/// What `tokenizer_config.json` (or `special_tokens_map.json`) says about BOS/EOS.
#[derive(Debug, Default)]
struct SpecialTokens {
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos_token: Option<bool>,
}

/// `"<s>"` or `{"content": "<s>", ...}`; `null` means none.
fn token_field(
    value: Option<&serde_json::Value>,
    path: &Path,
    field: &str,
) -> Result<Option<String>, TokenizerError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Object(o)) => match o.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(TokenizerError::Invalid {
                path: path.to_path_buf(),
                field: field.to_string(),
                reason: "is an object without a string \"content\"".to_string(),
            }),
        },
        Some(other) => Err(TokenizerError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason: format!("should be a string or {{\"content\": ...}}, found {other}"),
        }),
    }
}

/// Reads the BOS/EOS settings from `tokenizer_config.json` and `special_tokens_map.json` in
/// `dir`, if they exist (config first).
fn read_special_tokens(dir: &Path) -> Result<SpecialTokens, TokenizerError> {
    let mut out = SpecialTokens::default();
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path = dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(TokenizerError::Io { path, source }),
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| TokenizerError::Invalid {
                path: path.clone(),
                field: "(file)".to_string(),
                reason: format!("is not valid JSON: {e}"),
            })?;
        let Some(obj) = json.as_object() else {
            return Err(TokenizerError::Invalid {
                path,
                field: "(file)".to_string(),
                reason: "should be a JSON object".to_string(),
            });
        };
        if out.bos_token.is_none() {
            out.bos_token = token_field(obj.get("bos_token"), &path, "bos_token")?;
        }
        if out.eos_token.is_none() {
            out.eos_token = token_field(obj.get("eos_token"), &path, "eos_token")?;
        }
        if out.add_bos_token.is_none() {
            out.add_bos_token = match obj.get("add_bos_token") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::Bool(b)) => Some(*b),
                Some(other) => {
                    return Err(TokenizerError::Invalid {
                        path,
                        field: "add_bos_token".to_string(),
                        reason: format!("should be true or false, found {other}"),
                    })
                }
            };
        }
    }
    Ok(out)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl Tokenizer {
    /// Loads the tokenizer of a model directory: `tokenizer.json` if present, else
    /// `tokenizer.model`. BOS/EOS and `add_bos_token` come from `tokenizer_config.json` /
    /// `special_tokens_map.json` in the same directory when they exist.
    pub fn from_model_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Tokenizer::from_hf_json_file(&json);
        }
        let model = dir.join("tokenizer.model");
        if model.is_file() {
            return Tokenizer::from_sentencepiece_file(&model);
        }
        Err(TokenizerError::NotFound {
            dir: dir.to_path_buf(),
            looked_for: vec!["tokenizer.json", "tokenizer.model"],
        })
    }

    /// Loads a SentencePiece `tokenizer.model` (BPE, as in Mistral/Llama releases).
    pub fn from_sentencepiece_file(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        let path = path.as_ref();
        let sp = SentencePiece::from_file(path)?;
        let special = read_special_tokens(parent_dir(path))?;
        // A config next to the model may name the tokens; the model's own ids are the default.
        let lookup = |name: &Option<String>, default: Option<u32>| {
            name.as_deref().and_then(|n| sp.token_id(n)).or(default)
        };
        let bos_id = lookup(&special.bos_token, sp.bos_id);
        let eos_id = lookup(&special.eos_token, sp.eos_id);
        Ok(Tokenizer {
            add_bos_by_default: special.add_bos_token.unwrap_or(bos_id.is_some()),
            bos_id,
            eos_id,
            backend: Backend::Sp(Box::new(sp)),
        })
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_hf_json_file(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        let path = path.as_ref();
        let hf = HfTokenizer::from_file(path)?;
        let special = read_special_tokens(parent_dir(path))?;
        let lookup = |name: &Option<String>, conventional: &str| match name {
            Some(n) => hf.token_to_id(n),
            None => hf.token_to_id(conventional),
        };
        let bos_id = lookup(&special.bos_token, "<s>");
        let eos_id = lookup(&special.eos_token, "</s>");
        Ok(Tokenizer {
            add_bos_by_default: special.add_bos_token.unwrap_or(bos_id.is_some()),
            bos_id,
            eos_id,
            backend: Backend::Hf(Box::new(hf)),
        })
    }

    pub fn kind(&self) -> TokenizerKind {
        match self.backend {
            Backend::Hf(_) => TokenizerKind::HfJson,
            Backend::Sp(_) => TokenizerKind::SentencePiece,
        }
    }

    /// Token ids of `text`, with BOS first if `add_bos` (and the tokenizer has one). No other
    /// special token is added; text that spells a special token (`"<s>"`) is encoded as the
    /// SentencePiece library does (as characters) resp. as `tokenizers` does (as the token).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let bos = self.bos_id.filter(|_| add_bos);
        match &self.backend {
            Backend::Sp(sp) => {
                let mut ids = Vec::new();
                ids.extend(bos);
                ids.extend(sp.encode(text, false));
                Ok(ids)
            }
            Backend::Hf(hf) => {
                let mut ids = Vec::new();
                ids.extend(bos);
                ids.extend(hf.encode(text)?);
                Ok(ids)
            }
        }
    }

    /// The text of `ids`, as SentencePiece's / `tokenizers`' decode gives it: control tokens
    /// (BOS, EOS) produce nothing, the leading space the encoder added is removed, byte-fallback
    /// tokens become UTF-8 (U+FFFD for each invalid byte). Ids outside the vocabulary are
    /// skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.backend {
            Backend::Sp(sp) => sp.decode(ids),
            Backend::Hf(hf) => {
                let valid: Vec<u32> = ids
                    .iter()
                    .copied()
                    .filter(|&id| (id as usize) < hf.vocab_size())
                    .collect();
                hf.try_decode(&valid).unwrap_or_default()
            }
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether prompts should start with BOS: `add_bos_token` of `tokenizer_config.json`, else
    /// true when the tokenizer has a BOS token (Mistral/Llama convention).
    pub fn add_bos_by_default(&self) -> bool {
        self.add_bos_by_default
    }

    /// Number of ids the tokenizer can produce or decode (added tokens included).
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Sp(sp) => sp.vocab_size(),
            Backend::Hf(hf) => hf.vocab_size(),
        }
    }

    /// The vocabulary entry of `id` as stored (`▁world`, `<0x0A>`, `<s>`), for inspection;
    /// `None` outside the vocabulary.
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        match &self.backend {
            Backend::Sp(sp) => sp.piece(id).map(str::to_string),
            Backend::Hf(hf) => hf.inner.id_to_token(id),
        }
    }

    /// Decodes ids one at a time, from the start of a text.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        self.stream_decoder_after(&[])
    }

    /// Decodes ids that continue `context` (e.g. a prompt): what it yields is the text the new ids
    /// add to `decode(context)`, so a generated `▁world` after `Hello` yields `" world"` (from the
    /// start of a text it would yield `"world"`).
    pub fn stream_decoder_after(&self, context: &[u32]) -> StreamDecoder<'_> {
        let state = match &self.backend {
            Backend::Sp(sp) => {
                let mut state = SpDecodeState::default();
                let mut discard = String::new();
                for &id in context {
                    state.push(sp, id, &mut discard);
                }
                StreamState::Sp(sp, state)
            }
            Backend::Hf(hf) => StreamState::Hf(hf, HfStream::with_context(hf, context)),
        };
        StreamDecoder { state }
    }
}

#[derive(Debug, Clone)]
enum StreamState<'a> {
    Sp(&'a SentencePiece, SpDecodeState),
    Hf(&'a HfTokenizer, HfStream),
}

/// Incremental decoder from [`Tokenizer::stream_decoder`]. The concatenation of everything
/// `push` and `finish` return equals `decode` of all pushed ids; text is returned as soon as it
/// is final, and a character spelled by several byte-fallback tokens is held back until complete.
#[derive(Debug, Clone)]
pub struct StreamDecoder<'a> {
    state: StreamState<'a>,
}

impl StreamDecoder<'_> {
    /// Feeds one id; returns the text that is now safe to print, if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        match &mut self.state {
            StreamState::Sp(sp, state) => {
                let mut out = String::new();
                state.push(sp, id, &mut out);
                (!out.is_empty()).then_some(out)
            }
            StreamState::Hf(hf, state) => {
                if id as usize >= hf.vocab_size() {
                    return None;
                }
                state.push(hf, id).filter(|s| !s.is_empty())
            }
        }
    }

    /// Ends the stream: returns what was held back (e.g. bytes of an incomplete character,
    /// which become U+FFFD as in `decode`).
    pub fn finish(&mut self) -> Option<String> {
        match &mut self.state {
            StreamState::Sp(_, state) => {
                let mut out = String::new();
                state.finish(&mut out);
                (!out.is_empty()).then_some(out)
            }
            StreamState::Hf(hf, state) => state.finish(hf).filter(|s| !s.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
    }
}
