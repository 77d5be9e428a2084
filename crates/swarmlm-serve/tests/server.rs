//! The real server on 127.0.0.1 (random port) with the bundled trained model, driven over HTTP:
//! answers equal the engine's own greedy generation, bad requests get OpenAI-shaped errors with
//! the right status, concurrent streams with early disconnects leave the server healthy, and a
//! leecher fetches the served model from the server's seeder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use swarmlm_engine::sampling::{Sampler, SamplingParams};
use swarmlm_engine::tokenizer::Tokenizer;
use swarmlm_engine::{generate, GenerateOptions, Model};
use swarmlm_serve::{EngineConfig, Server, ServerConfig};
use swarmlm_weights::Checkpoint;

/// Every wait on the network is bounded by this.
const WATCHDOG: Duration = Duration::from_secs(60);

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/shakespeare-moe")
}

/// What `swarmlm run --temperature 0` produces for these ids (the same engine calls).
fn greedy(dir: &Path, prompt_ids: &[u32], max_tokens: usize) -> String {
    let ckpt = Checkpoint::open(dir).unwrap();
    let tok = Tokenizer::from_model_dir(dir).unwrap();
    let model = Model::load(&ckpt, 1).unwrap();
    let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    let opts = GenerateOptions {
        max_tokens,
        stop: vec![],
    };
    generate(&model, &tok, prompt_ids, &opts, &mut sampler, |_| {})
        .unwrap()
        .text
}

fn prompt_ids(text: &str) -> Vec<u32> {
    let tok = Tokenizer::from_model_dir(&model_dir()).unwrap();
    tok.encode(text, tok.add_bos_by_default()).unwrap()
}

struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), swarmlm_serve::ServeError>>,
    client: reqwest::Client,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = tokio::time::timeout(
            WATCHDOG,
            self.client.post(self.url(path)).json(&body).send(),
        )
        .await
        .expect("watchdog")
        .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn post_raw(&self, path: &str, body: &'static [u8]) -> (u16, Value) {
        let r = tokio::time::timeout(
            WATCHDOG,
            self.client
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body)
                .send(),
        )
        .await
        .expect("watchdog")
        .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = tokio::time::timeout(WATCHDOG, self.client.get(self.url(path)).send())
            .await
            .expect("watchdog")
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WATCHDOG, self.task)
            .await
            .expect("server stops within the watchdog")
            .unwrap()
            .unwrap();
    }
}

async fn start(dir: &Path, engine: EngineConfig, config: ServerConfig) -> Running {
    start_with(dir, engine, config, None).await
}

