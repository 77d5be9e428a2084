#!/usr/bin/env python3
"""Interleaved engine-vs-peers runs for benchmarks/peers.sh (issue 9). Not meant to be run alone:
peers.sh builds the binaries, forges the models and converts the GGUF files, then calls this.

For each model and repetition, every peer runs in turn (interleaved, so machine drift hits all
alike), each run bracketed by a memory-bandwidth probe:
  probe -> decode run (short prompt, greedy, TOKENS new tokens) -> 256-token prefill run -> probe
Per run: decode tokens/s, share of the roofline (tokens/s x bytes read per token / probed GB/s,
the probe being the mean of the one before and the one after), prefill tokens/s, peak RSS
(VmHWM) and peak anonymous RSS (polled from /proc, to show weights are not copied).
Then medians per peer and ratios against llama.cpp bf16, as a markdown table on stdout; raw
records go to the --raw JSON-lines file.
"""
import argparse
import json
import os
import random
import resource
import re
import statistics
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the checkout for the module below
import segments  # noqa: E402


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def probe(probe_bin):
    """Best 128 MiB-window read bandwidth with 2 threads (GB/s) and the full-pass median."""
    env = dict(os.environ, SWARMLM_BENCH_PROBE_MIB=os.environ.get("PROBE_MIB", "512"))
    out = subprocess.run(
        [probe_bin, "--only", "probe", "--quick"], env=env, capture_output=True, text=True, check=True
    ).stdout
    best = median = None
    for line in out.splitlines():
        m = re.match(r"threads (\d+): full pass\s+([\d.]+) GB/s best,\s+([\d.]+) GB/s median; best 128 MiB window\s+([\d.]+|inf|NaN)", line)
        if m and int(m.group(1)) == THREADS:
            median = float(m.group(3))
            best = float(m.group(4)) if m.group(4) not in ("inf", "NaN") else float(m.group(2))
    if best is None:
        raise RuntimeError(f"probe output not understood:\n{out}")
    # The same read probe timed per thread by its on-CPU clock (bytes / CPU second, summed over
    # the threads): the bandwidth while running, which is what an oversubscribed machine still
    # lets us compare decode rates per CPU second against.
    out = subprocess.run(
        [probe_bin, "--only", "oncpu", "--quick"], env=env, capture_output=True, text=True, check=True
    ).stdout
    oncpu = None
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] != "isa" and cells[1] == str(THREADS):
            try:
                oncpu = max(oncpu or 0.0, float(cells[2]))
            except ValueError:
                pass
    return best, median, oncpu


