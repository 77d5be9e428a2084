//! Which tensors a Mixtral shape implies (hub names and `[out, in]` shapes), and how they are
//! laid out into shards: the plan is fixed before writing, so the index, every header and every
//! byte offset are known up front and the data can be streamed.

use serde::Serialize;

use crate::error::ForgeError;
use crate::rng;
use crate::shape::Shape;

/// How a tensor's values are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Init {
    /// Pseudo-random normal, std 0.02 (see [`crate::rng`]).
    Normal,
    /// Exactly 1.0 (RMSNorm weights).
    Ones,
}

/// One tensor of the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl TensorSpec {
    /// Number of elements (checked against overflow).
    pub fn numel(&self) -> Result<u64, ForgeError> {
        self.shape.iter().try_fold(1u64, |acc, &d| {
            acc.checked_mul(d as u64)
                .ok_or_else(|| ForgeError::TooLarge {
                    what: format!("element count of {}", self.name),
                })
        })
    }

    /// Bytes in bf16.
    pub fn bytes(&self) -> Result<u64, ForgeError> {
        self.numel()?
            .checked_mul(2)
            .ok_or_else(|| ForgeError::TooLarge {
                what: format!("byte size of {}", self.name),
            })
    }
}

/// Every hub tensor of `shape` with its kind, in model order (embeddings, then layer by layer:
/// input norm, q/k/v/o, post-attention norm, router gate, experts 0.. with w1/w2/w3; then the
/// final norm and `lm_head`). This is also the order in which tensors are assigned to shards.
pub fn tensor_specs(shape: &Shape) -> Vec<TensorSpec> {
    let h = shape.hidden_size;
    let i = shape.intermediate_size;
    let d = shape.head_dim();
    let q = shape.num_attention_heads * d;
    let kv = shape.num_key_value_heads * d;
    let v = shape.vocab_size;
    let e = shape.num_local_experts;
    let t = |name: String, shape: Vec<usize>, init: Init| TensorSpec { name, shape, init };
    let mut out = Vec::with_capacity(3 + shape.num_hidden_layers * (7 + 3 * e));
    out.push(t(
        "model.embed_tokens.weight".into(),
        vec![v, h],
        Init::Normal,
    ));
    for l in 0..shape.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push(t(
            format!("{p}.input_layernorm.weight"),
            vec![h],
            Init::Ones,
        ));
        out.push(t(
            format!("{p}.self_attn.q_proj.weight"),
            vec![q, h],
            Init::Normal,
        ));
        out.push(t(
            format!("{p}.self_attn.k_proj.weight"),
            vec![kv, h],
            Init::Normal,
        ));
        out.push(t(
            format!("{p}.self_attn.v_proj.weight"),
            vec![kv, h],
            Init::Normal,
        ));
        out.push(t(
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, q],
            Init::Normal,
        ));
        out.push(t(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            Init::Ones,
        ));
        out.push(t(
            format!("{p}.block_sparse_moe.gate.weight"),
            vec![e, h],
            Init::Normal,
        ));
        for x in 0..e {
            let ep = format!("{p}.block_sparse_moe.experts.{x}");
            out.push(t(format!("{ep}.w1.weight"), vec![i, h], Init::Normal));
            out.push(t(format!("{ep}.w2.weight"), vec![h, i], Init::Normal));
            out.push(t(format!("{ep}.w3.weight"), vec![i, h], Init::Normal));
        }
    }
    out.push(t("model.norm.weight".into(), vec![h], Init::Ones));
    out.push(t("lm_head.weight".into(), vec![v, h], Init::Normal));
    out
}

/// Every hub tensor name of `shape` with its shape, in model order (see [`tensor_specs`]).
pub fn tensor_list(shape: &Shape) -> Vec<(String, Vec<usize>)> {
    tensor_specs(shape)
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect()
}

/// A tensor's place in its shard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlacedTensor {
    pub spec: TensorSpec,
    /// Byte offset within the shard's data section (after the header).
    pub offset: u64,
    pub bytes: u64,
}

/// One safetensors file to write.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardPlan {
    pub file_name: String,
    /// Sorted by name; data is laid out in this order.
    pub tensors: Vec<PlacedTensor>,
    /// The 8-byte length prefix followed by the JSON header, space-padded so the data starts
    /// at a multiple of 8.
    #[serde(skip)]
    pub prefix: Vec<u8>,
    /// Bytes of tensor data (the file is `prefix.len() + data_bytes` long).
    pub data_bytes: u64,
}

impl ShardPlan {
    pub fn file_bytes(&self) -> u64 {
        self.prefix.len() as u64 + self.data_bytes
    }
}

/// The whole checkpoint's layout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub shards: Vec<ShardPlan>,
    /// Sum of tensor data bytes (the index's `metadata.total_size`).
    pub total_size: u64,
    pub total_parameters: u64,
}

