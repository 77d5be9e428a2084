//! Kernel roofline benchmark: how close the bf16 matvec and expert FFN come to the machine's
//! memory read bandwidth, which bounds batch-1 decode speed.
//!
//! 1. A bandwidth probe: sum of u64 over a buffer much larger than L3, with 1..N threads.
//! 2. `matvec_bf16` at the Mixtral expert shape (14336 × 4096 bf16 = 117 MB, far beyond cache):
//!    GB/s of weights streamed, per ISA path and thread count, and as % of the probe.
//! 3. `expert_ffn_bf16` at that shape (w1, w3, w2: 352 MB per call).
//! 4. Pool dispatch overhead and a prefill `matmul_bf16` throughput figure.
//!
//! Run: `cargo run --release -p swarmlm-kernels --example kernel_bench [-- --quick]`
//! (or `benchmarks/kernels.sh`). `SWARMLM_BENCH_PROBE_MIB` overrides the probe size.
//!
//! `--only probe-serve [--threads N]` keeps the probe's buffer (already faulted in) and pool
//! alive and runs the probe once per line read from stdin (the line may give the number of
//! passes, default 5: the 20 windows of `--only probe --quick`), printing one JSON line per
//! probe; `benchmarks/peers/run_peers.py --segments` alternates it with short decode segments.

use std::time::{Duration, Instant};
use swarmlm_kernels::*;

