//! End-to-end: `swarmlm run` and `swarmlm perplexity` as processes on the bundled trained model,
//! against the outputs transformers produced for it (assets/models/shakespeare-moe/reference),
//! and the errors a user meets: a folder with a file missing, a prompt longer than the context,
//! a token id out of range, a prompt file that is not UTF-8.

use std::path::{Path, PathBuf};

use swarmlm_e2e::{output, repo_root, swarmlm};

fn model_dir() -> PathBuf {
    repo_root().join("assets/models/shakespeare-moe")
}

fn reference() -> serde_json::Value {
    let path = model_dir().join("reference/reference.json");
    serde_json::from_slice(&std::fs::read(&path).expect("read reference.json")).expect("json")
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id"))
        .collect()
}

fn join_ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// A private copy of the model folder (safetensors, config, tokenizer), for tests that break it.
fn copy_model(to: &Path) -> PathBuf {
    let dst = to.join("model");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(model_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
    dst
}

#[test]
fn greedy_run_json_matches_transformers_and_the_streamed_text() {
    let home = tempfile::tempdir().unwrap();
    let reference = reference();
    let prompt = &reference["prompts"][0];
    let prompt_ids = ids(&prompt["input_ids"]);
    let want = ids(&prompt["f32"]["greedy_new_ids"]);
    let max = want.len().to_string();
    let model = model_dir();
    let model = model.to_str().unwrap();

    let (code, out, err) = output(swarmlm(home.path()).args([
        "run",
        model,
        "--prompt-ids",
        &join_ids(&prompt_ids),
        "--max-tokens",
        &max,
        "--temperature",
        "0",
        "--json",
    ]));
    assert_eq!(code, 0, "run --json failed: {err}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    // The --json shape is a contract: every field, with its type.
    assert_eq!(ids(&json["prompt_ids"]), prompt_ids);
    assert_eq!(
        ids(&json["generated_ids"]),
        want,
        "greedy ids vs transformers"
    );
    assert_eq!(json["stop_reason"], "max_tokens");
    for field in [
        "load_seconds",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "peak_rss_bytes",
    ] {
        assert!(json[field].as_f64().is_some(), "{field} missing: {json}");
    }
    assert!(json["peak_rss_bytes"].as_u64().unwrap() > 0);
    for field in [
        "expert_hits",
        "expert_misses",
        "expert_bytes_read",
        "resident_expert_bytes_peak",
    ] {
        assert!(json[field].is_null(), "{field} is null without a budget");
    }
    let text = json["text"].as_str().expect("text");
    assert_eq!(
        text.trim_start(),
        prompt["f32"]["greedy_text"].as_str().unwrap().trim_start()
    );

    // Without --json the same text streams to stdout.
    let (code, streamed, err) = output(swarmlm(home.path()).args([
        "run",
        model,
        "--prompt-ids",
        &join_ids(&prompt_ids),
        "--max-tokens",
        &max,
        "--temperature",
        "0",
    ]));
    assert_eq!(code, 0, "run failed: {err}");
    assert_eq!(streamed.trim_end_matches('\n'), text.trim_end_matches('\n'));
}

#[test]
fn seeded_sampling_repeats_and_text_prompts_get_bos() {
    let home = tempfile::tempdir().unwrap();
    let model = model_dir();
    let run = |seed: &str| {
        let (code, out, err) = output(swarmlm(home.path()).args([
            "run",
            model.to_str().unwrap(),
            "--prompt",
            "ROMEO.\n",
            "--max-tokens",
            "24",
            "--seed",
            seed,
            "--json",
        ]));
        assert_eq!(code, 0, "run failed: {err}");
        serde_json::from_str::<serde_json::Value>(out.trim()).expect("json")
    };
    let a = run("7");
    let b = run("7");
    assert_eq!(
        a["generated_ids"], b["generated_ids"],
        "same seed, same tokens"
    );
    assert_eq!(ids(&a["generated_ids"]).len(), 24);
    // The prompt text is tokenised as transformers did, with <s> in front.
    let reference = reference();
    assert_eq!(
        ids(&a["prompt_ids"]),
        ids(&reference["prompts"][0]["input_ids"])
    );
}

#[test]
fn perplexity_json_matches_transformers() {
    let home = tempfile::tempdir().unwrap();
    let reference = reference();
    let want = &reference["heldout"]["f32"];
    let model = model_dir();
    let (code, out, err) = output(swarmlm(home.path()).args([
        "perplexity",
        model.to_str().unwrap(),
        "--file",
        model.join("reference/heldout.txt").to_str().unwrap(),
        "--ctx",
        "512",
        "--limit",
        "2048",
        "--json",
    ]));
    assert_eq!(code, 0, "perplexity failed: {err}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(json["n_tokens"], 2048);
    assert_eq!(json["ctx"], 512);
    let got = json["nll_sum"].as_f64().unwrap();
    let expected = want["nll_sum"].as_f64().unwrap();
    assert!(
        ((got - expected) / expected).abs() <= 1e-5,
        "nll_sum {got} vs transformers {expected}"
    );
    let ppl = json["ppl"].as_f64().unwrap();
    assert!((ppl - (got / 2048.0).exp()).abs() < 1e-6 * ppl);
    let chunks = json["chunk_nll_sums"].as_array().expect("chunk_nll_sums");
    let want_chunks = want["chunk_nll_sums"].as_array().unwrap();
    assert_eq!(chunks.len(), want_chunks.len());
    for (g, w) in chunks.iter().zip(want_chunks) {
        let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
        assert!(((g - w) / w).abs() <= 1e-5, "chunk nll {g} vs {w}");
    }
}

#[test]
fn bad_models_and_prompts_are_clear_errors() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let model = model_dir();
    let model = model.to_str().unwrap();
    let expect_error = |args: &[&str], needles: &[&str]| {
        let (code, out, err) = output(swarmlm(home.path()).args(args));
        assert_eq!(
            code, 1,
            "{args:?}: exit code (stdout {out:?}, stderr {err:?})"
        );
        for needle in needles {
            assert!(err.contains(needle), "{args:?}: {needle:?} not in {err:?}");
        }
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    };

    // A shard the index names is missing.
    let broken = copy_model(work.path());
    std::fs::remove_file(broken.join("model-00002-of-00003.safetensors")).unwrap();
    expect_error(
        &["run", broken.to_str().unwrap(), "--prompt", "ROMEO."],
        &["model-00002-of-00003.safetensors"],
    );

    // A prompt longer than the context (max_position_embeddings is 2048).
    let long = vec!["5"; 2049].join(",");
    expect_error(
        &["run", model, "--prompt-ids", &long, "--max-tokens", "1"],
        &["2049", "2048"],
    );

    // A token id outside the vocabulary (4096 tokens).
    expect_error(
        &["run", model, "--prompt-ids", "1,4096", "--max-tokens", "1"],
        &["4096", "out of range"],
    );

    // A prompt file that is not UTF-8.
    let bad = work.path().join("prompt.txt");
    std::fs::write(&bad, b"ROMEO\xff\xfe.").unwrap();
    expect_error(
        &["run", model, "--prompt-file", bad.to_str().unwrap()],
        &["prompt.txt", "UTF-8"],
    );
    expect_error(
        &["perplexity", model, "--file", bad.to_str().unwrap()],
        &["prompt.txt", "UTF-8"],
    );

    // A folder that is not a model at all.
    expect_error(
        &["run", work.path().to_str().unwrap(), "--prompt", "x"],
        &[work.path().to_str().unwrap()],
    );
}

/// A fetched model (a folder with a swarmlm manifest) runs only while its verification record
/// vouches for every file: not before `verify`, and not after a file changed.
#[test]
fn a_fetched_model_runs_only_while_verified() {
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("models");
    let contents: Vec<(String, Vec<u8>)> = std::fs::read_dir(model_dir())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    let files: Vec<(&str, &[u8])> = contents
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    let magnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567";
    let dir = swarmlm_e2e::write_store_model(&models, "sm", magnet, &files, &[]);
    let run = || {
        output(swarmlm(home.path()).args([
            "run",
            "sm",
            "--prompt-ids",
            "1,633",
            "--max-tokens",
            "2",
            "--temperature",
            "0",
        ]))
    };

    let (code, _, err) = run();
    assert_eq!(code, 1, "unverified model ran: {err}");
    assert!(
        err.contains("not verified") && err.contains("swarmlm verify"),
        "{err}"
    );

    let (code, _, err) = output(swarmlm(home.path()).args(["verify", dir.to_str().unwrap()]));
    assert_eq!(code, 0, "verify failed: {err}");
    let (code, _, err) = run();
    assert_eq!(code, 0, "verified model refused: {err}");

    // Same size, other bytes, newer mtime: no longer vouched for.
    let config = dir.join("config.json");
    let mut bytes = std::fs::read(&config).unwrap();
    bytes[0] = b' ';
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&config, &bytes).unwrap();
    let (code, _, err) = run();
    assert_eq!(code, 1, "changed model ran: {err}");
    assert!(err.contains("not verified"), "{err}");
}
