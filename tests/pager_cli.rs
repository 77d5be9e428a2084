//! The expert pager as a user drives it (`swarmlm run` / `swarmlm perplexity` with
//! `--memory-budget`): the smallest legal budget gives the same tokens and the same
//! teacher-forced NLL as no budget (shakespeare-moe and forged models); a budget below one
//! layer's top-k experts is refused with the minimum; sizes take binary and decimal units;
//! `--stats` prints the table; and on a forged model many times larger than the budget the
//! process's peak RSS stays within budget + non-expert weights + KV cache + 10%.
//!
//! The LRU accounting against shakespeare-moe's `routing_stats.json` is checked token by token in
//! `crates/swarmlm-engine/tests/pager.rs` (the CLI's perplexity batches a chunk's tokens, so its
//! hit counts are not a per-token LRU's).

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use swarmlm_e2e::swarmlm;

fn shakespeare() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/models/shakespeare-moe")
}

fn ok(out: &Output) -> &Output {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&ok(out).stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn config(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Bytes of one expert (w1 + w3 + w2, bf16) and the smallest legal budget (top-k of them).
fn expert_and_minimum(dir: &Path) -> (u64, u64) {
    let c = config(dir);
    let expert = 3 * num(&c, "hidden_size") * num(&c, "intermediate_size") * 2;
    (expert, expert * num(&c, "num_experts_per_tok"))
}

/// Tensor bytes in the checkpoint's shards, split into (expert, non-expert), read from the
/// safetensors headers.
fn weight_bytes(dir: &Path) -> (u64, u64) {
    let (mut experts, mut other) = (0, 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        for (name, t) in header.as_object().unwrap() {
            if name == "__metadata__" {
                continue;
            }
            let off = &t["data_offsets"];
            let len = off[1].as_u64().unwrap() - off[0].as_u64().unwrap();
            if name.contains(".experts.") {
                experts += len;
            } else {
                other += len;
            }
        }
    }
    (experts, other)
}

fn run_json(home: &Path, model: &Path, prompt: &str, n: usize, extra: &[&str]) -> Value {
    let n = n.to_string();
    let mut args = vec![
        "run",
        model.to_str().unwrap(),
        "--prompt-ids",
        prompt,
        "--max-tokens",
        &n,
        "--temperature",
        "0",
        "--threads",
        "2",
        "--json",
    ];
    args.extend_from_slice(extra);
    json(&swarmlm(home).args(&args).output().unwrap())
}

fn perplexity_json(home: &Path, model: &Path, file: &Path, ctx: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "perplexity",
        model.to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--ctx",
        ctx,
        "--threads",
        "2",
        "--json",
    ];
    args.extend_from_slice(extra);
    json(&swarmlm(home).args(&args).output().unwrap())
}

/// The same tokens and the same NLL (bit for bit) at the smallest budget as with none, with
/// and without the lookahead, and the pager's numbers in `run --json`.
fn assert_identical_at_smallest_budget(
    home: &Path,
    model: &Path,
    prompt: &str,
    text: &Path,
    ctx: &str,
) {
    let (expert, min) = expert_and_minimum(model);
    let base = run_json(home, model, prompt, 24, &[]);
    for key in [
        "expert_hits",
        "expert_misses",
        "expert_bytes_read",
        "resident_expert_bytes_peak",
    ] {
        assert!(base[key].is_null(), "{key} without a budget: {base}");
    }
    let base_ppl = perplexity_json(home, model, text, ctx, &[]);
    let min_s = min.to_string();
    for prefetch in ["lookahead", "off"] {
        let pager = ["--memory-budget", &min_s, "--prefetch", prefetch];
        let got = run_json(home, model, prompt, 24, &pager);
        assert_eq!(
            got["generated_ids"], base["generated_ids"],
            "{prefetch}: greedy tokens differ"
        );
        let (hits, misses) = (num(&got, "expert_hits"), num(&got, "expert_misses"));
        let read = num(&got, "expert_bytes_read");
        assert!(misses > 0, "{got}");
        // Prefill routes several tokens per layer at once; decode asks for top-k per layer.
        let c = config(model);
        let decode_requests = 23 * num(&c, "num_hidden_layers") * num(&c, "num_experts_per_tok");
        assert!(hits + misses >= decode_requests, "{got}");
        assert!(read >= misses * expert, "{got}");
        assert!(num(&got, "resident_expert_bytes_peak") <= min, "{got}");

        let ppl = perplexity_json(home, model, text, ctx, &pager);
        assert_eq!(ppl["n_tokens"], base_ppl["n_tokens"]);
        assert_eq!(
            ppl["nll_sum"].as_f64().unwrap().to_bits(),
            base_ppl["nll_sum"].as_f64().unwrap().to_bits(),
            "{prefetch}: teacher-forced NLL differs: {ppl} vs {base_ppl}"
        );
        assert_eq!(ppl["chunk_nll_sums"], base_ppl["chunk_nll_sums"]);
    }
}

#[test]
fn shakespeare_same_output_at_smallest_budget() {
    let home = tempfile::tempdir().unwrap();
    let dir = shakespeare();
    let work = tempfile::tempdir().unwrap();
    // The first ~2 KB of the held-out text: two chunks of 128 tokens.
    let held = std::fs::read_to_string(dir.join("reference/heldout.txt")).unwrap();
    let text = work.path().join("text.txt");
    let cut = held.char_indices().nth(2500).map_or(held.len(), |(i, _)| i);
    std::fs::write(&text, &held[..cut]).unwrap();
    assert_identical_at_smallest_budget(home.path(), &dir, "1,415,2187,302", &text, "128");
}

#[test]
fn forged_tiny_same_output_at_smallest_budget() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("tiny");
    ok(&swarmlm(home.path())
        .args(["forge", "--preset", "tiny", "--seed", "3", "--out"])
        .arg(&model)
        .output()
        .unwrap());
    let text = work.path().join("text.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog, again and again. ".repeat(12),
    )
    .unwrap();
    assert_identical_at_smallest_budget(home.path(), &model, "1,415,2187,302,4843", &text, "48");
}

