//! swarmlm-engine: the Mixtral forward pass on memory-mapped weights, plus what turns it into a
//! text generator (tokenizer, sampling, generation loop, perplexity).
//!
//! - [`model`]: the fast path (bf16 mapped weights, f32 math, swarmlm-kernels), HF names.
//! - [`experts`]: the single access point for expert weights (where an expert pager hooks in).
//! - [`pager`]: keeps only the experts in use resident, under a memory budget, with prefetch.
//! - [`session`]: KV cache + batch prefill + decode steps, optional router tracing.
//! - [`generate`], [`perplexity`]: the two ways the CLI drives a session.
//! - [`profile`]: opt-in per-op decode timings (`SWARMLM_PROFILE=1`).
//! - [`reference`]: a plain candle-core forward the fast path is tested against.

pub mod error;
pub mod experts;
pub mod generate;
pub mod locate;
pub mod model;
pub mod pager;
pub mod perplexity;
mod populate;
pub mod profile;
pub mod reference;
pub mod sampling;
pub mod session;
pub mod tokenizer;

pub use error::{EngineError, Result};
pub use experts::{ExpertStore, ExpertWeights};
pub use generate::{
    generate, generate_cancellable, GenerateOptions, Generation, StopReason, Timings,
};
pub use model::{KvCache, LogitsFor, Model, ModelShape, RouterTrace, TokenRoute};
pub use pager::{Pager, PagerConfig, PagerStats};
pub use perplexity::{perplexity, Perplexity};
pub use profile::{OpProfile, OpProfileReport};
pub use reference::{ReferenceModel, ReferenceOutput};
pub use session::{Logits, Session};
