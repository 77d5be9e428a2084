//! `swarmlm seed`: serve a verified model folder to the swarm until Ctrl-C or SIGTERM.
//!
//! The folder is verified first (instantly while the verification record matches); the magnet
//! and the listen address are printed at start so that others (and tests) can connect.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use swarmlm_swarm::{Event, SeedOptions, SeedTarget, SwarmError};

use super::fetch::{manifest_dirs, session_config, with_hint};

#[derive(Parser, Debug)]
#[command(after_help = "\
Examples:
  swarmlm seed ~/.local/share/swarmlm/models/mixtral-8x7b
  swarmlm seed mixtral-8x7b --tracker udp://tracker.example.org:6969/announce
  swarmlm seed ./model --listen 127.0.0.1:0 --no-dht --json
  swarmlm seed ./model --recheck")]
pub struct Args {
    /// A model folder (with .swarmlm/manifest.toml), its manifest file, or a model name.
    pub target: String,
    /// Address to accept peer connections on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// A tracker to announce to (repeatable), in addition to the torrent's.
    #[arg(long = "tracker", value_name = "URL")]
    pub trackers: Vec<url::Url>,
    /// Hash every file again even if the verification record still matches.
    #[arg(long)]
    pub recheck: bool,
    /// Do not use the public DHT (and no local peer discovery).
    #[arg(long)]
    pub no_dht: bool,
    /// Upload rate limit in bytes per second (suffixes K, M, G: powers of 1024).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub upload_limit: Option<u32>,
    /// Status as JSON lines on stdout ({"event":"seeding","magnet":...,"listen":...}).
    #[arg(long)]
    pub json: bool,
}

fn parse_rate(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("{s:?}: unknown suffix {c:?} (K, M or G)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a number of bytes per second, e.g. 2M"))?;
    let v = n.saturating_mul(mult);
    if v == 0 || v > u64::from(u32::MAX) {
        return Err(format!("{s:?}: must be between 1 and 4G"));
    }
    Ok(v as u32)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let target = resolve_target(&args.target).map_err(with_hint)?;
    let mut session = session_config(args.listen, args.no_dht, &args.trackers);
    session.upload_limit_bps = args.upload_limit;
    let opts = SeedOptions {
        session,
        recheck: args.recheck,
    };
    let renderer = SeedRenderer::new(args.json);
    let rt = swarmlm_swarm::transfer_runtime().context("cannot start the async runtime")?;
    rt.block_on(swarmlm_swarm::seed(
        target,
        opts,
        &|e| renderer.event(e),
        swarmlm_swarm::shutdown_signal(),
    ))
    .map_err(with_hint)?;
    if !args.json {
        eprintln!("seeding stopped");
    }
    Ok(ExitCode::SUCCESS)
}

/// A folder, a manifest file (inside a folder's `.swarmlm/`, or naming a model in the store),
/// or a model name (in the store, or a manifest in magnets/).
fn resolve_target(input: &str) -> Result<SeedTarget, SwarmError> {
    let path = Path::new(input);
    if path.is_dir() {
        return SeedTarget::from_dir(path);
    }
    let store = swarmlm_swarm::util::default_store();
    if path.is_file() {
        // <dir>/.swarmlm/manifest.toml → <dir>
        let in_state_dir = path.parent().filter(|p| {
            p.file_name()
                .is_some_and(|n| n == swarmlm_manifest::STATE_DIR)
        });
        if let Some(dir) = in_state_dir.and_then(|p| p.parent()) {
            return SeedTarget::from_dir(dir);
        }
        let m = swarmlm_manifest::Manifest::load(path).map_err(|e| SwarmError::Manifest {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if let Some(store) = &store {
            return SeedTarget::from_dir(&store.join(&m.name));
        }
    }
    if swarmlm_swarm::util::safe_dir_name(input).is_some() {
        if let Some(store) = &store {
            let dir = store.join(input);
            if dir.is_dir() {
                return SeedTarget::from_dir(&dir);
            }
        }
    }
    let mut searched: Vec<PathBuf> = store.into_iter().collect();
    searched.extend(manifest_dirs());
    Err(SwarmError::UnknownSource {
        what: input.to_string(),
        searched: searched
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Renders seeding events: the magnet and address once, then a status line.
pub struct SeedRenderer {
    json: bool,
    terminal: bool,
    last: Mutex<Instant>,
}

impl SeedRenderer {
    pub fn new(json: bool) -> Self {
        use std::io::IsTerminal;
        SeedRenderer {
            json,
            terminal: std::io::stderr().is_terminal(),
            last: Mutex::new(Instant::now()),
        }
    }

    pub fn event(&self, e: &Event) {
        if self.json {
            if let Ok(line) = serde_json::to_string(e) {
                println!("{line}");
            }
            return;
        }
        match e {
            Event::Seeding {
                name,
                magnet,
                listen,
                dir,
                ..
            } => {
                println!("seeding {name} from {dir}");
                println!("magnet: {magnet}");
                println!("listening on: {listen}");
            }
            Event::SeedProgress {
                peers,
                uploaded_bytes,
                upload_bps,
            } => {
                let line = format!(
                    "{peers} peer(s), {uploaded_bytes} bytes up, {:.1} MiB/s",
                    upload_bps / (1024.0 * 1024.0)
                );
                if self.terminal {
                    eprint!("\r\x1b[2K{line}");
                } else {
                    let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                    if last.elapsed() >= Duration::from_secs(10) {
                        *last = Instant::now();
                        eprintln!("{line}");
                    }
                }
            }
            _ => {}
        }
    }
}
