//! `swarmlm fetch`: download a model over BitTorrent and verify every byte.
//!
//! The work is in `swarmlm_swarm::fetch`; this module turns flags into options and renders
//! progress: a live bar on a terminal, plain periodic lines otherwise, JSON lines with `--json`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use swarmlm_swarm::{Event, FetchOptions, SessionConfig, Source, SwarmError};

use crate::output::hint;

#[derive(Parser, Debug)]
// A repeated single-value flag takes its last value (scripts append overrides).
#[command(args_override_self = true)]
#[command(after_help = "\
Examples:
  swarmlm fetch mixtral-8x7b-instruct                 # a manifest in magnets/
  swarmlm fetch magnets/mixtral-8x7b.toml --out ~/models/mixtral
  swarmlm fetch 'magnet:?xt=urn:btih:...' --peer 192.168.1.20:6881
  swarmlm fetch model.torrent --only '*.json' --json
  swarmlm fetch tiny --no-dht --listen 127.0.0.1:0 --peer 127.0.0.1:51413 --stall-timeout 30s")]
pub struct Args {
    /// A magnet link, a .torrent file, a manifest (.toml), or the name of a manifest in magnets/.
    pub source: String,
    /// Model folder (default: $SWARMLM_HOME/models/<name>, else $XDG_DATA_HOME/swarmlm/models/<name>,
    /// else ~/.local/share/swarmlm/models/<name>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// A peer to connect to (repeatable). Magnet x.pe peers are not used by the engine.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,
    /// An extra tracker to announce to (repeatable).
    #[arg(long = "tracker", value_name = "URL")]
    pub trackers: Vec<url::Url>,
    /// Address to accept peer connections on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// Do not use the public DHT (and no local peer discovery).
    #[arg(long)]
    pub no_dht: bool,
    /// Only files matching this glob (repeatable; `*` within a folder, `**` across folders).
    #[arg(long, value_name = "GLOB")]
    pub only: Vec<String>,
    /// Give up when no verified byte arrived for this long (e.g. 30s, 2m, 1h).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Keep seeding the model after the download, until Ctrl-C or SIGTERM.
    #[arg(long)]
    pub seed: bool,
    /// Progress as JSON lines on stdout, one object per event, named by its "event" field:
    /// metadata, resuming (what an interrupted run left: checked first), progress, file_verified,
    /// file_skipped, and a final done.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    swarmlm_swarm::util::parse_duration(s)
}

/// Where `fetch` and `seed` look for `<name>.toml` manifests.
pub fn manifest_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("SWARMLM_MAGNETS").filter(|d| !d.is_empty()) {
        dirs.extend(std::env::split_paths(&d));
    }
    dirs.push(PathBuf::from("magnets"));
    dirs
}

/// Resolves `HOST:PORT` strings to socket addresses (every address a name resolves to).
pub fn resolve_peers(peers: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for p in peers {
        let addrs = p
            .to_socket_addrs()
            .with_context(|| format!("--peer {p:?}: expected HOST:PORT"))?;
        out.extend(addrs);
    }
    Ok(out)
}

