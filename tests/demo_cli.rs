//! End-to-end: `swarmlm demo` (seeder + fetch by magnet + verify + generate in one process) and
//! the reproducibility of the catalogue entry it fetches, `magnets/shakespeare-moe.toml`.

use std::path::Path;

use swarmlm_e2e::{output_ok, repo_root, swarmlm};

/// Pinned: the info hash `swarmlm create` gives the model files of assets/models/shakespeare-moe.
const INFO_HASH: &str = "691d58ac285de6f16bfdd3cf4b6904c5126509d6";
/// The sum of the model files' sizes (the manifest's `total_size`).
const MODEL_BYTES: u64 = 18_402_953;

fn demo(home: &Path, keep: &Path, extra: &[&str]) -> serde_json::Value {
    let out = swarmlm(home)
        .args(["demo", "--json", "--timeout", "60s", "--keep"])
        .arg(keep)
        .args(extra)
        .current_dir(home)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

#[test]
fn demo_fetches_verifies_generates_and_reuses_the_kept_copy() {
    // Run from an empty folder with a private home: nothing is read from the repository.
    let home = tempfile::tempdir().unwrap();
    let keep = home.path().join("kept");

    let first = demo(home.path(), &keep, &["--max-tokens", "12"]);
    for field in [
        "text",
        "verified",
        "info_hash",
        "bytes_transferred",
        "transfer_seconds",
        "verify_seconds",
        "load_seconds",
        "decode_tokens_per_s",
    ] {
        assert!(first.get(field).is_some(), "no {field} in {first}");
    }
    assert_eq!(first["verified"], true, "{first}");
    assert_eq!(first["info_hash"], INFO_HASH);
    assert_eq!(first["bytes_transferred"], MODEL_BYTES, "{first}");
    assert!(first["transfer_seconds"].as_f64().unwrap() > 0.0);
    assert!(first["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    let text = first["text"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "{first}");
    assert_eq!(first["generated_tokens"], 12);

    // The fetched copy is a normal store folder: every file, the stored manifest, the record.
    let model = keep.join("shakespeare-moe");
    let weights = std::fs::metadata(model.join("model-00001-of-00003.safetensors")).unwrap();
    assert_eq!(weights.len(), 6_294_248);
    assert!(model.join(".swarmlm/manifest.toml").is_file());
    assert!(model.join(".swarmlm/verified.json").is_file());
    assert!(!model.join(".swarmlm/partial").exists());

    // Same store: no transfer, same text (fixed seed).
    let second = demo(home.path(), &keep, &["--max-tokens", "12"]);
    assert_eq!(second["bytes_transferred"], 0, "{second}");
    assert_eq!(second["fetched"], false);
    assert_eq!(second["verified"], true);
    assert_eq!(second["text"], first["text"]);

    // Asked to: the whole model crosses the wire again.
    let third = demo(home.path(), &keep, &["--max-tokens", "12", "--refetch"]);
    assert_eq!(third["bytes_transferred"], MODEL_BYTES, "{third}");
    assert_eq!(third["verified"], true);
    assert_eq!(third["text"], first["text"]);
}

#[test]
fn demo_refuses_a_kept_copy_that_does_not_verify() {
    let home = tempfile::tempdir().unwrap();
    let keep = home.path().join("kept");
    demo(home.path(), &keep, &["--max-tokens", "1"]);
    let shard = keep.join("shakespeare-moe/model-00002-of-00003.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[4_000_000] ^= 0x01;
    std::fs::write(&shard, &bytes).unwrap();
    let out = swarmlm(home.path())
        .args([
            "demo",
            "--json",
            "--max-tokens",
            "1",
            "--timeout",
            "60s",
            "--keep",
        ])
        .arg(&keep)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("model-00002-of-00003.safetensors"),
        "{stderr}"
    );
    assert!(stderr.contains("--refetch"), "{stderr}");
    assert!(out.stdout.is_empty(), "no text from a corrupt model");
}

/// The value of a top-level `key = "..."` line of a manifest without escapes.
fn field(toml: &str, key: &str) -> String {
    let prefix = format!("{key} = \"");
    let line = toml.lines().find(|l| l.starts_with(&prefix)).unwrap();
    let value = &line[prefix.len()..line.len() - 1];
    assert!(!value.contains('\\') && !value.contains('"'), "{line}");
    value.to_string()
}

#[test]
fn shakespeare_manifest_is_what_create_makes_of_the_bundled_model() {
    let published =
        std::fs::read_to_string(repo_root().join("magnets/shakespeare-moe.toml")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("shakespeare-moe");
    std::fs::create_dir(&dir).unwrap();
    // The model files are the manifest's paths: assets/models/shakespeare-moe without reference/.
    let paths: Vec<String> = published
        .lines()
        .filter_map(|l| l.strip_prefix("path = \""))
        .map(|p| p.trim_end_matches('"').to_string())
        .collect();
    assert_eq!(paths.len(), 11);
    assert!(paths.iter().all(|p| !p.starts_with("reference")));
    let source = repo_root().join("assets/models/shakespeare-moe");
    for p in &paths {
        std::fs::copy(source.join(p), dir.join(p)).unwrap();
    }
    let out_toml = work.path().join("m.toml");
    let out = output_ok(
        swarmlm(work.path())
            .arg("create")
            .arg(&dir)
            .args(["--license", &field(&published, "license")])
            .args(["--source", &field(&published, "source")])
            .args(["--description", &field(&published, "description")])
            .arg("--out")
            .arg(&out_toml)
            .arg("--torrent-out")
            .arg(work.path().join("m.torrent")),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("magnet:?xt=urn:btih:{INFO_HASH}&dn=shakespeare-moe")
    );
    assert_eq!(std::fs::read_to_string(&out_toml).unwrap(), published);
}
