//! `swarmlm perplexity`: how well a model predicts a text file, computed exactly like the
//! transformers reference shipped with shakespeare-moe (see swarmlm_engine::perplexity), so the
//! numbers are comparable across implementations.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use swarmlm_engine::{perplexity, Model};

use crate::cmd::run::{open_model, PagerArgs};
use crate::output::hint;

/// Measure a model's perplexity on a text file.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  swarmlm perplexity assets/models/shakespeare-moe --file assets/models/shakespeare-moe/reference/heldout.txt
  swarmlm perplexity mixtral-8x7b --file wiki.txt --ctx 512 --limit 4096 --json
  swarmlm perplexity ./mixtral --file wiki.txt --memory-budget 8GiB --stats

Method: the file's token ids (no BOS) are cut to --limit and to a multiple of --ctx; each chunk
of ctx tokens runs alone as [BOS] + chunk with a fresh cache, and predicts its ctx tokens.
ppl = exp(sum of NLL / tokens).")]
pub struct Args {
    /// Model folder, or the name of a fetched model in the store.
    pub model: String,
    /// UTF-8 text file to score.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Use at most this many tokens of the file.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Worker threads (0 = one per physical core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print one JSON object: n_tokens, nll_sum, ppl, ctx, chunk_nll_sums.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pager: PagerArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid UTF-8 (first bad byte at offset {})",
            args.file.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let (_dir, checkpoint, tokenizer) = open_model(&args.model)?;
    let mut model = Model::load(&checkpoint, args.threads)?;
    args.pager.attach(&mut model)?;
    let ids = tokenizer.encode(&text, false)?;
    let bos = tokenizer
        .bos_id()
        .or(checkpoint.config().bos_token_id)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the model defines no BOS token (tokenizer or config.json bos_token_id)"
            )
        })?;
    let usable = args.limit.map_or(ids.len(), |l| l.min(ids.len()));
    if args.ctx == 0 || usable < args.ctx {
        return Err(hint(
            anyhow::anyhow!(
                "{} has {usable} usable tokens, fewer than one chunk of --ctx {}",
                args.file.display(),
                args.ctx
            ),
            "use a longer file or a smaller --ctx",
        ));
    }
    let n_chunks = usable / args.ctx;
    let bar = (std::io::stderr().is_terminal() && n_chunks > 1).then(|| {
        let bar = indicatif::ProgressBar::new(n_chunks as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} chunks [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let started = Instant::now();
    let result = perplexity(&model, &ids, args.ctx, args.limit, bos, |done, _| {
        if let Some(bar) = &bar {
            bar.set_position(done as u64);
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let p = result?;
    args.pager.report(&model);
    if args.json {
        let obj = serde_json::json!({
            "n_tokens": p.n_tokens,
            "nll_sum": p.nll_sum,
            "ppl": p.ppl,
            "ctx": p.ctx,
            "chunk_nll_sums": p.chunk_nll_sums,
        });
        println!("{obj}");
    } else {
        println!(
            "perplexity {:.4} over {} tokens ({} chunks of {}), nll_sum {:.4}, {:.1} s",
            p.ppl,
            p.n_tokens,
            p.chunk_nll_sums.len(),
            p.ctx,
            p.nll_sum,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
