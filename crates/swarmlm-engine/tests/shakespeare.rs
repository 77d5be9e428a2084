//! The trained shakespeare-moe model against the outputs transformers produced for it
//! (assets/models/shakespeare-moe/reference, float32 eager): logits, router choices, greedy
//! continuations and held-out perplexity, through the fast path and the candle reference.

mod common;

use common::*;
use swarmlm_engine::{perplexity, Model, ReferenceModel, Session};
use swarmlm_weights::Checkpoint;

fn reference_dir() -> std::path::PathBuf {
    shakespeare_dir().join("reference")
}

fn prompts() -> Vec<serde_json::Value> {
    read_json(&reference_dir().join("reference.json"))["prompts"]
        .as_array()
        .expect("prompts")
        .clone()
}

const VOCAB: usize = 4096;

#[test]
fn prefill_logits_and_routing_match_transformers() {
    let ckpt = Checkpoint::open(&shakespeare_dir()).expect("open shakespeare-moe");
    let model = Model::load(&ckpt, 2).expect("load");
    let logits_file = reference_dir().join("logits_prompts.safetensors");
    for p in 0..2 {
        let ids = ids(&prompts()[p]["input_ids"]);
        let (shape, want) = st_tensor(&logits_file, &format!("prompt{p}.logits_f32"));
        assert_eq!(shape, vec![ids.len(), VOCAB]);

        let mut session = Session::new(&model, 64);
        session.enable_router_trace();
        let got = session.prefill_all(&ids).expect("prefill");
        assert_logits_close(
            &format!("prompt {p} batch prefill"),
            &got.data,
            &want,
            VOCAB,
            1e-3,
        );

        if p == 0 {
            let trace = session.router_trace().expect("trace enabled");
            let routing = read_json(&reference_dir().join("routing_prompt0.json"));
            for (l, layer) in routing["layers"].as_array().unwrap().iter().enumerate() {
                let (_, want_logits) =
                    st_tensor(&logits_file, &format!("prompt0.router_logits.layer{l}"));
                for (pos, route) in trace.layers[l].iter().enumerate() {
                    let want_experts: Vec<usize> = layer["experts"][pos]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e.as_u64().unwrap() as usize)
                        .collect();
                    assert_eq!(route.experts, want_experts, "layer {l} position {pos}");
                    for (k, w) in route.weights.iter().enumerate() {
                        let want_w = layer["weights"][pos][k].as_f64().unwrap() as f32;
                        assert!(
                            (w - want_w).abs() < 1e-4,
                            "layer {l} pos {pos}: weight {w} vs {want_w}"
                        );
                    }
                    let d =
                        max_abs_diff(&route.router_logits, &want_logits[pos * 8..(pos + 1) * 8]);
                    assert!(d < 1e-4, "layer {l} pos {pos}: router logits differ by {d}");
                }
            }
        }

        // The same positions one token at a time through the KV cache.
        let mut session = Session::new(&model, 64);
        let mut stepped = Vec::new();
        for &id in &ids {
            stepped.extend_from_slice(session.decode_step(id).expect("decode step"));
        }
        assert_logits_close(
            &format!("prompt {p} token by token"),
            &stepped,
            &want,
            VOCAB,
            1e-3,
        );
    }
}

#[test]
fn greedy_continuations_match_transformers() {
    let ckpt = Checkpoint::open(&shakespeare_dir()).expect("open shakespeare-moe");
    let model = Model::load(&ckpt, 2).expect("load");
    for (p, prompt) in prompts().iter().enumerate() {
        let ids = ids(&prompt["input_ids"]);
        let want = common::ids(&prompt["f32"]["greedy_new_ids"]);
        let mut session = Session::new(&model, ids.len() + want.len());
        let mut next = argmax(session.prefill(&ids).expect("prefill")) as u32;
        let mut got = vec![next];
        while got.len() < want.len() {
            next = argmax(session.decode_step(next).expect("decode")) as u32;
            got.push(next);
        }
        assert_eq!(got, want, "prompt {p}: greedy ids");
    }
}

