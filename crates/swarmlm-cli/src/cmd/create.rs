//! `swarmlm create`: turn a model folder into a reproducible .torrent and its manifest, so anyone
//! holding the same files ends up in the same swarm and can verify every byte.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use swarmlm_manifest::ModelFormat;
use swarmlm_swarm::create::{create_torrent_with_progress, CreateOptions, PieceSize};

use crate::output;

const AFTER_HELP: &str = "\
The torrent depends only on the file contents, their paths and the name: files are sorted,
nothing time- or tool-dependent goes into `info`, and trackers stay outside it (adding a tracker
does not change the magnet's info hash). Links are followed (a Hugging Face cache snapshot works
as is); the bookkeeping folders .swarmlm/, .git/ and .cache/ at the top are skipped.

Piece size `auto`: the smallest power of two from 256 KiB to 16 MiB giving at most 16384 pieces
(90 GB -> 8 MiB). Existing output files are never replaced by different content.

Examples:
  swarmlm create ./Mixtral-8x7B-v0.1
  swarmlm create ~/.cache/huggingface/hub/models--mistralai--Mixtral-8x7B-v0.1/snapshots/<rev> \\
      --name Mixtral-8x7B-v0.1 --tracker udp://tracker.example:1337/announce
  swarmlm create /tmp/tiny --name tiny --piece-size 262144 --out magnets/tiny.toml --json";

/// Create a reproducible v1 .torrent and a manifest (magnets/<name>.toml format) for a model folder.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The model folder.
    pub model_dir: PathBuf,
    /// Torrent name, which is also the folder name downloads land in (default: the folder's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Tracker URL (repeatable; kept in order, one tier each).
    #[arg(long = "tracker", value_name = "URL")]
    pub trackers: Vec<String>,
    /// `auto` or a power of two in bytes from 16384 to 268435456.
    #[arg(long, default_value = "auto", value_parser = parse_piece_size)]
    pub piece_size: PieceSize,
    /// Model format for the manifest: hf-safetensors, mistral-pth or mistral-safetensors
    /// (default: from file names).
    #[arg(long, value_parser = parse_format)]
    pub format: Option<ModelFormat>,
    /// Manifest description.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Manifest licence (e.g. Apache-2.0).
    #[arg(long, default_value = "")]
    pub license: String,
    /// Manifest source (where the weights come from).
    #[arg(long, default_value = "")]
    pub source: String,
    /// Where to write the manifest (default: ./<name>.toml).
    #[arg(long, value_name = "FILE.toml")]
    pub out: Option<PathBuf>,
    /// Where to write the .torrent (default: ./<name>.torrent).
    #[arg(long, value_name = "FILE.torrent")]
    pub torrent_out: Option<PathBuf>,
    /// Print one JSON object instead of the magnet.
    #[arg(long)]
    pub json: bool,
}

fn parse_piece_size(s: &str) -> Result<PieceSize, String> {
    if s == "auto" {
        return Ok(PieceSize::Auto);
    }
    let n: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is neither `auto` nor a byte count"))?;
    if !n.is_power_of_two() || !(16384..=268_435_456).contains(&n) {
        return Err(format!(
            "{n} is not a power of two from 16384 (16 KiB) to 268435456 (256 MiB)"
        ));
    }
    Ok(PieceSize::Fixed(n))
}

fn parse_format(s: &str) -> Result<ModelFormat, String> {
    ModelFormat::parse(s).ok_or_else(|| {
        format!("{s:?}: expected hf-safetensors, mistral-pth or mistral-safetensors")
    })
}

/// Write `bytes` to `path` unless a file with different content is already there.
fn write_new(path: &Path, bytes: &[u8], what: &str) -> anyhow::Result<bool> {
    match std::fs::read(path) {
        Ok(existing) if existing == bytes => return Ok(false),
        Ok(_) => {
            return Err(output::hint(
                anyhow::anyhow!("{} already exists with different content", path.display()),
                format!("remove it, or write the {what} elsewhere with the matching --out option"),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    swarmlm_manifest::atomic_write(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = CreateOptions {
        name: args.name.clone(),
        trackers: args.trackers.clone(),
        piece_size: args.piece_size,
        format: args.format,
        description: args.description.clone(),
        license: args.license.clone(),
        source: args.source.clone(),
    };
    let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "hashing {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let started = std::time::Instant::now();
    let created = create_torrent_with_progress(&args.model_dir, &opts, &|done, total| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let created = created.map_err(|e| {
        let hint = match &e {
            swarmlm_swarm::create::CreateError::UnknownFormat => {
                "pass --format hf-safetensors or --format mistral-pth"
            }
            swarmlm_swarm::create::CreateError::BadName { .. } => "pass a plain --name",
            _ => "fix or remove the named path, then run create again",
        };
        output::hint(e, hint)
    })?;
    let elapsed = started.elapsed();
    let m = &created.manifest;
    let manifest_path = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.toml", m.name)));
    let torrent_path = args
        .torrent_out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.torrent", m.name)));
    // Check both before writing either, so a refusal leaves nothing half-done.
    for (path, bytes) in [
        (&manifest_path, m.to_toml_string().into_bytes()),
        (&torrent_path, created.torrent_bytes.clone()),
    ] {
        if let Ok(existing) = std::fs::read(path) {
            if existing != bytes {
                return Err(output::hint(
                    anyhow::anyhow!("{} already exists with different content", path.display()),
                    "remove it, or choose another path with --out / --torrent-out",
                ));
            }
        }
    }
    write_new(&torrent_path, &created.torrent_bytes, "torrent")?;
    write_new(&manifest_path, m.to_toml_string().as_bytes(), "manifest")?;

    let total = m.total_size.unwrap_or(0);
    if args.json {
        let obj = serde_json::json!({
            "name": m.name,
            "info_hash": hex_string(&created.info_hash),
            "magnet": created.magnet,
            "piece_length": m.piece_length,
            "total_size": total,
            "files": m.files.len(),
            "format": m.format.as_str(),
            "torrent": torrent_path,
            "manifest": manifest_path,
            "seconds": elapsed.as_secs_f64(),
        });
        println!("{obj}");
    } else {
        eprintln!(
            "{} files, {} bytes, {} pieces of {} bytes, hashed in {:.1} s ({:.0} MB/s)",
            m.files.len(),
            total,
            total.div_ceil(m.piece_length.unwrap_or(1)),
            m.piece_length.unwrap_or(0),
            elapsed.as_secs_f64(),
            total as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9),
        );
        eprintln!("wrote {}", torrent_path.display());
        eprintln!("wrote {}", manifest_path.display());
        println!("{}", created.magnet);
    }
    Ok(ExitCode::SUCCESS)
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
