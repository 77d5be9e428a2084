//! The one door to expert weights.
//!
//! Experts are ~95% of a Mixtral checkpoint, and which of them are resident in memory is what an
//! expert pager controls. Every read of an expert's weights in the engine goes through
//! [`ExpertStore::get`], so residency policy (madvise, LRU, a memory budget) has exactly one
//! place to hook into. The weights themselves are never copied: an [`ExpertWeights`] is three
//! borrowed bf16 slices of the memory-mapped checkpoint.

use half::bf16;
use swarmlm_weights::Checkpoint;

use crate::error::{EngineError, Result};
use crate::model::{bf16_matrix, expert_tensor_names};
use crate::pager::{Pager, PagerConfig, Pinned};

/// The three matrices of one SwiGLU expert, borrowed from the mapped checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct ExpertWeights<'w> {
    /// Gate projection `[intermediate, hidden]`.
    pub w1: &'w [bf16],
    /// Up projection `[intermediate, hidden]`.
    pub w3: &'w [bf16],
    /// Down projection `[hidden, intermediate]`.
    pub w2: &'w [bf16],
}

/// All experts of all layers, addressed by `(layer, expert)`.
pub struct ExpertStore<'w> {
    checkpoint: &'w Checkpoint,
    num_experts: usize,
    /// Layer-major: `experts[layer * num_experts + expert]`.
    experts: Vec<ExpertWeights<'w>>,
    /// When set, residency of every expert is managed under a memory budget.
    pager: Option<Pager<'w>>,
}

impl<'w> ExpertStore<'w> {
    /// Resolves and shape-checks every expert tensor once, at load time.
    pub fn open(checkpoint: &'w Checkpoint) -> Result<ExpertStore<'w>> {
        let cfg = checkpoint.config();
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let mut experts = Vec::with_capacity(cfg.num_hidden_layers * cfg.num_local_experts);
        for layer in 0..cfg.num_hidden_layers {
            for expert in 0..cfg.num_local_experts {
                let names = expert_tensor_names(layer, expert);
                experts.push(ExpertWeights {
                    w1: bf16_matrix(checkpoint, &names.w1, i, h)?,
                    w3: bf16_matrix(checkpoint, &names.w3, i, h)?,
                    w2: bf16_matrix(checkpoint, &names.w2, h, i)?,
                });
            }
        }
        if cfg.num_local_experts == 0 {
            return Err(EngineError::Config {
                field: "num_local_experts",
                value: "0".into(),
                expected: "at least 1".into(),
            });
        }
        Ok(ExpertStore {
            checkpoint,
            num_experts: cfg.num_local_experts,
            experts,
            pager: None,
        })
    }

    /// The weights of `expert` in `layer`. Callers index only experts the router chose, and
    /// both indices come from the config, so an out-of-range index is a bug in the engine.
    #[inline]
    pub fn get(&self, layer: usize, expert: usize) -> ExpertWeights<'w> {
        self.experts[layer * self.num_experts + expert]
    }

    /// Puts every expert under an expert pager (replacing any previous one).
    pub fn attach_pager(&mut self, config: PagerConfig) -> Result<()> {
        self.pager = None;
        self.pager = Some(Pager::new(self.checkpoint, config)?);
        Ok(())
    }

    /// The attached pager, if any.
    pub fn pager(&self) -> Option<&Pager<'w>> {
        self.pager.as_ref()
    }

    /// Tells the pager which experts `layer` is about to use (no-op without a pager).
    pub(crate) fn begin_layer(&self, layer: usize, needed: &[usize]) -> Result<()> {
        if let Some(p) = &self.pager {
            p.begin_layer(layer, needed)?;
        }
        Ok(())
    }

    /// The weights of `expert` in `layer`, resident and pinned until the result is dropped.
    pub(crate) fn acquire(&self, layer: usize, expert: usize) -> Result<Pinned<'_, 'w>> {
        let w = self.get(layer, expert);
        match &self.pager {
            Some(p) => Ok(p.acquire(layer, expert, w)?),
            None => Ok(Pinned::unpaged(w)),
        }
    }

    /// The checkpoint the weights are mapped from (for residency queries and advice).
    pub fn checkpoint(&self) -> &'w Checkpoint {
        self.checkpoint
    }

    /// Number of experts per layer.
    pub fn num_experts(&self) -> usize {
        self.num_experts
    }
}
