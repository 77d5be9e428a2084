//! Typed errors of the engine: each names the tensor, field, token or file at fault and what was
//! expected, so the CLI can print one clear line instead of a panic deep inside a kernel.

use std::path::PathBuf;

/// Everything that can stop loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The checkpoint could not be opened or a tensor could not be read.
    #[error(transparent)]
    Weights(#[from] swarmlm_weights::WeightsError),
    /// A tensor has a shape that does not match what the config implies.
    #[error("tensor {tensor}: shape {found:?}, expected {expected:?} (from config.json)")]
    Shape {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A config field has a value this engine cannot run.
    #[error("config field {field} = {value}: {expected}")]
    Config {
        field: &'static str,
        value: String,
        expected: String,
    },
    /// A token id is not below the vocabulary size.
    #[error("token id {id} at position {position} is out of range: the vocabulary has {vocab} tokens (ids 0..{vocab})")]
    TokenOutOfRange {
        id: u32,
        position: usize,
        vocab: usize,
    },
    /// The sequence would not fit the model's context (max_position_embeddings) or the cache.
    #[error("{what}: {needed} positions needed, but the context holds {limit}")]
    ContextOverflow {
        what: &'static str,
        needed: usize,
        limit: usize,
    },
    /// An empty prompt: there is nothing to predict from.
    #[error("the prompt is empty: at least one token is needed")]
    EmptyPrompt,
    /// A request argument is out of range.
    #[error("invalid argument {name} = {value}: {expected}")]
    InvalidArgument {
        name: &'static str,
        value: String,
        expected: String,
    },
    /// The tokenizer failed (encoding or decoding).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A model name was neither a folder nor a fetched model in the store.
    #[error("model {name:?} not found: not a folder, and not in the model store ({searched})")]
    ModelNotFound { name: String, searched: PathBuf },
    /// The expert pager refused a budget or could not load an expert.
    #[error(transparent)]
    Pager(#[from] crate::pager::PagerError),
    /// The candle reference implementation failed.
    #[error("candle reference: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
