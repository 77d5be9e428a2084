//! Forged models of several shapes (GQA/MHA/MQA, sliding window shorter than the prompt,
//! top-1/2/3 of 4 or 8 experts, explicit head_dim) against transformers fixtures made by
//! scripts/make_reference_fixtures.py, and the fast path against the candle reference.
//!
//! The weights are not committed: each test re-forges the exact bytes with swarmlm-forge
//! (deterministic) from the shape and seed recorded in the fixture.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use swarmlm_engine::{perplexity, Model, ReferenceModel, Session};
use swarmlm_forge::{ForgeSpec, Overrides, Preset};
use swarmlm_weights::Checkpoint;

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

/// Every fixture: (name, metadata).
fn fixtures() -> Vec<(String, serde_json::Value)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    assert!(names.len() >= 4, "expected at least 4 reference fixtures");
    names
        .into_iter()
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                read_json(&p),
            )
        })
        .collect()
}

/// Re-forges the fixture's model into `dir`.
fn forge_model(meta: &serde_json::Value, dir: &Path) {
    let shape = &meta["forge"]["shape"];
    let get = |k: &str| shape.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
    let overrides = Overrides {
        hidden_size: get("hidden_size"),
        intermediate_size: get("intermediate_size"),
        num_hidden_layers: get("num_hidden_layers"),
        num_attention_heads: get("num_attention_heads"),
        num_key_value_heads: get("num_key_value_heads"),
        head_dim: get("head_dim"),
        num_local_experts: get("num_local_experts"),
        num_experts_per_tok: get("num_experts_per_tok"),
        vocab_size: get("vocab_size"),
        sliding_window: get("sliding_window"),
        ..Overrides::default()
    };
    let mut spec = ForgeSpec::with_overrides(Preset::Tiny, &overrides);
    spec.seed = meta["forge"]["seed"].as_u64().expect("seed");
    swarmlm_forge::forge(&spec, dir).expect("forge");
}

#[test]
fn forged_models_match_transformers() {
    for (name, meta) in fixtures() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join(&name);
        forge_model(&meta, &dir);
        let ckpt = Checkpoint::open(&dir).expect("open forged model");
        let model = Model::load(&ckpt, 2).expect("load");
        let vocab = model.shape().vocab_size;
        let top_k = model.shape().top_k;
        let st = fixtures_dir().join(format!("{name}.safetensors"));

        // Teacher-forced logits and router choices of the whole prompt, as one batch.
        let prompt = ids(&meta["prompt_ids"]);
        let mut session = Session::new(&model, prompt.len() + 16);
        session.enable_router_trace();
        let logits = session.prefill_all(&prompt).expect("prefill");
        let (_, want) = st_tensor(&st, "logits");
        assert_logits_close(&name, &logits.data, &want, vocab, 1e-3);
        let trace = session.router_trace().unwrap();
        for (l, layer) in trace.layers.iter().enumerate() {
            let (shape, want) = st_tensor(&st, &format!("router_topk.layer{l}"));
            assert_eq!(shape, vec![prompt.len(), top_k], "{name} layer {l}");
            for (pos, route) in layer.iter().enumerate() {
                let want: Vec<usize> = want[pos * top_k..(pos + 1) * top_k]
                    .iter()
                    .map(|&e| e as usize)
                    .collect();
                assert_eq!(route.experts, want, "{name}: layer {l} position {pos}");
            }
        }

        // Greedy decoding through the KV cache, equal up to the first step whose reference
        // top-1 margin is within float noise (random weights make such near-ties common).
        let want_ids = ids(&meta["greedy_new_ids"]);
        let margins: Vec<f64> = meta["greedy_top1_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        let mut session = Session::new(&model, prompt.len() + want_ids.len());
        let mut next = argmax(session.prefill(&prompt).unwrap()) as u32;
        for (step, (&want_id, &margin)) in want_ids.iter().zip(&margins).enumerate() {
            if margin < 2e-3 {
                break;
            }
            assert_eq!(next, want_id, "{name}: greedy step {step}");
            next = argmax(session.decode_step(next).unwrap()) as u32;
        }

        // Perplexity with the reference's chunking.
        let p = &meta["perplexity"];
        let text = ids(&p["ids"]);
        let ctx = p["ctx"].as_u64().unwrap() as usize;
        let got = perplexity(&model, &text, ctx, None, 1, |_, _| {}).expect("perplexity");
        let want = p["nll_sum"].as_f64().unwrap();
        let rel = (got.nll_sum - want).abs() / want;
        assert!(rel <= 1e-5, "{name}: nll_sum {} vs {want}", got.nll_sum);
    }
}

#[test]
fn fast_path_matches_candle_reference() {
    for (name, meta) in fixtures() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join(&name);
        forge_model(&meta, &dir);
        let ckpt = Checkpoint::open(&dir).expect("open forged model");
        let model = Model::load(&ckpt, 3).expect("load");
        let reference = ReferenceModel::load(&ckpt).expect("reference");
        let prompt = ids(&meta["prompt_ids"]);
        let want = reference.forward(&prompt).expect("reference forward");
        let mut session = Session::new(&model, prompt.len());
        session.enable_router_trace();
        let got = session.prefill_all(&prompt).expect("prefill");
        assert_logits_close(
            &name,
            &got.data,
            &want.logits.concat(),
            model.shape().vocab_size,
            1e-4,
        );
        let trace = session.router_trace().unwrap();
        for (l, layer) in trace.layers.iter().enumerate() {
            let experts: Vec<Vec<usize>> = layer.iter().map(|r| r.experts.clone()).collect();
            assert_eq!(experts, want.router_experts[l], "{name}: layer {l}");
        }
    }
}