def run_polled(cmd, env=None):
    """Runs cmd, polling /proc/PID/status for peak RssAnon / RssFile; returns (json, peaks, wall,
    stderr, cpu) where cpu is the child's user+system CPU seconds (all threads)."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0, "FilePmdMapped": 0}
    stop = threading.Event()

    def poll():
        path = f"/proc/{p.pid}/status"
        n = 0
        while not stop.is_set():
            n += 1
            try:
                with open(path) as f:
                    for line in f:
                        k, _, v = line.partition(":")
                        if k in peaks:
                            peaks[k] = max(peaks[k], int(v.split()[0]) * 1024)
                # Weight bytes mapped with 2 MiB pages (issue 9: 4 KiB mappings cost TLB
                # misses); read less often, smaps_rollup walks every mapping.
                if n % 5 == 0:
                    with open(f"/proc/{p.pid}/smaps_rollup") as f:
                        for line in f:
                            if line.startswith("FilePmdMapped:"):
                                v = int(line.split()[1]) * 1024
                                peaks["FilePmdMapped"] = max(peaks["FilePmdMapped"], v)
            except (OSError, ValueError):
                pass
            stop.wait(0.02)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    stop.set()
    th.join()
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}):\n{err[-3000:]}")
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line), peaks, wall, err, cpu


def op_bytes(cfg, wbytes):
    """Weight bytes one decode token reads per op of swarmlm's profile (SWARMLM_PROFILE=1); the
    embedding row (h) is counted under `other`; the KV cache adds < 0.1% at these lengths and
    is left out."""
    h = cfg["hidden_size"]
    i = cfg["intermediate_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or h // nh
    q, kv = nh * d, nkv * d
    n = cfg["num_hidden_layers"]
    params = {
        "attention": n * (h * q * 2 + h * kv * 2),
        "router": n * cfg["num_local_experts"] * h,
        "experts": n * cfg["num_experts_per_tok"] * 3 * h * i,
        "lm_head": cfg["vocab_size"] * h,
        "other": h,
    }
    return {k: v * wbytes for k, v in params.items()}


def bytes_per_token(cfg, wbytes):
    """Weight bytes one decode token reads (attention, router, top-k experts, lm_head, one
    embedding row)."""
    return sum(op_bytes(cfg, wbytes).values())


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main():
    global THREADS
    ap = argparse.ArgumentParser()
    ap.add_argument("--swarmlm", required=True)
    ap.add_argument("--candle", required=True)
    ap.add_argument("--probe", required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=HF_DIR")
    ap.add_argument("--gguf", action="append", default=[], help="NAME:TYPE=FILE")
    ap.add_argument("--candle-dtype", action="append", default=[], help="NAME=bf16,f32")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill-len", type=int, default=256)
    ap.add_argument("--swarmlm-base", default=None,
                    help="a second swarmlm binary (e.g. main before a change), run as peer 'swarmlm base'")
    ap.add_argument("--ttft-model", default=None)
    ap.add_argument("--llama-passive", action="store_true",
                    help="also run llama.cpp bf16 with OMP_WAIT_POLICY=passive (threads sleep instead "
                         "of spinning at barriers: kinder to an oversubscribed machine)")
    ap.add_argument("--raw", required=True)
    ap.add_argument("--segments", type=int, default=0,
                    help="rounds of the segmented roofline measurement per repetition (segments.py; 0 = off)")
    ap.add_argument("--segment-tokens", default="auto",
                    help="decode tokens per segment; auto: a multiple of 8 reading ~15 GB of weights "
                         "(~0.5 s at 30 GB/s: 8 on the 6.33 GB model, 56 on small)")
    ap.add_argument("--segment-sleep", type=float, default=0.05,
                    help="seconds between a segment and the next probe (llama.cpp's OpenMP threads spin ~10-20 ms)")
    ap.add_argument("--probe-passes", type=int, default=5,
                    help="passes over the probe buffer per segment probe (5 x 512 MiB: the 20 windows of the whole-run probe)")
    ap.add_argument("--decode-serve", default=None, help="swarmlm's examples/decode_serve binary (for --segments)")
    ap.add_argument("--no-whole", action="store_true", help="only the segmented measurement (no whole runs, no load timing)")
    a = ap.parse_args()
    THREADS = a.threads
    here = os.path.dirname(os.path.abspath(__file__))
    models = dict(m.split("=", 1) for m in a.model)
    ggufs = {}
    for g in a.gguf:
        k, v = g.split("=", 1)
        name, typ = k.split(":")
        ggufs.setdefault(name, {})[typ] = v
    candle_dtypes = {k: v.split(",") for k, v in (c.split("=", 1) for c in a.candle_dtype)}
    raw = open(a.raw, "a")

    def record(r):
        raw.write(json.dumps(r) + "\n")
        raw.flush()

    # The short prompt: the text of benchmarks/engine.sh through swarmlm's own tokenizer.
    text = "The old lighthouse keeper climbed the stairs and looked out over the sea"
    first = next(iter(models.values()))
    j, *_ = run_polled([a.swarmlm, "run", first, "--prompt", text, "--max-tokens", "1",
                             "--temperature", "0", "--threads", str(a.threads), "--json"])
    short = j["prompt_ids"]
    rng = random.Random(256)
    summary = {}
    seg_records = {}
    probe_server = None
    if a.segments > 0:
        probe_env = dict(os.environ, SWARMLM_BENCH_PROBE_MIB=os.environ.get("PROBE_MIB", "512"))
        probe_server = segments.Proc([a.probe, "--only", "probe-serve", "--threads", str(a.threads)], env=probe_env)
    for name, hf in models.items():
        cfg = json.load(open(os.path.join(hf, "config.json")))
        long_ids = [1] + [rng.randrange(300, cfg["vocab_size"]) for _ in range(a.prefill_len - 1)]
        peers = [("swarmlm", "bf16", None, lambda ids, n: [a.swarmlm, "run", hf, "--prompt-ids", ",".join(map(str, ids)),
                                                     "--max-tokens", str(n), "--temperature", "0",
                                                     "--threads", str(a.threads), "--json"])]
        if a.swarmlm_base:
            peers.append(("swarmlm base", "bf16", None, lambda ids, n: [
                a.swarmlm_base, "run", hf, "--prompt-ids", ",".join(map(str, ids)), "--max-tokens", str(n),
                "--temperature", "0", "--threads", str(a.threads), "--json"]))
        for typ, path in sorted(ggufs.get(name, {}).items()):
            llama = lambda ids, n, path=path: [
                sys.executable, os.path.join(here, "llama_cpp_bench.py"), path, "--prompt-ids",
                ",".join(map(str, ids)), "--max-tokens", str(n), "--threads", str(a.threads)]
            peers.append((f"llama.cpp {typ}", typ, None, llama))
            if typ == "bf16" and a.llama_passive:
                peers.append(("llama.cpp bf16 passive", typ, {"OMP_WAIT_POLICY": "passive"}, llama))
        for dt in candle_dtypes.get(name, []):
            peers.append((f"candle {dt}", dt, None, lambda ids, n, dt=dt: [
                a.candle, hf, "--prompt-ids", ",".join(map(str, ids)), "--max-tokens", str(n),
                "--dtype", dt]))
        env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
        prof_env = dict(env, SWARMLM_PROFILE="1")
        rows = {}
        for rep in range(0 if a.no_whole else a.reps):
            for label, typ, extra_env, cmd in peers:
                wb = 4 if typ == "f32" else 2
                bpt = bytes_per_token(cfg, wb)
                la0 = loadavg()
                p0, p0m, c0 = probe(a.probe)
                run_env = dict(env, **(extra_env or {}))
                use_env = prof_env if label.startswith("swarmlm") else run_env
                dj, peaks, wall, err, cpu_dec = run_polled(cmd(short, a.tokens), env=use_env)
                # Same prompt, one token: load + prefill only. The CPU-time difference is the
                # decode's, which gives a rate per on-CPU second that survives an oversubscribed
                # machine (other jobs take wall time, not CPU time).
                bj, _, _, _, cpu_base = run_polled(cmd(short, 1), env=run_env)
                pj, _, _, _, cpu_long = run_polled(cmd(long_ids, 1), env=run_env)
                p1, p1m, c1 = probe(a.probe)
                la1 = loadavg()
                bw = (p0 + p1) / 2
                bwc = ((c0 or 0) + (c1 or 0)) / 2 or None
                dec = dj["decode_tokens_per_s"]
                n_dec = len(dj["generated_ids"]) - 1
                dcpu = max(cpu_dec - cpu_base, 1e-9) / a.threads
                pcpu = max(cpu_long - cpu_base, 1e-9) / a.threads
                r = {
                    "model": name, "peer": label, "rep": rep, "decode_tokens_per_s": dec,
                    "prefill_short_tokens_per_s": dj["prefill_tokens_per_s"],
                    "prefill_256_tokens_per_s": pj["prefill_tokens_per_s"],
                    "bytes_per_token": bpt, "probe_before_gbs": p0, "probe_after_gbs": p1,
                    "probe_median_pass_gbs": [p0m, p1m],
                    "roofline_tokens_per_s": bw * 1e9 / bpt,
                    "roofline_share": dec * bpt / (bw * 1e9),
                    "decode_tokens_per_cpu_s": n_dec / dcpu,
                    "probe_oncpu_gbs": [c0, c1],
                    "roofline_share_cpu": n_dec / dcpu * bpt / (bwc * 1e9) if bwc else None,
                    # None when the CPU-time difference is lost in noise.
                    "prefill_256_tokens_per_cpu_s": (len(long_ids) - len(short)) / pcpu if pcpu > 0.05 else None,
                    "cpu_seconds": {"decode_run": cpu_dec, "base_run": cpu_base, "long_run": cpu_long},
                    "peak_rss_bytes": dj["peak_rss_bytes"], "peak_rss_anon_bytes": peaks["RssAnon"],
                    "peak_rss_file_bytes": peaks["RssFile"], "load_seconds": dj["load_seconds"],
                    "peak_file_pmd_mapped_bytes": peaks["FilePmdMapped"],
                    "wall_seconds": wall, "generated_ids": dj["generated_ids"],
                    "load_avg_before": la0, "load_avg_after": la1,
                }
                for k in ("decode_op_seconds", "decode_op_steps", "llama_perf"):
                    if k in dj:
                        r[k] = dj[k]
                record(r)
                rows.setdefault(label, []).append(r)
                print(f"[{name} rep {rep}] {label:16s} decode {dec:7.2f} tok/s, {r['decode_tokens_per_cpu_s']:7.2f} per CPU s "
                      f"({100 * r['roofline_share']:5.1f}% of {bw:5.1f} GB/s; per CPU {100 * (r['roofline_share_cpu'] or 0):5.1f}% of {bwc or 0:5.1f}) prefill "
                      f"{r['prefill_256_tokens_per_s']:7.1f} tok/s  RSS {r['peak_rss_bytes'] / 2**20:7.0f} MiB "
                      f"(anon {peaks['RssAnon'] / 2**20:6.0f})  load {la0} -> {la1}", file=sys.stderr)
        summary[name] = rows
        if probe_server:
            seg_peers = [("swarmlm", 2, lambda ids, cap: [
                a.decode_serve, hf, "--prompt-ids", ",".join(map(str, ids)), "--threads", str(a.threads),
                "--capacity", str(len(ids) + cap)], prof_env)]
            for typ, path in sorted(ggufs.get(name, {}).items()):
                seg_peers.append((f"llama.cpp {typ}", 4 if typ == "f32" else 2, lambda ids, cap, path=path: [
                    sys.executable, os.path.join(here, "llama_cpp_bench.py"), path, "--prompt-ids",
                    ",".join(map(str, ids)), "--max-tokens", str(cap), "--threads", str(a.threads), "--serve"], env))
            whole_ids = {label: rs[0]["generated_ids"] for label, rs in rows.items()}
            seg_records[name] = (segments.run_model(
                name, seg_peers, probe_server, a, lambda wb: bytes_per_token(cfg, wb), short, record,
                lambda m: print(m, file=sys.stderr)), whole_ids, op_bytes(cfg, 2))
    if probe_server:
        probe_server.close()

    # Load to first token (warm page cache): swarmlm with a 1-token prompt, 1 new token.
    ttft = None
    if a.ttft_model and not a.no_whole:
        hf = models[a.ttft_model]
        cmd = [a.swarmlm, "run", hf, "--prompt-ids", "1", "--max-tokens", "1", "--temperature", "0",
               "--threads", str(a.threads), "--json"]
        run_polled(cmd)  # warm the page cache
        res = []
        for _ in range(max(a.reps, 3)):
            j, _, wall, _, _ = run_polled(cmd)
            res.append((j["load_seconds"] + 1.0 / j["prefill_tokens_per_s"], j["load_seconds"], wall))
        ttft = {k: med([r[i] for r in res]) for i, k in enumerate(["load_plus_first_token_s", "load_s", "process_wall_s"])}
        if a.swarmlm_base:
            res_b = []
            for _ in range(max(a.reps, 3)):
                j, _, wall, _, _ = run_polled([a.swarmlm_base] + cmd[1:])
                res_b.append((j["load_seconds"] + 1.0 / j["prefill_tokens_per_s"], j["load_seconds"], wall))
            ttft["base"] = {k: med([r[i] for r in res_b]) for i, k in enumerate(["load_plus_first_token_s", "load_s", "process_wall_s"])}
        record({"ttft": ttft, "model": a.ttft_model, "runs": res, "load_avg": loadavg()})

    # Markdown summary.
    print(f"\nload average at the end: {loadavg()}\n")
    for name, rows in summary.items():
        if name in seg_records:
            recs, whole_ids, ob = seg_records[name]
            segments.summary(name, recs, whole_ids, a.threads, ob)
        if not rows:
            continue
        base = rows.get("llama.cpp bf16")
        bdec = med([r["decode_tokens_per_s"] for r in base]) if base else None
        bpre = med([r["prefill_256_tokens_per_s"] for r in base]) if base else None
        print(f"### {name}\n")
        bdc = med([r["decode_tokens_per_cpu_s"] for r in base]) if base else None
        bpc = med([r["prefill_256_tokens_per_cpu_s"] for r in base]) if base else None
        print("| peer | decode tok/s wall | × llama.cpp bf16 | roofline share | decode tok/s per CPU s | × llama.cpp bf16 | roofline share (CPU) | probed GB/s wall / on-CPU | prefill 256 tok/s wall | × | prefill tok/s per CPU s | × | peak RSS MiB | peak anon MiB | mapped with 2 MiB pages |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for label, rs in rows.items():
            d = med([r["decode_tokens_per_s"] for r in rs])
            sh = med([r["roofline_share"] for r in rs])
            bw = med([(r["probe_before_gbs"] + r["probe_after_gbs"]) / 2 for r in rs])
            bwc = med([sum(x or 0 for x in r["probe_oncpu_gbs"]) / 2 for r in rs])
            pf = med([r["prefill_256_tokens_per_s"] for r in rs])
            rss = max(r["peak_rss_bytes"] for r in rs) / 2**20
            anon = max(r["peak_rss_anon_bytes"] for r in rs) / 2**20
            pmd = [r["peak_file_pmd_mapped_bytes"] / 1e9 for r in rs]
            dc = med([r["decode_tokens_per_cpu_s"] for r in rs])
            shc = med([r["roofline_share_cpu"] for r in rs])
            pc = med([r["prefill_256_tokens_per_cpu_s"] for r in rs])
            ratio = lambda x, b: f"{x / b:.2f}" if (b and x) else "–"
            pct = lambda x: f"{100 * x:.0f}%" if x else "–"
            num = lambda x: f"{x:.1f}" if x else "–"
            print(f"| {label} | {d:.2f} | {ratio(d, bdec)} | {pct(sh)} | {dc:.2f} | {ratio(dc, bdc)} | {pct(shc)} "
                  f"| {bw:.1f} / {bwc:.1f} | {pf:.1f} | {ratio(pf, bpre)} | {num(pc)} | {ratio(pc, bpc)} | {rss:.0f} | {anon:.0f} "
                  f"| {min(pmd):.2f}–{max(pmd):.2f} GB |")
        for who in ("swarmlm", "swarmlm base"):
          sw = rows.get(who, [])
          ops = [r["decode_op_seconds"] for r in sw if "decode_op_seconds" in r]
          if ops:
            steps = med([r["decode_op_steps"] for r in sw if "decode_op_steps" in r])
            keys = list(ops[0].keys())
            cells = [f"{k} {1e3 * med([o[k] for o in ops]) / steps:.2f} ms" for k in keys]
            total = sum(med([o[k] for o in ops]) for k in keys) / steps
            print(f"\n{who} per-op decode time per token (median of reps, {steps} steps): "
                  + ", ".join(cells) + f"; sum {1e3 * total:.2f} ms\n")
        print(f"bytes read per decode token (bf16): {bytes_per_token(json.load(open(os.path.join(models[name], 'config.json'))), 2) / 1e9:.3f} GB\n")
    if ttft:
        print(f"load to first token ({a.ttft_model}, warm cache, median): load {ttft['load_s']:.3f} s, "
              f"load + first token {ttft['load_plus_first_token_s']:.3f} s, whole process {ttft['process_wall_s']:.3f} s\n")
        if "base" in ttft:
            b = ttft["base"]
            print(f"swarmlm base: load {b['load_s']:.3f} s, load + first token {b['load_plus_first_token_s']:.3f} s, "
                  f"whole process {b['process_wall_s']:.3f} s\n")


if __name__ == "__main__":
    main()
