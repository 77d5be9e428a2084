//! `swarmlm serve`: an OpenAI-compatible HTTP server for a local model that also seeds it.
//!
//! The model is a folder or the name of a fetched model (as for `run`). Unless `--no-seed`, the
//! folder is verified against its manifest and seeded to the swarm while it is served. The
//! server lives in the `swarmlm-serve` crate; this module parses arguments and enforces the
//! network rule: a non-loopback address needs an API key.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use swarmlm_engine::pager::PagerConfig;
use swarmlm_serve::{EngineConfig, Server, ServerConfig};
use swarmlm_swarm::{SeedOptions, SeedTarget};
use swarmlm_weights::Checkpoint;

use super::fetch::{session_config, with_hint};
use super::run::open_model;
use crate::output::hint;

/// Serve a model over an OpenAI-compatible HTTP API, seeding it meanwhile.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  swarmlm serve assets/models/shakespeare-moe
  swarmlm serve mixtral-8x7b --port 8000 --memory-budget 8GiB
  swarmlm serve ./model --host 0.0.0.0 --api-key \"$KEY\" --max-concurrent 2
  swarmlm serve ./model --no-seed

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health.
  curl http://127.0.0.1:8080/v1/completions -H 'Content-Type: application/json' \\
       -d '{\"prompt\": \"ROMEO.\", \"max_tokens\": 32, \"temperature\": 0}'
Binding anything but a loopback address requires --api-key (checked as
'Authorization: Bearer KEY' on every route but /health).")]
pub struct Args {
    /// Model folder, or the name of a fetched model in the store ($SWARMLM_HOME/models/<name>).
    pub model: String,
    /// Address to listen on for HTTP.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// HTTP port (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require this key as `Authorization: Bearer KEY` (also from $SWARMLM_API_KEY).
    #[arg(long, env = "SWARMLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Generations that run at once; further requests wait in a first-come queue.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_concurrent: u16,
    /// Requests that may wait for a free slot; more are refused with 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens_limit: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Keep at most SIZE bytes of expert weights resident (e.g. 2GiB), shared between the
    /// --max-concurrent model instances. Default: no limit, no pager.
    #[arg(long, value_name = "SIZE", value_parser = parse_budget)]
    pub memory_budget: Option<u64>,
    /// Engine threads per running generation (0 = the physical cores, shared out).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Do not seed the model while serving it.
    #[arg(long)]
    pub no_seed: bool,
    /// Address to accept BitTorrent peers on while seeding (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// Do not use the public DHT for seeding (and no local peer discovery).
    #[arg(long)]
    pub no_dht: bool,
}

fn parse_budget(s: &str) -> Result<u64, String> {
    swarmlm_engine::pager::parse_size(s).map_err(|e| e.to_string())
}

/// Exit code 2 with a message, for arguments that parse but are not allowed together.
fn usage_error(message: &str, hint_text: &str) -> anyhow::Result<ExitCode> {
    eprintln!("error: {message}\nhint: {hint_text}");
    Ok(ExitCode::from(2))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let api_key = args.api_key.clone().filter(|k| !k.is_empty());
    if !args.host.is_loopback() && api_key.is_none() {
        return usage_error(
            &format!(
                "refusing to serve on {} without an API key: anyone who can reach it could use it",
                args.host
            ),
            "pass --api-key KEY (or set SWARMLM_API_KEY), or keep the default --host 127.0.0.1",
        );
    }
    let (dir, checkpoint, tokenizer) = open_model(&args.model)?;
    let model_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| args.model.clone());
    let seed_target = if args.no_seed {
        None
    } else {
        Some(SeedTarget::from_dir(&dir).map_err(|e| {
            hint(
                with_hint(e),
                "serve it without seeding with --no-seed, or fix the folder (`swarmlm verify`)",
            )
        })?)
    };
    let engine = EngineConfig {
        max_concurrent: usize::from(args.max_concurrent),
        max_queue: args.max_queue,
        threads: args.threads,
        pager: args.memory_budget.map(PagerConfig::new),
    };
    let mut config = ServerConfig::new(model_id.clone());
    config.api_key = api_key;
    config.max_tokens_limit = args.max_tokens_limit;
    config.max_body_bytes = args.max_body;
    let mut server = load(checkpoint, tokenizer, &engine, config)?;

    let rt = swarmlm_swarm::runtime().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let addr = SocketAddr::new(args.host, args.port);
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            hint(
                anyhow::Error::new(e).context(format!("cannot listen on {addr}")),
                "pick another --port (0 = any free port), or stop what is using it",
            )
        })?;
        let local = listener.local_addr().context("no local address")?;
        if let Some(target) = seed_target {
            let session = session_config(args.listen, args.no_dht, &[]);
            server.start_seeding(
                target,
                SeedOptions {
                    session,
                    recheck: false,
                },
            );
        }
        if let Some(seeder) = server.seeder() {
            tokio::spawn(report_seeding(seeder));
        }
        // The line tests and scripts wait for.
        println!("serving {model_id} on http://{local}");
        eprintln!("serving {model_id} on http://{local} (Ctrl-C to stop)");
        server
            .run(listener, swarmlm_swarm::shutdown_signal())
            .await
            .context("the HTTP server failed")
    })?;
    eprintln!("server stopped");
    Ok(ExitCode::SUCCESS)
}

fn load(
    checkpoint: Checkpoint,
    tokenizer: swarmlm_engine::tokenizer::Tokenizer,
    engine: &EngineConfig,
    config: ServerConfig,
) -> anyhow::Result<Server> {
    Server::new(checkpoint, tokenizer, engine, config).map_err(|e| {
        hint(
            anyhow::Error::new(e),
            "raise --memory-budget (it is shared by --max-concurrent instances), or leave it out",
        )
    })
}

/// Prints the seeder's state on stderr: once when seeding starts (or fails), then a line when
/// peers or upload change, at most every 30 seconds.
async fn report_seeding(seeder: std::sync::Arc<swarmlm_serve::Seeder>) {
    let mut announced = false;
    let mut last_line = String::new();
    let mut last_print = std::time::Instant::now();
    loop {
        let s = seeder.status();
        match s.state {
            "seeding" if !announced => {
                announced = true;
                eprintln!(
                    "seeding {} on {}",
                    s.info_hash.as_deref().unwrap_or("?"),
                    s.listen.as_deref().unwrap_or("?")
                );
                if let Some(m) = &s.magnet {
                    eprintln!("magnet: {m}");
                }
            }
            "seeding" => {
                let line = format!(
                    "seeding: {} peer(s), {} bytes up",
                    s.peers, s.uploaded_bytes
                );
                if line != last_line && last_print.elapsed() >= std::time::Duration::from_secs(30) {
                    eprintln!("{line}");
                    last_line = line;
                    last_print = std::time::Instant::now();
                }
            }
            "error" => {
                eprintln!(
                    "seeding failed (still serving): {}",
                    s.error.as_deref().unwrap_or("unknown error")
                );
                return;
            }
            "stopped" => return,
            _ => {}
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
