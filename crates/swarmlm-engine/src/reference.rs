//! A plain candle-core forward pass of Mixtral, written for reading, not for speed.
//!
//! It exists so the fast path (bf16 kernels, KV cache, batched experts) has an independent
//! check that runs without Python: the same checkpoint through two unrelated implementations
//! must give the same logits and router choices. Everything here is full-sequence, f32, and
//! mirrors Hugging Face's `modeling_mixtral.py` (eager attention, eager experts) line by line.
//! Mistral-format weights (interleaved RoPE) are converted at load time with the exact row
//! permutation HF's conversion script applies, so this path only knows half-split RoPE.

use candle_core::{DType, Device, IndexOp, Tensor, D};
use swarmlm_weights::{Checkpoint, RopeLayout};

use crate::error::{EngineError, Result};
use crate::model::layer_tensor_names;

/// What one full-sequence forward produced.
#[derive(Debug, Clone)]
pub struct ReferenceOutput {
    /// `[T, vocab]` logits, row per position.
    pub logits: Vec<Vec<f32>>,
    /// Per layer, `[T, n_experts]` router logits.
    pub router_logits: Vec<Vec<Vec<f32>>>,
    /// Per layer, per position: the chosen experts in descending probability.
    pub router_experts: Vec<Vec<Vec<usize>>>,
}

struct ReferenceLayer {
    input_layernorm: Tensor,
    q_proj: Tensor,
    k_proj: Tensor,
    v_proj: Tensor,
    o_proj: Tensor,
    post_attention_layernorm: Tensor,
    gate: Tensor,
    /// Per expert: (w1, w3, w2).
    experts: Vec<(Tensor, Tensor, Tensor)>,
}

/// Mixtral in candle, all weights widened to f32 up front.
pub struct ReferenceModel {
    hidden_size: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    num_experts: usize,
    top_k: usize,
    rms_norm_eps: f64,
    rope_theta: f64,
    sliding_window: Option<usize>,
    embed_tokens: Tensor,
    layers: Vec<ReferenceLayer>,
    norm: Tensor,
    lm_head: Tensor,
}

fn load_f32(ckpt: &Checkpoint, name: &str) -> Result<Tensor> {
    let view = ckpt.tensor(name)?;
    let shape = view.shape.to_vec();
    let data = view.to_f32_vec();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// The HF conversion's per-head row permutation for q/k: original row `(h, 2i + j)` becomes
/// row `(h, j * d/2 + i)`. Applied to Mistral-format weights so half-split RoPE is correct.
fn permute_interleaved_rows(w: &Tensor, n_heads: usize, head_dim: usize) -> Result<Tensor> {
    let in_features = w.dim(1)?;
    // [nH, d/2, 2, in] -> [nH, 2, d/2, in]
    let w = w
        .reshape((n_heads, head_dim / 2, 2, in_features))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n_heads * head_dim, in_features))?;
    Ok(w)
}

