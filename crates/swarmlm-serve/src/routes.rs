//! The HTTP routes: OpenAI's completion and chat endpoints (plain JSON or server-sent events),
//! the model list, and a health report that includes the seeder.
//!
//! Every refusal is an [`ApiError`] in OpenAI's shape; nothing a client sends can panic a
//! handler, and a handler dropped by hyper (client gone) closes its job's channel, which
//! cancels the generation at its next token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::stream;
use serde_json::{json, Value};
use swarmlm_engine::sampling::SamplingParams;
use swarmlm_engine::tokenizer::Tokenizer;
use swarmlm_engine::{GenerateOptions, StopReason};
use tokio::sync::mpsc;

use crate::api::{self, json_response, ApiError, Common, Prompt};
use crate::chat;
use crate::seeding::{SeedStatus, Seeder};
use crate::worker::{EnginePool, Finished, Job, JobEvent};
use crate::ServerConfig;

/// Default `max_tokens` of a completion when the request has none (OpenAI's legacy default).
pub const DEFAULT_COMPLETION_TOKENS: usize = 16;
/// Default `max_tokens` of a chat answer when the request has none (also capped by the context).
pub const DEFAULT_CHAT_TOKENS: usize = 512;

/// Everything the handlers share.
pub struct AppState {
    pub config: ServerConfig,
    pub tokenizer: Arc<Tokenizer>,
    pub engine: EnginePool,
    pub seeder: Option<Arc<Seeder>>,
    /// max_position_embeddings: prompt + answer must fit.
    pub context: usize,
    pub vocab: usize,
    created: u64,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(
        config: ServerConfig,
        tokenizer: Arc<Tokenizer>,
        engine: EnginePool,
        context: usize,
        vocab: usize,
    ) -> AppState {
        AppState {
            config,
            tokenizer,
            engine,
            seeder: None,
            context,
            vocab,
            created: unix_now(),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn seed_status(&self) -> SeedStatus {
        self.seeder
            .as_ref()
            .map_or_else(SeedStatus::off, |s| s.status())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The application with its routes, API-key check and JSON 404/405.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), check_key))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!(
            "no route {} {}: the API has GET /v1/models, POST /v1/completions, \
             POST /v1/chat/completions and GET /health",
            req.method(),
            req.uri().path()
        ),
        kind: "invalid_request_error",
        param: None,
        code: Some("unknown_url"),
    }
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("{} is not allowed on {}", req.method(), req.uri().path()),
        kind: "invalid_request_error",
        param: None,
        code: Some("method_not_allowed"),
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess matched.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn check_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(key) = &state.config.api_key else {
        return next.run(req).await;
    };
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let message = match given {
        Some(g) if same_secret(g.as_bytes(), key.as_bytes()) => return next.run(req).await,
        Some(_) => "incorrect API key provided",
        None => "missing API key: send the header Authorization: Bearer <key>",
    };
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.to_string(),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
    }
    .into_response()
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    json_response(&json!({
        "status": "ok",
        "model": state.config.model_id,
        "running": state.engine.running(),
        "waiting": state.engine.waiting(),
        "seeding": state.seed_status(),
    }))
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    json_response(&json!({
        "object": "list",
        "data": [{
            "id": state.config.model_id,
            "object": "model",
            "created": state.created,
            "owned_by": "swarmlm",
        }],
    }))
}

/// Reads the body up to the limit (413 beyond it).
async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    let too_large = |n: Option<u64>| {
        ApiError::invalid(
            None,
            Some("request_too_large"),
            match n {
                Some(n) => format!("the request body is {n} bytes; the limit is {limit} bytes"),
                None => format!("the request body is larger than the limit of {limit} bytes"),
            },
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        return Err(too_large(Some(n)));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        if inner
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            too_large(None)
        } else {
            ApiError::invalid(None, None, format!("cannot read the request body: {inner}"))
        }
    })
}

/// Which endpoint a generation answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

/// A checked request, ready for the engine.
struct Prepared {
    kind: Kind,
    prompt_ids: Vec<u32>,
    max_tokens: usize,
    common: Common,
}

fn check_model(state: &AppState, common: &Common) -> Result<(), ApiError> {
    match &common.model {
        Some(m) if *m != state.config.model_id => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "the model {m:?} does not exist here; this server serves {:?} (GET /v1/models)",
                state.config.model_id
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }),
        _ => Ok(()),
    }
}

