//! `swarmlm forge`: write a synthetic Mixtral checkpoint in the Hugging Face hub layout, so tests
//! and benchmarks can run on models of the true shape without downloading 93 GB.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use swarmlm_forge::{ForgeError, ForgeSpec, Overrides, Preset, Progress};

use crate::output;

const AFTER_HELP: &str = "\
Presets:
  tiny          hidden 64, intermediate 128, 2 layers, 4 heads / 2 KV heads, 4 experts, top-2,
                vocab 32000, max position 4096 (8.6 MB; for tests)
  small         hidden 1024, intermediate 3584, 4 layers, 16 heads / 4 KV heads, 8 experts, top-2,
                vocab 32000 (0.86 GB; for benchmarks)
  mixtral-8x7b  the real Mixtral 8x7B shape: hidden 4096, intermediate 14336, 32 layers,
                32 heads / 8 KV heads, 8 experts, top-2, vocab 32000 (93.4 GB)
All presets: rope_theta 1e6, rms_norm_eps 1e-5, sliding_window null, bf16.

Weights are pseudo-random normal (std 0.02; RMSNorm weights exactly 1.0), a pure function of
(seed, tensor name, element index): the same arguments give byte-identical files everywhere.
With vocab < 32000 the tokenizer.json is trimmed to the smaller vocabulary and no
tokenizer.model is written; with vocab > 32000 the extra ids exist but no text maps to them.

--format gguf writes the same model as one bf16 GGUF file for llama.cpp instead of a folder,
laid out as llama.cpp's convert_hf_to_gguf.py --outtype bf16 makes it from the forged folder
(q/k rows permuted for llama.cpp's RoPE, experts stacked into ffn_{gate,down,up}_exps, norms
and router f32, the Mistral v1 vocabulary), streamed tensor by tensor: a real-size model needs
its disk space once instead of twice. --shard-size then only sets the tensor order (that of a
converted folder with those shards). It needs vocab >= 32000 and no sliding window.

Examples:
  swarmlm forge --preset tiny --out /tmp/tiny
  swarmlm forge --preset mixtral-8x7b --layers 2 --out /tmp/m2
  swarmlm forge --preset small --experts 16 --top-k 4 --seed 7 --shard-size 200MB --out /tmp/s16
  swarmlm forge --preset tiny --vocab 1000 --head-dim 32 --sliding-window 512 --json --out /tmp/t
  swarmlm forge --preset mixtral-8x7b --layers 8 --seed 1 --format gguf --out /tmp/m8-bf16.gguf";

/// Write a synthetic Mixtral checkpoint (config, index, bf16 safetensors shards, tokenizer), or
/// the same model as one bf16 GGUF file for llama.cpp.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Starting shape: tiny, small or mixtral-8x7b.
    #[arg(long, value_parser = parse_preset)]
    preset: Preset,
    /// Output directory (created if missing; must be empty: forge never overwrites files), or
    /// with --format gguf the GGUF file to write (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// What to write: a Hugging Face folder (safetensors) or one bf16 GGUF file for llama.cpp.
    #[arg(long, value_enum, default_value_t = Format::Safetensors)]
    format: Format,
    /// Seed of the weight generator.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Maximum tensor bytes per shard, e.g. 5GB (the hub default), 500MB, 2GiB or a plain byte
    /// count (a tensor larger than this gets a shard of its own).
    #[arg(long, value_parser = parse_bytes, default_value = "5GB")]
    shard_size: u64,
    /// Shape overrides (boxed: they are many, and the subcommand enum stays small).
    #[command(flatten)]
    shape: Box<ShapeArgs>,
    /// Print a JSON summary (files with sizes, total bytes, config) on stdout.
    #[arg(long)]
    json: bool,
}

/// Output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// config.json, safetensors shards, index and tokenizer files, as on the hub.
    Safetensors,
    /// One bf16 GGUF file, as llama.cpp's converter makes from that folder.
    Gguf,
}

/// Per-field replacements for the preset's shape.
#[derive(clap::Args, Debug)]
struct ShapeArgs {
    /// Number of layers (num_hidden_layers).
    #[arg(long)]
    layers: Option<usize>,
    /// Experts per layer (num_local_experts).
    #[arg(long)]
    experts: Option<usize>,
    /// Experts used per token (num_experts_per_tok).
    #[arg(long)]
    top_k: Option<usize>,
    /// hidden_size.
    #[arg(long)]
    hidden: Option<usize>,
    /// intermediate_size (per expert).
    #[arg(long)]
    intermediate: Option<usize>,
    /// num_attention_heads.
    #[arg(long)]
    heads: Option<usize>,
    /// num_key_value_heads (must divide the number of heads).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Explicit head_dim (written to config.json; default hidden / heads, not written).
    #[arg(long)]
    head_dim: Option<usize>,
    /// vocab_size.
    #[arg(long)]
    vocab: Option<usize>,
    /// sliding_window (default: none, i.e. null in config.json).
    #[arg(long)]
    sliding_window: Option<usize>,
    /// rope_theta.
    #[arg(long)]
    rope_theta: Option<f64>,
    /// max_position_embeddings.
    #[arg(long)]
    max_position: Option<usize>,
    /// rms_norm_eps.
    #[arg(long)]
    rms_norm_eps: Option<f64>,
}

