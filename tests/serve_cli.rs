//! End-to-end: `swarmlm serve` as a user runs it. Greedy answers over HTTP equal
//! `swarmlm run --temperature 0 --json`; the official `openai` Python client works against it;
//! a non-loopback address without a key is refused (exit 2); SIGTERM stops it cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use swarmlm_e2e::swarmlm;

const WATCHDOG: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model() -> String {
    repo()
        .join("assets/models/shakespeare-moe")
        .display()
        .to_string()
}

struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(home: &Path, extra: &[&str]) -> Served {
    let mut child = swarmlm(home)
        .args(["serve", &model(), "--port", "0", "--threads", "1"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(url) = line.split("http://").nth(1) {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(WATCHDOG)
        .expect("swarmlm serve prints its address within the watchdog")
        .parse()
        .unwrap();
    Served { child, addr }
}

/// One HTTP/1.1 request on its own connection; returns the status and the body as JSON.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect_timeout(&addr, WATCHDOG).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status: u16 = resp[9..12].parse().unwrap();
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    (status, serde_json::from_str(body).unwrap())
}

fn run_greedy(home: &Path, args: &[&str]) -> String {
    let out = swarmlm(home)
        .args([
            "run",
            &model(),
            "--temperature",
            "0",
            "--json",
            "--threads",
            "1",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["text"].as_str().unwrap().to_string()
}

/// A chat message is the continuation of the templated prompt without the leading space that
/// the first token's `▁` decodes to.
fn chat_content(continuation: String) -> String {
    match continuation.strip_prefix(' ') {
        Some(rest) => rest.to_string(),
        None => continuation,
    }
}

/// Prompt ids of the chat `[user: "Hello"]` with the shakespeare-moe tokenizer, from the
/// fixture `transformers` produced.
fn hello_chat_ids() -> String {
    let text = std::fs::read_to_string(
        repo().join("crates/swarmlm-serve/tests/fixtures/chat_template_ids.json"),
    )
    .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let case = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["tokenizer"] == "shakespeare-moe"
                && c["messages"].as_array().unwrap().len() == 1
                && c["messages"][0]["content"] == "Hello"
        })
        .unwrap();
    case["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn greedy_answers_equal_swarmlm_run_and_sigterm_stops_the_server() {
    let home = tempfile::tempdir().unwrap();
    let expected = run_greedy(
        home.path(),
        &["--prompt", "JULIET.\n", "--max-tokens", "20"],
    );
    let continuation = run_greedy(
        home.path(),
        &["--prompt-ids", &hello_chat_ids(), "--max-tokens", "20"],
    );
    // A chat message does not carry the leading space of the first token's `▁`; a
    // continuation of the same ids does.
    let expected_chat = chat_content(continuation);
    let mut s = serve(home.path(), &["--no-seed"]);
    let (status, v) = http(
        s.addr,
        "POST",
        "/v1/completions",
        Some(
            &json!({"model": "shakespeare-moe", "prompt": "JULIET.\n", "max_tokens": 20, "temperature": 0}),
        ),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], expected);
    let (status, v) = http(
        s.addr,
        "POST",
        "/v1/chat/completions",
        Some(
            &json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 20, "temperature": 0}),
        ),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], expected_chat);
    let (status, v) = http(s.addr, "GET", "/health", None);
    assert_eq!(status, 200);
    assert_eq!(v["seeding"]["state"], "off");

    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t0 = std::time::Instant::now();
    loop {
        if let Some(code) = s.child.try_wait().unwrap() {
            assert!(code.success(), "exit after SIGTERM: {code:?}");
            break;
        }
        assert!(
            t0.elapsed() < WATCHDOG,
            "the server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_public_address_without_an_api_key_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let out = swarmlm(home.path())
        .args(["serve", &model(), "--host", "0.0.0.0", "--no-seed"])
        .env_remove("SWARMLM_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--api-key"), "{err}");
}

