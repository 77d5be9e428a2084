//! Shared helpers for the integration tests: tiny Mixtral configs and model folders written
//! with the `safetensors` crate (an independent writer, so our reader is checked against it).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView as StView;
use safetensors::Dtype as StDtype;
use swarmlm_weights::{hf_tensor_names, MixtralConfig};

pub mod pth;

pub const TINY_CONFIG: &str = r#"{
  "architectures": ["MixtralForCausalLM"],
  "model_type": "mixtral",
  "hidden_size": 16,
  "intermediate_size": 24,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "head_dim": null,
  "num_local_experts": 3,
  "num_experts_per_tok": 2,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "sliding_window": null,
  "vocab_size": 10,
  "max_position_embeddings": 64,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16"
}"#;

pub fn tiny_config() -> MixtralConfig {
    MixtralConfig::from_hf_json(TINY_CONFIG.as_bytes()).expect("tiny config")
}

/// Deterministic, name-dependent bf16 bytes for a tensor with `numel` elements.
pub fn pattern_bf16(name: &str, numel: usize) -> Vec<u8> {
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut out = Vec::with_capacity(numel * 2);
    let mut x = seed;
    for _ in 0..numel {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
        out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
    }
    out
}

/// All tensors `cfg` implies, as (name, shape, bf16 bytes).
pub fn model_tensors(cfg: &MixtralConfig) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    hf_tensor_names(cfg)
        .into_iter()
        .map(|(n, s)| {
            let bytes = pattern_bf16(&n, s.iter().product());
            (n, s, bytes)
        })
        .collect()
}

pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, StView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| (n.clone(), StView::new(StDtype::BF16, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    write_synced(path, &bytes);
}

/// Writes and fsyncs, so page-cache tests start from clean pages.
pub fn write_synced(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// A single-file hub folder for `TINY_CONFIG`.
pub fn write_single(dir: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    fs::write(dir.join("config.json"), TINY_CONFIG).unwrap();
    let t = model_tensors(&tiny_config());
    write_safetensors(&dir.join("model.safetensors"), &t);
    t
}

/// A two-shard hub folder for `TINY_CONFIG`, with its index.
pub fn write_sharded(dir: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    fs::write(dir.join("config.json"), TINY_CONFIG).unwrap();
    let t = model_tensors(&tiny_config());
    let (a, b) = t.split_at(t.len() / 2);
    write_safetensors(&dir.join("model-00001-of-00002.safetensors"), a);
    write_safetensors(&dir.join("model-00002-of-00002.safetensors"), b);
    let mut map = serde_json::Map::new();
    for (n, _, _) in a {
        map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (n, _, _) in b {
        map.insert(n.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    t
}

/// Builds a raw safetensors file from a header JSON string and a data area, no padding.
pub fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The `/proc/self/maps` line (perms, path) of the mapping that contains `ptr`.
pub fn mapping_of(ptr: *const u8) -> Option<(String, PathBuf)> {
    let maps = fs::read_to_string("/proc/self/maps").ok()?;
    let p = ptr as usize;
    for line in maps.lines() {
        let mut it = line.split_whitespace();
        let range = it.next()?;
        let perms = it.next()?;
        let (s, e) = range.split_once('-')?;
        let (s, e) = (
            usize::from_str_radix(s, 16).ok()?,
            usize::from_str_radix(e, 16).ok()?,
        );
        if (s..e).contains(&p) {
            let path = it.nth(3).map(PathBuf::from).unwrap_or_default();
            return Some((perms.to_string(), path));
        }
    }
    None
}
