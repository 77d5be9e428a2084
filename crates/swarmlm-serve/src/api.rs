//! OpenAI's request fields and error shape.
//!
//! Requests are parsed by hand from a `serde_json::Value` rather than derived, so that every
//! refusal names the exact parameter (`param`) and what was expected, as OpenAI's errors do, and
//! so that invalid JSON (400) is told apart from well-formed JSON with a wrong field (422).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::chat::{Message, Role};

/// An error answered in OpenAI's shape: `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A request the server understood but will not run (400).
    pub fn invalid(param: Option<&str>, code: Option<&'static str>, message: String) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message,
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code,
        }
    }

    /// Well-formed JSON with a field of the wrong type or value (422).
    pub fn field(param: &str, message: String) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message,
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: Some("invalid_value"),
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = json_response(&self.body());
        *r.status_mut() = self.status;
        r
    }
}

/// A 200 response with a JSON body (axum's `Json` needs a feature that would rebuild librqbit's
/// copy of axum).
pub fn json_response(v: &Value) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// The prompt of a completion request.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text, tokenized with the model's BOS rule (as `swarmlm run --prompt`).
    Text(String),
    /// Token ids used exactly (as `swarmlm run --prompt-ids`).
    Ids(Vec<u32>),
}

/// Fields shared by both endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// A parsed `/v1/completions` request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub common: Common,
}

/// A parsed `/v1/chat/completions` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub common: Common,
}

/// The body as a JSON object (400 when it is not JSON, 422 when it is not an object).
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            None,
            Some("invalid_json"),
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    match value {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::field(
            "(body)",
            format!(
                "the request body must be a JSON object, found {}",
                type_name(&other)
            ),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn present<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn opt_str(m: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match present(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::field(
            key,
            format!("{key} must be a string, found {}", type_name(v)),
        )),
    }
}

fn opt_u64(m: &Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    match present(m, key) {
        None => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(v) => Err(ApiError::field(
            key,
            format!(
                "{key} must be a non-negative integer, found {}",
                if v.is_number() {
                    "a negative or fractional number"
                } else {
                    type_name(v)
                }
            ),
        )),
    }
}

fn opt_f32(m: &Map<String, Value>, key: &str) -> Result<Option<f32>, ApiError> {
    match present(m, key) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64().map(|f| f as f32)),
        Some(v) => Err(ApiError::field(
            key,
            format!("{key} must be a number, found {}", type_name(v)),
        )),
    }
}

fn opt_bool(m: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match present(m, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::field(
            key,
            format!("{key} must be true or false, found {}", type_name(v)),
        )),
    }
}

/// At most this many stop strings, as OpenAI allows.
pub const MAX_STOPS: usize = 4;

fn common(m: &Map<String, Value>) -> Result<Common, ApiError> {
    let temperature = opt_f32(m, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::field(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = opt_f32(m, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::field(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    // `max_completion_tokens` is the newer name of the same limit.
    let max_tokens = match opt_u64(m, "max_tokens")? {
        Some(n) => Some(n),
        None => opt_u64(m, "max_completion_tokens")?,
    };
    let stop = match present(m, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            let mut out = Vec::with_capacity(a.len());
            for (i, v) in a.iter().enumerate() {
                match v {
                    Value::String(s) => out.push(s.clone()),
                    other => {
                        return Err(ApiError::field(
                            "stop",
                            format!("stop[{i}] must be a string, found {}", type_name(other)),
                        ))
                    }
                }
            }
            out
        }
        Some(v) => {
            return Err(ApiError::field(
                "stop",
                format!(
                    "stop must be a string or an array of strings, found {}",
                    type_name(v)
                ),
            ))
        }
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::field(
            "stop",
            format!("at most {MAX_STOPS} stop sequences, got {}", stop.len()),
        ));
    }
    let include_usage = match present(m, "stream_options") {
        None => false,
        Some(Value::Object(o)) => opt_bool(o, "include_usage")
            .map_err(|e| ApiError {
                param: Some("stream_options.include_usage".into()),
                ..e
            })?
            .unwrap_or(false),
        Some(v) => {
            return Err(ApiError::field(
                "stream_options",
                format!("stream_options must be an object, found {}", type_name(v)),
            ))
        }
    };
    let n = opt_u64(m, "n")?.unwrap_or(1);
    if n != 1 {
        return Err(ApiError::field(
            "n",
            format!("only n = 1 is supported, got {n}"),
        ));
    }
    Ok(Common {
        model: opt_str(m, "model")?,
        max_tokens,
        temperature,
        top_p,
        seed: opt_u64(m, "seed")?,
        stop,
        stream: opt_bool(m, "stream")?.unwrap_or(false),
        include_usage,
    })
}

fn token_id(v: &Value, what: &str) -> Result<u32, ApiError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            ApiError::field(
                "prompt",
                format!("{what} must be a token id (an integer >= 0), found {v}"),
            )
        })
}

