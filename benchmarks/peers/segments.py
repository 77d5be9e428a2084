"""Segmented roofline measurement for run_peers.py --segments (issue 9).

Why: the memory bandwidth of the benchmark VM swings by up to ~50% between the seconds before
and after one 4-second decode run, so a probe on either side of a whole run brackets it too
loosely (per-run roofline shares of 62-116% in one session). Here every decode peer stays
loaded in its own process (swarmlm: crates/swarmlm-engine/examples/decode_serve; llama.cpp:
llama_cpp_bench.py --serve) and decodes short segments on demand, and one probe process
(kernel_bench --only probe-serve, its 512 MiB buffer faulted in once) runs the read probe
between every two segments:

    probe, swarmlm segment, probe, llama.cpp segment, probe, llama.cpp segment, probe, ...

(the peers take turns, the order flipping every round). Per segment: GB/s = tokens x weight
bytes read per token / segment wall time, and share = that / mean(probe before, probe after).
The medians and quartiles over all segments of all repetitions are the result; the per-pair
ratio (swarmlm segment / the other peer's segment of the same round) compares the engines
within seconds of each other.

Idle while the other runs: swarmlm's pool parks ~0.3 ms after its last op, llama.cpp's OpenMP
threads spin for up to ~10-20 ms after an eval (GOMP's default spin count; measured here: ~8 ms
of CPU in the 20 ms after a segment, none later), so the driver sleeps SLEEP seconds (0.05)
after every segment before the probe, and records the CPU time every decode process used
during each probe (and the probe process during each segment) from /proc/PID/task/*/schedstat,
so a spinning peer would show.
"""
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def cpu_ns(pid):
    """On-CPU nanoseconds of every thread of pid so far (scheduler accounting)."""
    total = 0
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(f) as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def steal_ticks():
    """System-wide steal time (clock ticks): CPU the hypervisor gave to someone else."""
    with open("/proc/stat") as f:
        cells = f.readline().split()
    return int(cells[8]) if len(cells) > 8 else 0


