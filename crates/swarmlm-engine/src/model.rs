//! The Mixtral forward pass on memory-mapped bf16 weights (the fast path).
//!
//! Structure and names mirror Hugging Face's `modeling_mixtral.py` so the two can be read side by
//! side: [`MixtralDecoderLayer`] = `h = x + MixtralAttention(input_layernorm(x))`, then
//! `out = h + MixtralSparseMoeBlock(post_attention_layernorm(h))`; final `norm`, then `lm_head`.
//! Every shape comes from the typed config; nothing assumes 8x7B. Weights stay in the mapping
//! (borrowed `&[bf16]`), activations are f32, and every reduction runs in f32.
//!
//! One forward handles a batch of `T` consecutive tokens: the prompt as one batch (batched
//! matmuls, causal attention over the prompt, tokens grouped per expert so each expert runs once)
//! or a single decode token (`T = 1`, matvec kernels).

use half::bf16;
use swarmlm_kernels as kernels;
use swarmlm_kernels::{KvCacheLayer, Pool, RopeTable};
use swarmlm_weights::{Checkpoint, MixtralConfig, RopeLayout};

use crate::error::{EngineError, Result};
use crate::experts::ExpertStore;
use crate::pager::Phase;
use crate::populate::{populate, FirstUse};
use crate::profile::{Op, OpProfile};

/// HF names of one decoder layer's non-expert tensors.
pub(crate) struct LayerTensorNames {
    pub input_layernorm: String,
    pub post_attention_layernorm: String,
    pub q_proj: String,
    pub k_proj: String,
    pub v_proj: String,
    pub o_proj: String,
    pub gate: String,
}

pub(crate) fn layer_tensor_names(layer: usize) -> LayerTensorNames {
    let p = format!("model.layers.{layer}");
    LayerTensorNames {
        input_layernorm: format!("{p}.input_layernorm.weight"),
        post_attention_layernorm: format!("{p}.post_attention_layernorm.weight"),
        q_proj: format!("{p}.self_attn.q_proj.weight"),
        k_proj: format!("{p}.self_attn.k_proj.weight"),
        v_proj: format!("{p}.self_attn.v_proj.weight"),
        o_proj: format!("{p}.self_attn.o_proj.weight"),
        gate: format!("{p}.block_sparse_moe.gate.weight"),
    }
}

/// HF names of one expert's three matrices.
pub(crate) struct ExpertTensorNames {
    pub w1: String,
    pub w3: String,
    pub w2: String,
}

pub(crate) fn expert_tensor_names(layer: usize, expert: usize) -> ExpertTensorNames {
    let p = format!("model.layers.{layer}.block_sparse_moe.experts.{expert}");
    ExpertTensorNames {
        w1: format!("{p}.w1.weight"),
        w3: format!("{p}.w3.weight"),
        w2: format!("{p}.w2.weight"),
    }
}

/// A `[rows, cols]` bf16 matrix borrowed from the mapping, shape-checked against the config.
pub(crate) fn bf16_matrix<'w>(
    ckpt: &'w Checkpoint,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<&'w [bf16]> {
    let view = ckpt.tensor(name)?;
    if view.shape != [rows, cols] {
        return Err(EngineError::Shape {
            tensor: name.to_string(),
            expected: vec![rows, cols],
            found: view.shape.to_vec(),
        });
    }
    Ok(view.as_bf16()?)
}

/// A norm weight vector, widened to f32 once (it is tiny and read every token).
fn f32_vector(ckpt: &Checkpoint, name: &str, len: usize) -> Result<Vec<f32>> {
    let view = ckpt.tensor(name)?;
    if view.shape != [len] {
        return Err(EngineError::Shape {
            tensor: name.to_string(),
            expected: vec![len],
            found: view.shape.to_vec(),
        });
    }
    Ok(view.to_f32_vec())
}