#[test]
fn the_official_openai_python_client_works() {
    if std::env::var("SWARMLM_SKIP_PYTHON_CLIENT").as_deref() == Ok("1") {
        eprintln!("skipped: SWARMLM_SKIP_PYTHON_CLIENT=1");
        return;
    }
    let python = std::env::var("SWARMLM_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import openai"]).output();
    let importable = probe.as_ref().is_ok_and(|o| o.status.success());
    assert!(
        importable,
        "this test needs the `openai` Python package for {python}: \
         `python3 -m venv .ci/venv && .ci/venv/bin/pip install openai`, then run the tests with \
         SWARMLM_PYTHON=$PWD/.ci/venv/bin/python (or set SWARMLM_SKIP_PYTHON_CLIENT=1 to skip it)"
    );
    let home = tempfile::tempdir().unwrap();
    let expected = json!({
        "prompt": "ROMEO.\n",
        "max_tokens": 16,
        "completion": run_greedy(home.path(), &["--prompt", "ROMEO.\n", "--max-tokens", "16"]),
        "chat_user": "Hello",
        "chat": chat_content(run_greedy(home.path(), &["--prompt-ids", &hello_chat_ids(), "--max-tokens", "16"])),
    });
    let s = serve(home.path(), &["--no-seed", "--api-key", "k3y"]);
    let out = Command::new(&python)
        .arg(repo().join("tests/openai_client.py"))
        .arg(format!("http://{}/v1", s.addr))
        .arg("shakespeare-moe")
        .arg("k3y")
        .arg(expected.to_string())
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openai_client.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// Anonymous resident bytes of a process (heap, KV caches, buffers: what a leak would grow).
/// File-backed pages of the mapped weights are left out on purpose: they belong to the page
/// cache and grow with whichever experts the prompts happen to route to.
fn rss_anon_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .expect("RssAnon in /proc/PID/status")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// One streamed completion over HTTP/1.0 (the server closes the connection at the end, so the
/// body is the raw event stream). With `hang_up`, read the first event and drop the connection
/// in the middle of the generation; otherwise return the concatenated text and whether the
/// stream ended with a finish reason and `[DONE]`.
fn stream_completion(
    addr: SocketAddr,
    prompt: &str,
    max_tokens: u32,
    hang_up: bool,
) -> (String, bool) {
    let mut s = TcpStream::connect_timeout(&addr, WATCHDOG).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    let body =
        json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true})
            .to_string();
    write!(
        s,
        "POST /v1/completions HTTP/1.0\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    if hang_up {
        let mut first = [0u8; 512];
        let n = s.read(&mut first).unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1."));
        return (String::new(), false);
    }
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.") && resp[9..12] == *"200",
        "{resp}"
    );
    let events = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let (mut text, mut finished, mut done) = (String::new(), false, false);
    for data in events
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
    {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
        finished |= v["choices"][0]["finish_reason"].is_string();
    }
    (text, finished && done)
}

fn wait_until_idle(addr: SocketAddr) {
    let t0 = std::time::Instant::now();
    loop {
        let (_, v) = http(addr, "GET", "/health", None);
        if v["running"] == 0 && v["waiting"] == 0 {
            return;
        }
        assert!(t0.elapsed() < WATCHDOG, "generations still running: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn memory_returns_to_idle_after_rounds_of_sixteen_streaming_clients() {
    let home = tempfile::tempdir().unwrap();
    let s = serve(
        home.path(),
        &["--no-seed", "--max-concurrent", "4", "--max-queue", "64"],
    );
    let prompt = "ROMEO.\n";
    let (status, v) = http(
        s.addr,
        "POST",
        "/v1/completions",
        Some(&json!({"prompt": prompt, "max_tokens": 12, "temperature": 0})),
    );
    assert_eq!(status, 200, "{v}");
    let expected = v["choices"][0]["text"].as_str().unwrap().to_string();
    let idle = rss_anon_bytes(s.child.id());

    let mut after = Vec::new();
    for round in 0..3 {
        let clients: Vec<_> = (0..16)
            .map(|i| {
                let addr = s.addr;
                // Every fourth client asks for a long generation and hangs up after the first
                // event: its generation must be cancelled and its memory given back.
                std::thread::spawn(move || {
                    if i % 4 == 0 {
                        stream_completion(addr, prompt, 400, true)
                    } else {
                        stream_completion(addr, prompt, 12, false)
                    }
                })
            })
            .collect();
        for (i, c) in clients.into_iter().enumerate() {
            let (text, complete) = c.join().unwrap();
            if i % 4 != 0 {
                assert!(complete, "round {round}, client {i}: stream did not finish");
                assert_eq!(text, expected, "round {round}, client {i}");
            }
        }
        wait_until_idle(s.addr);
        after.push(rss_anon_bytes(s.child.id()));
    }
    // Up to 4 generations ran at once (4 KV caches and scratch buffers); once idle the server
    // must hold no more than it did idle before the load, give or take allocator slack.
    let slack = 4 << 20;
    for (round, &bytes) in after.iter().enumerate() {
        assert!(
            bytes <= idle + slack,
            "round {round}: anonymous RSS {} MiB after the load, {} MiB idle before it",
            bytes >> 20,
            idle >> 20
        );
    }
    eprintln!(
        "anonymous RSS idle {} MiB, after each round {:?} MiB",
        idle >> 20,
        after.iter().map(|b| b >> 20).collect::<Vec<_>>()
    );
}
