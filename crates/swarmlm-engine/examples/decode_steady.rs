//! Where load-to-first-token and decode time go, on a real checkpoint: the load steps (open,
//! tokenizer, model), the first token, then 2 × N greedy decode steps from token 1, reported as
//! the first N steps (which include each expert's first use: page-table fills) and the next N
//! (steady state). Bytes per token are the weights a decode step reads, so the GB/s compare with
//! the read probe (`kernel_bench --only probe`).
//!
//! Run: `cargo run --release -p swarmlm-engine --example decode_steady -- MODEL_DIR [N]`
//! (`benchmarks/hugepages.sh` runs it with and without huge-page mappings, interleaved).

use std::time::Instant;

use swarmlm_engine::{tokenizer::Tokenizer, Model, Session};
use swarmlm_weights::Checkpoint;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(
        args.next()
            .ok_or("usage: decode_steady MODEL_DIR [STEPS]")?,
    );
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let t0 = Instant::now();
    let ck = Checkpoint::open(&dir)?;
    let t1 = Instant::now();
    let _tok = Tokenizer::from_model_dir(&dir)?;
    let t2 = Instant::now();
    let model = Model::load(&ck, 0)?;
    let t3 = Instant::now();
    let mut s = Session::new(&model, 2 * n + 2);
    let mut id = argmax(s.prefill(&[1])?);
    let t4 = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    let sh = model.shape();
    let bytes_per_token = 2.0
        * (sh.num_layers
            * (sh.top_k * 3 * sh.hidden_size * sh.intermediate_size
                + 2 * sh.hidden_size * (sh.num_heads + sh.num_kv_heads) * sh.head_dim
                + sh.num_experts * sh.hidden_size)
            + sh.vocab_size * sh.hidden_size) as f64;
    let mut steps = Vec::with_capacity(2 * n);
    for _ in 0..2 * n {
        let t = Instant::now();
        id = argmax(s.decode_step(id)?);
        steps.push(t.elapsed().as_secs_f64());
    }
    let (a, b) = steps.split_at(n);
    let rate = |v: &[f64]| {
        let per = v.iter().sum::<f64>() / v.len().max(1) as f64;
        (per * 1e3, bytes_per_token / per / 1e9)
    };
    let ((fa, ga), (fb, gb)) = (rate(a), rate(b));
    println!(
        "open {:.1} ms, tokenizer {:.1} ms, Model::load {:.1} ms, first token {:.1} ms, to first token {:.1} ms",
        ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4), ms(t0, t4)
    );
    // How much of the weights the kernel mapped with 2 MiB pages (Linux; 0 elsewhere).
    let pmd_kib: u64 = std::fs::read_to_string("/proc/self/smaps_rollup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("FilePmdMapped:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    println!(
        "decode steps 1-{n}: {fa:.1} ms/token ({ga:.2} GB/s); steps {}-{}: {fb:.1} ms/token ({gb:.2} GB/s); {:.3} GB/token; mapped with 2 MiB pages: {:.2} GB",
        n + 1,
        2 * n,
        bytes_per_token / 1e9,
        pmd_kib as f64 * 1024.0 / 1e9
    );
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}
