//! How long loading a tokenizer takes, step by step, so the share of load-to-first-token that is
//! `tokenizer.json` parsing stays visible: reading the file, parsing it as a plain JSON value,
//! the `tokenizers` crate's own full parse (`Tokenizer::from_bytes`), and swarmlm's
//! `Tokenizer::from_model_dir` (the path `swarmlm run` takes). Medians of N runs each, in ms.
//!
//! Run: `cargo run --release -p swarmlm-engine --example tokenizer_load -- MODEL_DIR [N] [ours]`
//! (`ours`: only `from_model_dir`, e.g. under `perf record`).

use std::time::Instant;

use swarmlm_engine::tokenizer::Tokenizer;

/// Median wall time of `f` in ms; what `f` returns is dropped after the clock stops (a program
/// keeps its tokenizer).
fn median_ms<T>(n: usize, mut f: impl FnMut() -> T) -> f64 {
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let kept = f();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            drop(kept);
            ms
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(
        args.next()
            .ok_or("usage: tokenizer_load MODEL_DIR [RUNS] [ours]")?,
    );
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(11);
    let only_ours = args.next().as_deref() == Some("ours");
    let json = dir.join("tokenizer.json");
    if json.is_file() && !only_ours {
        let bytes = std::fs::read(&json)?;
        let read = median_ms(n, || std::fs::read(&json).unwrap());
        let value = median_ms(n, || {
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        });
        let library = median_ms(n, || tokenizers::Tokenizer::from_bytes(&bytes).unwrap());
        println!(
            "tokenizer.json {} bytes: read {read:.2} ms, serde_json::Value {value:.2} ms, \
             tokenizers::Tokenizer::from_bytes {library:.2} ms",
            bytes.len()
        );
    }
    let ours = median_ms(n, || Tokenizer::from_model_dir(&dir).unwrap());
    println!("Tokenizer::from_model_dir {ours:.2} ms (median of {n})");
    Ok(())
}
