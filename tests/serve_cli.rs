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
    let expected_chat = run_greedy(
        home.path(),
        &["--prompt-ids", &hello_chat_ids(), "--max-tokens", "20"],
    );
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
        "chat": run_greedy(home.path(), &["--prompt-ids", &hello_chat_ids(), "--max-tokens", "16"]),
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