impl ReferenceModel {
    /// Loads every tensor of the checkpoint as f32 (small models only: this copies everything).
    pub fn load(ckpt: &Checkpoint) -> Result<ReferenceModel> {
        let cfg = ckpt.config();
        let interleaved = matches!(ckpt.rope_layout(), RopeLayout::Interleaved);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let n = layer_tensor_names(l);
            let mut q_proj = load_f32(ckpt, &n.q_proj)?;
            let mut k_proj = load_f32(ckpt, &n.k_proj)?;
            if interleaved {
                q_proj = permute_interleaved_rows(&q_proj, cfg.num_attention_heads, cfg.head_dim)?;
                k_proj = permute_interleaved_rows(&k_proj, cfg.num_key_value_heads, cfg.head_dim)?;
            }
            let mut experts = Vec::with_capacity(cfg.num_local_experts);
            for e in 0..cfg.num_local_experts {
                let en = crate::model::expert_tensor_names(l, e);
                experts.push((
                    load_f32(ckpt, &en.w1)?,
                    load_f32(ckpt, &en.w3)?,
                    load_f32(ckpt, &en.w2)?,
                ));
            }
            layers.push(ReferenceLayer {
                input_layernorm: load_f32(ckpt, &n.input_layernorm)?,
                q_proj,
                k_proj,
                v_proj: load_f32(ckpt, &n.v_proj)?,
                o_proj: load_f32(ckpt, &n.o_proj)?,
                post_attention_layernorm: load_f32(ckpt, &n.post_attention_layernorm)?,
                gate: load_f32(ckpt, &n.gate)?,
                experts,
            });
        }
        let embed_tokens = load_f32(ckpt, "model.embed_tokens.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            load_f32(ckpt, "lm_head.weight")?
        };
        Ok(ReferenceModel {
            hidden_size: cfg.hidden_size,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            num_experts: cfg.num_local_experts,
            top_k: cfg.num_experts_per_tok,
            rms_norm_eps: cfg.rms_norm_eps,
            rope_theta: cfg.rope_theta,
            sliding_window: cfg.sliding_window,
            embed_tokens,
            layers,
            norm: load_f32(ckpt, "model.norm.weight")?,
            lm_head,
        })
    }

    /// `MixtralRMSNorm`: `x * rsqrt(mean(x²) + eps) * w`.
    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let variance = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (variance + self.rms_norm_eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
    }

    /// `MixtralRotaryEmbedding`: cos/sin `[T, d]` for positions `0..T`, computed in f32 as HF does.
    fn rotary(&self, t: usize) -> Result<(Tensor, Tensor)> {
        let d = self.head_dim;
        let inv_freq: Vec<f32> = (0..d)
            .step_by(2)
            .map(|i| 1.0 / (self.rope_theta as f32).powf(i as f32 / d as f32))
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, d / 2), &Device::Cpu)?;
        let pos: Vec<f32> = (0..t).map(|p| p as f32).collect();
        let pos = Tensor::from_vec(pos, (t, 1), &Device::Cpu)?;
        let freqs = pos.matmul(&inv_freq)?;
        let emb = Tensor::cat(&[&freqs, &freqs], 1)?;
        Ok((emb.cos()?, emb.sin()?))
    }

    fn rotate_half(x: &Tensor) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        Ok(Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?)
    }

    /// `apply_rotary_pos_emb` on `[heads, T, d]`.
    fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok((x.broadcast_mul(cos)? + Self::rotate_half(x)?.broadcast_mul(sin)?)?)
    }

    /// Causal mask (with the optional sliding window): 0 where key j is visible from query i.
    fn mask(&self, t: usize) -> Result<Tensor> {
        let mut m = vec![0f32; t * t];
        for i in 0..t {
            for j in 0..t {
                let visible = j <= i && self.sliding_window.is_none_or(|w| i < j + w);
                if !visible {
                    m[i * t + j] = f32::NEG_INFINITY;
                }
            }
        }
        Ok(Tensor::from_vec(m, (t, t), &Device::Cpu)?)
    }

    fn softmax_last(x: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?;
        let e = x.broadcast_sub(&max)?.exp()?;
        Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
    }

    /// `MixtralAttention` (eager) over the whole sequence `x: [T, H]`.
    fn attention(
        &self,
        layer: &ReferenceLayer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let t = x.dim(0)?;
        let d = self.head_dim;
        let q = x.matmul(&layer.q_proj.t()?)?;
        let k = x.matmul(&layer.k_proj.t()?)?;
        let v = x.matmul(&layer.v_proj.t()?)?;
        let q = q
            .reshape((t, self.num_heads, d))?
            .transpose(0, 1)?
            .contiguous()?;
        let k = k
            .reshape((t, self.num_kv_heads, d))?
            .transpose(0, 1)?
            .contiguous()?;
        let v = v
            .reshape((t, self.num_kv_heads, d))?
            .transpose(0, 1)?
            .contiguous()?;
        let q = Self::apply_rotary(&q, cos, sin)?;
        let k = Self::apply_rotary(&k, cos, sin)?;
        // repeat_kv: query head h reads kv head h / (nH / nKV).
        let groups = self.num_heads / self.num_kv_heads;
        let kv_index: Vec<u32> = (0..self.num_heads).map(|h| (h / groups) as u32).collect();
        let kv_index = Tensor::from_vec(kv_index, self.num_heads, &Device::Cpu)?;
        let k = k.index_select(&kv_index, 0)?;
        let v = v.index_select(&kv_index, 0)?;
        let scale = 1.0 / (d as f64).sqrt();
        let scores = (q.matmul(&k.transpose(1, 2)?.contiguous()?)? * scale)?;
        let scores = scores.broadcast_add(mask)?;
        let probs = Self::softmax_last(&scores)?;
        let out = probs.matmul(&v)?; // [nH, T, d]
        let out = out
            .transpose(0, 1)?
            .contiguous()?
            .reshape((t, self.num_heads * d))?;
        Ok(out.matmul(&layer.o_proj.t()?)?)
    }

    /// `MixtralSparseMoeBlock`: softmax router, top-k, renormalise, experts grouped by index.
    fn moe(
        &self,
        layer: &ReferenceLayer,
        x: &Tensor,
        router_logits_out: &mut Vec<Vec<f32>>,
        experts_out: &mut Vec<Vec<usize>>,
    ) -> Result<Tensor> {
        let t = x.dim(0)?;
        let router_logits = x.matmul(&layer.gate.t()?)?;
        let probs = Self::softmax_last(&router_logits)?.to_vec2::<f32>()?;
        *router_logits_out = router_logits.to_vec2::<f32>()?;
        let mut per_expert: Vec<(Vec<u32>, Vec<f32>)> =
            vec![(Vec::new(), Vec::new()); self.num_experts];
        experts_out.clear();
        for (tok, p) in probs.iter().enumerate() {
            let mut order: Vec<usize> = (0..self.num_experts).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            order.truncate(self.top_k);
            let sum: f32 = order.iter().map(|&e| p[e]).sum();
            for &e in &order {
                per_expert[e].0.push(tok as u32);
                per_expert[e].1.push(p[e] / sum);
            }
            experts_out.push(order);
        }
        let mut out = Tensor::zeros((t, self.hidden_size), DType::F32, &Device::Cpu)?;
        for (e, (tokens, weights)) in per_expert.into_iter().enumerate() {
            if tokens.is_empty() {
                continue;
            }
            let n = tokens.len();
            let idx = Tensor::from_vec(tokens, n, &Device::Cpu)?;
            let w = Tensor::from_vec(weights, (n, 1), &Device::Cpu)?;
            let (w1, w3, w2) = &layer.experts[e];
            let xs = x.index_select(&idx, 0)?;
            let h = (xs.matmul(&w1.t()?)?.silu()? * xs.matmul(&w3.t()?)?)?;
            let y = h.matmul(&w2.t()?)?.broadcast_mul(&w)?;
            out = out.index_add(&idx, &y, 0)?;
        }
        Ok(out)
    }

    /// Runs the whole sequence and returns every position's logits and router choices.
    pub fn forward(&self, ids: &[u32]) -> Result<ReferenceOutput> {
        let t = ids.len();
        if t == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        let vocab = self.embed_tokens.dim(0)?;
        if let Some((position, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab)
        {
            return Err(EngineError::TokenOutOfRange {
                id,
                position,
                vocab,
            });
        }
        let idx = Tensor::from_vec(ids.to_vec(), t, &Device::Cpu)?;
        let mut x = self.embed_tokens.index_select(&idx, 0)?;
        let (cos, sin) = self.rotary(t)?;
        let mask = self.mask(t)?;
        let mut router_logits = Vec::with_capacity(self.layers.len());
        let mut router_experts = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let h = self.rms_norm(&x, &layer.input_layernorm)?;
            x = (x + self.attention(layer, &h, &cos, &sin, &mask)?)?;
            let h = self.rms_norm(&x, &layer.post_attention_layernorm)?;
            let (mut rl, mut re) = (Vec::new(), Vec::new());
            x = (x + self.moe(layer, &h, &mut rl, &mut re)?)?;
            router_logits.push(rl);
            router_experts.push(re);
        }
        let x = self.rms_norm(&x, &self.norm)?;
        let logits = x.matmul(&self.lm_head.t()?)?;
        let logits = (0..t)
            .map(|i| logits.i(i)?.to_vec1::<f32>())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(ReferenceOutput {
            logits,
            router_logits,
            router_experts,
        })
    }
}
