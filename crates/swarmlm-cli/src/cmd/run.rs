//! `swarmlm run`: generate text from a prompt with a local model.
//!
//! The model is a folder (HF hub layout or Mistral's original `.pth` layout) or the name of a
//! fetched model in the store. Text streams to stdout as it is generated; `--json` instead
//! prints one object at the end whose fields are a contract for scripts and benchmarks.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use swarmlm_engine::sampling::{Sampler, SamplingParams};
use swarmlm_engine::tokenizer::Tokenizer;
use swarmlm_engine::{generate, locate, GenerateOptions, Generation, Model};
use swarmlm_weights::Checkpoint;

use crate::output::hint;

/// Generate text with a local Mixtral model.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).multiple(false)))]
#[command(after_help = "\
Examples:
  swarmlm run assets/models/shakespeare-moe --prompt 'ROMEO.' --max-tokens 64
  swarmlm run mixtral-8x7b --prompt 'The capital of France is' --temperature 0
  swarmlm run ./model --prompt-ids 1,633,1457 --temperature 0 --json
  swarmlm run ./model --prompt-file question.txt --stop '\\n\\n' --seed 7
  swarmlm run ./mixtral --prompt 'Hello' --memory-budget 2GiB --stats

Sampling defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no repeat penalty.
--temperature 0 is greedy (argmax) decoding and ignores the other sampling options.")]
pub struct Args {
    /// Model folder, or the name of a fetched model in the store ($SWARMLM_HOME/models/<name>).
    pub model: String,
    /// Prompt text (tokenized with a BOS token if the tokenizer config asks for one).
    #[arg(long, group = "input")]
    pub prompt: Option<String>,
    /// Read the prompt text from a UTF-8 file.
    #[arg(long, value_name = "FILE", group = "input")]
    pub prompt_file: Option<PathBuf>,
    /// Prompt as comma-separated token ids, used exactly (no BOS added).
    #[arg(long, value_name = "IDS", value_delimiter = ',', group = "input")]
    pub prompt_ids: Option<Vec<u32>>,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability sums to P (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise tokens seen in the last --repeat-last-n tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Window of recent tokens the repeat penalty looks at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when the generated text contains this string (repeatable; the text is cut before it).
    #[arg(long, value_name = "STR")]
    pub stop: Vec<String>,
    /// Worker threads (0 = one per physical core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pager: PagerArgs,
}

/// `--memory-budget` and friends, shared by `run` and `perplexity`.
#[derive(clap::Args, Debug, Clone)]
pub struct PagerArgs {
    /// Keep at most SIZE bytes of expert weights resident (e.g. 2GiB, 512MB, 1073741824);
    /// other weights stay resident and are reported separately. Default: no limit, no pager.
    #[arg(long, value_name = "SIZE", value_parser = parse_budget)]
    pub memory_budget: Option<u64>,
    /// Which expert leaves when the budget is full (with --memory-budget).
    #[arg(long, value_enum, default_value_t = PolicyArg::LayerFreq)]
    pub pager_policy: PolicyArg,
    /// Load the next layer's predicted experts while the current one runs (with --memory-budget).
    #[arg(long, value_enum, default_value_t = PrefetchArg::Lookahead)]
    pub prefetch: PrefetchArg,
    /// Print the expert pager's per-layer statistics on stderr at the end.
    #[arg(long)]
    pub stats: bool,
}

/// Eviction policy names on the command line.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyArg {
    /// Each layer keeps a stable share of the budget (LRU within the layer); experts beyond
    /// it are streamed when one token needs more than the budget.
    LayerLru,
    /// Each layer keeps its most often routed experts resident; the others are streamed.
    LayerFreq,
    /// Least recently used across all layers.
    Lru,
}

/// Prefetch modes on the command line.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchArg {
    /// Predict the next layer's experts with its router and load them early.
    Lookahead,
    /// Load experts only when the router asks for them.
    Off,
}

fn parse_budget(s: &str) -> Result<u64, String> {
    swarmlm_engine::pager::parse_size(s).map_err(|e| e.to_string())
}

impl PagerArgs {
    /// Attaches a pager to `model` when a budget was given.
    pub fn attach(&self, model: &mut Model<'_>) -> anyhow::Result<()> {
        use swarmlm_engine::pager::{PagerConfig, Policy, Prefetch};
        let Some(budget) = self.memory_budget else {
            return Ok(());
        };
        let cfg = PagerConfig {
            policy: match self.pager_policy {
                PolicyArg::LayerLru => Policy::LayerLru,
                PolicyArg::LayerFreq => Policy::LayerFreq,
                PolicyArg::Lru => Policy::Lru,
            },
            prefetch: match self.prefetch {
                PrefetchArg::Lookahead => Prefetch::Lookahead,
                PrefetchArg::Off => Prefetch::Off,
            },
            ..PagerConfig::new(budget)
        };
        model.attach_pager(cfg).map_err(|e| {
            hint(
                e,
                "raise --memory-budget to at least the minimum, or leave it out to run unpaged",
            )
        })?;
        Ok(())
    }

