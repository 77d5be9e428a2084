//! `swarmlm demo`: the whole path in one command, offline — magnet → peer → verified files →
//! mapped weights → text.
//!
//! A new user should see swarmlm work before downloading 87 GB. The bundled shakespeare-moe model
//! (18 MB, compiled into the binary so an installed `swarmlm` works in any folder) is written to
//! a temporary seed folder and served by [`swarmlm_swarm::seed`] on 127.0.0.1; the same process
//! then fetches it by its magnet link with [`swarmlm_swarm::fetch`], exactly as `swarmlm fetch`
//! does (BEP 9 metadata from the peer, pieces, per-file SHA-256 against the catalogue manifest
//! `magnets/shakespeare-moe.toml`), re-verifies the folder, maps it and generates text as
//! `swarmlm run` does. DHT, LSD, UPnP and trackers are off: nothing leaves 127.0.0.1.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use swarmlm_engine::sampling::{Sampler, SamplingParams};
use swarmlm_engine::{GenerateOptions, Model};
use swarmlm_manifest::{Manifest, VerifyOptions};
use swarmlm_swarm::{
    Event, FetchOptions, SeedOptions, SeedTarget, SessionConfig, Source, SwarmError,
};

use super::fetch::with_hint;
use crate::output::hint;

/// The catalogue name of the bundled model (`magnets/shakespeare-moe.toml`).
pub const MODEL_NAME: &str = "shakespeare-moe";

/// The model's files as published in its torrent (the manifest lists the same paths; the
/// `reference/` test data of `assets/models/shakespeare-moe` is not part of the model).
const MODEL_FILES: &[(&str, &[u8])] = &[
    (
        "PROVENANCE.md",
        include_bytes!("../../../../assets/models/shakespeare-moe/PROVENANCE.md"),
    ),
    (
        "README.md",
        include_bytes!("../../../../assets/models/shakespeare-moe/README.md"),
    ),
    (
        "config.json",
        include_bytes!("../../../../assets/models/shakespeare-moe/config.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../../../../assets/models/shakespeare-moe/generation_config.json"),
    ),
    (
        "model-00001-of-00003.safetensors",
        include_bytes!(
            "../../../../assets/models/shakespeare-moe/model-00001-of-00003.safetensors"
        ),
    ),
    (
        "model-00002-of-00003.safetensors",
        include_bytes!(
            "../../../../assets/models/shakespeare-moe/model-00002-of-00003.safetensors"
        ),
    ),
    (
        "model-00003-of-00003.safetensors",
        include_bytes!(
            "../../../../assets/models/shakespeare-moe/model-00003-of-00003.safetensors"
        ),
    ),
    (
        "model.safetensors.index.json",
        include_bytes!("../../../../assets/models/shakespeare-moe/model.safetensors.index.json"),
    ),
    (
        "special_tokens_map.json",
        include_bytes!("../../../../assets/models/shakespeare-moe/special_tokens_map.json"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../../../assets/models/shakespeare-moe/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../../../../assets/models/shakespeare-moe/tokenizer_config.json"),
    ),
];

/// The model was trained on play texts where a speaker's name in capitals opens each speech.
const DEFAULT_PROMPT: &str = "ROMEO.\n";

/// Fetch the bundled model by magnet from a local seeder, verify it, and generate text.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Everything happens on 127.0.0.1 in this one process: a seeder serves the 18 MB shakespeare-moe
model (compiled into swarmlm), and a fetch downloads it by magnet link exactly like
`swarmlm fetch` (metadata from the peer, pieces, SHA-256 of every file against
magnets/shakespeare-moe.toml). Then the model is mapped and writes Shakespeare-flavoured text.
No DHT, no trackers, no internet.

Sampling: the `run` defaults (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05) with a fixed
--seed, so the same prompt gives the same text.

Examples:
  swarmlm demo
  swarmlm demo --prompt 'JULIET.\\n' --max-tokens 200
  swarmlm demo --keep ~/swarmlm-demo        # keep the fetched copy; a second run reuses it
  swarmlm demo --keep ~/swarmlm-demo --refetch
  swarmlm demo --json")]
pub struct Args {
    /// Prompt text [default: "ROMEO." and a newline, a speaker's name as in the plays].
    #[arg(long, default_value = DEFAULT_PROMPT, hide_default_value = true)]
    pub prompt: String,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 120)]
    pub max_tokens: usize,
    /// Fetch into DIR/shakespeare-moe and keep it (default: a temporary folder, removed at the
    /// end). A verified copy already there is used without transferring it again.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// With --keep: delete the kept copy and transfer the model again.
    #[arg(long, requires = "keep")]
    pub refetch: bool,
    /// Sampling seed (the default gives a readable continuation of the default prompt; this
    /// small model also likes runs of spaces).
    #[arg(long, default_value_t = 2)]
    pub seed: u64,
    /// Watchdog for every network wait: seeder start, metadata, and no new verified byte.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Worker threads for the model (0 = one per physical core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print one JSON object at the end instead of streaming text and a summary.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    swarmlm_swarm::util::parse_duration(s)
}

