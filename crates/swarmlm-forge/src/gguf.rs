//! The forged model written directly as a bf16 GGUF file for llama.cpp, as
//! `convert_hf_to_gguf.py --outtype bf16` would make it from the forged folder, without the
//! folder: a real-size model then needs its disk space once, not twice.
//!
//! What the converter does for a Mixtral folder, and so what this writes (checked by hand
//! against llama.cpp's converter, see BENCHMARKS.md):
//! - architecture `llama`; hub names mapped to llama.cpp's (`token_embd`, `blk.N.attn_q`, ...,
//!   `output`); dimensions listed innermost first (a hub `[out, in]` is GGUF `[in, out]`);
//! - the q and k rows of every head reordered from the hub's half-split RoPE layout to the
//!   interleaved one llama.cpp rotates ([`permuted_source_row`]);
//! - the experts of a layer stacked into `ffn_gate_exps` (w1), `ffn_down_exps` (w2) and
//!   `ffn_up_exps` (w3), expert-major;
//! - 1-D tensors (RMSNorm weights) and the router (`ffn_gate_inp`) as f32, everything else
//!   bf16 as forged;
//! - tensors in the order the converter meets them: shard by shard as [`crate::plan`] lays the
//!   folder out, by name inside a shard, a layer's stacked experts when its last expert tensor
//!   is met; data aligned to 32 bytes;
//! - the SentencePiece vocabulary of the embedded Mistral v1 `tokenizer.model` (pieces, scores,
//!   types), with the added tokens of `tokenizer_config.json` (`<unk>`, `<s>`, `</s>`) as control
//!   tokens of score -1000, and ids beyond the tokenizer padded as `[PADi]` (unused, -10000).
//!
//! Differences from the converter's file: `general.name` names the forge instead of the folder,
//! and the converter's `general.size_label` (and basename/finetune it guesses from folder
//! names) are not written. Shapes the converter cannot carry over to llama.cpp are refused:
//! a vocabulary smaller than the tokenizer's (the forge then has no `tokenizer.model`) and a
//! sliding window (llama.cpp's `llama` architecture has none, so it would be a different model).
//!
//! The data is generated while it is written, like the safetensors shards ([`crate::write`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use swarmlm_weights::spm_proto::{self, PieceType};

use crate::error::ForgeError;
use crate::tensors::{Init, TensorSpec};
use crate::write::{Fill, Source, StreamedFile};
use crate::{rng, tokenizer, ForgeSpec, Progress};

/// GGUF's default data alignment (no `general.alignment` key is written).
pub const ALIGNMENT: u64 = 32;
/// `general.file_type` for "mostly bf16" (`LLAMA_FTYPE_MOSTLY_BF16`).
pub const FILE_TYPE_BF16: u32 = 32;

/// A GGML tensor type this writer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GgmlType {
    F32,
    Bf16,
}

impl GgmlType {
    /// The type's number in the GGUF file.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::Bf16 => 30,
        }
    }

    pub fn size(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::Bf16 => 2,
        }
    }
}

/// A metadata value, with the GGUF types the converter uses for it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<Vec<u8>>),
    F32Array(Vec<f32>),
    I32Array(Vec<i32>),
}

/// One tensor of the GGUF file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GgufTensor {
    /// llama.cpp's name, e.g. `blk.0.ffn_gate_exps.weight`.
    pub name: String,
    /// GGUF order: innermost (contiguous) dimension first.
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Offset in the data section (a multiple of [`ALIGNMENT`]).
    pub offset: u64,
    pub bytes: u64,
    /// The hub tensors it is made of (several for stacked experts), in data order.
    pub hub: Vec<String>,
}

/// The whole file, fixed before a byte is written.
#[derive(Debug, Clone)]
pub struct GgufPlan {
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<GgufTensor>,
    /// Header, metadata, tensor infos and the padding up to the data section.
    pub header: Vec<u8>,
    /// The data section's length (each tensor padded to [`ALIGNMENT`]).
    pub data_bytes: u64,
    pub total_parameters: u64,
    sources: Vec<Source>,
}