/// Lay the tensors of `shape` out into shards of at most `shard_size` data bytes, hub style:
/// tensors are taken in model order and a shard is closed when the next tensor would overflow it;
/// a tensor larger than `shard_size` gets a shard of its own. `metadata` goes into every header's
/// `__metadata__` (next to `"format": "pt"`, which transformers requires).
pub fn plan(
    shape: &Shape,
    shard_size: u64,
    metadata: &[(&str, String)],
) -> Result<Plan, ForgeError> {
    if shard_size == 0 {
        return Err(ForgeError::InvalidSetting {
            field: "shard_size",
            value: "0".into(),
            expected: "must be at least 1 byte".into(),
        });
    }
    let mut groups: Vec<Vec<(TensorSpec, u64)>> = Vec::new();
    let mut current: Vec<(TensorSpec, u64)> = Vec::new();
    let mut current_bytes = 0u64;
    let (mut total_size, mut total_parameters) = (0u64, 0u64);
    let overflow = || ForgeError::TooLarge {
        what: "total checkpoint size".into(),
    };
    for spec in tensor_specs(shape) {
        let bytes = spec.bytes()?;
        total_size = total_size.checked_add(bytes).ok_or_else(overflow)?;
        total_parameters = total_parameters
            .checked_add(spec.numel()?)
            .ok_or_else(overflow)?;
        if !current.is_empty() && current_bytes + bytes > shard_size {
            groups.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += bytes;
        current.push((spec, bytes));
    }
    if !current.is_empty() {
        groups.push(current);
    }
    let n = groups.len();
    let shards = groups
        .into_iter()
        .enumerate()
        .map(|(k, mut group)| {
            group.sort_by(|a, b| a.0.name.cmp(&b.0.name));
            let mut offset = 0u64;
            let tensors: Vec<PlacedTensor> = group
                .into_iter()
                .map(|(spec, bytes)| {
                    let placed = PlacedTensor {
                        spec,
                        offset,
                        bytes,
                    };
                    offset += bytes;
                    placed
                })
                .collect();
            ShardPlan {
                file_name: shard_file_name(k + 1, n),
                prefix: header_prefix(&tensors, metadata),
                tensors,
                data_bytes: offset,
            }
        })
        .collect();
    Ok(Plan {
        shards,
        total_size,
        total_parameters,
    })
}

/// `model-00001-of-00019.safetensors`: 1-based, five digits, as on the hub.
pub fn shard_file_name(index: usize, count: usize) -> String {
    format!("model-{index:05}-of-{count:05}.safetensors")
}

fn header_prefix(tensors: &[PlacedTensor], metadata: &[(&str, String)]) -> Vec<u8> {
    // Written by hand (not through a JSON map) so the key order, and so the bytes, are fixed.
    let js = |s: &str| serde_json::to_string(s).expect("a string always serialises");
    let mut h = String::from("{\"__metadata__\":{\"format\":\"pt\"");
    for (k, v) in metadata {
        h.push_str(&format!(",{}:{}", js(k), js(v)));
    }
    h.push('}');
    for t in tensors {
        let dims: Vec<String> = t.spec.shape.iter().map(|d| d.to_string()).collect();
        h.push_str(&format!(
            ",{}:{{\"dtype\":\"BF16\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            js(&t.spec.name),
            dims.join(","),
            t.offset,
            t.offset + t.bytes
        ));
    }
    h.push('}');
    while (8 + h.len()) % 8 != 0 {
        h.push(' ');
    }
    let mut out = Vec::with_capacity(8 + h.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out
}

/// The metadata every forged shard carries: which generator and seed made it.
pub(crate) fn shard_metadata(seed: u64) -> Vec<(&'static str, String)> {
    vec![
        ("swarmlm_forge_generator", rng::GENERATOR.to_string()),
        ("swarmlm_forge_seed", seed.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Preset;

    #[test]
    fn real_mixtral_plan_matches_the_hub_checkpoint() {
        // mistralai/Mixtral-8x7B-v0.1: 995 tensors, 93,405,585,408 bytes in 19 shards of ≤ 5 GB.
        let shape = Preset::Mixtral8x7b.shape();
        let p = plan(&shape, 5_000_000_000, &[]).unwrap();
        let count: usize = p.shards.iter().map(|s| s.tensors.len()).sum();
        assert_eq!(count, 995);
        assert_eq!(p.total_size, 93_405_585_408);
        assert_eq!(p.total_parameters, 46_702_792_704);
        assert_eq!(p.shards.len(), 19);
        assert_eq!(p.shards[18].file_name, "model-00019-of-00019.safetensors");
        assert!(p.shards.iter().all(|s| s.data_bytes <= 5_000_000_000));
    }

    #[test]
    fn oversized_tensor_gets_its_own_shard() {
        let shape = Preset::Tiny.shape();
        // Embedding is 32000*64*2 = 4,096,000 bytes; layers' tensors are far smaller.
        let p = plan(&shape, 1_000_000, &[]).unwrap();
        assert_eq!(p.shards[0].tensors.len(), 1);
        assert_eq!(
            p.shards[0].tensors[0].spec.name,
            "model.embed_tokens.weight"
        );
        let last = p.shards.last().unwrap();
        assert_eq!(last.tensors.len(), 1);
        assert_eq!(last.tensors[0].spec.name, "lm_head.weight");
        for s in &p.shards[1..p.shards.len() - 1] {
            assert!(s.data_bytes <= 1_000_000);
        }
    }

    #[test]
    fn header_is_padded_to_eight_and_parses() {
        let shape = Preset::Tiny.shape();
        let p = plan(&shape, 5_000_000_000, &[("k", "v\"q".into())]).unwrap();
        let s = &p.shards[0];
        assert_eq!(s.prefix.len() % 8, 0);
        let n = u64::from_le_bytes(s.prefix[..8].try_into().unwrap()) as usize;
        assert_eq!(n + 8, s.prefix.len());
        let v: serde_json::Value = serde_json::from_slice(&s.prefix[8..]).unwrap();
        assert_eq!(v["__metadata__"]["format"], "pt");
        assert_eq!(v["__metadata__"]["k"], "v\"q");
        assert_eq!(v["lm_head.weight"]["shape"], serde_json::json!([32000, 64]));
    }
}
