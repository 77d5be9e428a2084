//! The typed model configuration, read from either the hub's `config.json` or Mistral's
//! original `params.json`.
//!
//! Both files describe the same architecture with different field names; the engine only ever
//! sees [`MixtralConfig`]. Fields are extracted one by one (rather than through a serde derive)
//! so that a wrong or missing field is reported by its own name in its own file.
//!
//! Defaults follow the publishers:
//! - `config.json`: as `transformers.MixtralConfig` does — `head_dim` absent or `null` means
//!   `hidden_size / num_attention_heads`; `rope_theta` defaults to 1e6 (also read from
//!   `rope_parameters.rope_theta`, where transformers v5 puts it); `rms_norm_eps` 1e-5;
//!   `max_position_embeddings` 131072; `bos`/`eos` 1/2; `tie_word_embeddings` false;
//!   `sliding_window` null. `num_key_value_heads` absent or `null` means no grouping
//!   (= `num_attention_heads`), as transformers does for an explicit null. The shape fields
//!   (`hidden_size`, `intermediate_size`, `num_hidden_layers`, `num_attention_heads`,
//!   `num_local_experts`, `num_experts_per_tok`, `vocab_size`) are required: a config without
//!   them is broken, and silently assuming 8x7B's numbers would only fail later, less clearly.
//! - `params.json`: Mixtral 8x7B's file has no `rope_theta`; we default it to 1e6, which is what
//!   Mistral's reference `mistral-inference` uses when the field is absent (`rope_theta or 1e6`)
//!   and what the HF conversion of the same model states. (Mistral 7B v0.1 used 10000 but it is a
//!   dense model that this crate does not load.) `moe` is required. `head_dim` absent means
//!   `dim / n_heads`, `n_kv_heads` absent means `n_heads`, `max_position_embeddings` is taken from
//!   `max_seq_len` / `max_position_embeddings` when present and is 32768 otherwise (the 8x7B
//!   release is named `32kseqlen`); bos/eos are 1/2 (the SentencePiece model shipped with it).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::WeightsError;

#[derive(Debug, Clone, PartialEq)]
pub struct MixtralConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub sliding_window: Option<usize>,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub tie_word_embeddings: bool,
}

