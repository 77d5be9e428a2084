//! Open-time and resident-memory benchmark: `Checkpoint::open` (zero-copy maps) against
//! `candle_core::safetensors::load` (reads every tensor into owned CPU memory).
//!
//! ```text
//! cargo run --release -p swarmlm-weights --example open_bench -- MODEL_DIR [ours|candle|both] [--touch]
//! ```
//!
//! `both` (the default) runs each loader in its own child process so one's pages do not count
//! against the other. `--touch` also reads every byte of every tensor through our views and
//! reports the throughput (cold or warm depending on the page cache). RSS is VmRSS from
//! /proc/self/status; for maps it counts file pages touched so far, not the file size.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use swarmlm_weights::{Checkpoint, Format};

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn report(what: &str, secs: f64) {
    println!(
        "{what:<32} {:>9.3} ms   VmRSS {:>9.1} MiB (anon {:.1}, file {:.1})",
        secs * 1e3,
        mib(status_kib("VmRSS:")),
        mib(status_kib("RssAnon:")),
        mib(status_kib("RssFile:")),
    );
}

fn ours(dir: &Path, touch: bool) -> Result<(), String> {
    report("baseline", 0.0);
    let t = Instant::now();
    let ck = Checkpoint::open(dir).map_err(|e| e.to_string())?;
    report("swarmlm Checkpoint::open", t.elapsed().as_secs_f64());
    let names = ck.tensor_names();
    let total: usize = names
        .iter()
        .map(|n| ck.tensor(n).map(|v| v.bytes.len()).unwrap_or(0))
        .sum();
    println!(
        "  {} tensors, {:.1} MiB of weights in {} file(s), format {:?}",
        names.len(),
        total as f64 / (1 << 20) as f64,
        ck.files().len(),
        ck.format()
    );
    if touch {
        let t = Instant::now();
        let mut acc = 0u64;
        for n in &names {
            let v = ck.tensor(n).map_err(|e| e.to_string())?;
            // One byte per 64 would miss nothing page-wise, but read all to measure bandwidth.
            acc = v
                .bytes
                .chunks(8)
                .fold(acc, |a, c| a.wrapping_add(c[0] as u64));
        }
        let s = t.elapsed().as_secs_f64();
        report("swarmlm touch every byte", s);
        println!("  {:.2} GB/s (checksum {acc})", total as f64 / s / 1e9);
    }
    Ok(())
}

fn candle(dir: &Path) -> Result<(), String> {
    let ck = Checkpoint::open(dir).map_err(|e| e.to_string())?;
    if ck.format() != Format::HfSafetensors {
        println!("candle comparison skipped: not a safetensors checkpoint");
        return Ok(());
    }
    let files: Vec<PathBuf> = ck.files().into_iter().map(Path::to_path_buf).collect();
    drop(ck);
    report("baseline", 0.0);
    let t = Instant::now();
    let mut n = 0;
    let mut keep = Vec::new();
    for f in &files {
        let m = candle_core::safetensors::load(f, &candle_core::Device::Cpu)
            .map_err(|e| e.to_string())?;
        n += m.len();
        keep.push(m);
    }
    report("candle safetensors::load", t.elapsed().as_secs_f64());
    println!("  {n} tensors");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let touch = args.iter().any(|a| a == "--touch");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let Some(dir) = pos.first().map(PathBuf::from) else {
        eprintln!("usage: open_bench MODEL_DIR [ours|candle|both] [--touch]");
        return ExitCode::from(2);
    };
    let mode = pos.get(1).map(|s| s.as_str()).unwrap_or("both");
    let r = match mode {
        "ours" => ours(&dir, touch),
        "candle" => candle(&dir),
        "both" => {
            let exe = std::env::current_exe().expect("own path");
            for m in ["ours", "candle"] {
                println!("== {m}");
                let mut c = Command::new(&exe);
                c.arg(&dir).arg(m);
                if touch {
                    c.arg("--touch");
                }
                match c.status() {
                    Ok(s) if s.success() => {}
                    Ok(s) => return ExitCode::from(s.code().unwrap_or(1) as u8),
                    Err(e) => {
                        eprintln!("cannot run {}: {e}", exe.display());
                        return ExitCode::FAILURE;
                    }
                }
            }
            Ok(())
        }
        other => Err(format!("unknown mode `{other}` (ours, candle or both)")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
