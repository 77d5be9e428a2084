//! Router lookahead: guess which experts layer `L+1` will pick while layer `L` is still running.
//!
//! The residual stream changes little from one layer to the next, so layer `L+1`'s router
//! (its `post_attention_layernorm` then `gate`) applied to the hidden state available during
//! layer `L` — after `L`'s attention, before `L`'s experts — picks mostly the same experts
//! that `L+1` will pick from its real input. Predicting at that point leaves all of layer `L`'s
//! expert work and layer `L+1`'s attention to overlap with the loads. Accuracy is measured per
//! layer in [`super::LayerStats::predicted_correct`].

use swarmlm_kernels as kernels;

use crate::model::{route, Model};

/// Top-k experts layer `next` would pick for the one-token residual stream `x`. `scratch` is
/// reused between calls.
pub(crate) fn predict(
    model: &Model<'_>,
    next: usize,
    x: &[f32],
    scratch: &mut Vec<f32>,
) -> Vec<usize> {
    let s = &model.shape;
    let layer = &model.layers[next];
    scratch.clear();
    scratch.resize(s.hidden_size + s.num_experts, 0.0);
    let (normed, logits) = scratch.split_at_mut(s.hidden_size);
    kernels::rms_norm(x, &layer.post_attention_layernorm, s.rms_norm_eps, normed);
    layer
        .block_sparse_moe
        .gate
        .forward(&model.pool, normed, 1, logits);
    route(logits, s.top_k).0
}
