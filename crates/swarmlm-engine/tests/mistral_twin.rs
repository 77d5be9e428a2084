//! The same tiny model in both layouts (swarmlm-weights' fixtures: HF safetensors with
//! half-split q/k rows, and Mistral's original .pth with interleaved rows) must give the same
//! logits: this is the interleaved-RoPE path checked against the half-split one and against the
//! candle reference (which converts the .pth rows the way HF's conversion script does).

mod common;

use std::path::PathBuf;

use common::*;
use swarmlm_engine::{Model, ReferenceModel, Session};
use swarmlm_weights::{Checkpoint, RopeLayout};

fn fixture(name: &str) -> PathBuf {
    repo_root()
        .join("crates/swarmlm-weights/tests/fixtures")
        .join(name)
}

#[test]
fn pth_and_safetensors_twins_give_the_same_logits() {
    let hf = Checkpoint::open(&fixture("tiny-hf")).expect("open tiny-hf");
    let pth = Checkpoint::open(&fixture("tiny-pth")).expect("open tiny-pth");
    assert_eq!(hf.rope_layout(), RopeLayout::HalfSplit);
    assert_eq!(pth.rope_layout(), RopeLayout::Interleaved);
    let (a, b) = (hf.config(), pth.config());
    assert_eq!(
        (
            a.hidden_size,
            a.num_hidden_layers,
            a.head_dim,
            a.vocab_size,
            a.rope_theta
        ),
        (
            b.hidden_size,
            b.num_hidden_layers,
            b.head_dim,
            b.vocab_size,
            b.rope_theta
        )
    );

    let hf_model = Model::load(&hf, 2).expect("load hf");
    let pth_model = Model::load(&pth, 2).expect("load pth");
    let vocab = hf_model.shape().vocab_size;
    let prompt: Vec<u32> = (0..20u32).map(|i| (1 + i * 37) % vocab as u32).collect();

    let run = |model: &Model<'_>| {
        let mut s = Session::new(model, prompt.len());
        s.enable_router_trace();
        let logits = s.prefill_all(&prompt).expect("prefill");
        (logits.data, s.router_trace().cloned().unwrap())
    };
    let (hf_logits, hf_routes) = run(&hf_model);
    let (pth_logits, pth_routes) = run(&pth_model);
    assert_logits_close("pth vs safetensors", &pth_logits, &hf_logits, vocab, 1e-5);
    for (l, (x, y)) in hf_routes.layers.iter().zip(&pth_routes.layers).enumerate() {
        let ex: Vec<_> = x.iter().map(|r| &r.experts).collect();
        let ey: Vec<_> = y.iter().map(|r| &r.experts).collect();
        assert_eq!(ex, ey, "layer {l} routing");
    }
    // Not a degenerate model: positions differ from each other.
    assert!(max_abs_diff(&hf_logits[..vocab], &hf_logits[vocab..2 * vocab]) > 1e-4);

    let reference = ReferenceModel::load(&pth).expect("reference from pth");
    let want = reference.forward(&prompt).expect("reference forward");
    assert_logits_close(
        "pth vs candle reference",
        &pth_logits,
        &want.logits.concat(),
        vocab,
        1e-4,
    );
}