/// What the transfer step did.
struct Transfer {
    bytes: u64,
    seconds: f64,
    magnet: String,
    /// False when a verified copy in --keep was used as is.
    fetched: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let manifest = swarmlm_manifest::store::catalogue_entry(MODEL_NAME)
        .context("the shakespeare-moe manifest is missing from this build's catalogue")?;
    check_bundle(&manifest)?;
    let say = |line: String| {
        if !args.json {
            eprintln!("{line}");
        }
    };

    let work = tempfile::Builder::new()
        .prefix("swarmlm-demo-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let store = match &args.keep {
        Some(dir) => dir.clone(),
        None => work.path().join("store"),
    };
    let model_dir = store.join(&manifest.name);
    if args.refetch {
        remove_kept_copy(&model_dir, &manifest)?;
    }

    let transfer = if swarmlm_manifest::record_matches(&model_dir, &manifest) {
        say(format!(
            "{} is already in {} and verified: not transferring it again (--refetch to do so)",
            manifest.name,
            model_dir.display()
        ));
        Transfer {
            bytes: 0,
            seconds: 0.0,
            magnet: manifest.magnet.clone(),
            fetched: false,
        }
    } else {
        let seed_dir = work.path().join("seed").join(&manifest.name);
        write_seed_folder(&seed_dir, &manifest)?;
        transfer(&args, &manifest, &seed_dir, &store, &model_dir, &say)?
    };

    // A second, full check of what landed, timed for the summary: every byte against the
    // manifest's SHA-256, ignoring the record that fetch just wrote.
    let t_verify = Instant::now();
    let report = swarmlm_manifest::verify_dir(
        &model_dir,
        &manifest,
        &VerifyOptions {
            trust_record: false,
            update_record: true,
            ..Default::default()
        },
    )
    .with_context(|| format!("cannot verify {}", model_dir.display()))?;
    let verify_seconds = t_verify.elapsed().as_secs_f64();
    let all_pinned = report
        .files
        .iter()
        .all(|f| f.expected_sha256.is_some() && f.actual_sha256 == f.expected_sha256);
    let verified = report.ok() && all_pinned;
    if !verified {
        let failures: Vec<String> = report
            .files
            .iter()
            .filter(|f| !f.status.is_ok() || f.expected_sha256.is_none())
            .map(|f| format!("{}: {}", f.path, f.status.label()))
            .collect();
        return Err(hint(
            anyhow::anyhow!(
                "{} does not match the manifest: {}",
                model_dir.display(),
                failures.join(", ")
            ),
            "run `swarmlm demo --keep DIR --refetch`, or remove the folder",
        ));
    }
    say(format!(
        "verified {} files, {} bytes, SHA-256 against magnets/{}.toml in {:.3} s",
        report.files.len(),
        manifest_size(&manifest),
        manifest.name,
        verify_seconds
    ));

    let t_load = Instant::now();
    let model_arg = model_dir.to_string_lossy().into_owned();
    let (_dir, checkpoint, tokenizer) = super::run::open_model(&model_arg)?;
    let model = Model::load(&checkpoint, args.threads)?;
    let load_seconds = t_load.elapsed().as_secs_f64();
    say(format!("mapped the weights in {load_seconds:.3} s\n"));