/// `generate` streams exactly what the new ids add to the prompt's text: the first token keeps
/// its leading space, and the streamed pieces are the returned text.
#[test]
fn generate_streams_the_continuation_of_the_prompt() {
    use swarmlm_engine::sampling::{Sampler, SamplingParams};
    use swarmlm_engine::tokenizer::Tokenizer;
    use swarmlm_engine::{generate, GenerateOptions};

    let ckpt = Checkpoint::open(&shakespeare_dir()).expect("open shakespeare-moe");
    let model = Model::load(&ckpt, 2).expect("load");
    let tokenizer = Tokenizer::from_model_dir(&shakespeare_dir()).expect("tokenizer");
    let prompt = "The king";
    let prompt_ids = tokenizer.encode(prompt, true).expect("encode");
    let opts = GenerateOptions {
        max_tokens: 24,
        stop: Vec::new(),
    };
    let mut sampler = Sampler::new(SamplingParams::greedy()).expect("sampler");
    let mut streamed = String::new();
    let generation = generate(&model, &tokenizer, &prompt_ids, &opts, &mut sampler, |t| {
        streamed.push_str(t)
    })
    .expect("generate");
    assert_eq!(generation.generated_ids.len(), 24);
    assert_eq!(streamed, generation.text);
    let all: Vec<u32> = prompt_ids
        .iter()
        .chain(&generation.generated_ids)
        .copied()
        .collect();
    let whole = tokenizer.decode(&all);
    let prompt_text = tokenizer.decode(&prompt_ids);
    assert_eq!(prompt_text, prompt);
    assert_eq!(format!("{prompt_text}{}", generation.text), whole);
    assert!(
        generation.text.starts_with(' ') || generation.text.starts_with('\n'),
        "a continuation of {prompt:?} starts a new word or line: {:?}",
        generation.text
    );
}

#[test]
fn heldout_perplexity_matches_transformers() {
    let ckpt = Checkpoint::open(&shakespeare_dir()).expect("open shakespeare-moe");
    let model = Model::load(&ckpt, 2).expect("load");
    let ids = ids(&read_json(&reference_dir().join("heldout_ids.json")));
    let reference = &read_json(&reference_dir().join("reference.json"))["heldout"]["f32"];
    let mut seen = Vec::new();
    let ppl = perplexity(&model, &ids, 512, None, 1, |done, total| {
        seen.push((done, total))
    })
    .expect("perplexity");
    assert_eq!(seen, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    assert_eq!(ppl.n_tokens, 2048);
    let want = reference["nll_sum"].as_f64().unwrap();
    let rel = (ppl.nll_sum - want).abs() / want;
    assert!(
        rel <= 1e-5,
        "nll_sum {} vs {want}: relative error {rel}",
        ppl.nll_sum
    );
    for (c, (got, want)) in ppl
        .chunk_nll_sums
        .iter()
        .zip(reference["chunk_nll_sums"].as_array().unwrap())
        .enumerate()
    {
        let want = want.as_f64().unwrap();
        let rel = (*got as f64 - want).abs() / want;
        assert!(rel <= 1e-5, "chunk {c}: {got} vs {want}");
    }
    let want_ppl = reference["ppl"].as_f64().unwrap();
    assert!((ppl.ppl - want_ppl).abs() / want_ppl < 1e-4);
}

#[test]
fn candle_reference_matches_transformers() {
    let ckpt = Checkpoint::open(&shakespeare_dir()).expect("open shakespeare-moe");
    let reference = ReferenceModel::load(&ckpt).expect("load reference");
    let logits_file = reference_dir().join("logits_prompts.safetensors");
    let ids = ids(&prompts()[1]["input_ids"]);
    let (_, want) = st_tensor(&logits_file, "prompt1.logits_f32");
    let out = reference.forward(&ids).expect("forward");
    let got: Vec<f32> = out.logits.concat();
    assert_logits_close("candle reference, prompt 1", &got, &want, VOCAB, 1e-3);
}
