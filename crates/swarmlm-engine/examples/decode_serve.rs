//! A greedy decode driven over stdin, one short segment at a time, for the segmented roofline
//! measurement of `benchmarks/peers/run_peers.py --segments` (issue 9): the memory bandwidth of
//! the machine swings by up to ~50% within seconds, so a bandwidth probe run before and after a
//! whole 4 s decode brackets it too loosely. This process loads the model once, prefills the
//! prompt, then decodes `N` tokens per `decode N` line and reports that segment's wall and
//! on-CPU time, its tokens and (with `SWARMLM_PROFILE=1`) its per-op time, so the driver can
//! run a probe (in another, idle process) between every two segments without a reload. The
//! pool's workers park ~0.3 ms after the last op of a segment, so nothing of this process runs
//! during a probe.
//!
//! Run: `decode_serve MODEL_DIR --prompt-ids 1,2,3 [--threads N] [--capacity TOKENS] [--margins]`,
//! then write `decode 8` lines (and `quit`, or close stdin); every reply is one JSON line.
//! `--margins` adds each token's runner-up id and its logit gap to the pick, to tell a near-tie
//! (where another engine's rounding may pick the runner-up) from a real difference.

use std::io::{BufRead, Write};
use std::time::Instant;

use swarmlm_engine::sampling::{Sampler, SamplingParams};
use swarmlm_engine::{tokenizer::Tokenizer, Model, Session};
use swarmlm_weights::Checkpoint;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: decode_serve MODEL_DIR --prompt-ids 1,2,3 [--threads N] [--capacity TOKENS]";
    let dir = std::path::PathBuf::from(args.first().ok_or(usage)?);
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let prompt: Vec<u32> = opt("--prompt-ids")
        .ok_or(usage)?
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let margins = args.iter().any(|a| a == "--margins");
    let threads: usize = opt("--threads")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(0);
    let capacity: usize = opt("--capacity")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(prompt.len() + 1024);

    // The same steps as `swarmlm run` before its first token (the tokenizer is parsed only to
    // keep the load comparable; ids come from the command line).
    let t0 = Instant::now();
    let ck = Checkpoint::open(&dir)?;
    let _tok = Tokenizer::from_model_dir(&dir)?;
    let model = Model::load(&ck, threads)?;
    model.check_ids(&prompt)?;
    let load = t0.elapsed().as_secs_f64();
    let mut s = Session::new(&model, capacity);
    // The greedy rule of `swarmlm run --temperature 0` (argmax, lowest id on ties).
    let mut sampler = Sampler::new(SamplingParams::greedy())?;
    let t1 = Instant::now();
    let mut id = sampler.sample(s.prefill(&prompt)?, &[]);
    let prefill = t1.elapsed().as_secs_f64();

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{{\"ready\": true, \"load_seconds\": {load:.6}, \"prefill_seconds\": {prefill:.6}, \"first_id\": {id}, \"threads\": {}}}",
        model.threads()
    )?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next().map(str::parse::<usize>)) {
            (Some("decode"), Some(Ok(n))) if s.position() + n <= s.capacity() => {
                let ops0 = model.op_profile();
                let c0 = process_cpu_seconds();
                let t = Instant::now();
                let mut ids = Vec::with_capacity(n);
                let mut gaps = Vec::new();
                for _ in 0..n {
                    let logits = s.decode_step(id)?;
                    id = sampler.sample(logits, &[]);
                    ids.push(id);
                    if margins {
                        let (second, gap) = runner_up(logits, id);
                        gaps.push(format!("[{second}, {gap:.6}]"));
                    }
                }
                let seconds = t.elapsed().as_secs_f64();
                let cpu = process_cpu_seconds() - c0;
                let ops = match (ops0, model.op_profile()) {
                    (Some(a), Some(b)) => b
                        .seconds
                        .iter()
                        .zip(&a.seconds)
                        .map(|((k, x1), (_, x0))| format!("\"{k}\": {:.6}", x1 - x0))
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => String::new(),
                };
                let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                writeln!(
                    out,
                    "{{\"tokens\": {n}, \"seconds\": {seconds:.6}, \"cpu_seconds\": {cpu:.6}, \"ids\": [{}], \"op_seconds\": {{{ops}}}, \"margins\": [{}]}}",
                    ids.join(", "),
                    gaps.join(", ")
                )?;
            }
            (Some("quit"), _) => break,
            _ => writeln!(
                out,
                "{{\"error\": \"expected `decode N` (N tokens, {} left) or `quit`, got {line:?}\"}}",
                s.capacity() - s.position()
            )?,
        }
        out.flush()?;
    }
    Ok(())
}

/// The best id other than `pick` and how far its logit is below the pick's.
fn runner_up(logits: &[f32], pick: u32) -> (u32, f32) {
    let top = logits[pick as usize];
    let (mut second, mut best) = (0u32, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if i as u32 != pick && l > best {
            (second, best) = (i as u32, l);
        }
    }
    (second, top - best)
}

/// CPU time of the whole process (all threads), to tell on-CPU time from wall time.
fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_PROCESS_CPUTIME_ID is a clock every
    // Linux kernel provides; on failure `ts` stays zero.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