/// Where a config's JSON comes from: a file path (read here) or bytes already in memory.
///
/// Lets `MixtralConfig::from_hf_json(path)` and `MixtralConfig::from_hf_json(bytes)` both work.
pub trait JsonSource {
    /// The JSON bytes and the name used for this source in error messages.
    fn load(self) -> Result<(Cow<'static, [u8]>, PathBuf), WeightsError>;
}

fn read_path(p: &Path) -> Result<(Cow<'static, [u8]>, PathBuf), WeightsError> {
    let bytes = std::fs::read(p).map_err(|e| WeightsError::io(p, "read", e))?;
    Ok((Cow::Owned(bytes), p.to_path_buf()))
}

impl JsonSource for &Path {
    fn load(self) -> Result<(Cow<'static, [u8]>, PathBuf), WeightsError> {
        read_path(self)
    }
}
impl JsonSource for &PathBuf {
    fn load(self) -> Result<(Cow<'static, [u8]>, PathBuf), WeightsError> {
        read_path(self)
    }
}
impl JsonSource for PathBuf {
    fn load(self) -> Result<(Cow<'static, [u8]>, PathBuf), WeightsError> {
        read_path(&self)
    }
}
impl JsonSource for &[u8] {
    fn load(self) -> Result<(Cow<'static, [u8]>, PathBuf), WeightsError> {
        Ok((Cow::Owned(self.to_vec()), PathBuf::from("<memory>")))
    }
}
impl JsonSource for &Vec<u8> {
    fn load(self) -> Result<(Cow<'static, [u8]>, PathBuf), WeightsError> {
        self.as_slice().load()
    }
}
/// A string is JSON text when it starts (after whitespace) with `{`, and a path otherwise.
impl JsonSource for &str {
    fn load(self) -> Result<(Cow<'static, [u8]>, PathBuf), WeightsError> {
        if self.trim_start().starts_with('{') {
            self.as_bytes().load()
        } else {
            read_path(Path::new(self))
        }
    }
}
impl JsonSource for &String {
    fn load(self) -> Result<(Cow<'static, [u8]>, PathBuf), WeightsError> {
        self.as_str().load()
    }
}
impl<const N: usize> JsonSource for &[u8; N] {
    fn load(self) -> Result<(Cow<'static, [u8]>, PathBuf), WeightsError> {
        self.as_slice().load()
    }
}

struct Fields<'a> {
    file: &'a Path,
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn parse(
        bytes: &[u8],
        file: &'a Path,
        holder: &'a mut Option<Value>,
    ) -> Result<Self, WeightsError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| WeightsError::ConfigJson {
            file: file.to_path_buf(),
            reason: e.to_string(),
        })?;
        *holder = Some(v);
        match holder.as_ref() {
            Some(Value::Object(obj)) => Ok(Fields { file, obj }),
            _ => Err(WeightsError::ConfigJson {
                file: file.to_path_buf(),
                reason: "top level is not a JSON object".into(),
            }),
        }
    }

    fn err(&self, field: &str, reason: impl Into<String>) -> WeightsError {
        WeightsError::ConfigField {
            file: self.file.to_path_buf(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// The value at a dotted path, treating JSON `null` as absent.
    fn get(&self, path: &str) -> Option<&'a Value> {
        let mut parts = path.split('.');
        let mut cur = self.obj.get(parts.next()?)?;
        for p in parts {
            cur = cur.as_object()?.get(p)?;
        }
        if cur.is_null() {
            None
        } else {
            Some(cur)
        }
    }

    fn usize_opt(&self, path: &str) -> Result<Option<usize>, WeightsError> {
        match self.get(path) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.err(path, format!("expected a non-negative integer, found {v}"))
                }),
        }
    }

    fn usize_req(&self, path: &str) -> Result<usize, WeightsError> {
        self.usize_opt(path)?
            .ok_or_else(|| self.err(path, "required field is missing"))
    }

    fn f64_opt(&self, path: &str) -> Result<Option<f64>, WeightsError> {
        match self.get(path) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(path, format!("expected a number, found {v}"))),
        }
    }

    fn bool_opt(&self, path: &str) -> Result<Option<bool>, WeightsError> {
        match self.get(path) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(path, format!("expected true or false, found {v}"))),
        }
    }

    /// A token id; HF allows a list for `eos_token_id`, of which the first is the primary one.
    fn token_opt(&self, path: &str) -> Result<Option<u32>, WeightsError> {
        let v = match self.get(path) {
            None => return Ok(None),
            Some(Value::Array(a)) => match a.first() {
                None => return Ok(None),
                Some(first) => first,
            },
            Some(v) => v,
        };
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| self.err(path, format!("expected a token id (u32), found {v}")))
    }
}