/// `nn.Linear` without bias: `y = W x`, `W` `[out, in]` bf16 in the mapping.
#[derive(Clone, Copy)]
pub(crate) struct Linear<'w> {
    pub weight: &'w [bf16],
    pub out_features: usize,
    pub in_features: usize,
}

impl<'w> Linear<'w> {
    fn load(
        ckpt: &'w Checkpoint,
        name: &str,
        out_features: usize,
        in_features: usize,
    ) -> Result<Self> {
        Ok(Linear {
            weight: bf16_matrix(ckpt, name, out_features, in_features)?,
            out_features,
            in_features,
        })
    }

    /// `ys[t] = W xs[t]` for `n` rows; one weight pass for all rows when `n > 1`.
    pub fn forward(&self, pool: &Pool, xs: &[f32], n: usize, ys: &mut [f32]) {
        debug_assert_eq!(xs.len(), n * self.in_features);
        debug_assert_eq!(ys.len(), n * self.out_features);
        if n == 1 {
            kernels::matvec_bf16(pool, self.weight, xs, ys);
        } else {
            kernels::matmul_bf16(pool, self.weight, xs, n, ys);
        }
    }
}

/// Shape numbers used by the forward pass, taken from the typed config once.
#[derive(Debug, Clone)]
pub struct ModelShape {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub num_experts: usize,
    pub top_k: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
    pub sliding_window: Option<usize>,
    pub rms_norm_eps: f32,
}

impl ModelShape {
    fn from_config(cfg: &MixtralConfig) -> Result<ModelShape> {
        let bad = |field: &'static str, value: usize, expected: &str| EngineError::Config {
            field,
            value: value.to_string(),
            expected: expected.to_string(),
        };
        let s = ModelShape {
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            num_layers: cfg.num_hidden_layers,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            num_experts: cfg.num_local_experts,
            top_k: cfg.num_experts_per_tok,
            vocab_size: cfg.vocab_size,
            max_positions: cfg.max_position_embeddings,
            sliding_window: cfg.sliding_window,
            rms_norm_eps: cfg.rms_norm_eps as f32,
        };
        if s.num_kv_heads == 0 || !s.num_heads.is_multiple_of(s.num_kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                s.num_kv_heads,
                &format!("a divisor of num_attention_heads ({})", s.num_heads),
            ));
        }
        if s.head_dim == 0 || !s.head_dim.is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                s.head_dim,
                "an even number > 0 (rotary pairs)",
            ));
        }
        if s.top_k == 0 || s.top_k > s.num_experts {
            return Err(bad(
                "num_experts_per_tok",
                s.top_k,
                &format!("between 1 and num_local_experts ({})", s.num_experts),
            ));
        }
        if s.vocab_size == 0 {
            return Err(bad("vocab_size", 0, "at least 1"));
        }
        if s.max_positions == 0 {
            return Err(bad("max_position_embeddings", 0, "at least 1"));
        }
        if s.sliding_window == Some(0) {
            return Err(bad("sliding_window", 0, "null or at least 1"));
        }
        Ok(s)
    }

    /// First key position visible from a query at `pos` (causal, optional sliding window: a
    /// query at p sees keys p-W+1..=p).
    #[inline]
    pub fn first_visible(&self, pos: usize) -> usize {
        match self.sliding_window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        }
    }
}

/// `MixtralAttention`: grouped-query attention with rotary embeddings.
pub(crate) struct MixtralAttention<'w> {
    pub q_proj: Linear<'w>,
    pub k_proj: Linear<'w>,
    pub v_proj: Linear<'w>,
    pub o_proj: Linear<'w>,
}

/// `MixtralSparseMoeBlock`: the router (`gate`); the experts live in the [`ExpertStore`].
pub(crate) struct MixtralSparseMoeBlock<'w> {
    pub gate: Linear<'w>,
}