/// Session switches from flags: user mode unless told otherwise.
pub fn session_config(listen: SocketAddr, no_dht: bool, trackers: &[url::Url]) -> SessionConfig {
    let mut cfg = SessionConfig::user(!no_dht);
    cfg.listen = listen;
    cfg.lsd = !no_dht;
    cfg.extra_trackers = trackers.to_vec();
    cfg
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let source = resolve_source(&args.source)?;
    let opts = FetchOptions {
        out: args.out.clone(),
        store: swarmlm_swarm::util::default_store(),
        peers: resolve_peers(&args.peers)?,
        session: session_config(args.listen, args.no_dht, &args.trackers),
        only: args.only.clone(),
        stall_timeout: args.stall_timeout,
    };
    let session_cfg = opts.session.clone();
    let renderer = Renderer::new(args.json);
    let rt = swarmlm_swarm::transfer_runtime().context("cannot start the async runtime")?;
    let outcome = rt
        .block_on(swarmlm_swarm::fetch(source, opts, &|e| renderer.event(e)))
        .map_err(with_hint)?;
    renderer.finish();
    if !args.json {
        println!(
            "{}: {} file(s) fetched, {} already in place, verified, in {}",
            outcome.name,
            outcome.files_fetched.len(),
            outcome.files_skipped.len(),
            outcome.out_dir.display()
        );
    }
    if args.seed {
        let target = swarmlm_swarm::SeedTarget::from_dir(&outcome.out_dir).map_err(with_hint)?;
        let seed_opts = swarmlm_swarm::SeedOptions {
            session: session_cfg,
            recheck: false,
        };
        let seeder = super::seed::SeedRenderer::new(args.json);
        rt.block_on(swarmlm_swarm::seed(
            target,
            seed_opts,
            &|e| seeder.event(e),
            swarmlm_swarm::shutdown_signal(),
        ))
        .map_err(with_hint)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A magnet, .torrent, manifest or `magnets/<name>.toml` in a manifest folder first (so a
/// repository checkout or $SWARMLM_MAGNETS can override); then the store's rule
/// ([`swarmlm_manifest::store::resolve`]): a model folder in the store (resume it with its
/// stored manifest), else the catalogue compiled into the binary, so `swarmlm fetch
/// mixtral-8x7b-32kseqlen` works from an installed binary in any folder.
pub fn resolve_source(input: &str) -> anyhow::Result<Source> {
    use swarmlm_manifest::store::{resolve, Resolved};
    match Source::resolve(input, &manifest_dirs()) {
        Err(e @ SwarmError::UnknownSource { .. }) => match resolve(input) {
            Resolved::Folder(dir) => {
                Source::resolve(&dir.to_string_lossy(), &[]).map_err(with_hint)
            }
            Resolved::Catalogue(manifest) => Ok(Source::Manifest {
                path: PathBuf::from(format!("magnets/{}.toml (built in)", manifest.name)),
                manifest,
            }),
            _ => Err(with_hint(e)),
        },
        r => r.map_err(with_hint),
    }
}

/// Adds what the user can do next to the errors that have an obvious next step.
pub fn with_hint(e: SwarmError) -> anyhow::Error {
    let h = match &e {
        SwarmError::Stalled { .. } => Some(
            "peers that only sent rejected pieces are serving corrupt data; try other --peer \
             addresses or trackers, or raise --stall-timeout on a slow link",
        ),
        SwarmError::NoMetadata { .. } => Some(
            "no peer answered for this magnet: check --peer HOST:PORT and that a seeder is running",
        ),
        SwarmError::WouldOverwrite { .. } => {
            Some("move the existing file away, or fetch into another folder with --out")
        }
        SwarmError::HashMismatch { .. } => Some(
            "the swarm's data does not match the manifest: the torrent or the manifest is wrong; \
             nothing was marked verified",
        ),
        SwarmError::UnknownSource { .. } => {
            Some("pass a magnet:?xt=urn:btih:... link, a .torrent, a manifest .toml, or a name from magnets/")
        }
        SwarmError::NotVerified { .. } => Some("run `swarmlm verify` on the folder, or fetch it again"),
        _ => None,
    };
    match h {
        Some(h) => hint(e, h),
        None => anyhow::Error::new(e),
    }
}

/// Renders fetch events for a person (bar or lines on stderr) or a program (JSON on stdout).
struct Renderer {
    json: bool,
    bar: Option<indicatif::ProgressBar>,
    last_line: Mutex<Instant>,
}

impl Renderer {
    fn new(json: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Renderer {
            json,
            bar,
            last_line: Mutex::new(Instant::now() - Duration::from_secs(60)),
        }
    }

    fn event(&self, e: &Event) {
        if self.json {
            if let Ok(line) = serde_json::to_string(e) {
                println!("{line}");
            }
            return;
        }
        match e {
            Event::Metadata {
                name,
                info_hash,
                files,
                total_bytes,
                wanted_bytes,
            } => {
                let line = format!(
                    "{name} ({info_hash}): {files} file(s), {total_bytes} bytes, {wanted_bytes} to fetch"
                );
                match &self.bar {
                    Some(bar) => {
                        bar.set_length(*wanted_bytes);
                        bar.println(line);
                    }
                    None => eprintln!("{line}"),
                }
            }
            Event::Progress {
                have_bytes,
                wanted_bytes,
                download_bps,
                peers,
                eta_secs,
                files_verified,
                files_wanted,
                ..
            } => match &self.bar {
                Some(bar) => {
                    bar.set_length(*wanted_bytes);
                    bar.set_position(*have_bytes);
                    bar.set_message(format!(
                        "{peers} peer(s), {files_verified}/{files_wanted} files verified"
                    ));
                }
                None => {
                    let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
                    if last.elapsed() >= Duration::from_secs(5) {
                        *last = Instant::now();
                        let eta = eta_secs
                            .map(|s| format!(", ETA {:.0}s", s))
                            .unwrap_or_default();
                        eprintln!(
                            "fetch: {have_bytes}/{wanted_bytes} bytes, {:.1} MiB/s, {peers} peer(s), {files_verified}/{files_wanted} files verified{eta}",
                            download_bps / (1024.0 * 1024.0)
                        );
                    }
                }
            },
            Event::Resuming {
                partial_dir,
                partial_bytes,
                in_place_files,
                in_place_bytes,
            } => {
                let placed = if *in_place_files > 0 {
                    format!("{in_place_files} file(s) ({in_place_bytes} bytes) already verified and in place; ")
                } else {
                    String::new()
                };
                self.line(format!(
                    "resuming: {placed}checking the {partial_bytes} bytes already in {partial_dir} before fetching the rest"
                ))
            }
            Event::FileVerified { path, size, .. } => {
                self.line(format!("verified {path} ({size} bytes)"))
            }
            Event::FileSkipped { path, .. } => {
                self.line(format!("already in place and verified: {path}"))
            }
            Event::Done { rejected_peers, .. } => {
                for p in rejected_peers {
                    self.line(format!("warning: peer sent corrupt pieces: {p}"));
                }
            }
            Event::Seeding { .. } | Event::SeedProgress { .. } => {}
        }
    }

    fn line(&self, s: String) {
        match &self.bar {
            Some(bar) => bar.println(s),
            None => eprintln!("{s}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
