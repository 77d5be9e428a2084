//! Tensor names and shapes: which tensors a config implies, how Mistral's original names map to
//! the hub names the engine uses, and the per-head row permutation between the two RoPE layouts.
//!
//! The engine addresses every tensor by its hub name whatever the file format, so this mapping is
//! the single place where the two naming schemes meet.

use crate::MixtralConfig;

/// Every tensor the config implies, with its shape, in a stable order (embedding, then each
/// layer, then the final norm and the LM head). `lm_head.weight` is absent when the embeddings
/// are tied.
pub fn hf_tensor_names(cfg: &MixtralConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let i = cfg.intermediate_size;
    let d = cfg.head_dim;
    let q = cfg.num_attention_heads * d;
    let kv = cfg.num_key_value_heads * d;
    let mut out = Vec::with_capacity(3 + cfg.num_hidden_layers * (8 + 3 * cfg.num_local_experts));
    out.push((
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, h],
    ));
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((
            format!("{p}.block_sparse_moe.gate.weight"),
            vec![cfg.num_local_experts, h],
        ));
        for e in 0..cfg.num_local_experts {
            let x = format!("{p}.block_sparse_moe.experts.{e}");
            out.push((format!("{x}.w1.weight"), vec![i, h]));
            out.push((format!("{x}.w2.weight"), vec![h, i]));
            out.push((format!("{x}.w3.weight"), vec![i, h]));
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    out
}

fn is_index(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 6
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'))
}

/// Maps a tensor name of Mistral's original checkpoint to its hub name; `None` for a name that
/// is not part of a Mixtral state dict.
pub fn mistral_to_hf_name(name: &str) -> Option<String> {
    match name {
        "tok_embeddings.weight" => return Some("model.embed_tokens.weight".into()),
        "norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    if !is_index(layer) {
        return None;
    }
    let mapped = match rest {
        "attention.wq.weight" => "self_attn.q_proj.weight".to_string(),
        "attention.wk.weight" => "self_attn.k_proj.weight".to_string(),
        "attention.wv.weight" => "self_attn.v_proj.weight".to_string(),
        "attention.wo.weight" => "self_attn.o_proj.weight".to_string(),
        "attention_norm.weight" => "input_layernorm.weight".to_string(),
        "ffn_norm.weight" => "post_attention_layernorm.weight".to_string(),
        "block_sparse_moe.gate.weight" => rest.to_string(),
        _ => {
            let e = rest.strip_prefix("block_sparse_moe.experts.")?;
            let (expert, w) = e.split_once('.')?;
            if !is_index(expert) || !matches!(w, "w1.weight" | "w2.weight" | "w3.weight") {
                return None;
            }
            rest.to_string()
        }
    };
    Some(format!("model.layers.{layer}.{mapped}"))
}

/// The inverse of [`mistral_to_hf_name`].
pub fn hf_to_mistral_name(name: &str) -> Option<String> {
    match name {
        "model.embed_tokens.weight" => return Some("tok_embeddings.weight".into()),
        "model.norm.weight" => return Some("norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    if !is_index(layer) {
        return None;
    }
    let mapped = match rest {
        "self_attn.q_proj.weight" => "attention.wq.weight".to_string(),
        "self_attn.k_proj.weight" => "attention.wk.weight".to_string(),
        "self_attn.v_proj.weight" => "attention.wv.weight".to_string(),
        "self_attn.o_proj.weight" => "attention.wo.weight".to_string(),
        "input_layernorm.weight" => "attention_norm.weight".to_string(),
        "post_attention_layernorm.weight" => "ffn_norm.weight".to_string(),
        _ => {
            let candidate = format!("layers.{layer}.{rest}");
            mistral_to_hf_name(&candidate)?;
            return Some(candidate);
        }
    };
    Some(format!("layers.{layer}.{mapped}"))
}

/// For a q/k projection of an **interleaved** (Mistral original) checkpoint: the hub
/// (half-split) row that original row `row` becomes. Within each head of `head_dim` rows,
/// original row `2i + j` becomes row `j * head_dim/2 + i` (j ∈ {0, 1}).
///
/// An engine that reads `.pth` weights can either use interleaved RoPE directly, or read row
/// `interleaved_row_for_half_split(r, d)` of the original when it wants hub row `r`.
pub fn half_split_row_for_interleaved(row: usize, head_dim: usize) -> usize {
    let half = head_dim / 2;
    let (h, r) = (row / head_dim, row % head_dim);
    let (i, j) = (r / 2, r % 2);
    h * head_dim + j * half + i
}

/// The inverse of [`half_split_row_for_interleaved`]: the original (interleaved) row that holds
/// hub row `row`.
pub fn interleaved_row_for_half_split(row: usize, head_dim: usize) -> usize {
    let half = head_dim / 2;
    let (h, r) = (row / head_dim, row % head_dim);
    let (j, i) = (r / half, r % half);
    h * head_dim + 2 * i + j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_for_every_implied_tensor() {
        let cfg = MixtralConfig {
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 12,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            num_local_experts: 11,
            num_experts_per_tok: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 1e6,
            sliding_window: None,
            vocab_size: 100,
            max_position_embeddings: 128,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            tie_word_embeddings: false,
        };
        let names = hf_tensor_names(&cfg);
        assert_eq!(names.len(), 3 + 12 * (7 + 3 * 11));
        for (hf, _) in &names {
            let m = hf_to_mistral_name(hf).unwrap_or_else(|| panic!("{hf} has no Mistral name"));
            assert_eq!(mistral_to_hf_name(&m).as_deref(), Some(hf.as_str()), "{m}");
        }
        assert_eq!(
            hf_to_mistral_name("model.layers.3.self_attn.k_proj.weight").as_deref(),
            Some("layers.3.attention.wk.weight")
        );
        assert_eq!(
            mistral_to_hf_name("layers.10.block_sparse_moe.experts.7.w2.weight").as_deref(),
            Some("model.layers.10.block_sparse_moe.experts.7.w2.weight")
        );
        for bad in [
            "layers.x.attention.wq.weight",
            "layers.01.attention.wq.weight",
            "layers.1.attention.wz.weight",
            "layers.1.block_sparse_moe.experts.1.w4.weight",
            "rope.freqs",
            "",
        ] {
            assert_eq!(mistral_to_hf_name(bad), None, "{bad}");
        }
        let mut tied = cfg.clone();
        tied.tie_word_embeddings = true;
        assert!(!hf_tensor_names(&tied)
            .iter()
            .any(|(n, _)| n == "lm_head.weight"));
    }

    #[test]
    fn rope_row_permutation_matches_the_hf_conversion() {
        // HF's permute(w, n_heads, dim1, dim2) = w.view(n_heads, dim1/n_heads/2, 2, dim2)
        //   .transpose(1, 2).reshape(dim1, dim2): new row (h, j, i) = old row (h, i, j).
        let d = 8;
        let heads = 3;
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..d / 2 {
                    let old = h * d + 2 * i + j;
                    let new = h * d + j * (d / 2) + i;
                    assert_eq!(half_split_row_for_interleaved(old, d), new);
                    assert_eq!(interleaved_row_for_half_split(new, d), old);
                }
            }
        }
    }
}