/// `MixtralDecoderLayer`.
pub(crate) struct MixtralDecoderLayer<'w> {
    pub input_layernorm: Vec<f32>,
    pub self_attn: MixtralAttention<'w>,
    pub post_attention_layernorm: Vec<f32>,
    pub block_sparse_moe: MixtralSparseMoeBlock<'w>,
}

/// A loaded model: borrowed weights, f32 norm vectors, the rotary table and a worker pool.
pub struct Model<'w> {
    pub(crate) shape: ModelShape,
    pub(crate) checkpoint: &'w Checkpoint,
    pub(crate) embed_tokens: &'w [bf16],
    pub(crate) layers: Vec<MixtralDecoderLayer<'w>>,
    pub(crate) norm: Vec<f32>,
    pub(crate) lm_head: Linear<'w>,
    pub(crate) experts: ExpertStore<'w>,
    pub(crate) rope: RopeTable,
    pub(crate) rope_layout: kernels::RopeLayout,
    pub(crate) pool: Pool,
    pub(crate) profile: OpProfile,
    /// Page tables filled yet? Index 0: every dense matrix; `1 + layer * experts + e`: an expert.
    pub(crate) first_use: FirstUse,
}

impl<'w> Model<'w> {
    /// Resolves and shape-checks every tensor of `checkpoint` (no weight is copied) and starts a
    /// pool of `threads` threads (0 = one per physical core).
    pub fn load(checkpoint: &'w Checkpoint, threads: usize) -> Result<Model<'w>> {
        let cfg = checkpoint.config();
        let shape = ModelShape::from_config(cfg)?;
        let (h, d) = (shape.hidden_size, shape.head_dim);
        let q_out = shape.num_heads * d;
        let kv_out = shape.num_kv_heads * d;
        let mut layers = Vec::with_capacity(shape.num_layers);
        for l in 0..shape.num_layers {
            let n = layer_tensor_names(l);
            layers.push(MixtralDecoderLayer {
                input_layernorm: f32_vector(checkpoint, &n.input_layernorm, h)?,
                self_attn: MixtralAttention {
                    q_proj: Linear::load(checkpoint, &n.q_proj, q_out, h)?,
                    k_proj: Linear::load(checkpoint, &n.k_proj, kv_out, h)?,
                    v_proj: Linear::load(checkpoint, &n.v_proj, kv_out, h)?,
                    o_proj: Linear::load(checkpoint, &n.o_proj, h, q_out)?,
                },
                post_attention_layernorm: f32_vector(checkpoint, &n.post_attention_layernorm, h)?,
                block_sparse_moe: MixtralSparseMoeBlock {
                    gate: Linear::load(checkpoint, &n.gate, shape.num_experts, h)?,
                },
            });
        }
        let embed_tokens =
            bf16_matrix(checkpoint, "model.embed_tokens.weight", shape.vocab_size, h)?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear {
                weight: embed_tokens,
                out_features: shape.vocab_size,
                in_features: h,
            }
        } else {
            Linear::load(checkpoint, "lm_head.weight", shape.vocab_size, h)?
        };
        let rope_layout = match checkpoint.rope_layout() {
            RopeLayout::HalfSplit => kernels::RopeLayout::HalfSplit,
            RopeLayout::Interleaved => kernels::RopeLayout::Interleaved,
        };
        Ok(Model {
            rope: RopeTable::new(d, cfg.rope_theta, shape.max_positions),
            rope_layout,
            norm: f32_vector(checkpoint, "model.norm.weight", h)?,
            experts: ExpertStore::open(checkpoint)?,
            embed_tokens,
            layers,
            lm_head,
            checkpoint,
            pool: Pool::new(threads),
            profile: OpProfile::from_env(),
            first_use: FirstUse::new(1 + shape.num_layers * shape.num_experts),
            shape,
        })
    }