async fn start_with(
    dir: &Path,
    engine: EngineConfig,
    config: ServerConfig,
    seed: Option<swarmlm_swarm::SeedTarget>,
) -> Running {
    let ckpt = Checkpoint::open(dir).unwrap();
    let tok = Tokenizer::from_model_dir(dir).unwrap();
    let mut server =
        tokio::task::spawn_blocking(move || Server::new(ckpt, tok, &engine, config).unwrap())
            .await
            .unwrap();
    if let Some(target) = seed {
        server.start_seeding(
            target,
            swarmlm_swarm::SeedOptions {
                session: swarmlm_swarm::SessionConfig::loopback(),
                recheck: false,
            },
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(listener, async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        task,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

fn engine(max_concurrent: usize) -> EngineConfig {
    EngineConfig {
        max_concurrent,
        max_queue: 64,
        threads: 1,
        pager: None,
    }
}

/// The text of an SSE response, the finish reason, and whether `[DONE]` ended it.
fn parse_sse(body: &str, chat: bool) -> (String, Option<String>, bool) {
    let mut text = String::new();
    let mut finish = None;
    let mut done = false;
    for event in body.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event
            .strip_prefix("data: ")
            .expect("every event is a data line");
        assert!(!done, "nothing after [DONE]");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        let choice = &v["choices"][0];
        let piece = if chat {
            assert_eq!(v["object"], "chat.completion.chunk");
            choice["delta"]["content"].as_str()
        } else {
            assert_eq!(v["object"], "text_completion");
            choice["text"].as_str()
        };
        text.push_str(piece.unwrap_or(""));
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (text, finish, done)
}

async fn stream_text(r: &Running, path: &str, body: Value) -> (String, Option<String>, bool) {
    let resp = tokio::time::timeout(WATCHDOG, r.client.post(r.url(path)).json(&body).send())
        .await
        .expect("watchdog")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = tokio::time::timeout(WATCHDOG, resp.text())
        .await
        .expect("watchdog")
        .unwrap();
    parse_sse(&body, path.contains("chat"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_chat_equal_greedy_generation_streamed_or_not() {
    let dir = model_dir();
    let r = start(&dir, engine(1), ServerConfig::new("shakespeare-moe")).await;
    let ids = prompt_ids("ROMEO.\n");
    let expected = greedy(&dir, &ids, 24);
    assert!(!expected.is_empty());

    let (status, v) = r
        .post(
            "/v1/completions",
            json!({"model": "shakespeare-moe", "prompt": "ROMEO.\n", "max_tokens": 24, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "shakespeare-moe");
    assert_eq!(v["choices"][0]["text"], expected);
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(v["usage"]["total_tokens"], ids.len() as u64 + completion);
    let finish = v["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(
        (finish == "length" && completion == 24) || (finish == "stop" && completion < 24),
        "{v}"
    );

    // The same as token ids, and streamed.
    let (status, v) = r
        .post(
            "/v1/completions",
            json!({"prompt": ids, "max_tokens": 24, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["choices"][0]["text"], expected);
    let (text, f, done) = stream_text(
        &r,
        "/v1/completions",
        json!({"prompt": "ROMEO.\n", "max_tokens": 24, "temperature": 0, "stream": true}),
    )
    .await;
    assert_eq!(text, expected);
    assert_eq!(f.as_deref(), Some(finish));
    assert!(done, "the stream ends with data: [DONE]");

    // A stop string cuts the text, in both modes.
    let cut = &expected[..expected.len() / 2];
    let stop: String = expected[cut.len()..].chars().take(3).collect();
    let want = &expected[..expected.find(&stop).unwrap()];
    let (_, v) = r
        .post(
            "/v1/completions",
            json!({"prompt": "ROMEO.\n", "max_tokens": 24, "temperature": 0, "stop": [stop]}),
        )
        .await;
    assert_eq!(v["choices"][0]["text"], want);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // Chat: the Mistral template, then the same greedy decoding.
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    let messages = vec![swarmlm_serve::chat::Message {
        role: swarmlm_serve::chat::Role::User,
        content: "Who is there?".into(),
    }];
    let chat_ids = swarmlm_serve::chat::chat_ids(&tok, &messages).unwrap();
    // The message content drops the leading space that the first token's `▁` decodes to.
    let continuation = greedy(&dir, &chat_ids, 20);
    let expected_chat = continuation.strip_prefix(' ').unwrap_or(&continuation);
    let body = json!({
        "model": "shakespeare-moe",
        "messages": [{"role": "user", "content": "Who is there?"}],
        "max_tokens": 20,
        "temperature": 0,
    });
    let (status, v) = r.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], expected_chat);
    assert_eq!(v["usage"]["prompt_tokens"], chat_ids.len());
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (text, f, done) = stream_text(&r, "/v1/chat/completions", streamed).await;
    assert_eq!(text, expected_chat);
    assert_eq!(f.as_deref(), v["choices"][0]["finish_reason"].as_str());
    assert!(done);

    // Seeded sampling is reproducible.
    let sampled = json!({"prompt": "ROMEO.\n", "max_tokens": 16, "temperature": 0.9, "seed": 7});
    let (_, a) = r.post("/v1/completions", sampled.clone()).await;
    let (_, b) = r.post("/v1/completions", sampled).await;
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);

    let (status, v) = r.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(v["data"][0]["id"], "shakespeare-moe");
    let (status, v) = r.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(v["seeding"]["state"], "off");
    r.stop().await;
}

fn assert_error(status: u16, v: &Value, want_status: u16, param: Option<&str>) {
    assert_eq!(status, want_status, "{v}");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("code").is_some() && e.get("param").is_some(), "{v}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_and_openai_error() {
    let dir = model_dir();
    let mut config = ServerConfig::new("shakespeare-moe");
    config.max_body_bytes = 64 * 1024;
    config.max_tokens_limit = 512;
    let r = start(&dir, engine(1), config).await;

    let (s, v) = r.post_raw("/v1/completions", b"{\"prompt\": \"x\",").await;
    assert_error(s, &v, 400, None);
    assert_eq!(v["error"]["code"], "invalid_json");
    let (s, v) = r
        .post(
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": "ten"}),
        )
        .await;
    assert_error(s, &v, 422, Some("max_tokens"));
    let (s, v) = r
        .post(
            "/v1/completions",
            json!({"prompt": "x", "temperature": "hot"}),
        )
        .await;
    assert_error(s, &v, 422, Some("temperature"));
    let (s, v) = r
        .post("/v1/chat/completions", json!({"messages": "hello"}))
        .await;
    assert_error(s, &v, 422, Some("messages"));
    let (s, v) = r.post("/v1/completions", json!({"max_tokens": 3})).await;
    assert_error(s, &v, 400, Some("prompt"));
    let (s, v) = r
        .post(
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 1_000_000}),
        )
        .await;
    assert_error(s, &v, 400, Some("max_tokens"));
    // Within the server's limit, but not within the context once the prompt is in.
    let (s, v) = r
        .post(
            "/v1/completions",
            json!({"prompt": vec![5u32; 1800], "max_tokens": 500}),
        )
        .await;
    assert_error(s, &v, 400, Some("max_tokens"));
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let (s, v) = r
        .post("/v1/completions", json!({"prompt": vec![5u32; 2048]}))
        .await;
    assert_error(s, &v, 400, Some("prompt"));
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let (s, v) = r
        .post("/v1/completions", json!({"prompt": [1, 99999]}))
        .await;
    assert_error(s, &v, 400, Some("prompt"));
    let (s, v) = r
        .post("/v1/completions", json!({"model": "gpt-4", "prompt": "x"}))
        .await;
    assert_error(s, &v, 404, Some("model"));
    assert_eq!(v["error"]["code"], "model_not_found");
    let (s, v) = r
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "assistant", "content": "hi"}]}),
        )
        .await;
    assert_error(s, &v, 400, Some("messages"));
    let big = "a".repeat(100 * 1024);
    let (s, v) = r.post("/v1/completions", json!({ "prompt": big })).await;
    assert_error(s, &v, 413, None);
    let (s, v) = r.get("/v1/nothing").await;
    assert_error(s, &v, 404, None);
    let (s, v) = r.get("/v1/completions").await;
    assert_error(s, &v, 405, None);

    // After all that the server still answers.
    let (s, v) = r
        .post("/v1/completions", json!({"prompt": "x", "max_tokens": 2}))
        .await;
    assert_eq!(s, 200, "{v}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_on_every_route_but_health() {
    let mut config = ServerConfig::new("shakespeare-moe");
    config.api_key = Some("s3cret".into());
    let r = start(&model_dir(), engine(1), config).await;
    let body = json!({"prompt": "x", "max_tokens": 2});
    let (s, v) = r.post("/v1/completions", body.clone()).await;
    assert_error(s, &v, 401, None);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let (s, v) = r.get("/v1/models").await;
    assert_error(s, &v, 401, None);
    let resp = r
        .client
        .post(r.url("/v1/completions"))
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = r
        .client
        .post(r.url("/v1/completions"))
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (s, _) = r.get("/health").await;
    assert_eq!(s, 200);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_streams_with_early_disconnects_leave_the_server_healthy() {
    let dir = model_dir();
    let r = Arc::new(start(&dir, engine(2), ServerConfig::new("shakespeare-moe")).await);
    let prompts: Vec<String> = (0..16).map(|i| format!("ROMEO.\nScene {i}.")).collect();
    let expected: Vec<String> = prompts
        .iter()
        .map(|p| greedy(&dir, &prompt_ids(p), 12))
        .collect();
    let mut tasks = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let r = r.clone();
        let body = json!({"prompt": p, "max_tokens": if i % 4 == 0 { 400 } else { 12 }, "temperature": 0, "stream": true});
        tasks.push(tokio::spawn(async move {
            let resp = r
                .client
                .post(r.url("/v1/completions"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let mut stream = resp.bytes_stream();
            if i % 4 == 0 {
                // Read one chunk, then hang up in the middle of a long generation.
                let first = stream.next().await.unwrap().unwrap();
                assert!(first.starts_with(b"data: "));
                drop(stream);
                return None;
            }
            let mut body = Vec::new();
            while let Some(chunk) = stream.next().await {
                body.extend_from_slice(&chunk.unwrap());
            }
            Some(String::from_utf8(body).unwrap())
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let out = tokio::time::timeout(WATCHDOG * 2, t)
            .await
            .expect("watchdog")
            .unwrap();
        if let Some(body) = out {
            let (text, finish, done) = parse_sse(&body, false);
            assert_eq!(text, expected[i], "client {i}");
            assert!(finish.is_some() && done, "client {i}");
        }
    }
    // The abandoned generations (400 tokens each) were cancelled: the engine goes idle soon.
    let t0 = std::time::Instant::now();
    loop {
        let (_, v) = r.get("/health").await;
        if v["running"] == 0 && v["waiting"] == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "abandoned generations still running: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = r
        .post(
            "/v1/completions",
            json!({"prompt": prompts[1], "max_tokens": 12, "temperature": 0}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["choices"][0]["text"], expected[1]);
    Arc::into_inner(r).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429() {
    let r = start(
        &model_dir(),
        EngineConfig {
            max_concurrent: 1,
            max_queue: 0,
            threads: 1,
            pager: None,
        },
        ServerConfig::new("shakespeare-moe"),
    )
    .await;
    let resp = r
        .client
        .post(r.url("/v1/completions"))
        .json(&json!({"prompt": "ROMEO.", "max_tokens": 1500, "temperature": 0, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    let (s, v) = r
        .post("/v1/completions", json!({"prompt": "x", "max_tokens": 2}))
        .await;
    assert_error(s, &v, 429, None);
    drop(stream);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leecher_fetches_the_model_from_the_servers_seeder() {
    let tmp = tempfile::tempdir().unwrap();
    let served = tmp.path().join("shakespeare-moe");
    std::fs::create_dir(&served).unwrap();
    for e in std::fs::read_dir(model_dir()).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), served.join(e.file_name())).unwrap();
        }
    }
    let target = swarmlm_swarm::SeedTarget::from_dir(&served).unwrap();
    let manifest = target.manifest.clone();
    let r = start_with(
        &served,
        engine(1),
        ServerConfig::new("shakespeare-moe"),
        Some(target),
    )
    .await;
    let t0 = std::time::Instant::now();
    let listen = loop {
        let (_, v) = r.get("/health").await;
        let s = &v["seeding"];
        assert_ne!(s["state"], "error", "{v}");
        if s["state"] == "seeding" {
            assert_eq!(s["info_hash"], hex::encode(manifest.info_hash));
            break s["listen"].as_str().unwrap().parse::<SocketAddr>().unwrap();
        }
        assert!(t0.elapsed() < WATCHDOG, "seeding did not start: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let listen = SocketAddr::from(([127, 0, 0, 1], listen.port()));

    // Serving and seeding at once.
    let gen = r.post(
        "/v1/completions",
        json!({"prompt": "ROMEO.", "max_tokens": 8, "temperature": 0}),
    );
    let out = tmp.path().join("fetched");
    let fetch = swarmlm_swarm::fetch(
        swarmlm_swarm::Source::Manifest {
            path: served.join(".swarmlm/manifest.toml"),
            manifest: manifest.clone(),
        },
        swarmlm_swarm::FetchOptions {
            out: Some(out.clone()),
            store: None,
            peers: vec![listen],
            session: swarmlm_swarm::SessionConfig::loopback(),
            only: vec![],
            stall_timeout: Duration::from_secs(30),
        },
        &|_| {},
    );
    let (gen, fetched) = tokio::join!(gen, tokio::time::timeout(WATCHDOG, fetch));
    assert_eq!(gen.0, 200);
    let fetched = fetched.expect("watchdog").unwrap();
    assert!(fetched.downloaded_bytes > 0);
    for f in &manifest.files {
        let a = std::fs::read(served.join(&f.path)).unwrap();
        let b = std::fs::read(out.join(&f.path)).unwrap();
        assert!(a == b, "{} differs", f.path);
    }
    let t0 = std::time::Instant::now();
    loop {
        let (_, v) = r.get("/health").await;
        if v["seeding"]["uploaded_bytes"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no upload reported: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    r.stop().await;
}