    let prompt_ids = tokenizer.encode(&args.prompt, tokenizer.add_bos_by_default())?;
    model.check_ids(&prompt_ids)?;
    let mut sampler = Sampler::new(SamplingParams {
        seed: args.seed,
        ..SamplingParams::default()
    })?;
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        stop: Vec::new(),
    };
    let stdout = std::io::stdout();
    if !args.json {
        let mut out = stdout.lock();
        let _ = out
            .write_all(args.prompt.as_bytes())
            .and_then(|_| out.flush());
    }
    let Some(generation) = super::run::generate_to_stdout(
        &model,
        &tokenizer,
        &prompt_ids,
        &opts,
        &mut sampler,
        !args.json,
    )?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let decode_tokens_per_s = generation.timings.decode_tokens_per_s();
    let rate = |bytes: u64, secs: f64| {
        if secs > 0.0 {
            bytes as f64 / secs
        } else {
            0.0
        }
    };
    let info_hash = hex::encode(manifest.info_hash);
    if args.json {
        let obj = serde_json::json!({
            "text": generation.text,
            "verified": verified,
            "info_hash": info_hash,
            "bytes_transferred": transfer.bytes,
            "transfer_seconds": transfer.seconds,
            "verify_seconds": verify_seconds,
            "load_seconds": load_seconds,
            "decode_tokens_per_s": decode_tokens_per_s,
            "transfer_bytes_per_s": rate(transfer.bytes, transfer.seconds),
            "fetched": transfer.fetched,
            "model_bytes": manifest_size(&manifest),
            "magnet": transfer.magnet,
            "prompt": args.prompt,
            "generated_tokens": generation.generated_ids.len(),
            "seed": args.seed,
            "model_dir": args.keep.as_ref().map(|_| model_dir.display().to_string()),
        });
        println!("{obj}");
    } else {
        println!("\n");
        let transferred = if transfer.fetched {
            format!(
                "{} bytes in {:.2} s ({:.1} MB/s) over BitTorrent from 127.0.0.1",
                transfer.bytes,
                transfer.seconds,
                rate(transfer.bytes, transfer.seconds) / 1e6
            )
        } else {
            "nothing (the kept copy was already verified)".to_string()
        };
        eprintln!("── summary ──");
        eprintln!("magnet:      {}", transfer.magnet);
        eprintln!("transferred: {transferred}");
        eprintln!(
            "verified:    yes, {} files by SHA-256 in {verify_seconds:.3} s",
            report.files.len()
        );
        eprintln!("loaded:      {load_seconds:.3} s (memory-mapped)");
        eprintln!(
            "generated:   {} tokens at {decode_tokens_per_s:.1} tokens/s (seed {})",
            generation.generated_ids.len(),
            args.seed
        );
        match &args.keep {
            Some(_) => eprintln!("kept in:     {}", model_dir.display()),
            None => eprintln!("the fetched copy was removed (keep it with --keep DIR)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn manifest_size(m: &Manifest) -> u64 {
    m.files.iter().filter_map(|f| f.size).sum()
}

/// The compiled-in files must be the manifest's, path for path and size for size; their
/// SHA-256 is checked when the seeder verifies its folder.
fn check_bundle(m: &Manifest) -> anyhow::Result<()> {
    let bundled: Vec<(&str, u64)> = MODEL_FILES
        .iter()
        .map(|(p, b)| (*p, b.len() as u64))
        .collect();
    let listed: Vec<(&str, u64)> = m
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.size.unwrap_or(u64::MAX)))
        .collect();
    anyhow::ensure!(
        bundled == listed,
        "this build's bundled shakespeare-moe files {bundled:?} are not the ones its manifest lists {listed:?}"
    );
    Ok(())
}

/// Writes the bundled model and its manifest as a folder `swarmlm seed` would serve.
fn write_seed_folder(dir: &Path, m: &Manifest) -> anyhow::Result<()> {
    for (path, bytes) in MODEL_FILES {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&p, bytes).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let state = dir.join(swarmlm_manifest::STATE_DIR);
    std::fs::create_dir_all(&state)
        .with_context(|| format!("cannot create {}", state.display()))?;
    m.save(&state.join(swarmlm_manifest::MANIFEST_FILE))
        .with_context(|| format!("cannot write the manifest into {}", state.display()))?;
    Ok(())
}