    /// Before the first forward, asks for huge-page mappings of the weight files (see
    /// `Checkpoint::advise_huge_pages`) and fills the page tables of every dense matrix a token
    /// reads (see [`crate::populate`]); an attached pager manages residency itself, so not then.
    fn populate_dense_once(&self) {
        if self.experts.pager().is_some() || !self.first_use.take(0) {
            return;
        }
        self.checkpoint.advise_huge_pages();
        for l in &self.layers {
            let a = &l.self_attn;
            for m in [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &l.block_sparse_moe.gate,
            ] {
                populate(&self.pool, m.weight);
            }
        }
        populate(&self.pool, self.lm_head.weight);
    }

    /// Before an expert's first use, fills its page tables (not under a pager).
    fn populate_expert_once(&self, layer: usize, expert: usize) {
        let idx = 1 + layer * self.shape.num_experts + expert;
        if self.experts.pager().is_some() || !self.first_use.take(idx) {
            return;
        }
        let w = self.experts.get(layer, expert);
        for m in [w.w1, w.w3, w.w2] {
            populate(&self.pool, m);
        }
    }

    /// Shape numbers from the config.
    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// The checkpoint this model reads from.
    pub fn checkpoint(&self) -> &'w Checkpoint {
        self.checkpoint
    }

    /// The single access point for expert weights.
    pub fn experts(&self) -> &ExpertStore<'w> {
        &self.experts
    }

    /// Puts the experts under an expert pager with `config` (a memory budget and policy).
    pub fn attach_pager(&mut self, config: crate::pager::PagerConfig) -> Result<()> {
        self.experts.attach_pager(config)
    }

    /// The attached expert pager, if any (for its statistics).
    pub fn pager(&self) -> Option<&crate::pager::Pager<'w>> {
        self.experts.pager()
    }

    /// Per-op decode timings, when enabled with `SWARMLM_PROFILE=1` (else `None`).
    pub fn op_profile(&self) -> Option<crate::profile::OpProfileReport> {
        self.profile.report()
    }

    /// Threads the kernels split work over.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Fails with a typed error naming the first id that is not a vocabulary index.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.shape.vocab_size;
        match ids.iter().position(|&id| id as usize >= vocab) {
            Some(position) => Err(EngineError::TokenOutOfRange {
                id: ids[position],
                position,
                vocab,
            }),
            None => Ok(()),
        }
    }

    /// A fresh KV cache for up to `capacity` positions (capped at max_position_embeddings).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let cap = capacity.clamp(1, self.shape.max_positions);
        KvCache {
            layers: (0..self.shape.num_layers)
                .map(|_| KvCacheLayer::new(self.shape.num_kv_heads, self.shape.head_dim, cap))
                .collect(),
            capacity: cap,
            len: 0,
        }
    }
}

/// The per-layer keys and values of every position processed so far.
pub struct KvCache {
    pub(crate) layers: Vec<KvCacheLayer>,
    capacity: usize,
    pub(crate) len: usize,
}

impl KvCache {
    /// Positions held so far (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position has been processed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position (the buffers are kept for reuse).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// One token's routing in one layer: experts in descending probability and their renormalised
/// weights, plus the raw router logits.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRoute {
    pub experts: Vec<usize>,
    pub weights: Vec<f32>,
    pub router_logits: Vec<f32>,
}

/// Router choices collected while enabled: `layers[l][position]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouterTrace {
    pub layers: Vec<Vec<TokenRoute>>,
}

/// Which positions' logits a forward should compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Only the last token of the batch (generation).
    Last,
    /// Every token of the batch (perplexity, tests).
    All,
}

/// Reusable activation buffers for one batch, grown as needed.
#[derive(Default)]
pub(crate) struct Activations {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    delta: Vec<f32>,
    router_logits: Vec<f32>,
    expert_in: Vec<f32>,
    expert_out: Vec<f32>,
    expert_scales: Vec<f32>,
    expert_scratch: Vec<f32>,
    attn_scratch: Vec<Vec<f32>>,
    last: Vec<f32>,
    lookahead: Vec<f32>,
}

fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.clear();
    buf.resize(len, 0.0);
    buf.as_mut_slice()
}

/// Routing of one token: softmax over router logits, top-k, renormalise (HF order: descending
/// probability; ties go to the lower expert index).
pub(crate) fn route(router_logits: &[f32], top_k: usize) -> (Vec<usize>, Vec<f32>) {
    let mut probs = router_logits.to_vec();
    kernels::softmax_in_place(&mut probs);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order.truncate(top_k);
    let sum: f32 = order.iter().map(|&e| probs[e]).sum();
    let weights = order.iter().map(|&e| probs[e] / sum).collect();
    (order, weights)
}

impl<'w> MixtralAttention<'w> {
    /// Attention for `t` consecutive tokens at `start..start+t`: project, rotate, append K/V to
    /// the cache, then each query attends to its visible keys. `out` is `[t, hidden]`.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        model: &Model<'_>,
        hidden: &[f32],
        t: usize,
        start: usize,
        cache: &mut KvCacheLayer,
        a: &mut Activations,
        out: &mut [f32],
    ) {
        let s = &model.shape;
        let pool = &model.pool;
        let d = s.head_dim;
        let (q_dim, kv_dim) = (s.num_heads * d, s.num_kv_heads * d);
        let q = sized(&mut a.q, t * q_dim);
        let k = sized(&mut a.k, t * kv_dim);
        let v = sized(&mut a.v, t * kv_dim);
        self.q_proj.forward(pool, hidden, t, q);
        self.k_proj.forward(pool, hidden, t, k);
        self.v_proj.forward(pool, hidden, t, v);
        for i in 0..t {
            let pos = start + i;
            let qi = &mut q[i * q_dim..(i + 1) * q_dim];
            let ki = &mut k[i * kv_dim..(i + 1) * kv_dim];
            model.rope.apply(model.rope_layout, qi, pos);
            model.rope.apply(model.rope_layout, ki, pos);
            cache.write(pos, ki, &v[i * kv_dim..(i + 1) * kv_dim]);
        }
        let attn = sized(&mut a.attn, t * q_dim);
        if t == 1 {
            let scratch = a.attn_scratch.first_mut().expect("scratch allocated");
            kernels::attention_decode(
                pool,
                q,
                cache,
                s.num_heads,
                s.first_visible(start),
                start + 1,
                attn,
                scratch,
            );
        } else {
            // Queries are independent once the cache holds the whole batch: split them over
            // the pool (kernel calls inside a pool job run inline on that thread).
            let cache: &KvCacheLayer = cache;
            let n_threads = pool.threads();
            let rows_per = t.div_ceil(n_threads);
            let parts: Vec<std::sync::Mutex<(&mut [f32], &mut Vec<f32>)>> = attn
                .chunks_mut(rows_per * q_dim)
                .zip(a.attn_scratch.iter_mut())
                .map(std::sync::Mutex::new)
                .collect();
            let q: &[f32] = q;
            pool.run(|tid, _| {
                let Some(part) = parts.get(tid) else { return };
                let mut guard = part.lock().unwrap_or_else(|e| e.into_inner());
                let (rows, scratch) = &mut *guard;
                let first = tid * rows_per;
                for (r, o) in rows.chunks_exact_mut(q_dim).enumerate() {
                    let i = first + r;
                    let pos = start + i;
                    kernels::attention_decode(
                        pool,
                        &q[i * q_dim..(i + 1) * q_dim],
                        cache,
                        s.num_heads,
                        s.first_visible(pos),
                        pos + 1,
                        o,
                        scratch,
                    );
                }
            });
        }
        self.o_proj.forward(pool, attn, t, out);
    }
}

