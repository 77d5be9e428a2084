//! Model shapes: the three presets, per-field overrides, the checks a shape must pass before a
//! single byte is written, and the `config.json` / `generation_config.json` it implies.
//!
//! | preset | hidden | intermediate | layers | heads | kv heads | experts | top-k | vocab | rope θ | max pos | bf16 size |
//! |---|---|---|---|---|---|---|---|---|---|---|---|
//! | `tiny` | 64 | 128 | 2 | 4 | 2 | 4 | 2 | 32000 | 1e6 | 4096 | 8.6 MB (tests; forges in milliseconds) |
//! | `small` | 1024 | 3584 | 4 | 16 | 4 | 8 | 2 | 32000 | 1e6 | 32768 | 0.86 GB (benchmarks) |
//! | `mixtral-8x7b` | 4096 | 14336 | 32 | 32 | 8 | 8 | 2 | 32000 | 1e6 | 32768 | 93.4 GB (the real shape) |
//!
//! All presets: `rms_norm_eps` 1e-5, `sliding_window` null, `head_dim` = hidden / heads (not
//! written to `config.json` unless set explicitly, like the real Mixtral config).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::ForgeError;

/// Smallest vocabulary forge accepts: `<unk>`, `<s>`, `</s>` and the 256 byte-fallback tokens
/// (ids 0..259), so the (trimmed) tokenizer can still encode any text.
pub const MIN_VOCAB: usize = 259;

/// A named starting shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Preset {
    /// hidden 64, 2 layers, 4 experts: for tests.
    #[serde(rename = "tiny")]
    Tiny,
    /// hidden 1024, 4 layers, 8 experts (~0.86 GB): for benchmarks.
    #[serde(rename = "small")]
    Small,
    /// The real Mixtral 8x7B shape (93.4 GB at 32 layers).
    #[serde(rename = "mixtral-8x7b")]
    Mixtral8x7b,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::Tiny, Preset::Small, Preset::Mixtral8x7b];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
            Preset::Mixtral8x7b => "mixtral-8x7b",
        }
    }

    /// The shape this preset stands for.
    pub fn shape(self) -> Shape {
        let mixtral = Shape {
            hidden_size: 4096,
            intermediate_size: 14336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: None,
            num_local_experts: 8,
            num_experts_per_tok: 2,
            vocab_size: 32000,
            rms_norm_eps: 1e-5,
            rope_theta: 1e6,
            sliding_window: None,
            max_position_embeddings: 32768,
        };
        match self {
            Preset::Mixtral8x7b => mixtral,
            Preset::Small => Shape {
                hidden_size: 1024,
                intermediate_size: 3584,
                num_hidden_layers: 4,
                num_attention_heads: 16,
                num_key_value_heads: 4,
                ..mixtral
            },
            Preset::Tiny => Shape {
                hidden_size: 64,
                intermediate_size: 128,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                num_local_experts: 4,
                max_position_embeddings: 4096,
                ..mixtral
            },
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown preset name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown preset {0:?}: expected one of tiny, small, mixtral-8x7b")]
pub struct UnknownPreset(pub String);

impl FromStr for Preset {
    type Err = UnknownPreset;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownPreset(s.to_string()))
    }
}

/// The architecture numbers of a Mixtral model, named as in the hub's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shape {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// `None`: hidden_size / num_attention_heads, and `config.json` carries no `head_dim`.
    pub head_dim: Option<usize>,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// `None` is the hub's `null`: full causal attention.
    pub sliding_window: Option<usize>,
    pub max_position_embeddings: usize,
}

/// Per-field replacements for a preset's shape; `None` keeps the preset's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub num_local_experts: Option<usize>,
    pub num_experts_per_tok: Option<usize>,
    pub vocab_size: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub sliding_window: Option<usize>,
    pub max_position_embeddings: Option<usize>,
}

