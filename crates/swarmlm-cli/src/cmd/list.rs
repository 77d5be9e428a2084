//! `swarmlm list`: what can be fetched by name (the compiled-in catalogue) and what is already in
//! the local store, with how far each stored model got. It never re-hashes, so it is instant even
//! for a store of 100 GB models; `swarmlm verify` is the full check.

use std::process::ExitCode;

use swarmlm_manifest::store::{self, StoreEntry};

const AFTER_HELP: &str = "\
Store states: verified (every file in place, the verification record still vouches for it, date
shown), unverified (in place but never verified or changed since: run `swarmlm verify`), partial
(an interrupted or running fetch, with the share on disk), corrupt (a file has the wrong size),
unmanaged (a folder swarmlm did not fetch).

Examples:
  swarmlm list
  swarmlm list --json | jq -r '.store[] | select(.state == \"partial\") | .name'";

/// List the model catalogue and the models in the local store.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Print one JSON object: {"store_root", "catalogue": [...], "store": [...]}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = store::models_root();
    let entries = match &root {
        Some(r) => store::list_store_in(r)?,
        None => Vec::new(),
    };
    let catalogue = store::catalogue();

    if args.json {
        let cat: Vec<serde_json::Value> = catalogue
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "format": m.format.as_str(),
                    "total_size": m.total_size,
                    "info_hash": hex(&m.info_hash),
                    "magnet": m.magnet,
                    "description": m.description,
                    "in_store": entries.iter().any(|e| e.name == m.name),
                })
            })
            .collect();
        let stored: Vec<serde_json::Value> = entries.iter().map(entry_json).collect();
        let obj = serde_json::json!({
            "store_root": root,
            "catalogue": cat,
            "store": stored,
        });
        println!("{obj}");
        return Ok(ExitCode::SUCCESS);
    }

    println!("Catalogue (fetch by name: swarmlm fetch NAME)");
    for m in &catalogue {
        let size = m
            .total_size
            .map_or_else(|| "size unknown".to_string(), human);
        let here = if entries.iter().any(|e| e.name == m.name) {
            "  [in store]"
        } else {
            ""
        };
        println!(
            "  {:<28} {:<15} {:>13}  {}{here}",
            m.name,
            m.format.as_str(),
            size,
            hex(&m.info_hash)
        );
    }
    println!();
    match &root {
        Some(r) => println!("Store ({})", r.display()),
        None => println!("Store (none: set SWARMLM_HOME or HOME)"),
    }
    if entries.is_empty() {
        println!("  (empty)");
    }
    for e in &entries {
        println!(
            "  {:<28} {:<15} {:>13}  {}",
            e.name,
            e.format.map_or("?", |f| f.as_str()),
            human(e.size),
            state_text(e)
        );
        for p in &e.problems {
            println!("      {p}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn entry_json(e: &StoreEntry) -> serde_json::Value {
    serde_json::json!({
        "name": e.name,
        "dir": e.dir,
        "format": e.format.map(|f| f.as_str()),
        "size": e.size,
        "total_size": e.total_size,
        "state": e.state.as_str(),
        "complete": e.complete,
        "percent": e.percent,
        "verified_at": e.verified_at,
        "info_hash": e.info_hash,
        "problems": e.problems,
    })
}

fn state_text(e: &StoreEntry) -> String {
    match e.state {
        store::EntryState::Verified => match e.verified_at {
            Some(t) => format!("verified {}", utc(t)),
            None => "verified".into(),
        },
        store::EntryState::Partial => match e.percent {
            Some(p) => format!("partial {p:.1}%"),
            None => "partial".into(),
        },
        other => other.as_str().into(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes in binary units, one decimal.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC` (proleptic Gregorian; days-to-civil conversion after
/// Howard Hinnant's public-domain algorithm), so no date crate is needed for one column.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_sizes() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_702_000_000), "2023-12-08 01:46 UTC");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(93_405_585_408), "87.0 GiB");
    }
}