impl<'w> MixtralSparseMoeBlock<'w> {
    /// Router → top-k → renormalise → experts, tokens grouped by expert so each chosen expert
    /// runs once over all its tokens. Adds into `out` (`[t, hidden]`, zeroed by the caller).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        model: &Model<'_>,
        layer: usize,
        hidden: &[f32],
        t: usize,
        a: &mut Activations,
        trace: Option<&mut Vec<TokenRoute>>,
        out: &mut [f32],
    ) -> Result<()> {
        let s = &model.shape;
        let pool = &model.pool;
        let hsz = s.hidden_size;
        let mark = model.profile.mark(t == 1);
        let router_logits = sized(&mut a.router_logits, t * s.num_experts);
        self.gate.forward(pool, hidden, t, router_logits);
        // Per expert: the tokens routed to it and their weights.
        let mut assigned: Vec<Vec<(usize, f32)>> = vec![Vec::new(); s.num_experts];
        let mut routes = Vec::with_capacity(if trace.is_some() { t } else { 0 });
        for i in 0..t {
            let logits = &router_logits[i * s.num_experts..(i + 1) * s.num_experts];
            let (experts, weights) = route(logits, s.top_k);
            for (&e, &w) in experts.iter().zip(&weights) {
                assigned[e].push((i, w));
            }
            if trace.is_some() {
                routes.push(TokenRoute {
                    experts,
                    weights,
                    router_logits: logits.to_vec(),
                });
            }
        }
        if let Some(trace) = trace {
            trace.extend(routes);
        }
        // The pager hears the demand in expert order, the order the experts are computed in.
        let needed: Vec<usize> = (0..s.num_experts)
            .filter(|&e| !assigned[e].is_empty())
            .collect();
        let mark = model.profile.lap(mark, Op::Router);
        model.experts.begin_layer(layer, &needed)?;
        for (e, tokens) in assigned.iter().enumerate() {
            if tokens.is_empty() {
                continue;
            }
            model.populate_expert_once(layer, e);
            let w = model.experts.acquire(layer, e)?;
            let n = tokens.len();
            if let Some(blocks) = w.blocks() {
                let x = Streamed {
                    pool,
                    w: &w,
                    blocks,
                    hidden,
                    hsz,
                    inter: s.intermediate_size,
                };
                if t == 1 {
                    x.single(tokens[0].1, out, &mut a.expert_scratch)?;
                } else {
                    x.batch(tokens, out, a)?;
                }
                continue;
            }
            if t == 1 {
                a.expert_scratch.resize(s.intermediate_size, 0.0);
                kernels::expert_ffn_bf16(
                    pool,
                    w.w1,
                    w.w3,
                    w.w2,
                    hidden,
                    tokens[0].1,
                    out,
                    &mut a.expert_scratch,
                );
                continue;
            }
            let xs = sized(&mut a.expert_in, n * hsz);
            for (row, &(i, _)) in xs.chunks_exact_mut(hsz).zip(tokens) {
                row.copy_from_slice(&hidden[i * hsz..(i + 1) * hsz]);
            }
            a.expert_scales.clear();
            a.expert_scales.extend(tokens.iter().map(|&(_, w)| w));
            let ys = sized(&mut a.expert_out, n * hsz);
            kernels::expert_ffn_bf16_batch(
                pool,
                w.w1,
                w.w3,
                w.w2,
                xs,
                n,
                &a.expert_scales,
                ys,
                &mut a.expert_scratch,
            );
            for (row, &(i, _)) in ys.chunks_exact(hsz).zip(tokens) {
                for (o, y) in out[i * hsz..(i + 1) * hsz].iter_mut().zip(row) {
                    *o += y;
                }
            }
        }
        model.profile.lap(mark, Op::Experts);
        Ok(())
    }
}

/// One streamed expert's FFN ([`crate::pager::Pinned::blocks`]): each block computed as soon
/// as its rows are in memory and dropped behind, with the same row kernels as the
/// whole-expert path, so the results are bit-identical.
struct Streamed<'a, 'p, 'w> {
    pool: &'a Pool,
    w: &'a crate::pager::Pinned<'p, 'w>,
    blocks: &'a [crate::pager::Block],
    /// The layer's input, `[t, hsz]`.
    hidden: &'a [f32],
    hsz: usize,
    inter: usize,
}