fn prepare(
    state: &AppState,
    kind: Kind,
    prompt_ids: Vec<u32>,
    common: Common,
    prompt_param: &str,
) -> Result<Prepared, ApiError> {
    if prompt_ids.is_empty() {
        return Err(ApiError::invalid(
            Some(prompt_param),
            None,
            "the prompt is empty: at least one token is needed".into(),
        ));
    }
    if let Some((i, id)) = prompt_ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= state.vocab)
    {
        return Err(ApiError::invalid(
            Some(prompt_param),
            None,
            format!(
                "token id {id} at position {i} is out of range: the vocabulary has {} tokens",
                state.vocab
            ),
        ));
    }
    let context = state.context;
    if prompt_ids.len() >= context {
        return Err(ApiError::invalid(
            Some(prompt_param),
            Some("context_length_exceeded"),
            format!(
                "the prompt is {} tokens long; this model's context holds {context} tokens, \
                 including the answer",
                prompt_ids.len()
            ),
        ));
    }
    let room = context - prompt_ids.len();
    let limit = state.config.max_tokens_limit;
    let max_tokens = match common.max_tokens {
        Some(n) if n > limit as u64 => {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                Some("invalid_value"),
                format!("max_tokens is {n}; this server allows at most {limit}"),
            ))
        }
        Some(n) if n as usize > room => {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                Some("context_length_exceeded"),
                format!(
                    "this model's context holds {context} tokens; the prompt takes {} and \
                     max_tokens asks for {n} more (at most {room} fit)",
                    prompt_ids.len()
                ),
            ))
        }
        Some(n) => n as usize,
        None => match kind {
            Kind::Completion => DEFAULT_COMPLETION_TOKENS,
            Kind::Chat => DEFAULT_CHAT_TOKENS,
        }
        .min(room)
        .min(limit),
    };
    Ok(Prepared {
        kind,
        prompt_ids,
        max_tokens,
        common,
    })
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&state, &headers, body).await?;
    let req = api::completion_request(&body)?;
    check_model(&state, &req.common)?;
    let ids = match req.prompt {
        Prompt::Ids(ids) => ids,
        Prompt::Text(text) => state
            .tokenizer
            .encode(&text, state.tokenizer.add_bos_by_default())
            .map_err(|e| ApiError::invalid(Some("prompt"), None, e.to_string()))?,
    };
    let prepared = prepare(&state, Kind::Completion, ids, req.common, "prompt")?;
    run(state, prepared).await
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&state, &headers, body).await?;
    let req = api::chat_request(&body)?;
    check_model(&state, &req.common)?;
    let ids = chat::chat_ids(&state.tokenizer, &req.messages)
        .map_err(|e| ApiError::invalid(Some("messages"), None, e.to_string()))?;
    let prepared = prepare(&state, Kind::Chat, ids, req.common, "messages")?;
    run(state, prepared).await
}

fn random_seed(counter: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut s = nanos ^ counter.rotate_left(32);
    swarmlm_engine::sampling::splitmix64(&mut s)
}

fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::MaxTokens => "length",
        StopReason::Eos | StopReason::Stop | StopReason::Cancelled => "stop",
    }
}

fn usage(f: &Finished) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

fn engine_error(message: String) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("generation failed: {message}"),
        kind: "server_error",
        param: None,
        code: None,
    }
}

fn shutting_down() -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "the server is shutting down".into(),
        kind: "server_error",
        param: None,
        code: Some("server_shutting_down"),
    }
}

/// What each response and chunk of one request shares.
struct Meta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Completion => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
            }),
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({
                    "index": 0,
                    "delta": delta,
                    "logprobs": null,
                    "finish_reason": finish,
                })
            }
        };
        let mut v = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [choice],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    fn usage_chunk(&self, f: &Finished) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": usage(f),
        })
    }

    fn full(&self, f: &Finished) -> Value {
        let choice = match self.kind {
            Kind::Completion => json!({
                "index": 0,
                "text": f.text,
                "logprobs": null,
                "finish_reason": finish_reason(f.stop_reason),
            }),
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": chat_content_start(&f.text)},
                "logprobs": null,
                "finish_reason": finish_reason(f.stop_reason),
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [choice],
            "usage": usage(f),
        })
    }
}