impl GgufPlan {
    pub fn file_bytes(&self) -> u64 {
        self.header.len() as u64 + self.data_bytes
    }
}

/// What a GGUF forge wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GgufReport {
    pub out: PathBuf,
    pub format: &'static str,
    pub preset: Option<crate::Preset>,
    pub seed: u64,
    pub generator: &'static str,
    /// The `config.json` the same forge writes into a folder.
    pub config: Value,
    pub total_bytes: u64,
    pub tensor_count: usize,
    pub metadata_count: usize,
    pub total_parameters: u64,
}

/// The hub row that lands at row `row` of a q or k weight once permuted for llama.cpp.
///
/// The hub rotates dimension `i` of a head with `i + d/2` (half split); llama.cpp's `llama`
/// architecture rotates `2i` with `2i + 1`. The converter's `permute` reshapes each head's
/// `d` rows to `(2, d/2)` and swaps the axes, so row `2i + j` of a head comes from row
/// `j·d/2 + i`.
pub fn permuted_source_row(row: u64, head_rows: u64) -> u64 {
    let (head, r) = (row / head_rows, row % head_rows);
    let (i, j) = (r / 2, r % 2);
    head * head_rows + j * (head_rows / 2) + i
}

fn refuse(field: &'static str, value: impl ToString, expected: &str) -> ForgeError {
    ForgeError::UnsupportedInGguf {
        field,
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

/// Lay out the GGUF file of `spec` (no disk access).
pub fn gguf_plan(spec: &ForgeSpec) -> Result<GgufPlan, ForgeError> {
    let plan = spec.plan()?;
    let shape = &spec.shape;
    if shape.vocab_size < tokenizer::MISTRAL_V1_VOCAB {
        return Err(refuse(
            "vocab_size",
            shape.vocab_size,
            "GGUF output needs the whole Mistral v1 vocabulary (at least 32000): a trimmed \
             tokenizer has no tokenizer.model to convert",
        ));
    }
    if let Some(w) = shape.sliding_window {
        return Err(refuse(
            "sliding_window",
            w,
            "GGUF output cannot carry a sliding window (llama.cpp's llama architecture has \
             none); leave it unset",
        ));
    }
    let metadata = metadata(spec)?;

    // Tensors in the converter's order: shards in order, names sorted within a shard (as
    // planned), a layer's experts stacked once all of them were met.
    let e = shape.num_local_experts;
    let mut experts_seen: HashMap<usize, usize> = HashMap::new();
    let mut by_name: HashMap<&str, &TensorSpec> = HashMap::new();
    let mut order: Vec<Planned<'_>> = Vec::new();
    for shard in &plan.shards {
        for placed in &shard.tensors {
            let t = &placed.spec;
            by_name.insert(t.name.as_str(), t);
            let (layer, rest) = split_layer(&t.name);
            let hub_dims = || t.shape.iter().rev().map(|&d| d as u64).collect::<Vec<_>>();
            if let (Some(l), Some(_)) = (layer, rest.strip_prefix("block_sparse_moe.experts.")) {
                let seen = experts_seen.entry(l).or_default();
                *seen += 1;
                if *seen < 3 * e {
                    continue;
                }
                for (w, gguf) in [
                    ("w1", "ffn_gate_exps"),
                    ("w2", "ffn_down_exps"),
                    ("w3", "ffn_up_exps"),
                ] {
                    // All 3·e were met, so every lookup finds its tensor.
                    let parts: Vec<&TensorSpec> = (0..e)
                        .filter_map(|x| {
                            let name =
                                format!("model.layers.{l}.block_sparse_moe.experts.{x}.{w}.weight");
                            by_name.get(name.as_str()).copied()
                        })
                        .collect();
                    let mut dims: Vec<u64> =
                        parts[0].shape.iter().rev().map(|&d| d as u64).collect();
                    dims.push(e as u64);
                    order.push(Planned {
                        name: format!("blk.{l}.{gguf}.weight"),
                        dims,
                        dtype: GgmlType::Bf16,
                        parts,
                        permute: None,
                    });
                }
                continue;
            }
            let (name, dtype, permute) = match (layer, rest) {
                (None, "model.embed_tokens.weight") => {
                    ("token_embd.weight".to_string(), GgmlType::Bf16, None)
                }
                (None, "lm_head.weight") => ("output.weight".to_string(), GgmlType::Bf16, None),
                (None, "model.norm.weight") => {
                    ("output_norm.weight".to_string(), GgmlType::F32, None)
                }
                (Some(l), "input_layernorm.weight") => {
                    (format!("blk.{l}.attn_norm.weight"), GgmlType::F32, None)
                }
                (Some(l), "post_attention_layernorm.weight") => {
                    (format!("blk.{l}.ffn_norm.weight"), GgmlType::F32, None)
                }
                (Some(l), "block_sparse_moe.gate.weight") => {
                    (format!("blk.{l}.ffn_gate_inp.weight"), GgmlType::F32, None)
                }
                (Some(l), "self_attn.q_proj.weight") => (
                    format!("blk.{l}.attn_q.weight"),
                    GgmlType::Bf16,
                    Some(shape.head_dim() as u64),
                ),
                (Some(l), "self_attn.k_proj.weight") => (
                    format!("blk.{l}.attn_k.weight"),
                    GgmlType::Bf16,
                    Some(shape.head_dim() as u64),
                ),
                (Some(l), "self_attn.v_proj.weight") => {
                    (format!("blk.{l}.attn_v.weight"), GgmlType::Bf16, None)
                }
                (Some(l), "self_attn.o_proj.weight") => {
                    (format!("blk.{l}.attn_output.weight"), GgmlType::Bf16, None)
                }
                _ => {
                    return Err(refuse(
                        "tensor",
                        &t.name,
                        "a Mixtral tensor llama.cpp knows",
                    ))
                }
            };
            order.push(Planned {
                name,
                dims: hub_dims(),
                dtype,
                parts: vec![t],
                permute,
            });
        }
    }

    let mut tensors = Vec::with_capacity(order.len());
    let mut sources = Vec::new();
    let mut offset = 0u64;
    for Planned {
        name,
        dims,
        dtype,
        parts,
        permute,
    } in order
    {
        let start = offset;
        for t in &parts {
            let bytes = t.numel()? * dtype.size();
            let key = rng::tensor_key(spec.seed, &t.name);
            let fill = match (t.init, dtype, permute) {
                (Init::Normal, GgmlType::Bf16, Some(head_rows)) => Fill::PermutedBf16 {
                    key,
                    cols: *t.shape.last().unwrap_or(&1) as u64,
                    head_rows,
                },
                (Init::Normal, GgmlType::Bf16, None) => Fill::NormalBf16 { key },
                (Init::Normal, GgmlType::F32, _) => Fill::NormalF32 { key },
                (Init::Ones, GgmlType::Bf16, _) => Fill::OnesBf16,
                (Init::Ones, GgmlType::F32, _) => Fill::OnesF32,
            };
            sources.push(Source {
                offset,
                end: offset + bytes,
                fill,
            });
            offset += bytes;
        }
        let bytes = offset - start;
        let padded = offset.next_multiple_of(ALIGNMENT);
        if padded > offset {
            sources.push(Source {
                offset,
                end: padded,
                fill: Fill::Zeros,
            });
            offset = padded;
        }
        tensors.push(GgufTensor {
            name,
            dims,
            dtype,
            offset: start,
            bytes,
            hub: parts.iter().map(|t| t.name.clone()).collect(),
        });
    }
    let header = header_bytes(&metadata, &tensors);
    Ok(GgufPlan {
        metadata,
        tensors,
        header,
        data_bytes: offset,
        total_parameters: plan.total_parameters,
        sources,
    })
}

/// A GGUF tensor before its offset is known.
struct Planned<'a> {
    name: String,
    dims: Vec<u64>,
    dtype: GgmlType,
    /// Hub tensors, concatenated in this order.
    parts: Vec<&'a TensorSpec>,
    /// Rows per head, for q and k.
    permute: Option<u64>,
}

/// `model.layers.3.self_attn.q_proj.weight` → `(Some(3), "self_attn.q_proj.weight")`; other
/// names come back whole.
fn split_layer(name: &str) -> (Option<usize>, &str) {
    if let Some(rest) = name.strip_prefix("model.layers.") {
        if let Some((l, rest)) = rest.split_once('.') {
            if let Ok(l) = l.parse() {
                return (Some(l), rest);
            }
        }
    }
    (None, name)
}

/// The key/value pairs, in the converter's order.
fn metadata(spec: &ForgeSpec) -> Result<Vec<(String, MetaValue)>, ForgeError> {
    let s = &spec.shape;
    let u32_of = |field: &'static str, v: usize| {
        u32::try_from(v).map_err(|_| refuse(field, v, "GGUF stores it as a 32-bit number"))
    };
    let name = match spec.preset {
        Some(p) => format!("swarmlm forge {p} seed {}", spec.seed),
        None => format!("swarmlm forge seed {}", spec.seed),
    };
    let mut m: Vec<(String, MetaValue)> = vec![
        (
            "general.architecture".into(),
            MetaValue::Str("llama".into()),
        ),
        ("general.type".into(), MetaValue::Str("model".into())),
        ("general.name".into(), MetaValue::Str(name)),
        (
            "llama.block_count".into(),
            MetaValue::U32(u32_of("num_hidden_layers", s.num_hidden_layers)?),
        ),
        (
            "llama.context_length".into(),
            MetaValue::U32(u32_of(
                "max_position_embeddings",
                s.max_position_embeddings,
            )?),
        ),
        (
            "llama.embedding_length".into(),
            MetaValue::U32(u32_of("hidden_size", s.hidden_size)?),
        ),
        (
            "llama.feed_forward_length".into(),
            MetaValue::U32(u32_of("intermediate_size", s.intermediate_size)?),
        ),
        (
            "llama.attention.head_count".into(),
            MetaValue::U32(u32_of("num_attention_heads", s.num_attention_heads)?),
        ),
        (
            "llama.attention.head_count_kv".into(),
            MetaValue::U32(u32_of("num_key_value_heads", s.num_key_value_heads)?),
        ),
        (
            "llama.rope.freq_base".into(),
            MetaValue::F32(s.rope_theta as f32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            MetaValue::F32(s.rms_norm_eps as f32),
        ),
        (
            "llama.expert_count".into(),
            MetaValue::U32(u32_of("num_local_experts", s.num_local_experts)?),
        ),
        (
            "llama.expert_used_count".into(),
            MetaValue::U32(u32_of("num_experts_per_tok", s.num_experts_per_tok)?),
        ),
    ];
    if let Some(d) = s.head_dim {
        let d = u32_of("head_dim", d)?;
        m.push(("llama.attention.key_length".into(), MetaValue::U32(d)));
        m.push(("llama.attention.value_length".into(), MetaValue::U32(d)));
    }
    m.push(("general.file_type".into(), MetaValue::U32(FILE_TYPE_BF16)));
    m.push((
        "llama.vocab_size".into(),
        MetaValue::U32(u32_of("vocab_size", s.vocab_size)?),
    ));
    m.push((
        "llama.rope.dimension_count".into(),
        MetaValue::U32(u32_of("head_dim", s.head_dim())?),
    ));
    m.push(("general.quantization_version".into(), MetaValue::U32(2)));
    m.extend(vocabulary(s.vocab_size)?);
    Ok(m)
}

fn broken(reason: impl Into<String>) -> ForgeError {
    ForgeError::Tokenizer {
        reason: reason.into(),
    }
}

/// The `tokenizer.ggml.*` keys for the embedded Mistral v1 tokenizer and `vocab_size` ids,
/// as the converter's SentencePiece path makes them.
fn vocabulary(vocab_size: usize) -> Result<Vec<(String, MetaValue)>, ForgeError> {
    // SentencePiece's piece types, as numbered in GGUF's `token_type`.
    const NORMAL: i32 = 1;
    const UNKNOWN: i32 = 2;
    const CONTROL: i32 = 3;
    const USER_DEFINED: i32 = 4;
    const UNUSED: i32 = 5;
    const BYTE: i32 = 6;

    let model = spm_proto::parse_model_proto(tokenizer::TOKENIZER_MODEL)
        .map_err(|e| broken(format!("embedded tokenizer.model: {e}")))?;
    let mut tokens: Vec<Vec<u8>> = (0..vocab_size)
        .map(|i| format!("[PAD{i}]").into_bytes())
        .collect();
    let mut scores = vec![-10000.0f32; vocab_size];
    let mut types = vec![UNUSED; vocab_size];
    for (id, p) in model.pieces.iter().enumerate().take(vocab_size) {
        tokens[id] = p.piece.as_bytes().to_vec();
        scores[id] = p.score;
        types[id] = match p.kind {
            PieceType::Normal => NORMAL,
            PieceType::Unknown => UNKNOWN,
            PieceType::Control => CONTROL,
            PieceType::UserDefined => USER_DEFINED,
            PieceType::Unused => UNUSED,
            PieceType::Byte => BYTE,
        };
    }
    let config: Value = serde_json::from_slice(tokenizer::TOKENIZER_CONFIG_JSON)
        .map_err(|e| broken(format!("embedded tokenizer_config.json: {e}")))?;
    if let Some(added) = config
        .get("added_tokens_decoder")
        .and_then(Value::as_object)
    {
        for (id, t) in added {
            let id: usize = id
                .parse()
                .map_err(|_| broken(format!("added token id {id:?} is not a number")))?;
            let content = t
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| broken(format!("added token {id} has no content")))?;
            // The converter makes special added tokens control tokens; the embedded
            // tokenizer's added tokens (<unk>, <s>, </s>) all are.
            if t.get("special").and_then(Value::as_bool) != Some(true) {
                return Err(broken(format!(
                    "added token {id} ({content:?}) is not special"
                )));
            }
            if id < vocab_size {
                tokens[id] = content.as_bytes().to_vec();
                scores[id] = -1000.0;
                types[id] = CONTROL;
            }
        }
    }
    let special_id = |key: &str| -> Result<u32, ForgeError> {
        let content = config
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| broken(format!("tokenizer_config.json has no {key}")))?;
        tokens
            .iter()
            .position(|t| t == content.as_bytes())
            .map(|i| i as u32)
            .ok_or_else(|| broken(format!("{key} {content:?} is not in the vocabulary")))
    };
    let flag = |key: &str| config.get(key).and_then(Value::as_bool).unwrap_or(false);
    let (bos, eos, unk) = (
        special_id("bos_token")?,
        special_id("eos_token")?,
        special_id("unk_token")?,
    );
    Ok(vec![
        (
            "tokenizer.ggml.model".into(),
            MetaValue::Str("llama".into()),
        ),
        (
            "tokenizer.ggml.pre".into(),
            MetaValue::Str("default".into()),
        ),
        ("tokenizer.ggml.tokens".into(), MetaValue::StrArray(tokens)),
        ("tokenizer.ggml.scores".into(), MetaValue::F32Array(scores)),
        (
            "tokenizer.ggml.token_type".into(),
            MetaValue::I32Array(types),
        ),
        ("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(bos)),
        ("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(eos)),
        (
            "tokenizer.ggml.unknown_token_id".into(),
            MetaValue::U32(unk),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            MetaValue::Bool(flag("add_bos_token")),
        ),
        // tokenizer.json's post-processor adds no separator.
        (
            "tokenizer.ggml.add_sep_token".into(),
            MetaValue::Bool(false),
        ),
        (
            "tokenizer.ggml.add_eos_token".into(),
            MetaValue::Bool(flag("add_eos_token")),
        ),
    ])
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

/// GGUF v3: magic, version, counts, key/values, tensor infos, zeros up to the alignment.
fn header_bytes(metadata: &[(String, MetaValue)], tensors: &[GgufTensor]) -> Vec<u8> {
    const UINT32: u32 = 4;
    const INT32: u32 = 5;
    const FLOAT32: u32 = 6;
    const BOOL: u32 = 7;
    const STRING: u32 = 8;
    const ARRAY: u32 = 9;
    let mut h = Vec::new();
    h.extend_from_slice(b"GGUF");
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    let array_head = |h: &mut Vec<u8>, ty: u32, n: usize| {
        h.extend_from_slice(&ARRAY.to_le_bytes());
        h.extend_from_slice(&ty.to_le_bytes());
        h.extend_from_slice(&(n as u64).to_le_bytes());
    };
    for (key, value) in metadata {
        put_str(&mut h, key.as_bytes());
        match value {
            MetaValue::U32(v) => {
                h.extend_from_slice(&UINT32.to_le_bytes());
                h.extend_from_slice(&v.to_le_bytes());
            }
            MetaValue::F32(v) => {
                h.extend_from_slice(&FLOAT32.to_le_bytes());
                h.extend_from_slice(&v.to_le_bytes());
            }
            MetaValue::Bool(v) => {
                h.extend_from_slice(&BOOL.to_le_bytes());
                h.push(u8::from(*v));
            }
            MetaValue::Str(s) => {
                h.extend_from_slice(&STRING.to_le_bytes());
                put_str(&mut h, s.as_bytes());
            }
            MetaValue::StrArray(v) => {
                array_head(&mut h, STRING, v.len());
                for s in v {
                    put_str(&mut h, s);
                }
            }
            MetaValue::F32Array(v) => {
                array_head(&mut h, FLOAT32, v.len());
                for x in v {
                    h.extend_from_slice(&x.to_le_bytes());
                }
            }
            MetaValue::I32Array(v) => {
                array_head(&mut h, INT32, v.len());
                for x in v {
                    h.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    for t in tensors {
        put_str(&mut h, t.name.as_bytes());
        h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            h.extend_from_slice(&d.to_le_bytes());
        }
        h.extend_from_slice(&t.dtype.id().to_le_bytes());
        h.extend_from_slice(&t.offset.to_le_bytes());
    }
    h.resize((h.len() as u64).next_multiple_of(ALIGNMENT) as usize, 0);
    h
}

/// Write the GGUF file of `spec` at `out` (its directory is created if missing; an existing
/// file is never replaced), reporting progress after every buffer.
pub fn forge_gguf_with_progress(
    spec: &ForgeSpec,
    out: &Path,
    on_progress: &mut dyn FnMut(Progress<'_>),
) -> Result<GgufReport, ForgeError> {
    let plan = gguf_plan(spec)?;
    let (dir, name) = match (out.parent(), out.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name)) => (
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            },
            name,
        ),
        _ => {
            return Err(ForgeError::OutNotAFile {
                path: out.to_path_buf(),
            })
        }
    };
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(ForgeError::WouldOverwrite {
            path: out.to_path_buf(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| ForgeError::io("create directory", dir, e))?;
    let total = plan.file_bytes();
    let mut done = 0u64;
    let file = StreamedFile {
        name,
        prefix: &plan.header,
        data_bytes: plan.data_bytes,
        sources: &plan.sources,
    };
    let bytes = crate::write::write_streamed(dir, &file, true, &mut |n| {
        done += n;
        on_progress(Progress {
            file: name,
            done_bytes: done,
            total_bytes: total,
        });
    })?;
    crate::write::sync_dir(dir)?;
    Ok(GgufReport {
        out: out.to_path_buf(),
        format: "gguf",
        preset: spec.preset,
        seed: spec.seed,
        generator: rng::GENERATOR,
        config: spec.shape.config_json(),
        total_bytes: bytes,
        tensor_count: plan.tensors.len(),
        metadata_count: plan.metadata.len(),
        total_parameters: plan.total_parameters,
    })
}

/// [`forge_gguf_with_progress`] without progress.
pub fn forge_gguf(spec: &ForgeSpec, out: &Path) -> Result<GgufReport, ForgeError> {
    forge_gguf_with_progress(spec, out, &mut |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_interleaves_each_heads_halves() {
        // d = 8: rows 0..8 of a head come from 0,4,1,5,2,6,3,7 (converter's `permute`).
        let rows: Vec<u64> = (0..16).map(|r| permuted_source_row(r, 8)).collect();
        assert_eq!(rows, [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]);
    }
}