    /// Prints the statistics table when --stats was given.
    pub fn report(&self, model: &Model<'_>) {
        if !self.stats {
            return;
        }
        match model.pager() {
            Some(p) => eprint!("{}", p.stats().table()),
            None => eprintln!("expert pager: off (no --memory-budget); all weights mapped"),
        }
    }
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Opens the checkpoint and tokenizer of `model` (folder or store name) and maps the model.
pub(crate) fn open_model(model: &str) -> anyhow::Result<(PathBuf, Checkpoint, Tokenizer)> {
    let dir = locate::resolve_model(model).map_err(|e| {
        hint(
            e,
            "pass a model folder, or fetch the model first (`swarmlm fetch ...`)",
        )
    })?;
    check_verified(&dir)?;
    let checkpoint = Checkpoint::open(&dir)
        .with_context(|| format!("cannot open the model in {}", dir.display()))?;
    let tokenizer = Tokenizer::from_model_dir(&dir)
        .with_context(|| format!("cannot load the tokenizer of {}", dir.display()))?;
    Ok((dir, checkpoint, tokenizer))
}

/// A folder that carries a swarmlm manifest (one `fetch` wrote) runs only while its verification
/// record vouches for every file: verified, and unchanged in size and mtime since. A folder
/// without a manifest is the user's own, run as it is.
fn check_verified(dir: &std::path::Path) -> anyhow::Result<()> {
    use swarmlm_manifest::{record_matches, Manifest, MANIFEST_FILE, STATE_DIR};
    let manifest_path = dir.join(STATE_DIR).join(MANIFEST_FILE);
    if !manifest_path.is_file() {
        return Ok(());
    }
    let manifest = Manifest::load(&manifest_path).map_err(|e| {
        hint(
            e,
            "repair or delete that manifest, or fetch the model again",
        )
    })?;
    if manifest.format == swarmlm_manifest::ModelFormat::MistralSafetensors {
        return Err(hint(
            anyhow::anyhow!(
                "{} is in Mistral's consolidated.safetensors layout (format mistral-safetensors), \
                 which swarmlm can fetch, verify and seed but not run yet",
                dir.display()
            ),
            "run a release in the Hugging Face layout (config.json + model-*.safetensors) or \
             Mistral's .pth layout",
        ));
    }
    if record_matches(dir, &manifest) {
        return Ok(());
    }
    Err(hint(
        anyhow::anyhow!(
            "the files of {} are not verified against {}: never verified, or changed since",
            dir.display(),
            manifest_path.display()
        ),
        format!(
            "run `swarmlm verify {}` (it re-hashes every file), then try again",
            dir.display()
        ),
    ))
}

/// Generates, streaming the text to stdout as it becomes final when `stream` is set. `None`
/// when stdout was closed under us (`| head`): not an error worth a message, but nothing more
/// to print either.
pub(crate) fn generate_to_stdout(
    model: &Model<'_>,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    sampler: &mut Sampler,
    stream: bool,
) -> anyhow::Result<Option<Generation>> {
    let stdout = std::io::stdout();
    let mut write_failed = None;
    let generation = generate(model, tokenizer, prompt_ids, opts, sampler, |text| {
        if !stream || write_failed.is_some() {
            return;
        }
        let mut out = stdout.lock();
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
            write_failed = Some(e);
        }
    })?;
    match write_failed {
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(None),
        Some(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
        None => Ok(Some(generation)),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let t_load = Instant::now();
    let (_dir, checkpoint, tokenizer) = open_model(&args.model)?;
    let mut model = Model::load(&checkpoint, args.threads)?;
    args.pager.attach(&mut model)?;
    let load_seconds = t_load.elapsed().as_secs_f64();

    let prompt_ids = match (&args.prompt, &args.prompt_file, &args.prompt_ids) {
        (_, _, Some(ids)) => ids.clone(),
        (Some(text), _, _) => tokenizer.encode(text, tokenizer.add_bos_by_default())?,
        (None, Some(path), None) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read the prompt file {}", path.display()))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "the prompt file {} is not valid UTF-8 (first bad byte at offset {})",
                    path.display(),
                    e.utf8_error().valid_up_to()
                )
            })?;
            tokenizer.encode(&text, tokenizer.add_bos_by_default())?
        }
        (None, None, None) => {
            return Err(hint(
                anyhow::anyhow!("no prompt given"),
                "pass --prompt TEXT, --prompt-file FILE or --prompt-ids 1,2,3",
            ))
        }
    };
    let max_pos = model.shape().max_positions;
    if prompt_ids.len() > max_pos {
        return Err(hint(
            anyhow::anyhow!(
                "the prompt is {} tokens long, but the model's context holds {max_pos} (max_position_embeddings)",
                prompt_ids.len()
            ),
            "shorten the prompt",
        ));
    }
    model.check_ids(&prompt_ids)?;

    let params = SamplingParams {
        temperature: args.temperature,
        top_k: (args.top_k > 0).then_some(args.top_k),
        top_p: (args.top_p < 1.0).then_some(args.top_p),
        min_p: (args.min_p > 0.0).then_some(args.min_p),
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
        seed: args.seed.unwrap_or_else(clock_seed),
    };
    let mut sampler = Sampler::new(params)?;
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
    };
    let json = args.json;
    let Some(generation) =
        generate_to_stdout(&model, &tokenizer, &prompt_ids, &opts, &mut sampler, !json)?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let t = &generation.timings;
    args.pager.report(&model);
    if json {
        let obj = serde_json::json!({
            "prompt_ids": prompt_ids,
            "generated_ids": generation.generated_ids,
            "text": generation.text,
            "stop_reason": generation.stop_reason.as_str(),
            "load_seconds": load_seconds,
            "prefill_tokens_per_s": t.prefill_tokens_per_s(),
            "decode_tokens_per_s": t.decode_tokens_per_s(),
            "peak_rss_bytes": peak_rss_bytes().unwrap_or(0),
        });
        let mut obj = obj;
        let ps = model.pager().map(|p| p.stats());
        let pt = ps.as_ref().map(|s| s.totals());
        obj["expert_hits"] = serde_json::json!(pt.as_ref().map(|t| t.hits));
        obj["expert_misses"] = serde_json::json!(pt.as_ref().map(|t| t.misses));
        obj["expert_bytes_read"] = serde_json::json!(pt.as_ref().map(|t| t.bytes_read));
        obj["resident_expert_bytes_peak"] =
            serde_json::json!(ps.as_ref().map(|s| s.resident_expert_bytes_peak));
        // Only with SWARMLM_PROFILE=1: wall seconds per op over the decode steps (issue 9).
        if let Some(p) = model.op_profile() {
            let ops: serde_json::Map<String, serde_json::Value> = p
                .seconds
                .iter()
                .map(|(name, secs)| (name.to_string(), serde_json::json!(secs)))
                .collect();
            obj["decode_op_seconds"] = serde_json::Value::Object(ops);
            obj["decode_op_steps"] = serde_json::json!(p.steps);
        }
        println!("{obj}");
    } else {
        println!();
        if let Some(p) = model.op_profile() {
            let ops: Vec<String> = p
                .seconds
                .iter()
                .map(|(name, secs)| format!("{name} {secs:.3} s"))
                .collect();
            eprintln!("decode op time over {} steps: {}", p.steps, ops.join(", "));
        }
        tracing::info!(
            "{} prompt tokens at {:.1} tok/s, {} new tokens at {:.1} tok/s, stop: {}, load {:.2} s",
            t.prefill_tokens,
            t.prefill_tokens_per_s(),
            generation.generated_ids.len(),
            t.decode_tokens_per_s(),
            generation.stop_reason.as_str(),
            load_seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("run").chain(argv.iter().copied())).map(|w| w.args)
    }

    #[test]
    fn prompt_ids_are_parsed_exactly_and_inputs_are_exclusive() {
        let a = parse(&["model", "--prompt-ids", "1,633,1457", "--temperature", "0"]).unwrap();
        assert_eq!(a.prompt_ids, Some(vec![1, 633, 1457]));
        assert_eq!(a.temperature, 0.0);
        assert_eq!(a.max_tokens, 128);
        assert!(parse(&["model"]).is_err(), "a prompt is required");
        assert!(parse(&["model", "--prompt", "x", "--prompt-ids", "1"]).is_err());
        assert!(parse(&["model", "--prompt-ids", "1,x"]).is_err());
        let a = parse(&["m", "--prompt", "hi", "--stop", "\n", "--stop", "END"]).unwrap();
        assert_eq!(a.stop, vec!["\n".to_string(), "END".to_string()]);
    }

    #[test]
    fn peak_rss_is_read_from_proc() {
        let rss = peak_rss_bytes().expect("VmHWM in /proc/self/status");
        assert!(
            rss > 1 << 20,
            "a running test binary has more than 1 MiB resident: {rss}"
        );
    }
}