#[test]
fn budget_sizes_minimum_and_stats_table() {
    let home = tempfile::tempdir().unwrap();
    let dir = shakespeare();
    let (_, min) = expert_and_minimum(&dir);
    let run = |budget: &str, extra: &[&str]| {
        swarmlm(home.path())
            .args(["run", dir.to_str().unwrap(), "--prompt-ids", "1,415"])
            .args(["--max-tokens", "4", "--temperature", "0", "--threads", "1"])
            .args(["--memory-budget", budget])
            .args(extra)
            .output()
            .unwrap()
    };

    // One byte under the minimum: a failure (exit 1) naming the minimum, with a hint.
    let out = run(&(min - 1).to_string(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("minimum budget is {min} bytes")),
        "{err}"
    );
    assert!(err.contains("--memory-budget"), "{err}");
    // The same in a unit: 768 KiB is exactly the minimum (3 × 256 × 256 × 2 bytes × top-2).
    assert_eq!(min, 768 << 10);
    let out = run("767KiB", &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    ok(&run("768KiB", &["--json"]));
    ok(&run("0.001GB", &["--json"])); // 1 000 000 bytes, decimal
    ok(&run("1 MiB", &["--json"]));

    // A malformed size is a usage error (exit 2) that names the input.
    for bad in ["2XB", "GiB", "-5"] {
        let out = run(bad, &[]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(bad), "{err}");
    }

    // --stats: a table on stderr, one row per layer and a total; JSON stays clean on stdout.
    let out = run("2MiB", &["--stats", "--json", "--prefetch", "lookahead"]);
    let v = json(&out);
    assert!(num(&v, "expert_misses") > 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("expert pager: budget 2.00 MiB = 5 experts"),
        "{err}"
    );
    let header = err
        .lines()
        .find(|l| l.trim_start().starts_with("layer"))
        .unwrap_or_else(|| panic!("no header in {err}"));
    for col in [
        "hits", "misses", "hit%", "pf_hits", "pf_waste", "predict%", "read",
    ] {
        assert!(header.contains(col), "{header}");
    }
    for row in ["0", "1", "2", "3", "all"] {
        assert!(
            err.lines()
                .any(|l| l.split_whitespace().next() == Some(row)),
            "no row {row}: {err}"
        );
    }
    // Without a budget, --stats says the pager is off.
    let out = swarmlm(home.path())
        .args(["run", dir.to_str().unwrap(), "--prompt-ids", "1,415"])
        .args(["--max-tokens", "2", "--temperature", "0", "--stats"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ok(&out).stderr).contains("expert pager: off"));
}

fn forge(home: &Path, out: &Path, intermediate: &str) {
    ok(&swarmlm(home)
        .args(["forge", "--preset", "tiny", "--seed", "5", "--layers", "2"])
        .args([
            "--experts",
            "8",
            "--hidden",
            "256",
            "--intermediate",
            intermediate,
        ])
        .args(["--vocab", "512", "--heads", "4", "--kv-heads", "2"])
        .args(["--shard-size", "64MB", "--out"])
        .arg(out)
        .output()
        .unwrap());
    // The pager drops unneeded experts from the page cache: write the forged pages back first
    // (dirty pages cannot be dropped).
    for entry in std::fs::read_dir(out).unwrap() {
        std::fs::File::open(entry.unwrap().path())
            .unwrap()
            .sync_all()
            .unwrap();
    }
}

/// A forged model whose experts (192 MiB) are 4× the budget: the pager's peak stays within the
/// budget, and so does the process: its peak RSS is at most budget + non-expert weights + KV
/// cache + 10%, on top of what the binary itself needs. That last part (code, tokenizer,
/// thread stacks, activations: ~15 MiB for a debug build, which would swamp 10% of a budget a
/// test can afford) is measured on a twin model with the same non-expert tensors and tiny
/// experts, run unpaged.
#[test]
fn budget_held_on_a_model_larger_than_the_budget() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (wide, twin) = (work.path().join("wide"), work.path().join("twin"));
    forge(home.path(), &wide, "8192");
    forge(home.path(), &twin, "64");
    let (expert, min) = expert_and_minimum(&wide);
    let (expert_total, non_expert) = weight_bytes(&wide);
    let (twin_experts, twin_non_expert) = weight_bytes(&twin);
    assert_eq!(twin_non_expert, non_expert);
    let budget = 2 * min;
    assert_eq!(expert_total, 16 * expert);
    assert!(expert_total >= 4 * budget, "{expert_total} vs {budget}");

    let prompt = "1,17,300,42,99,7";
    let tokens = 12;
    let base = run_json(home.path(), &wide, prompt, tokens, &[]);
    let budget_s = budget.to_string();
    let got = run_json(
        home.path(),
        &wide,
        prompt,
        tokens,
        &["--memory-budget", &budget_s],
    );
    assert_eq!(got["generated_ids"], base["generated_ids"]);
    assert!(num(&got, "resident_expert_bytes_peak") <= budget, "{got}");
    assert!(num(&got, "expert_misses") > 0, "{got}");

    let twin_rss = num(
        &run_json(home.path(), &twin, prompt, tokens, &[]),
        "peak_rss_bytes",
    );
    let process = twin_rss.saturating_sub(twin_non_expert + twin_experts);
    let c = config(&wide);
    let head_dim = num(&c, "hidden_size") / num(&c, "num_attention_heads");
    let positions = 6 + tokens as u64;
    let kv = num(&c, "num_hidden_layers")
        * 2
        * num(&c, "num_key_value_heads")
        * head_dim
        * positions
        * 4;
    let bound = process + (budget + non_expert + kv) * 11 / 10;
    let rss = num(&got, "peak_rss_bytes");
    eprintln!(
        "budget {budget}, non-expert {non_expert}, kv {kv}, binary {process}: bound {bound}, \
         peak RSS {rss} (unpaged: {})",
        num(&base, "peak_rss_bytes")
    );
    assert!(rss <= bound, "peak RSS {rss} > bound {bound}");
    // Unpaged, every expert the router picks stays mapped: the pager made the difference.
    assert!(num(&base, "peak_rss_bytes") > bound, "{base}");
}