/// Parses a completion request body.
pub fn completion_request(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let m = parse_object(body)?;
    let prompt =
        match present(&m, "prompt") {
            None => {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    Some("missing_required_parameter"),
                    "prompt is required".into(),
                ))
            }
            Some(Value::String(s)) => Prompt::Text(s.clone()),
            Some(Value::Array(a)) => match a.as_slice() {
                [Value::String(s)] => Prompt::Text(s.clone()),
                [Value::Array(ids)] => Prompt::Ids(
                    ids.iter()
                        .enumerate()
                        .map(|(i, v)| token_id(v, &format!("prompt[0][{i}]")))
                        .collect::<Result<_, _>>()?,
                ),
                items if !items.is_empty() && items.iter().all(Value::is_number) => Prompt::Ids(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| token_id(v, &format!("prompt[{i}]")))
                        .collect::<Result<_, _>>()?,
                ),
                _ => return Err(ApiError::field(
                    "prompt",
                    "prompt must be a string, an array of token ids, or an array holding one of \
                     these (batches of several prompts are not supported)"
                        .into(),
                )),
            },
            Some(v) => {
                return Err(ApiError::field(
                    "prompt",
                    format!(
                        "prompt must be a string or an array of token ids, found {}",
                        type_name(v)
                    ),
                ))
            }
        };
    Ok(CompletionRequest {
        prompt,
        common: common(&m)?,
    })
}

/// Parses a chat request body.
pub fn chat_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let m = parse_object(body)?;
    let list = match present(&m, "messages") {
        None => {
            return Err(ApiError::invalid(
                Some("messages"),
                Some("missing_required_parameter"),
                "messages is required".into(),
            ))
        }
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::field(
                "messages",
                format!("messages must be an array, found {}", type_name(v)),
            ))
        }
    };
    let mut messages = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Value::Object(o) = item else {
            return Err(ApiError::field(
                &param,
                format!("{param} must be an object, found {}", type_name(item)),
            ));
        };
        let role = match o.get("role") {
            Some(Value::String(r)) => Role::parse(r).ok_or_else(|| {
                ApiError::field(
                    &format!("{param}.role"),
                    format!("{param}.role must be system, user or assistant, got {r:?}"),
                )
            })?,
            _ => {
                return Err(ApiError::field(
                    &format!("{param}.role"),
                    format!("{param}.role must be a string"),
                ))
            }
        };
        let content = match o.get("content") {
            Some(Value::String(s)) => s.clone(),
            // The array form: text parts only.
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => s.push_str(t),
                        _ => {
                            return Err(ApiError::field(
                                &format!("{param}.content[{j}]"),
                                format!(
                                "{param}.content[{j}] must be {{\"type\":\"text\",\"text\":...}} \
                                     (this model reads text only)"
                            ),
                            ))
                        }
                    }
                }
                s
            }
            _ => {
                return Err(ApiError::field(
                    &format!("{param}.content"),
                    format!("{param}.content must be a string"),
                ))
            }
        };
        messages.push(Message { role, content });
    }
    Ok(ChatRequest {
        messages,
        common: common(&m)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked_with_their_name() {
        let e = completion_request(b"{\"prompt\": 5}").unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.param.as_deref(), Some("prompt"));
        let e = completion_request(b"{\"prompt\": \"x\", \"max_tokens\": \"9\"}").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = completion_request(b"{\"prompt\": \"x\", \"max_tokens\": -1}").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = completion_request(b"{\"prompt\"").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = completion_request(b"{}").unwrap_err();
        assert_eq!(e.code, Some("missing_required_parameter"));
        let e =
            chat_request(b"{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn prompts_in_every_openai_form() {
        let r = completion_request(b"{\"prompt\": [\"hi\"], \"stop\": \"\\n\"}").unwrap();
        assert_eq!(r.prompt, Prompt::Text("hi".into()));
        assert_eq!(r.common.stop, vec!["\n".to_string()]);
        let r = completion_request(b"{\"prompt\": [1, 2, 3]}").unwrap();
        assert_eq!(r.prompt, Prompt::Ids(vec![1, 2, 3]));
        let r = completion_request(b"{\"prompt\": [[1, 2]], \"stream\": true}").unwrap();
        assert_eq!(r.prompt, Prompt::Ids(vec![1, 2]));
        assert!(r.common.stream);
        assert!(completion_request(b"{\"prompt\": [\"a\", \"b\"]}").is_err());
    }
}