/// A chat answer is a message of its own, not a continuation of the prompt: like SentencePiece
/// (and `transformers`' `decode` of the generated ids, and Mistral's own API) it does not start
/// with the space that the first token's `▁` decodes to. Completions keep it: their text is
/// appended to the prompt.
fn chat_content_start(text: &str) -> &str {
    text.strip_prefix(' ').unwrap_or(text)
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

async fn run(state: Arc<AppState>, p: Prepared) -> Result<Response, ApiError> {
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let meta = Meta {
        kind: p.kind,
        id: format!(
            "{}-{:x}{n:06x}",
            match p.kind {
                Kind::Completion => "cmpl",
                Kind::Chat => "chatcmpl",
            },
            state.created
        ),
        created: unix_now(),
        model: state.config.model_id.clone(),
        include_usage: p.common.include_usage && p.common.stream,
    };
    let sampling = SamplingParams {
        temperature: p.common.temperature,
        top_k: None,
        top_p: (p.common.top_p < 1.0).then_some(p.common.top_p),
        min_p: None,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: p.common.seed.unwrap_or_else(|| random_seed(n)),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let job = Job {
        prompt_ids: p.prompt_ids,
        options: GenerateOptions {
            max_tokens: p.max_tokens,
            stop: p.common.stop.clone(),
        },
        sampling,
        events: tx,
    };
    if let Err(full) = state.engine.submit(job) {
        if full.limit == 0 {
            return Err(shutting_down());
        }
        return Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "the server is busy: {} requests are running or queued; retry later",
                full.limit
            ),
            kind: "rate_limit_error",
            param: None,
            code: Some("rate_limit_exceeded"),
        });
    }

    if !p.common.stream {
        while let Some(ev) = rx.recv().await {
            if let JobEvent::Done(result) = ev {
                let f = result.map_err(engine_error)?;
                if f.stop_reason == StopReason::Cancelled {
                    return Err(shutting_down());
                }
                return Ok(json_response(&meta.full(&f)));
            }
        }
        return Err(shutting_down());
    }

    // One chunk of bytes per engine event; the receiver lives in the body stream, so hyper
    // dropping the body (client gone) closes the channel and cancels the job.
    let at_start = meta.kind == Kind::Chat;
    let body = stream::unfold(Some((rx, meta, at_start)), |st| async move {
        let (mut rx, meta, mut at_start) = st?;
        loop {
            let out = match rx.recv().await {
                Some(JobEvent::Started) => match meta.kind {
                    Kind::Chat => sse(&meta.chunk(Some(""), true, None)),
                    Kind::Completion => continue,
                },
                Some(JobEvent::Text(t)) => {
                    let text = if at_start { chat_content_start(&t) } else { &t };
                    at_start &= t.is_empty();
                    sse(&meta.chunk(Some(text), false, None))
                }
                Some(JobEvent::Done(Ok(f))) if f.stop_reason != StopReason::Cancelled => {
                    let mut s = sse(&meta.chunk(
                        (meta.kind == Kind::Completion).then_some(""),
                        false,
                        Some(finish_reason(f.stop_reason)),
                    ));
                    if meta.include_usage {
                        s.push_str(&sse(&meta.usage_chunk(&f)));
                    }
                    s.push_str("data: [DONE]\n\n");
                    return Some((Ok::<_, std::convert::Infallible>(Bytes::from(s)), None));
                }
                Some(JobEvent::Done(Ok(_))) | None => {
                    let s = sse(&shutting_down().body());
                    return Some((Ok(Bytes::from(s)), None));
                }
                Some(JobEvent::Done(Err(e))) => {
                    let s = sse(&engine_error(e).body());
                    return Some((Ok(Bytes::from(s)), None));
                }
            };
            return Some((Ok(Bytes::from(out)), Some((rx, meta, at_start))));
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::chat_content_start;

    #[test]
    fn a_chat_answer_drops_only_the_first_tokens_space() {
        assert_eq!(chat_content_start(" Hello there"), "Hello there");
        assert_eq!(chat_content_start("  indented"), " indented");
        assert_eq!(chat_content_start("\n\nSweet"), "\n\nSweet");
        assert_eq!(chat_content_start(""), "");
    }
}