impl MixtralConfig {
    /// Reads a hub `config.json` (from a path or from bytes) and validates it.
    pub fn from_hf_json(source: impl JsonSource) -> Result<Self, WeightsError> {
        let (bytes, file) = source.load()?;
        let mut holder = None;
        let f = Fields::parse(&bytes, &file, &mut holder)?;
        if let Some(mt) = f.get("model_type") {
            if mt.as_str() != Some("mixtral") {
                return Err(f.err("model_type", format!("expected \"mixtral\", found {mt}")));
            }
        }
        let hidden_size = f.usize_req("hidden_size")?;
        let num_attention_heads = f.usize_req("num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(f.err("num_attention_heads", "must be at least 1"));
        }
        let head_dim = match f.usize_opt("head_dim")? {
            Some(d) => d,
            None => hidden_size / num_attention_heads,
        };
        let rope_theta = match f.f64_opt("rope_theta")? {
            Some(t) => t,
            None => f.f64_opt("rope_parameters.rope_theta")?.unwrap_or(1e6),
        };
        let cfg = MixtralConfig {
            hidden_size,
            intermediate_size: f.usize_req("intermediate_size")?,
            num_hidden_layers: f.usize_req("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: f
                .usize_opt("num_key_value_heads")?
                .unwrap_or(num_attention_heads),
            head_dim,
            num_local_experts: f.usize_req("num_local_experts")?,
            num_experts_per_tok: f.usize_req("num_experts_per_tok")?,
            rms_norm_eps: f.f64_opt("rms_norm_eps")?.unwrap_or(1e-5),
            rope_theta,
            sliding_window: f.usize_opt("sliding_window")?,
            vocab_size: f.usize_req("vocab_size")?,
            max_position_embeddings: f.usize_opt("max_position_embeddings")?.unwrap_or(131_072),
            bos_token_id: match f.get("bos_token_id") {
                None if !f.obj.contains_key("bos_token_id") => Some(1),
                _ => f.token_opt("bos_token_id")?,
            },
            eos_token_id: match f.get("eos_token_id") {
                None if !f.obj.contains_key("eos_token_id") => Some(2),
                _ => f.token_opt("eos_token_id")?,
            },
            tie_word_embeddings: f.bool_opt("tie_word_embeddings")?.unwrap_or(false),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads Mistral's original `params.json` (from a path or from bytes) and validates it.
    pub fn from_mistral_params(source: impl JsonSource) -> Result<Self, WeightsError> {
        let (bytes, file) = source.load()?;
        let mut holder = None;
        let f = Fields::parse(&bytes, &file, &mut holder)?;
        if f.get("moe").is_none() {
            return Err(f.err(
                "moe",
                "missing: this is a dense model; swarmlm loads mixture-of-experts (Mixtral) checkpoints only",
            ));
        }
        let dim = f.usize_req("dim")?;
        let n_heads = f.usize_req("n_heads")?;
        if n_heads == 0 {
            return Err(f.err("n_heads", "must be at least 1"));
        }
        let max_pos = match f.usize_opt("max_seq_len")? {
            Some(n) => n,
            None => f.usize_opt("max_position_embeddings")?.unwrap_or(32_768),
        };
        let cfg = MixtralConfig {
            hidden_size: dim,
            intermediate_size: f.usize_req("hidden_dim")?,
            num_hidden_layers: f.usize_req("n_layers")?,
            num_attention_heads: n_heads,
            num_key_value_heads: f.usize_opt("n_kv_heads")?.unwrap_or(n_heads),
            head_dim: f.usize_opt("head_dim")?.unwrap_or(dim / n_heads),
            num_local_experts: f.usize_req("moe.num_experts")?,
            num_experts_per_tok: f.usize_req("moe.num_experts_per_tok")?,
            rms_norm_eps: f.f64_opt("norm_eps")?.unwrap_or(1e-5),
            rope_theta: f.f64_opt("rope_theta")?.unwrap_or(1e6),
            sliding_window: f.usize_opt("sliding_window")?,
            vocab_size: f.usize_req("vocab_size")?,
            max_position_embeddings: max_pos,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            tie_word_embeddings: false,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the invariants the engine relies on (non-zero sizes, GQA grouping, even head_dim
    /// for RoPE, top-k within the expert count, finite positive eps and theta).
    pub fn validate(&self) -> Result<(), WeightsError> {
        let bad = |field: &'static str, reason: String| {
            Err(WeightsError::InvalidConfig { field, reason })
        };
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("num_local_experts", self.num_local_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(field, "must be at least 1".into());
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(
                "num_key_value_heads",
                format!(
                    "{} query heads cannot be grouped evenly over {} key/value heads",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(
                "head_dim",
                format!("{} is odd; RoPE rotates pairs of dimensions", self.head_dim),
            );
        }
        if self.num_experts_per_tok > self.num_local_experts {
            return bad(
                "num_experts_per_tok",
                format!(
                    "{} exceeds the {} experts per layer",
                    self.num_experts_per_tok, self.num_local_experts
                ),
            );
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(
                "rms_norm_eps",
                format!("{} is not a positive finite number", self.rms_norm_eps),
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(
                "rope_theta",
                format!("{} is not a positive finite number", self.rope_theta),
            );
        }
        if self.sliding_window == Some(0) {
            return bad(
                "sliding_window",
                "0 would hide every key; use null for no window".into(),
            );
        }
        // Every tensor's byte size must fit the address space; reject absurd shapes before
        // anything multiplies them.
        let checked = [
            self.vocab_size.checked_mul(self.hidden_size),
            self.intermediate_size.checked_mul(self.hidden_size),
            self.num_attention_heads
                .checked_mul(self.head_dim)
                .and_then(|n| n.checked_mul(self.hidden_size)),
            self.num_local_experts.checked_mul(self.hidden_size),
        ];
        if checked
            .iter()
            .any(|c| c.and_then(|n| n.checked_mul(4)).is_none())
        {
            return bad(
                "hidden_size",
                "tensor sizes implied by the config overflow".into(),
            );
        }
        Ok(())
    }

    /// Query heads served by each key/value head.
    pub fn gqa_group(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}
