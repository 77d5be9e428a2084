//! candle peer for `benchmarks/peers.sh`: loads a forged Mixtral HF folder with
//! `candle_transformers::models::mixtral` and decodes greedily, timing load, prefill and decode the
//! way `swarmlm run --json` reports them, so the two compare side by side.
//!
//! Usage: `candle-mixtral-peer DIR --prompt-ids 1,2,3 --max-tokens 64 --dtype bf16|f32`
//! Prints one JSON object: `load_seconds`, `prefill_tokens_per_s`, `decode_tokens_per_s`,
//! `prompt_ids`, `generated_ids`, `peak_rss_bytes`.
//! Threads: candle's CPU kernels use rayon, so set `RAYON_NUM_THREADS`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::mixtral::{Config, Model};
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Args {
    dir: PathBuf,
    prompt_ids: Vec<u32>,
    max_tokens: usize,
    dtype: DType,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut dir = None;
    let mut prompt_ids = vec![1u32];
    let mut max_tokens = 64;
    let mut dtype = DType::BF16;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--prompt-ids" => {
                let v = it.next().context("--prompt-ids needs a value")?;
                prompt_ids = v
                    .split(',')
                    .map(|s| s.trim().parse::<u32>())
                    .collect::<Result<_, _>>()
                    .context("--prompt-ids: comma-separated token ids")?;
            }
            "--max-tokens" => {
                max_tokens = it.next().context("--max-tokens needs a value")?.parse()?;
            }
            "--dtype" => {
                dtype = match it.next().as_deref() {
                    Some("bf16") => DType::BF16,
                    Some("f32") => DType::F32,
                    other => bail!("--dtype: expected bf16 or f32, got {other:?}"),
                }
            }
            _ if dir.is_none() && !a.starts_with('-') => dir = Some(PathBuf::from(a)),
            _ => bail!("unexpected argument {a:?}"),
        }
    }
    Ok(Args {
        dir: dir.context(
            "usage: candle-mixtral-peer DIR [--prompt-ids ..] [--max-tokens N] [--dtype bf16|f32]",
        )?,
        prompt_ids,
        max_tokens,
        dtype,
    })
}

/// HF's config.json lacks candle's `use_flash_attn` and may have `sliding_window: null`.
fn load_config(dir: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(dir.join("config.json")).context("config.json")?;
    let mut v: serde_json::Value = serde_json::from_str(&text)?;
    let obj = v.as_object_mut().context("config.json is not an object")?;
    obj.insert("use_flash_attn".into(), false.into());
    if obj.get("sliding_window").is_none_or(|s| s.is_null()) {
        let max_pos = obj
            .get("max_position_embeddings")
            .cloned()
            .unwrap_or(4096.into());
        obj.insert("sliding_window".into(), max_pos);
    }
    Ok(serde_json::from_value(v)?)
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn argmax_last(logits: &Tensor) -> Result<u32> {
    let v: Vec<f32> = logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let device = Device::Cpu;
    let t0 = Instant::now();
    let cfg = load_config(&args.dir)?;
    let mut shards: Vec<PathBuf> = std::fs::read_dir(&args.dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    shards.sort();
    // SAFETY: the forged files are not modified while the benchmark runs.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&shards, args.dtype, &device)? };
    let mut model = Model::new(&cfg, vb)?;
    let load_seconds = t0.elapsed().as_secs_f64();

    let n_prompt = args.prompt_ids.len();
    let t1 = Instant::now();
    let input = Tensor::new(args.prompt_ids.as_slice(), &device)?.unsqueeze(0)?;
    let logits = model.forward(&input, 0)?;
    let mut next = argmax_last(&logits)?;
    let prefill = t1.elapsed().as_secs_f64();

    let mut generated = vec![next];
    let t2 = Instant::now();
    for i in 1..args.max_tokens {
        let input = Tensor::new(&[next], &device)?.unsqueeze(0)?;
        let logits = model.forward(&input, n_prompt + i - 1)?;
        next = argmax_last(&logits)?;
        generated.push(next);
    }
    let decode = t2.elapsed().as_secs_f64();
    let n_decode = generated.len().saturating_sub(1).max(1);
    let out = serde_json::json!({
        "prompt_ids": args.prompt_ids,
        "generated_ids": generated,
        "load_seconds": load_seconds,
        "prefill_tokens_per_s": n_prompt as f64 / prefill,
        "decode_tokens_per_s": n_decode as f64 / decode,
        "peak_rss_bytes": peak_rss_bytes(),
        "dtype": format!("{:?}", args.dtype),
    });
    println!("{out}");
    Ok(())
}
