//! A conversation with the model: a KV cache plus reusable buffers.
//!
//! [`Session::prefill`] runs a whole prompt as one batch; [`Session::decode_step`] appends one
//! token. Router choices can be recorded per layer and position for tests and for the expert
//! pager's statistics.

use crate::error::Result;
use crate::model::{Activations, KvCache, LogitsFor, Model, RouterTrace};

/// Logits of several consecutive positions, row-major `[rows, vocab]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    pub vocab: usize,
    pub data: Vec<f32>,
}

impl Logits {
    /// Number of positions.
    pub fn rows(&self) -> usize {
        self.data.len() / self.vocab.max(1)
    }

    /// Logits of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }
}

/// A KV cache bound to a model, with optional router tracing.
pub struct Session<'m, 'w> {
    model: &'m Model<'w>,
    cache: KvCache,
    acts: Activations,
    trace: Option<RouterTrace>,
    logits: Vec<f32>,
}

impl<'m, 'w> Session<'m, 'w> {
    /// A session able to hold `capacity` positions (capped at max_position_embeddings).
    pub fn new(model: &'m Model<'w>, capacity: usize) -> Session<'m, 'w> {
        Session {
            model,
            cache: model.new_cache(capacity),
            acts: Activations::default(),
            trace: None,
            logits: Vec::new(),
        }
    }

    /// The model this session runs.
    pub fn model(&self) -> &'m Model<'w> {
        self.model
    }

    /// Positions processed so far.
    pub fn position(&self) -> usize {
        self.cache.len()
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Starts over with an empty cache (buffers are reused).
    pub fn reset(&mut self) {
        self.cache.clear();
        if let Some(t) = &mut self.trace {
            t.layers.clear();
        }
    }

    /// Starts recording router choices of every following token.
    pub fn enable_router_trace(&mut self) {
        self.trace.get_or_insert_with(RouterTrace::default);
    }

    /// Router choices recorded so far (`layers[l][position]`), if tracing is enabled.
    pub fn router_trace(&self) -> Option<&RouterTrace> {
        self.trace.as_ref()
    }

    fn run(&mut self, ids: &[u32], want: LogitsFor) -> Result<()> {
        self.model.forward(
            ids,
            &mut self.cache,
            self.trace.as_mut(),
            want,
            &mut self.acts,
            &mut self.logits,
        )
    }

    /// Processes `ids` as one batch and returns the logits of its last position.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<&[f32]> {
        self.run(ids, LogitsFor::Last)?;
        Ok(&self.logits)
    }

    /// Processes `ids` as one batch and returns the logits of every one of its positions.
    pub fn prefill_all(&mut self, ids: &[u32]) -> Result<Logits> {
        self.run(ids, LogitsFor::All)?;
        Ok(Logits {
            vocab: self.model.shape().vocab_size,
            data: self.logits.clone(),
        })
    }

    /// Appends one token and returns the logits predicting the next.
    pub fn decode_step(&mut self, id: u32) -> Result<&[f32]> {
        self.run(&[id], LogitsFor::Last)?;
        Ok(&self.logits)
    }
}