impl Shape {
    /// The preset's shape with `o`'s fields put in. The result is not yet validated.
    pub fn from_preset(preset: Preset, o: &Overrides) -> Shape {
        let p = preset.shape();
        Shape {
            hidden_size: o.hidden_size.unwrap_or(p.hidden_size),
            intermediate_size: o.intermediate_size.unwrap_or(p.intermediate_size),
            num_hidden_layers: o.num_hidden_layers.unwrap_or(p.num_hidden_layers),
            num_attention_heads: o.num_attention_heads.unwrap_or(p.num_attention_heads),
            num_key_value_heads: o.num_key_value_heads.unwrap_or(p.num_key_value_heads),
            head_dim: o.head_dim.or(p.head_dim),
            num_local_experts: o.num_local_experts.unwrap_or(p.num_local_experts),
            num_experts_per_tok: o.num_experts_per_tok.unwrap_or(p.num_experts_per_tok),
            vocab_size: o.vocab_size.unwrap_or(p.vocab_size),
            rms_norm_eps: o.rms_norm_eps.unwrap_or(p.rms_norm_eps),
            rope_theta: o.rope_theta.unwrap_or(p.rope_theta),
            sliding_window: o.sliding_window.or(p.sliding_window),
            max_position_embeddings: o
                .max_position_embeddings
                .unwrap_or(p.max_position_embeddings),
        }
    }

    /// The per-head width: the explicit `head_dim`, else hidden / heads.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or_else(|| self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Check that the shape is a Mixtral that HF transformers and our engine can run.
    pub fn validate(&self) -> Result<(), ForgeError> {
        fn bad(
            field: &'static str,
            value: impl fmt::Display,
            expected: impl Into<String>,
        ) -> ForgeError {
            ForgeError::InvalidShape {
                field,
                value: value.to_string(),
                expected: expected.into(),
            }
        }
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("num_local_experts", self.num_local_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(bad(field, v, "must be at least 1"));
            }
        }
        match self.head_dim {
            Some(0) => return Err(bad("head_dim", 0, "must be at least 2")),
            Some(d) if d % 2 != 0 => {
                return Err(bad(
                    "head_dim",
                    d,
                    "must be even (RoPE rotates pairs of dimensions)",
                ))
            }
            Some(_) => {}
            None => {
                if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
                    return Err(bad(
                        "num_attention_heads",
                        self.num_attention_heads,
                        format!(
                            "must divide hidden_size ({}) when head_dim is not given",
                            self.hidden_size
                        ),
                    ));
                }
                let d = self.hidden_size / self.num_attention_heads;
                if !d.is_multiple_of(2) {
                    return Err(bad(
                        "head_dim",
                        format!("{d} (= hidden_size / num_attention_heads)"),
                        "must be even (RoPE rotates pairs of dimensions)",
                    ));
                }
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(bad(
                "num_key_value_heads",
                self.num_key_value_heads,
                format!(
                    "must divide num_attention_heads ({}) (each KV head serves a whole group of query heads)",
                    self.num_attention_heads
                ),
            ));
        }
        if self.num_experts_per_tok > self.num_local_experts {
            return Err(bad(
                "num_experts_per_tok",
                self.num_experts_per_tok,
                format!(
                    "must not exceed num_local_experts ({})",
                    self.num_local_experts
                ),
            ));
        }
        if self.vocab_size < MIN_VOCAB {
            return Err(bad(
                "vocab_size",
                self.vocab_size,
                format!("must be at least {MIN_VOCAB} (<unk>, <s>, </s> and the 256 byte-fallback tokens)"),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(bad(
                "rms_norm_eps",
                self.rms_norm_eps,
                "must be a positive finite number",
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(bad(
                "rope_theta",
                self.rope_theta,
                "must be a positive finite number",
            ));
        }
        if self.sliding_window == Some(0) {
            return Err(bad(
                "sliding_window",
                0,
                "must be at least 1 (or absent for none)",
            ));
        }
        Ok(())
    }

    /// `config.json` as the hub writes it for `MixtralForCausalLM`.
    pub fn config_json(&self) -> Value {
        let mut v = json!({
            "architectures": ["MixtralForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": "mixtral",
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_local_experts": self.num_local_experts,
            "output_router_logits": false,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "router_aux_loss_coef": 0.02,
            "router_jitter_noise": 0.0,
            "sliding_window": self.sliding_window,
            "tie_word_embeddings": false,
            "torch_dtype": "bfloat16",
            "dtype": "bfloat16",
            "use_cache": true,
            "vocab_size": self.vocab_size,
        });
        if let Some(d) = self.head_dim {
            v["head_dim"] = json!(d);
        }
        v
    }
}

/// `generation_config.json`, as the hub's Mixtral has it.
pub fn generation_config_json() -> Value {
    json!({
        "_from_model_config": true,
        "bos_token_id": 1,
        "eos_token_id": 2,
    })
}