impl Streamed<'_, '_, '_> {
    /// Decode (one token): [`kernels::expert_ffn_bf16`] block by block.
    fn single(&self, scale: f32, out: &mut [f32], scratch: &mut Vec<f32>) -> Result<()> {
        scratch.resize(self.inter, 0.0);
        let (hsz, isz) = (self.hsz, self.inter);
        for (i, b) in self.blocks.iter().enumerate() {
            self.w.wait_block(i)?;
            let r = b.rows.clone();
            match b.phase {
                Phase::GateUp => kernels::expert_gate_up_rows_bf16(
                    self.pool,
                    &self.w.w1[r.start * hsz..r.end * hsz],
                    &self.w.w3[r.start * hsz..r.end * hsz],
                    &self.hidden[..hsz],
                    &mut scratch[r],
                ),
                Phase::Down => kernels::expert_down_rows_bf16(
                    self.pool,
                    &self.w.w2[r.start * isz..r.end * isz],
                    &scratch[..isz],
                    scale,
                    &mut out[r],
                ),
            }
            self.w.release_block(i)?;
        }
        Ok(())
    }

    /// Prefill (the tokens routed to this expert, with their weights):
    /// [`kernels::expert_ffn_bf16_batch`] block by block.
    fn batch(&self, tokens: &[(usize, f32)], out: &mut [f32], a: &mut Activations) -> Result<()> {
        let (hsz, isz, n) = (self.hsz, self.inter, tokens.len());
        let xs = sized(&mut a.expert_in, n * hsz);
        for (row, &(i, _)) in xs.chunks_exact_mut(hsz).zip(tokens) {
            row.copy_from_slice(&self.hidden[i * hsz..(i + 1) * hsz]);
        }
        a.expert_scales.clear();
        a.expert_scales.extend(tokens.iter().map(|&(_, w)| w));
        let ys = sized(&mut a.expert_out, n * hsz);
        let h = sized(&mut a.expert_scratch, n * isz);
        for (i, b) in self.blocks.iter().enumerate() {
            self.w.wait_block(i)?;
            let r = b.rows.clone();
            match b.phase {
                Phase::GateUp => kernels::expert_gate_up_rows_bf16_batch(
                    self.pool,
                    &self.w.w1[r.start * hsz..r.end * hsz],
                    &self.w.w3[r.start * hsz..r.end * hsz],
                    xs,
                    n,
                    r.start,
                    h,
                ),
                Phase::Down => kernels::expert_down_rows_bf16_batch(
                    self.pool,
                    &self.w.w2[r.start * isz..r.end * isz],
                    h,
                    n,
                    &a.expert_scales,
                    r.start,
                    ys,
                ),
            }
            self.w.release_block(i)?;
        }
        for (row, &(i, _)) in ys.chunks_exact(hsz).zip(tokens) {
            for (o, y) in out[i * hsz..(i + 1) * hsz].iter_mut().zip(row) {
                *o += y;
            }
        }
        Ok(())
    }
}