def smaps_rollup(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Rss", "Anonymous", "FilePmdMapped"):
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


class Proc:
    """A line-protocol child: one request line in, one JSON line out."""

    def __init__(self, cmd, env=None):
        self.cmd = cmd
        # stderr goes to a file, not a pipe: nothing reads it while the child runs, and a child
        # that logged more than a pipe holds (64 KiB) would block mid-segment.
        self.err = tempfile.TemporaryFile(mode="w+")
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                  text=True, env=env)
        self.ready = self.read()

    def read(self):
        line = self.p.stdout.readline()
        if not line:
            self.p.wait()
            self.err.seek(0)
            raise RuntimeError(f"{self.cmd[0]} ended: {self.err.read()[-3000:]}")
        j = json.loads(line)
        if "error" in j:
            raise RuntimeError(f"{self.cmd[0]}: {j['error']}")
        return j

    def ask(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.read()

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def quartiles(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None, None, None
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[1], q[2]


def run_model(name, peers, probe, a, bpt_of, prompt, record, log):
    """Segment reps for one model. peers: [(label, wbytes, cmd, env)]; probe: a Proc of
    probe-serve. Returns the per-segment records."""
    rounds, sleep = a.segments, a.segment_sleep
    if a.segment_tokens == "auto":
        seg_n = max(8, round(15e9 / bpt_of(2) / 8) * 8)
    else:
        seg_n = int(a.segment_tokens)
    records = []
    for rep in range(a.reps):
        procs = []
        for label, wb, cmd, env in peers:
            capacity = seg_n * (rounds + 1) + 8
            procs.append((label, wb, Proc(cmd(prompt, capacity), env=env)))
        ids = {label: [pr.ready["first_id"]] for label, _, pr in procs}
        # One unmeasured warm-up segment each: first use of the experts' pages and of the
        # threads, as in the first steps of any run.
        for label, _, pr in procs:
            ids[label] += pr.ask(f"decode {seg_n}")["ids"]
        pids = [pr.p.pid for _, _, pr in procs]

        def do_probe():
            time.sleep(sleep)
            c0 = [cpu_ns(pid) for pid in pids]
            r = probe.ask(str(a.probe_passes))
            c1 = [cpu_ns(pid) for pid in pids]
            r["decode_cpu_ms_during"] = (sum(c1) - sum(c0)) / 1e6
            return r

        before = do_probe()
        for k in range(rounds):
            order = procs if k % 2 == 0 else procs[::-1]
            for label, wb, pr in order:
                pc0, st0 = cpu_ns(probe.p.pid), steal_ticks()
                s = pr.ask(f"decode {seg_n}")
                probe_cpu = (cpu_ns(probe.p.pid) - pc0) / 1e6
                steal = steal_ticks() - st0
                after = do_probe()
                bpt = bpt_of(wb)
                gbs = s["tokens"] * bpt / s["seconds"] / 1e9
                bw = (before["best_window_gbs"] + after["best_window_gbs"]) / 2
                bw_med = (before["median_window_gbs"] + after["median_window_gbs"]) / 2
                ids[label] += s["ids"]
                r = {
                    "segment": True, "model": name, "peer": label, "rep": rep, "round": k,
                    "tokens": s["tokens"], "seconds": s["seconds"], "cpu_seconds": s.get("cpu_seconds"),
                    "gbs": gbs, "probe_before": before, "probe_after": after,
                    "share": gbs / bw, "share_median_window": gbs / bw_med,
                    "probe_cpu_ms_during_segment": probe_cpu, "steal_ticks": steal,
                    "op_seconds": s.get("op_seconds") or None,
                }
                record(r)
                records.append(r)
                log(f"[{name} seg rep {rep} round {k}] {label:16s} {s['tokens']} tok in {s['seconds']:.3f} s "
                    f"= {gbs:5.1f} GB/s, {100 * r['share']:5.1f}% of {bw:5.1f} (probes {before['best_window_gbs']:.1f}"
                    f"/{after['best_window_gbs']:.1f}); CPU/wall {s.get('cpu_seconds', 0) / s['seconds'] / a.threads:.2f}; "
                    f"idle peers' CPU during probe {after['decode_cpu_ms_during']:.1f} ms")
                before = after
        for label, _, pr in procs:
            sm = smaps_rollup(pr.p.pid)
            # What the decode process maps at the end (every weight it reads touched by then).
            r = {"segment_process": True, "model": name, "peer": label, "rep": rep,
                 "file_pmd_mapped_bytes": sm.get("FilePmdMapped"), "rss_bytes": sm.get("Rss"),
                 "anon_bytes": sm.get("Anonymous"), "load_seconds": pr.ready.get("load_seconds"),
                 "ids": ids[label]}
            record(r)
            records.append(r)
            pr.close()
    return records


def summary(name, records, whole_ids, threads, op_bytes, out=sys.stdout):
    """Markdown: per peer, the median and quartiles of the per-segment shares; per-pair ratios;
    the first peer's per-op time and streaming rate (op_bytes: bf16 weight bytes per op)."""
    bytes_per_token_bf16 = sum(op_bytes.values())
    segs = [r for r in records if r.get("segment")]
    procs = [r for r in records if r.get("segment_process")]
    if not segs:
        return
    labels = list(dict.fromkeys(r["peer"] for r in segs))
    probes = [r["probe_before"]["best_window_gbs"] for r in segs] + [r["probe_after"]["best_window_gbs"] for r in segs]
    p = lambda x: f"{100 * x:.0f}%" if x is not None else "–"
    print(f"#### {name}: segmented roofline ({len(segs) // len(labels)} segments per peer, {segs[0]['tokens']} tokens each)\n", file=out)
    print("| peer | segments | share of best-window probe: median (quartiles) | share of median-window probe | "
          "share per on-CPU time | GB/s median | tok/s median | on-CPU / wall | mapped with 2 MiB pages | "
          "same tokens as its whole runs |", file=out)
    print("|---|---|---|---|---|---|---|---|---|---|", file=out)
    for label in labels:
        rs = [r for r in segs if r["peer"] == label]
        q1, q2, q3 = quartiles([r["share"] for r in rs])
        _, m2, _ = quartiles([r["share_median_window"] for r in rs])
        gbs = statistics.median(r["gbs"] for r in rs)
        tps = statistics.median(r["tokens"] / r["seconds"] for r in rs)
        util = quartiles([r["cpu_seconds"] / r["seconds"] / threads for r in rs if r.get("cpu_seconds")])[1]
        # The share if the threads had been on a CPU the whole segment (time taken by other
        # processes or the hypervisor taken out).
        _, oncpu, _ = quartiles([r["share"] * r["seconds"] * threads / r["cpu_seconds"] for r in rs if r.get("cpu_seconds")])
        pmd = [pr["file_pmd_mapped_bytes"] for pr in procs if pr["peer"] == label and pr.get("file_pmd_mapped_bytes") is not None]
        pmd_s = f"{min(pmd) / 1e9:.2f}–{max(pmd) / 1e9:.2f} GB" if pmd else "–"
        # Against this peer's own whole runs (same prompt, same greedy rule), and how many
        # leading tokens agree with the first peer's (a random-weight model has near-ties that
        # bf16 vs f32 accumulation order can flip, so peers may part after a few tokens).
        got = [pr["ids"] for pr in procs if pr["peer"] == label]
        want = whole_ids.get(label)
        same = "–"
        if want and got:
            n = min(len(want), min(len(g) for g in got))
            same = ("yes" if all(g[:n] == want[:n] for g in got) else "**no**") + f" (first {n})"
        ref = next((pr["ids"] for pr in procs if pr["peer"] == labels[0]), None)
        if label != labels[0] and ref and got:
            agree = min(next((i for i, (x, y) in enumerate(zip(g, ref)) if x != y), min(len(g), len(ref))) for g in got)
            same += f"; = {labels[0]} for the first {agree}"
        util_s = f"{util:.2f}" if util else "–"
        print(f"| {label} | {len(rs)} | **{p(q2)}** ({p(q1)}–{p(q3)}) | {p(m2)} | {p(oncpu)} | {gbs:.1f} | {tps:.2f} | "
              f"{util_s} | {pmd_s} | {same} |", file=out)
    pq = quartiles(probes)
    print(f"\nprobes (best 128 MiB window): median {pq[1]:.1f} GB/s, quartiles {pq[0]:.1f}–{pq[2]:.1f}, "
          f"range {min(probes):.1f}–{max(probes):.1f}; weight bytes per token (bf16) {bytes_per_token_bf16 / 1e9:.3f} GB", file=out)
    spin = max(max(r["probe_before"]["decode_cpu_ms_during"], r["probe_after"]["decode_cpu_ms_during"]) for r in segs)
    pspin = max(r["probe_cpu_ms_during_segment"] for r in segs)
    print(f"CPU used by the idle decode processes during any probe: at most {spin:.1f} ms; by the probe process "
          f"during any segment: at most {pspin:.1f} ms\n", file=out)
    # Per-pair ratios: swarmlm's segment and the other peer's segment of the same round.
    first = labels[0]
    for other in labels[1:]:
        ratios, share_ratios = [], []
        for r in segs:
            if r["peer"] != first:
                continue
            o = [x for x in segs if x["peer"] == other and x["rep"] == r["rep"] and x["round"] == r["round"]]
            if o:
                ratios.append(r["tokens"] / r["seconds"] / (o[0]["tokens"] / o[0]["seconds"]))
                share_ratios.append(r["share"] / o[0]["share"])
        if ratios:
            q = quartiles(ratios)
            qs = quartiles(share_ratios)
            print(f"{first} ÷ {other}, per round (adjacent segments): tok/s ratio median {q[1]:.2f} "
                  f"(quartiles {q[0]:.2f}–{q[2]:.2f}, {len(ratios)} pairs); share ratio median {qs[1]:.2f} "
                  f"({qs[0]:.2f}–{qs[2]:.2f})\n", file=out)
    ops = [r for r in segs if r["peer"] == first and r.get("op_seconds")]
    if ops:
        toks = sum(r["tokens"] for r in ops)
        keys = list(ops[0]["op_seconds"].keys())
        cells = []
        for k in keys:
            cell = f"{k} {1e3 * sum(r['op_seconds'][k] for r in ops) / toks:.2f} ms"
            if op_bytes.get(k, 0) > 1e7:
                # Each op's streaming rate as a share of the probes around its segment.
                _, sh, _ = quartiles([r["tokens"] * op_bytes[k] / r["op_seconds"][k] / 1e9
                                      / ((r["probe_before"]["best_window_gbs"] + r["probe_after"]["best_window_gbs"]) / 2)
                                      for r in ops if r["op_seconds"][k] > 0])
                cell += f" ({op_bytes[k] / 1e6:.0f} MB, {p(sh)} of the probe)"
            cells.append(cell)
        wall = sum(r["seconds"] for r in ops) / toks
        print(f"{first} per-op time per token over the segments (median share per segment): " + ", ".join(cells)
              + f"; segment wall {1e3 * wall:.2f} ms per token\n", file=out)


def main():
    """Re-prints the summary from raw records, pooling several runs:
    segments.py MODEL_DIR RAW.jsonl [RAW.jsonl ...] (MODEL_DIR for config.json)."""
    import argparse

    from run_peers import op_bytes

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("model_dir")
    ap.add_argument("raw", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.model_dir, "config.json")))
    name = os.path.basename(os.path.normpath(a.model_dir))
    records, whole_ids = [], {}
    for i, path in enumerate(a.raw):
        for line in open(path):
            r = json.loads(line)
            if r.get("model") != name:
                continue
            if r.get("segment") or r.get("segment_process"):
                r["rep"] += 1000 * i  # rounds pair up within one run only
                records.append(r)
            elif "generated_ids" in r:
                whole_ids.setdefault(r["peer"], r["generated_ids"])
    summary(f"{name} ({len(a.raw)} runs)", records, whole_ids, a.threads, op_bytes(cfg, 2))


if __name__ == "__main__":
    sys.dont_write_bytecode = True
    main()
