//! swarmlm-serve: an OpenAI-compatible HTTP server for a local model that also seeds the model
//! it serves.
//!
//! - [`api`]: OpenAI's request fields and error shape.
//! - [`chat`]: the Mistral instruct template (messages → prompt ids).
//! - [`worker`]: engine threads behind a fair FIFO queue, cancellation when a client leaves.
//! - [`routes`]: the axum router (`/v1/completions`, `/v1/chat/completions`, `/v1/models`,
//!   `/health`), API-key check, server-sent events.
//! - [`seeding`]: the swarm crate's seeder running next to the server, reported in `/health`.
//!
//! [`Server`] ties them together; the `swarmlm serve` subcommand only parses arguments.

pub mod api;
pub mod chat;
pub mod routes;
pub mod seeding;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use swarmlm_engine::tokenizer::Tokenizer;
use swarmlm_swarm::{SeedOptions, SeedTarget};
use swarmlm_weights::Checkpoint;

pub use seeding::{SeedStatus, Seeder};
pub use worker::{EngineConfig, EnginePool};

/// Limits and identity of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The model name clients send in `model` (and `/v1/models` lists).
    pub model_id: String,
    /// Required as `Authorization: Bearer KEY` on every route but `/health`.
    pub api_key: Option<String>,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Largest `max_tokens` accepted (400 above).
    pub max_tokens_limit: usize,
    /// How long running generations may go on after a shutdown signal before being cancelled.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    pub fn new(model_id: impl Into<String>) -> ServerConfig {
        ServerConfig {
            model_id: model_id.into(),
            api_key: None,
            max_body_bytes: 1 << 20,
            max_tokens_limit: 4096,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot load the model: {0}")]
    Engine(#[from] Box<swarmlm_engine::EngineError>),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A loaded model behind an HTTP API, optionally seeding.
pub struct Server {
    state: Arc<routes::AppState>,
}

impl Server {
    /// Loads the engine threads (returns when the model is ready).
    pub fn new(
        checkpoint: Checkpoint,
        tokenizer: Tokenizer,
        engine: &EngineConfig,
        config: ServerConfig,
    ) -> Result<Server, ServeError> {
        let cfg = checkpoint.config();
        let context = cfg.max_position_embeddings;
        let vocab = cfg.vocab_size;
        let tokenizer = Arc::new(tokenizer);
        let pool = EnginePool::start(Arc::new(checkpoint), tokenizer.clone(), engine)?;
        Ok(Server {
            state: Arc::new(routes::AppState::new(
                config, tokenizer, pool, context, vocab,
            )),
        })
    }

    /// Starts seeding `target` in the background (call inside the server's runtime).
    pub fn start_seeding(&mut self, target: SeedTarget, opts: SeedOptions) {
        let seeder = Arc::new(Seeder::start(target, opts));
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.seeder = Some(seeder);
        }
    }

    /// The seeder, when seeding.
    pub fn seeder(&self) -> Option<Arc<Seeder>> {
        self.state.seeder.clone()
    }

    /// The seeder's status (`off` without seeding).
    pub fn seed_status(&self) -> SeedStatus {
        self.state.seed_status()
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting, lets running
    /// generations finish for the grace period (cancelling them after), and stops seeding.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let state = self.state.clone();
        let app = routes::router(state.clone());
        let grace = state.config.shutdown_grace;
        let st = state.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests; running generations get {grace:?}");
            st.engine.close();
            let st2 = st.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                st2.engine.abort_all();
            });
        };
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await;
        state.engine.abort_all();
        if let Some(seeder) = &state.seeder {
            seeder.stop().await;
        }
        let engine_state = state.clone();
        let _ = tokio::task::spawn_blocking(move || engine_state.engine.join()).await;
        served.map_err(ServeError::Io)
    }
}