impl<'w> Model<'w> {
    /// Runs tokens `ids` at positions `cache.len()..` through every layer, appending to the
    /// cache. Returns logits `[1, vocab]` (Last) or `[t, vocab]` (All) in `logits`.
    pub(crate) fn forward(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        mut trace: Option<&mut RouterTrace>,
        want: LogitsFor,
        a: &mut Activations,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let s = &self.shape;
        let t = ids.len();
        if t == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        self.check_ids(ids)?;
        self.populate_dense_once();
        let start = cache.len;
        if start + t > cache.capacity {
            return Err(EngineError::ContextOverflow {
                what: "the sequence",
                needed: start + t,
                limit: cache.capacity,
            });
        }
        let hsz = s.hidden_size;
        let pool = &self.pool;
        // Attention scratch: one per thread (prefill) or one (decode); sized for the longest
        // span a query can see.
        let span = cache.capacity.min(s.sliding_window.unwrap_or(usize::MAX));
        let per = s.num_heads * span.max(1) + s.num_heads * s.head_dim;
        a.attn_scratch.resize_with(pool.threads().max(1), Vec::new);
        for sc in &mut a.attn_scratch {
            sc.resize(per, 0.0);
        }

        let timed = t == 1;
        let mut mark = self.profile.mark(timed);
        let x = sized(&mut a.x, t * hsz);
        for (row, &id) in x.chunks_exact_mut(hsz).zip(ids) {
            let e = &self.embed_tokens[id as usize * hsz..(id as usize + 1) * hsz];
            for (o, w) in row.iter_mut().zip(e) {
                *o = w.to_f32();
            }
        }
        let mut x = std::mem::take(&mut a.x);
        let mut h = std::mem::take(&mut a.h);
        let mut delta = std::mem::take(&mut a.delta);
        h.resize(t * hsz, 0.0);
        for (l, layer) in self.layers.iter().enumerate() {
            mark = self.profile.lap(mark, Op::Other);
            // h = x + self_attn(input_layernorm(x))
            for (xr, hr) in x.chunks_exact(hsz).zip(h.chunks_exact_mut(hsz)) {
                kernels::rms_norm(xr, &layer.input_layernorm, s.rms_norm_eps, hr);
            }
            let d = sized(&mut delta, t * hsz);
            layer
                .self_attn
                .forward(self, &h, t, start, &mut cache.layers[l], a, d);
            mark = self.profile.lap(mark, Op::Attention);
            add_in_place(&mut x, d);
            // While this layer's experts run, the pager can load the next layer's likely ones.
            if let Some(pager) = self.experts.pager() {
                if t == 1 && l + 1 < s.num_layers {
                    let next = crate::pager::lookahead::predict(self, l + 1, &x, &mut a.lookahead);
                    pager.predict(l + 1, &next);
                }
            }
            // out = h + block_sparse_moe(post_attention_layernorm(h))
            for (xr, hr) in x.chunks_exact(hsz).zip(h.chunks_exact_mut(hsz)) {
                kernels::rms_norm(xr, &layer.post_attention_layernorm, s.rms_norm_eps, hr);
            }
            self.profile.lap(mark, Op::Other);
            let d = sized(&mut delta, t * hsz);
            let layer_trace = trace.as_deref_mut().map(|tr| {
                if tr.layers.len() < s.num_layers {
                    tr.layers.resize_with(s.num_layers, Vec::new);
                }
                &mut tr.layers[l]
            });
            layer
                .block_sparse_moe
                .forward(self, l, &h, t, a, layer_trace, d)?;
            mark = self.profile.mark(timed);
            add_in_place(&mut x, d);
        }
        mark = self.profile.lap(mark, Op::Other);
        cache.len = start + t;
        // norm, then lm_head on the rows asked for.
        let rows = match want {
            LogitsFor::Last => &x[(t - 1) * hsz..],
            LogitsFor::All => &x[..],
        };
        let n = rows.len() / hsz;
        let normed = sized(&mut a.last, n * hsz);
        for (xr, hr) in rows.chunks_exact(hsz).zip(normed.chunks_exact_mut(hsz)) {
            kernels::rms_norm(xr, &self.norm, s.rms_norm_eps, hr);
        }
        logits.clear();
        logits.resize(n * s.vocab_size, 0.0);
        self.lm_head.forward(pool, normed, n, logits);
        self.profile.lap(mark, Op::LmHead);
        self.profile.step(timed);
        a.x = x;
        a.h = h;
        a.delta = delta;
        Ok(())
    }
}

fn add_in_place(x: &mut [f32], d: &[f32]) {
    for (a, b) in x.iter_mut().zip(d) {
        *a += b;
    }
}
