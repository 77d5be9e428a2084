//! `swarmlm verify`: re-hash a model folder against its manifest and say, file by file, what is
//! missing, short or corrupt. This is the check that makes a downloaded model trustworthy.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use swarmlm_manifest::{
    verify_dir_with_progress, FileStatus, Manifest, VerifyOptions, MANIFEST_FILE, STATE_DIR,
};

use crate::output;

const AFTER_HELP: &str = "\
Each file is reported as OK, UNPINNED (present, but the manifest pins no hash for it yet), MISSING,
SIZE (expected vs actual bytes), HASH (expected vs actual digest) or UNREADABLE. A Mistral RELEASE
md5 list in the folder is checked too. Files that verify are remembered in DIR/.swarmlm/verified.json
(size, mtime, digests) so `run` and `seed` need not re-hash them; verify itself always re-hashes.
Exit status: 0 all good, 1 any failure.

Examples:
  swarmlm verify ./Mixtral-8x7B-v0.1 --manifest magnets/Mixtral-8x7B-v0.1.toml
  swarmlm verify ./mixtral-8x7b-32kseqlen          # uses DIR/.swarmlm/manifest.toml from fetch
  swarmlm verify ./tiny --manifest tiny.toml --json | jq '.files[] | select(.status != \"OK\")'";

/// Verify every file of a model folder against its manifest (SHA-256, md5 where only md5 is known).
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The model folder (the torrent's name folder).
    pub dir: PathBuf,
    /// The manifest (default: DIR/.swarmlm/manifest.toml, written by `swarmlm fetch`).
    #[arg(long, value_name = "FILE.toml")]
    pub manifest: Option<PathBuf>,
    /// Hashing threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print one JSON object: {"ok", "files": [...], "release": [...] | null}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let manifest_path = match &args.manifest {
        Some(p) => p.clone(),
        None => {
            let p = args.dir.join(STATE_DIR).join(MANIFEST_FILE);
            if !p.is_file() {
                return Err(output::hint(
                    anyhow::anyhow!("no manifest given and {} does not exist", p.display()),
                    "pass --manifest FILE.toml (e.g. one from magnets/)",
                ));
            }
            p
        }
    };
    let manifest = Manifest::load(&manifest_path)?;
    let opts = VerifyOptions {
        threads: args.threads,
        ..Default::default()
    };
    let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(manifest.total_size.unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "verifying {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let report = verify_dir_with_progress(&args.dir, &manifest, &opts, &|n| {
        if let Some(bar) = &bar {
            bar.inc(n);
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = report.map_err(|e| output::hint(e, "pass the model folder itself"))?;

    if args.json {
        let files: Vec<serde_json::Value> = report
            .files
            .iter()
            .map(|f| {
                serde_json::json!({
                    "path": f.path,
                    "status": f.status.label(),
                    "detail": detail(&f.status),
                    "size": f.size,
                    "expected_size": f.expected_size,
                    "expected_sha256": f.expected_sha256.map(|h| hex(&h)),
                    "actual_sha256": f.actual_sha256.map(|h| hex(&h)),
                    "expected_md5": f.expected_md5.map(|h| hex(&h)),
                    "actual_md5": f.actual_md5.map(|h| hex(&h)),
                })
            })
            .collect();
        let release = report.release.as_ref().map(|entries| {
            entries
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "path": e.path,
                        "status": e.status.label(),
                        "detail": detail(&e.status),
                        "expected_md5": hex(&e.expected_md5),
                    })
                })
                .collect::<Vec<_>>()
        });
        let obj = serde_json::json!({
            "ok": report.ok(),
            "manifest": manifest_path,
            "files": files,
            "release": release,
            "record_error": report.record_error,
        });
        println!("{obj}");
    } else {
        for f in &report.files {
            println!("{:<10} {}{}", f.status.label(), f.path, suffix(&f.status));
        }
        for e in report.release.iter().flatten() {
            println!(
                "{:<10} RELEASE: {}{}",
                e.status.label(),
                e.path,
                suffix(&e.status)
            );
        }
        if let Some(err) = &report.record_error {
            eprintln!("warning: verification record not saved: {err}");
        }
        let failed = report.failures().count()
            + report
                .release
                .iter()
                .flatten()
                .filter(|e| e.status != FileStatus::Ok)
                .count();
        let unpinned = report
            .files
            .iter()
            .filter(|f| f.status == FileStatus::Unpinned)
            .count();
        if failed == 0 {
            eprintln!(
                "all {} files verified{}",
                report.files.len(),
                if unpinned > 0 {
                    format!(" ({unpinned} present but not pinned by the manifest)")
                } else {
                    String::new()
                }
            );
        } else {
            eprintln!("{failed} of {} checks failed", report.files.len());
        }
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn detail(status: &FileStatus) -> Option<String> {
    match status {
        FileStatus::Size { expected, actual } => {
            Some(format!("expected {expected} bytes, got {actual}"))
        }
        FileStatus::Hash {
            algorithm,
            expected,
            actual,
        } => Some(format!(
            "{} expected {expected}, got {actual}",
            algorithm.as_str()
        )),
        FileStatus::Unreadable { message } => Some(message.clone()),
        _ => None,
    }
}

fn suffix(status: &FileStatus) -> String {
    detail(status).map_or(String::new(), |d| format!(" ({d})"))
}