const H: usize = 4096;
const I: usize = 14336;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only prefill` (or probe, matvec, paired, oncpu, shapes, ffn, attention, dispatch) runs
    // one section.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    if only.as_deref() == Some("probe-serve") {
        let threads = args
            .iter()
            .position(|a| a == "--threads")
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or_else(Pool::physical_cores);
        probe_serve(threads);
        return;
    }
    let want = |sec: &str| only.as_deref().is_none_or(|o| o == sec);
    let reps = if quick { 4 } else { 10 };
    let phys = Pool::physical_cores();
    let max_threads = phys.max(1);
    println!("# swarmlm-kernels benchmark");
    println!(
        "isa (auto): {}   available: {:?}   physical cores: {phys}",
        isa(),
        Isa::available()
            .iter()
            .map(|i| i.name())
            .collect::<Vec<_>>()
    );
    let thread_counts: Vec<usize> = (1..=max_threads).collect();
    let pools: Vec<Pool> = thread_counts.iter().map(|&t| Pool::new(t)).collect();

    // -- 1. bandwidth probe ------------------------------------------------------------------
    let probe_mib: usize = std::env::var("SWARMLM_BENCH_PROBE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let words = if want("probe") {
        probe_mib * 1024 * 1024 / 8
    } else {
        0
    };
    let buf: Vec<u64> = (0..words as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9))
        .collect();
    let mut probe_best = f64::NAN;
    if want("probe") {
        println!("\n## 1. read-bandwidth probe ({probe_mib} MiB, sum of u64, best of {reps})");
        probe_best = 0.0;
    }
    for pool in pools.iter().filter(|_| want("probe")) {
        let mut best_window = f64::INFINITY;
        let (best, med) = measure(reps, || {
            for t in probe_pass(pool, &buf) {
                best_window = best_window.min(t);
            }
        });
        let gbs = (words * 8) as f64 / best.as_secs_f64() / 1e9;
        let gbs_med = (words * 8) as f64 / med.as_secs_f64() / 1e9;
        let gbs_win = (WINDOW * 8) as f64 / best_window / 1e9;
        println!(
            "threads {}: full pass {gbs:6.2} GB/s best, {gbs_med:6.2} GB/s median; best 128 MiB window {gbs_win:6.2} GB/s",
            pool.threads()
        );
        probe_best = probe_best.max(if gbs_win.is_finite() { gbs_win } else { gbs });
    }
    drop(buf);
    if want("probe") {
        println!("roofline (best probe window): {probe_best:.2} GB/s");
    }

    // -- 2. matvec at expert shape -------------------------------------------------------------
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut rnd_bf16 = |n: usize| -> Vec<bf16> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bf16::from_f32(((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.05)
            })
            .collect()
    };
    let w1 = rnd_bf16(I * H);
    let w3 = rnd_bf16(I * H);
    let w2 = rnd_bf16(H * I);
    let x: Vec<f32> = (0..H).map(|i| ((i as f32) * 0.01).sin()).collect();
    let mut y = vec![0f32; I];
    let wbytes = (I * H * 2) as f64;
    if want("matvec") {
        println!(
            "\n## 2. matvec_bf16 {I}x{H} ({:.0} MB of bf16 weights), best of {reps}",
            wbytes / 1e6
        );
        println!("| isa | threads | ms/call | GB/s | % of roofline |");
        println!("|---|---|---|---|---|");
    }
    for isa in Isa::available().into_iter().filter(|_| want("matvec")) {
        for pool in &pools {
            if isa == Isa::Scalar && quick && pool.threads() > 1 {
                continue;
            }
            let mut flip = false;
            let (best, _) = measure(reps, || {
                // Alternate matrices so the previous call's tail is not in cache.
                let w = if flip { &w1 } else { &w3 };
                flip = !flip;
                try_matvec_bf16_with(isa, pool, w, &x, &mut y).unwrap();
                std::hint::black_box(&y);
            });
            let gbs = wbytes / best.as_secs_f64() / 1e9;
            println!(
                "| {} | {} | {:.2} | {gbs:.2} | {:.0}% |",
                isa.name(),
                pool.threads(),
                best.as_secs_f64() * 1e3,
                100.0 * gbs / probe_best
            );
        }
    }

    // -- 2b. paired: probe and kernel over the same bytes, interleaved -----------------------
    // On a shared machine the bandwidth available drifts from second to second, so the two
    // sides of the ratio are measured back to back in every repetition, over the same 352 MB
    // (w1, w3, w2): a u64 sum of those bytes vs the three matvecs of an expert.
    if want("paired") {
        println!(
            "\n## 2b. paired: u64 sum vs matvec over the same 352 MB (w1, w3, w2), interleaved"
        );
        println!("| isa | threads | probe GB/s (best) | matvec GB/s (best) | ratio of bests | median per-rep ratio |");
        println!("|---|---|---|---|---|---|");
        let mut h = vec![0f32; I];
        let mut o = vec![0f32; H];
        for isa in Isa::available().into_iter().filter(|i| *i != Isa::Scalar) {
            for pool in &pools {
                let mut tp = Vec::new();
                let mut tm = Vec::new();
                for rep in 0..=reps * 2 {
                    let s0 = Instant::now();
                    for w in [&w1, &w3, &w2] {
                        std::hint::black_box(sum_bf16_as_u64(pool, w));
                    }
                    let p = s0.elapsed();
                    let s1 = Instant::now();
                    try_matvec_bf16_with(isa, pool, &w1, &x, &mut h).unwrap();
                    try_matvec_bf16_with(isa, pool, &w3, &x, &mut h).unwrap();
                    try_matvec_bf16_with(isa, pool, &w2, &h, &mut o).unwrap();
                    std::hint::black_box(&o);
                    let m = s1.elapsed();
                    if rep > 0 {
                        tp.push(p);
                        tm.push(m);
                    }
                }
                let mut ratios: Vec<f64> = tp
                    .iter()
                    .zip(&tm)
                    .map(|(p, m)| p.as_secs_f64() / m.as_secs_f64())
                    .collect();
                ratios.sort_by(f64::total_cmp);
                let bp = tp.iter().min().expect("reps > 0").as_secs_f64();
                let bm = tm.iter().min().expect("reps > 0").as_secs_f64();
                println!(
                    "| {} | {} | {:.2} | {:.2} | {:.0}% | {:.0}% |",
                    isa.name(),
                    pool.threads(),
                    3.0 * wbytes / bp / 1e9,
                    3.0 * wbytes / bm / 1e9,
                    100.0 * bp / bm,
                    100.0 * ratios[ratios.len() / 2]
                );
            }
        }
    }

    // -- 2c. on-CPU normalised --------------------------------------------------------------
    // When other jobs oversubscribe the cores, wall time mostly measures the scheduler. Here
    // every thread times its own share with its on-CPU clock, for the probe (u64 sum) and for
    // the matvec kernel over the same rows of the same matrix; the sum over threads of
    // bytes / on-CPU time is each side's streaming rate while running.
    if want("oncpu") && thread_cpu_ns().is_some() {
        println!(
            "\n## 2c. on-CPU normalised: u64 sum vs matvec over the same 117 MB, best of {reps}"
        );
        println!("| isa | threads | probe GB/s per on-CPU s | matvec GB/s per on-CPU s | matvec / probe | pool matvec GB/s (process CPU) | pool / probe |");
        println!("|---|---|---|---|---|---|---|");
        let single = Pool::single();
        for isa in Isa::available().into_iter().filter(|i| *i != Isa::Scalar) {
            for pool in &pools {
                let nt = pool.threads();
                let ys: Vec<std::sync::Mutex<Vec<f32>>> = (0..nt)
                    .map(|_| std::sync::Mutex::new(vec![0f32; I]))
                    .collect();
                let rates = |probe: bool, w: &[bf16]| -> f64 {
                    let per: Vec<std::sync::Mutex<f64>> =
                        (0..nt).map(|_| std::sync::Mutex::new(0.0)).collect();
                    pool.run(|i, n| {
                        let r = split_range(I, n, i, 16);
                        let wr = &w[r.start * H..r.end * H];
                        let c0 = thread_cpu_ns().unwrap_or(0);
                        if probe {
                            std::hint::black_box(sum_bf16_as_u64(&single, wr));
                        } else {
                            let mut y = ys[i].lock().unwrap_or_else(|e| e.into_inner());
                            try_matvec_bf16_with(isa, &single, wr, &x, &mut y[..r.len()]).unwrap();
                            std::hint::black_box(&y);
                        }
                        let c1 = thread_cpu_ns().unwrap_or(c0);
                        *per[i].lock().unwrap_or_else(|e| e.into_inner()) =
                            (wr.len() * 2) as f64 / ((c1 - c0).max(1) as f64);
                    });
                    per.iter()
                        .map(|m| *m.lock().unwrap_or_else(|e| e.into_inner()))
                        .sum()
                };
                let (mut bp, mut bm) = (0f64, 0f64);
                for rep in 0..=reps {
                    let w = if rep % 2 == 0 { &w1 } else { &w3 };
                    let p = rates(true, w);
                    let w = if rep % 2 == 0 { &w3 } else { &w1 };
                    let m = rates(false, w);
                    if rep > 0 {
                        bp = bp.max(p);
                        bm = bm.max(m);
                    }
                }
                // The real pool-parallel kernel (dynamic chunks), timed by the process's
                // on-CPU clock: threads × bytes / CPU time (spin-waits count as cost).
                let mut bk = 0f64;
                let mut y = vec![0f32; I];
                for rep in 0..=reps {
                    let w = if rep % 2 == 0 { &w1 } else { &w3 };
                    let c0 = process_cpu_ns().unwrap_or(0);
                    try_matvec_bf16_with(isa, pool, w, &x, &mut y).unwrap();
                    let c1 = process_cpu_ns().unwrap_or(c0);
                    std::hint::black_box(&y);
                    if rep > 0 {
                        bk = bk.max(wbytes * nt as f64 / (c1 - c0).max(1) as f64);
                    }
                }
                println!(
                    "| {} | {nt} | {bp:.2} | {bm:.2} | {:.0}% | {bk:.2} | {:.0}% |",
                    isa.name(),
                    100.0 * bm / bp,
                    100.0 * bk / bp
                );
            }
        }
    }

    // -- 2d. decode shapes ---------------------------------------------------------------------
    // Short ops lose more to thread start-up and end-of-op imbalance; measure the other decode
    // projections too, rotating through enough copies that nothing is served from L3.
    if want("shapes") {
        println!(
            "\n## 2d. matvec at the other decode shapes (copies rotated past L3), best of {reps}"
        );
        println!("| shape | threads | us/call | GB/s wall | GB/s per process on-CPU s |");
        println!("|---|---|---|---|---|");
        for (rows, cols, copies) in [(1024usize, 4096usize, 32usize), (4096, 4096, 8), (H, I, 1)] {
            let mats: Vec<Vec<bf16>> = if (rows, cols) == (H, I) {
                Vec::new()
            } else {
                (0..copies).map(|_| rnd_bf16(rows * cols)).collect()
            };
            let xv: Vec<f32> = (0..cols).map(|i| ((i as f32) * 0.01).sin()).collect();
            let mut yv = vec![0f32; rows];
            let bytes = (rows * cols * 2) as f64;
            for pool in &pools {
                let mut best_wall = f64::INFINITY;
                let mut best_cpu = f64::INFINITY;
                for k in 0..(reps * copies.max(4)) {
                    let w: &[bf16] = if mats.is_empty() {
                        &w2
                    } else {
                        &mats[k % copies]
                    };
                    let c0 = process_cpu_ns().unwrap_or(0);
                    let t0 = Instant::now();
                    try_matvec_bf16_with(Isa::detect(), pool, w, &xv, &mut yv).unwrap();
                    let wall = t0.elapsed().as_secs_f64();
                    let c1 = process_cpu_ns().unwrap_or(c0);
                    std::hint::black_box(&yv);
                    best_wall = best_wall.min(wall);
                    best_cpu = best_cpu.min((c1 - c0).max(1) as f64 * 1e-9 / pool.threads() as f64);
                }
                println!(
                    "| {rows}x{cols} | {} | {:.0} | {:.2} | {:.2} |",
                    pool.threads(),
                    best_wall * 1e6,
                    bytes / best_wall / 1e9,
                    bytes / best_cpu / 1e9
                );
            }
        }
    }

    // -- 3. expert FFN ---------------------------------------------------------------------------
    let fbytes = 3.0 * wbytes;
    if want("ffn") {
        println!(
            "\n## 3. expert_ffn_bf16 H={H} I={I} ({:.0} MB per call), best of {reps}",
            fbytes / 1e6
        );
        println!("| isa | threads | ms/call | GB/s | % of roofline | GB/s per process on-CPU s |");
        println!("|---|---|---|---|---|---|");
    }
    let mut out = vec![0f32; H];
    let mut scratch = vec![0f32; I];
    for isa in Isa::available().into_iter().filter(|_| want("ffn")) {
        if isa == Isa::Scalar {
            continue;
        }
        for pool in &pools {
            let mut best_cpu = f64::INFINITY;
            let (best, _) = measure(reps, || {
                let c0 = process_cpu_ns().unwrap_or(0);
                try_expert_ffn_bf16_with(isa, pool, &w1, &w3, &w2, &x, 0.5, &mut out, &mut scratch)
                    .unwrap();
                let c1 = process_cpu_ns().unwrap_or(c0);
                best_cpu = best_cpu.min((c1 - c0).max(1) as f64 * 1e-9 / pool.threads() as f64);
                std::hint::black_box(&out);
            });
            let gbs = fbytes / best.as_secs_f64() / 1e9;
            println!(
                "| {} | {} | {:.2} | {gbs:.2} | {:.0}% | {:.2} |",
                isa.name(),
                pool.threads(),
                best.as_secs_f64() * 1e3,
                100.0 * gbs / probe_best,
                fbytes / best_cpu / 1e9
            );
        }
    }
    if want("probe") {
        println!(
            "=> Mixtral-8x7B decode bound at this bandwidth: ~{:.1} tokens/s (about {:.2} GB of \
         bf16 weights per token: 2 experts x 32 layers + attention)",
            probe_best / MIXTRAL_BYTES_PER_TOKEN,
            MIXTRAL_BYTES_PER_TOKEN
        );
    }

    // -- 3b. decode attention -----------------------------------------------------------------
    if want("attention") {
        let (nh, nkv, d, ctx) = (32usize, 8usize, 128usize, 4096usize);
        let copies = 4; // 4 layers' caches (4 × 32 MiB) so the K/V reads come from memory
        let caches: Vec<KvCacheLayer> = (0..copies)
            .map(|c| {
                let mut kv = KvCacheLayer::new(nkv, d, ctx);
                for (i, v) in kv.k.iter_mut().enumerate() {
                    *v = (((i + c) % 97) as f32 - 48.0) * 0.01;
                }
                for (i, v) in kv.v.iter_mut().enumerate() {
                    *v = (((i + 3 * c) % 89) as f32 - 44.0) * 0.01;
                }
                kv
            })
            .collect();
        let q: Vec<f32> = (0..nh * d).map(|i| ((i as f32) * 0.37).sin()).collect();
        let mut out = vec![0f32; nh * d];
        let mut scratch = vec![0f32; nh * ctx];
        let kv_bytes = (2 * nkv * ctx * d * 4) as f64;
        println!(
            "\n## 3b. attention_decode {nh} heads / {nkv} KV heads, d={d}, {ctx} positions ({:.0} MB of f32 K+V per call), best of {reps}",
            kv_bytes / 1e6
        );
        for pool in &pools {
            let mut k = 0;
            let (best, _) = measure(reps * copies, || {
                attention_decode(
                    pool,
                    &q,
                    &caches[k % copies],
                    nh,
                    0,
                    ctx,
                    &mut out,
                    &mut scratch,
                );
                k += 1;
                std::hint::black_box(&out);
            });
            println!(
                "threads {}: {:.2} ms/call, {:.2} GB/s of K/V",
                pool.threads(),
                best.as_secs_f64() * 1e3,
                kv_bytes / best.as_secs_f64() / 1e9
            );
        }
        let mut sc: Vec<f32> = (0..nh * ctx)
            .map(|i| ((i as f32) * 0.013).sin() * 4.0)
            .collect();
        let (best, _) = measure(reps, || {
            for row in sc.chunks_mut(ctx) {
                softmax_in_place(row);
            }
            std::hint::black_box(&sc);
        });
        println!(
            "of which softmax over {nh} x {ctx} scores (single thread): {:.2} ms",
            best.as_secs_f64() * 1e3
        );
    }

    // -- 4. dispatch overhead and prefill ----------------------------------------------------
    if want("dispatch") || want("prefill") {
        println!("\n## 4. pool dispatch and prefill");
    }
    for pool in pools.iter().filter(|_| want("dispatch")) {
        let n = 20_000;
        let t = Instant::now();
        for _ in 0..n {
            pool.run(|i, _| {
                std::hint::black_box(i);
            });
        }
        println!(
            "empty pool.run, {} threads: {:.2} us/call",
            pool.threads(),
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }
    let ntok = 64;
    let xs: Vec<f32> = (0..ntok * H).map(|i| ((i as f32) * 0.001).cos()).collect();
    let mut ys = vec![0f32; ntok * I];
    let flops = 2.0 * (I * H * ntok) as f64;
    for pool in pools.iter().filter(|_| want("prefill")) {
        let (best, _) = measure(reps.min(4), || {
            matmul_bf16(pool, &w1, &xs, ntok, &mut ys);
            std::hint::black_box(&ys);
        });
        println!(
            "matmul_bf16 {I}x{H} x {ntok} tokens, {} threads: {:.1} ms, {:.1} GFLOP/s ({:.0} tokens/s for this matrix)",
            pool.threads(),
            best.as_secs_f64() * 1e3,
            flops / best.as_secs_f64() / 1e9,
            ntok as f64 / best.as_secs_f64()
        );
    }
    // On a shared machine wall time includes time the thread was descheduled; on-CPU time of
    // the (single) calling thread gives the kernel's own speed.
    let single = Pool::single();
    if let Some(c0) = thread_cpu_ns().filter(|_| want("prefill")) {
        matmul_bf16(&single, &w1, &xs, ntok, &mut ys);
        let c1 = thread_cpu_ns().unwrap_or(c0);
        println!(
            "matmul_bf16 single thread, per on-CPU second: {:.1} GFLOP/s",
            flops / ((c1 - c0) as f64 * 1e-9) / 1e9
        );
    }
}

fn thread_cpu_ns() -> Option<u64> {
    cpu_clock_ns(3)
}

/// On-CPU nanoseconds of all threads of the process (`CLOCK_PROCESS_CPUTIME_ID`).
fn process_cpu_ns() -> Option<u64> {
    cpu_clock_ns(2)
}

/// Nanoseconds on a CPU clock (2 = `CLOCK_PROCESS_CPUTIME_ID`, 3 = `CLOCK_THREAD_CPUTIME_ID`),
/// exact at any moment (unlike /proc schedstat, updated at ticks). Raw syscall to avoid a libc
/// dependency for one benchmark helper.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn cpu_clock_ns(clock: i64) -> Option<u64> {
    let mut ts = [0i64; 2];
    let ret: i64;
    // SAFETY: syscall 228 is clock_gettime on x86-64 Linux; with a CPU-time clock id it
    // writes one 16-byte timespec into `ts` (or fails with a negative return). The syscall
    // instruction clobbers rcx and r11, declared below.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") 228i64 => ret,
            in("rdi") clock,
            in("rsi") ts.as_mut_ptr(),
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    (ret == 0).then(|| ts[0] as u64 * 1_000_000_000 + ts[1] as u64)
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn cpu_clock_ns(_clock: i64) -> Option<u64> {
    None
}

/// Active bf16 bytes per Mixtral-8x7B token: 32 layers × (2 experts × 3 × 4096 × 14336 +
/// attention q,o 4096² each + k,v 1024 × 4096 each) × 2 bytes, plus the 32000 × 4096 LM head.
const MIXTRAL_BYTES_PER_TOKEN: f64 = (32.0
    * (2.0 * 3.0 * 4096.0 * 14336.0 + 2.0 * 4096.0 * 4096.0 + 2.0 * 1024.0 * 4096.0)
    + 32000.0 * 4096.0)
    * 2.0
    / 1e9;

/// The probe's window: a full pass over 1 GiB rarely runs undisturbed on a shared machine, while
/// a 117 MB matvec often does; so each pass is also timed in 128 MiB windows (still 4x L3) and
/// the best window is the roofline the kernels are compared with.
const WINDOW: usize = 128 * 1024 * 1024 / 8;

/// One pass of the read probe over `buf`, window by window, each window's u64 sum split over
/// the pool; returns the seconds of every full window.
fn probe_pass(pool: &Pool, buf: &[u64]) -> Vec<f64> {
    let mut times = Vec::with_capacity(buf.len() / WINDOW);
    for win in buf.chunks(WINDOW) {
        let t = Instant::now();
        let sums: Vec<std::sync::atomic::AtomicU64> = (0..pool.threads())
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect();
        pool.run(|i, n| {
            let r = split_range(win.len(), n, i, 8);
            sums[i].store(sum_u64(&win[r]), std::sync::atomic::Ordering::Relaxed);
        });
        std::hint::black_box(&sums);
        if win.len() == WINDOW {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times
}

/// `--only probe-serve`: the read probe on demand, from a process whose buffer is faulted in
/// and whose pool is started, so a probe costs only its passes (~0.1 s) and can sit between
/// decode segments of a second or less. Per stdin line (optionally a pass count; `quit` or end
/// of input stops), one JSON line: best and median 128 MiB window, median full pass (GB/s),
/// the windows timed and the probe's wall time. The pool's workers park ~0.3 ms after a probe,
/// so the process costs no CPU between probes.
fn probe_serve(threads: usize) {
    use std::io::{BufRead, Write};
    let mib: usize = std::env::var("SWARMLM_BENCH_PROBE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let pool = Pool::new(threads);
    let words = mib.max(128) * 1024 * 1024 / 8;
    let buf: Vec<u64> = (0..words as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9))
        .collect();
    probe_pass(&pool, &buf);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{{\"ready\": true, \"threads\": {}, \"mib\": {mib}}}",
        pool.threads()
    );
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line == "quit" {
            break;
        }
        let passes: usize = line.parse().unwrap_or(5).max(1);
        let t0 = Instant::now();
        let mut windows = Vec::new();
        let mut pass_secs = Vec::with_capacity(passes);
        for _ in 0..passes {
            let t = Instant::now();
            windows.extend(probe_pass(&pool, &buf));
            pass_secs.push(t.elapsed().as_secs_f64());
        }
        let seconds = t0.elapsed().as_secs_f64();
        windows.sort_by(f64::total_cmp);
        pass_secs.sort_by(f64::total_cmp);
        let gbs = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
        let _ = writeln!(
            out,
            "{{\"best_window_gbs\": {:.3}, \"median_window_gbs\": {:.3}, \"median_pass_gbs\": {:.3}, \"windows\": {}, \"seconds\": {seconds:.4}}}",
            gbs(WINDOW * 8, windows[0]),
            gbs(WINDOW * 8, windows[windows.len() / 2]),
            gbs(words * 8, pass_secs[pass_secs.len() / 2]),
            windows.len(),
        );
        let _ = out.flush();
    }
}

/// Best and median wall time of `reps` runs after one warm-up.
fn measure(reps: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    f();
    let mut t: Vec<Duration> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    (t[0], t[t.len() / 2])
}

/// The u64 sum of a bf16 buffer's bytes, split over the pool (the probe over weight memory).
fn sum_bf16_as_u64(pool: &Pool, w: &[bf16]) -> u64 {
    // SAFETY: every bit pattern is a valid u64 and bf16 is plain 2-byte data; align_to only
    // reinterprets the aligned middle part.
    let (_, mid, _) = unsafe { w.align_to::<u64>() };
    let total = std::sync::atomic::AtomicU64::new(0);
    pool.run(|i, n| {
        let r = split_range(mid.len(), n, i, 8);
        total.fetch_add(sum_u64(&mid[r]), std::sync::atomic::Ordering::Relaxed);
    });
    total.into_inner()
}

/// Sum of u64 read as `STREAMS` concurrent sequential streams (the buffer cut in equal parts,
/// walked in lockstep, one cache line per stream per step). One stream per core leaves
/// bandwidth unused (the matvec, reading 4 weight rows at once, beat it by ~20%); several
/// streams keep more lines in flight, so this is the fairer roofline.
fn sum_u64(v: &[u64]) -> u64 {
    const STREAMS: usize = 4;
    const LINE: usize = 8;
    let part = v.len() / STREAMS / LINE * LINE;
    let mut acc = [[0u64; LINE]; STREAMS];
    let mut j = 0;
    while j < part {
        for s in 0..STREAMS {
            let line = &v[s * part + j..s * part + j + LINE];
            for k in 0..LINE {
                acc[s][k] = acc[s][k].wrapping_add(line[k]);
            }
        }
        j += LINE;
    }
    let mut total = 0u64;
    for a in acc.iter().flatten() {
        total = total.wrapping_add(*a);
    }
    for r in &v[STREAMS * part..] {
        total = total.wrapping_add(*r);
    }
    total
}