fn parse_preset(s: &str) -> Result<Preset, String> {
    s.parse::<Preset>().map_err(|e| e.to_string())
}

/// "5GB" (10^9), "2GiB" (2^30), "500M", "4096": the hub's size spellings plus plain bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 5GB, 500MB, 4096)"))?;
    let bytes = value * mult as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{s:?}: a shard size must be at least 1 byte"));
    }
    Ok(bytes as u64)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let o = &args.shape;
    let overrides = Overrides {
        hidden_size: o.hidden,
        intermediate_size: o.intermediate,
        num_hidden_layers: o.layers,
        num_attention_heads: o.heads,
        num_key_value_heads: o.kv_heads,
        head_dim: o.head_dim,
        num_local_experts: o.experts,
        num_experts_per_tok: o.top_k,
        vocab_size: o.vocab,
        rms_norm_eps: o.rms_norm_eps,
        rope_theta: o.rope_theta,
        sliding_window: o.sliding_window,
        max_position_embeddings: o.max_position,
    };
    let mut spec = ForgeSpec::with_overrides(args.preset, &overrides);
    spec.seed = args.seed;
    spec.shard_size = args.shard_size;

    if args.format == Format::Gguf {
        return run_gguf(&args, &spec);
    }
    // A shape or setting the model cannot have is a usage error (exit 2), caught before any I/O.
    let plan = match spec.plan() {
        Ok(plan) => plan,
        Err(e) => {
            output::report_error(&output::hint(
                e,
                "adjust the shape options (see `swarmlm forge --help` for the presets)",
            ));
            return Ok(ExitCode::from(2));
        }
    };
    tracing::info!(
        preset = %args.preset,
        shards = plan.shards.len(),
        bytes = plan.total_size,
        out = %args.out.display(),
        "forging"
    );

    forge_with_bar(
        &args,
        |progress| swarmlm_forge::forge_with_progress(&spec, &args.out, progress),
        |r| {
            (
                format!("{} shards, {} tensors", r.shard_count, r.tensor_count),
                r.total_bytes,
            )
        },
    )
}

/// Run `forge` under a progress bar and print its report: the JSON with `--json`, else one line
/// from `summary` (a description and the bytes written).
fn forge_with_bar<R: serde::Serialize>(
    args: &Args,
    forge: impl FnOnce(&mut dyn FnMut(Progress<'_>)) -> Result<R, ForgeError>,
    summary: impl FnOnce(&R) -> (String, u64),
) -> anyhow::Result<ExitCode> {
    let bar = progress_bar(args.json);
    let start = Instant::now();
    let result = forge(&mut |p| {
        bar.set_length(p.total_bytes);
        bar.set_position(p.done_bytes);
        bar.set_message(p.file.to_string());
    });
    bar.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        Err(
            e @ (ForgeError::OutDirNotEmpty { .. }
            | ForgeError::OutNotADirectory { .. }
            | ForgeError::WouldOverwrite { .. }
            | ForgeError::OutNotAFile { .. }),
        ) => {
            let hint = match args.format {
                Format::Safetensors => "pass a new or empty directory to --out",
                Format::Gguf => "pass a new file name to --out",
            };
            return Err(output::hint(
                e,
                format!("{hint}; forge never overwrites existing files"),
            ));
        }
        Err(e) => {
            return Err(anyhow::Error::new(e))
                .with_context(|| format!("forging into {}", args.out.display()))
        }
    };
    let secs = start.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let (what, bytes) = summary(&report);
        println!(
            "forged {} ({what}, {:.3} GB) into {} in {:.2} s ({:.0} MB/s)",
            args.preset,
            bytes as f64 / 1e9,
            args.out.display(),
            secs,
            bytes as f64 / 1e6 / secs.max(1e-9),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(hidden: bool) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

/// `--format gguf`: one file instead of a folder.
fn run_gguf(args: &Args, spec: &ForgeSpec) -> anyhow::Result<ExitCode> {
    let plan = match swarmlm_forge::gguf_plan(spec) {
        Ok(plan) => plan,
        Err(e) => {
            output::report_error(&output::hint(
                e,
                "adjust the shape options (see `swarmlm forge --help`: GGUF needs vocab >= 32000 and no sliding window)",
            ));
            return Ok(ExitCode::from(2));
        }
    };
    tracing::info!(
        preset = %args.preset,
        tensors = plan.tensors.len(),
        bytes = plan.file_bytes(),
        out = %args.out.display(),
        "forging GGUF"
    );
    forge_with_bar(
        args,
        |progress| swarmlm_forge::forge_gguf_with_progress(spec, &args.out, progress),
        |r| (format!("GGUF, {} tensors", r.tensor_count), r.total_bytes),
    )
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_like_the_hub() {
        assert_eq!(parse_bytes("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("5XB").is_err());
        assert!(parse_bytes("GB").is_err());
    }
}