/// `--refetch`: remove the kept copy, but only a folder that is this model's (its stored
/// manifest has this info hash), never anything else the user put there.
fn remove_kept_copy(dir: &Path, m: &Manifest) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let stored = dir
        .join(swarmlm_manifest::STATE_DIR)
        .join(swarmlm_manifest::MANIFEST_FILE);
    let ours = Manifest::load(&stored).is_ok_and(|s| s.info_hash == m.info_hash);
    if !ours {
        return Err(hint(
            anyhow::anyhow!(
                "{} exists but is not a shakespeare-moe copy made by swarmlm (no {} with info hash {})",
                dir.display(),
                stored.display(),
                hex::encode(m.info_hash)
            ),
            "choose another --keep folder; swarmlm never deletes files it did not write",
        ));
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

/// Where the seeder is in its life, as seen by the fetching side.
#[derive(Debug, Clone, PartialEq)]
enum SeederState {
    Starting,
    Listening { addr: SocketAddr, magnet: String },
    Stopped,
}

/// Seeds `seed_dir` and fetches it by magnet into `model_dir`, both in this process.
fn transfer(
    args: &Args,
    manifest: &Manifest,
    seed_dir: &Path,
    store: &Path,
    model_dir: &Path,
    say: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Transfer> {
    let target = SeedTarget::from_dir(seed_dir).map_err(with_hint)?;
    let session = SessionConfig {
        trackers_enabled: false,
        ..SessionConfig::loopback()
    };
    let rt = swarmlm_swarm::runtime().context("cannot start the async runtime")?;
    let (state_tx, mut state_rx) = tokio::sync::watch::channel(SeederState::Starting);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let on_seed_event = |e: &Event| {
        if let Event::Seeding { listen, magnet, .. } = e {
            if let Ok(addr) = listen.parse() {
                state_tx.send_replace(SeederState::Listening {
                    addr,
                    magnet: magnet.clone(),
                });
            }
        }
    };
    let seed_opts = SeedOptions {
        session: session.clone(),
        recheck: true,
    };
    let seeder = async {
        let r = swarmlm_swarm::seed(target, seed_opts, &on_seed_event, async {
            let _ = stop_rx.await;
        })
        .await;
        state_tx.send_replace(SeederState::Stopped);
        r
    };
    let timeout = args.timeout;
    let on_fetch_event = |e: &Event| {
        if let Event::Metadata {
            info_hash, files, ..
        } = e
        {
            say(format!(
                "metadata received from the peer (BEP 9): {info_hash}, {files} files"
            ));
        }
    };
    let client = async {
        let waited =
            tokio::time::timeout(timeout, state_rx.wait_for(|s| *s != SeederState::Starting)).await;
        let state = match waited {
            Ok(Ok(s)) => s.clone(),
            _ => SeederState::Starting,
        };
        let (addr, magnet) = match state {
            SeederState::Listening { addr, magnet } => (addr, magnet),
            SeederState::Starting => {
                let _ = stop_tx.send(());
                anyhow::bail!("the local seeder did not start listening within {timeout:?}");
            }
            // The seeder's own error is reported below.
            SeederState::Stopped => return Ok(None),
        };
        say(format!("seeding {} on {addr}", manifest.name));
        say(format!("fetching {magnet}"));
        let opts = FetchOptions {
            out: Some(model_dir.to_path_buf()),
            store: Some(store.to_path_buf()),
            peers: vec![addr],
            session: session.clone(),
            only: Vec::new(),
            stall_timeout: timeout,
        };
        let source = Source::Manifest {
            path: PathBuf::from(format!("magnets/{}.toml", manifest.name)),
            manifest: Manifest {
                magnet: magnet.clone(),
                ..manifest.clone()
            },
        };
        let started = Instant::now();
        let outcome = swarmlm_swarm::fetch(source, opts, &on_fetch_event).await;
        let seconds = started.elapsed().as_secs_f64();
        let _ = stop_tx.send(());
        let outcome = outcome.map_err(|e| match e {
            SwarmError::WouldOverwrite { .. } => hint(
                e,
                "the kept copy was changed since it was verified: `swarmlm demo --keep DIR \
                 --refetch` replaces it",
            ),
            e => with_hint(e),
        })?;
        Ok::<_, anyhow::Error>(Some(Transfer {
            bytes: outcome.downloaded_bytes,
            seconds,
            magnet,
            fetched: true,
        }))
    };
    let (seeded, fetched) = rt.block_on(async { tokio::join!(seeder, client) });
    let fetched = fetched?;
    seeded
        .map_err(with_hint)
        .context("the local seeder failed")?;
    let transfer = fetched.context("the local seeder stopped before it served the model")?;
    say(format!(
        "fetched {} bytes in {:.2} s; every file's SHA-256 matched as it landed",
        transfer.bytes, transfer.seconds
    ));
    Ok(transfer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_is_the_catalogue_manifest() {
        let m = swarmlm_manifest::store::catalogue_entry(MODEL_NAME).unwrap();
        check_bundle(&m).unwrap();
        for ((path, bytes), f) in MODEL_FILES.iter().zip(&m.files) {
            let sha: [u8; 32] = {
                use sha2::Digest as _;
                sha2::Sha256::digest(bytes).into()
            };
            assert_eq!(f.sha256, Some(sha), "{path}");
        }
    }
}
