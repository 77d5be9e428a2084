#!/usr/bin/env bash
# Expert pager under a hard memory limit: a model 3x larger than the memory it may use.
#
#   sudo benchmarks/pager.sh                       # case 1: builds target/release/swarmlm if missing
#   LIMIT=2G BUDGET=1400MiB TOKENS=16 sudo -E benchmarks/pager.sh   # the same, spelled out
#   LAYERS=8 LIMIT=4G BUDGET=2816MiB sudo -E benchmarks/pager.sh   # case 2: ~23 GB in 4 GiB
#   ROUNDS=3 POLICIES=layer-lru:lookahead ...       # 3 rounds, swarmlm and llama.cpp interleaved
#   MODEL=/path/to/forged KEEP=1 ...               # reuse a forged folder (never deleted)
#   GGUF=/path/model.gguf ...                      # also run llama.cpp (llama-cpp-python) as peer
#   SEQUENTIAL=1 RESULTS=/var/tmp/case2 LAYERS=8 SEED=1 LIMIT=4G BUDGET=3024MiB STAGE=... benchmarks/pager.sh
#                                                  # tight disk: one model file set at a time
#
# Forges `mixtral-8x7b --layers $LAYERS` (2 layers: 6.33 GB, the real 8x7B layer shape) into a
# temporary folder,
# reads its shards with `dd iflag=direct` (the disk's raw speed), runs greedy decoding once with
# no limit (the reference output), then again inside a memory cgroup (cgroup v2 memory.max, or
# v1 memory.limit_in_bytes) of LIMIT with `--memory-budget BUDGET`, after dropping the model's
# pages from the page cache. The page cache is charged to the cgroup, so the run only fits if
# the pager keeps the experts it does not need out of memory. Reported per run: decode tok/s,
# bytes read from disk per token (/proc/<pid>/io read_bytes and the pager's own count), expert
# hits and misses, the cgroup's peak memory and OOM kills, and whether the generated ids equal
# the unlimited run's. With ROUNDS=N the limited runs (each policy, then llama.cpp) repeat N times
# in turn, so disk speed drifting during the run hits both alike; each round's ratio to llama.cpp
# is from that round, and the medians are printed at the end. The model and all outputs are
# deleted at the end (KEEP=1 keeps them).
#
# SEQUENTIAL=1 is for a disk that cannot hold the forged folder and its GGUF at once (case 2,
# ~23.7 GB each). Stages, each a separate invocation (STAGE=name) so that forging can run apart
# from the timed runs, or all in order (STAGE=all, the default); everything lands in RESULTS:
#   forge-hf    forge the HF folder (RESULTS/model)
#   swarmlm     dd it, the unlimited run, the cgroup runs of POLICIES (ROUNDS times); delete it
#   forge-gguf  forge the same model directly as a bf16 GGUF (`forge --format gguf`: the bytes
#               llama.cpp's converter would write from the folder; RESULTS/model.gguf)
#   llama       dd it, llama.cpp unlimited (its reference ids), then in the cgroup (ROUNDS times);
#               delete it
#   report      the table (each stage's dd and load are its own; "x llama" pairs round r of
#               both stages, which ran minutes apart)
# Each measuring stage refuses to start with less than MIN_FREE_GB (default 5) left on the disk
# beyond its model, and deletes the model when done (KEEP=1 keeps it).
#
# Defaults are BENCHMARKS.md's case 1: 2 GiB limit, 1400 MiB budget (4 experts of 336 MiB: one
# token's working set on 2 layers), 16 tokens.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LIMIT=${LIMIT:-2G}
BUDGET=${BUDGET:-1400MiB}
ROUNDS=${ROUNDS:-1}
TOKENS=${TOKENS:-16}
THREADS=${THREADS:-2}
PROMPT_IDS=${PROMPT_IDS:-1,415,2187,302,4843,349}
POLICIES=${POLICIES:-"layer-freq:lookahead layer-lru:lookahead lru:off"}
LAYERS=${LAYERS:-2}
GGUF=${GGUF:-}
LLAMA_BENCH=${LLAMA_BENCH:-$ROOT/benchmarks/peers/llama_cpp_bench.py}
BIN=${SWARMLM_BIN:-}
if [[ -z "$BIN" ]]; then
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/swarmlm"
    if [[ ! -x "$BIN" ]]; then
        (cd "$ROOT" && cargo build --release -p swarmlm-cli)
    fi
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "pager.sh: needs root to create a memory cgroup" >&2
    exit 2
fi

SEQUENTIAL=${SEQUENTIAL:-0}
STAGE=${STAGE:-all}
if [[ $SEQUENTIAL == 1 ]]; then
    WORK=${RESULTS:?SEQUENTIAL=1 needs RESULTS=<folder for the models and the results>}
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d "${WORKDIR:-/var/tmp}/swarmlm-pager-bench.XXXXXX")
fi
CG=""
cleanup() {
    if [[ -n "$CG" && -d "$CG" ]]; then
        # Move ourselves out first (v2 needs an empty group to remove it).
        rmdir "$CG" 2>/dev/null || true
    fi
    # Sequential results stay (later stages read them); a stage deletes its own model.
    if [[ "${KEEP:-0}" != 1 && $SEQUENTIAL != 1 ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

forge_args=(--preset mixtral-8x7b --layers "$LAYERS" --seed "${SEED:-0}")
if [[ $SEQUENTIAL == 1 ]]; then
    MODEL="$WORK/model"
    GGUF="$WORK/model.gguf"
elif [[ -n "${MODEL:-}" && -f "${MODEL}/config.json" ]]; then
    echo "== reusing $MODEL" >&2
    # The report names the model by its layer count: take it from the folder, not the default.
    LAYERS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$MODEL/config.json")
else
    MODEL="$WORK/mixtral-${LAYERS}l"
    echo "== forging mixtral-8x7b --layers $LAYERS into $MODEL" >&2
    "$BIN" forge "${forge_args[@]}" --out "$MODEL" >/dev/null
    sync
fi

# The report needs the model's shape and size after a sequential stage deleted it.
remember_model() {
    cp "$MODEL/config.json" "$WORK/config.json"
    du -cb "$MODEL"/*.safetensors | tail -1 | cut -f1 >"$WORK/shard_bytes"
}
# The block device holding WORK or the model, for its busy time (/sys/block/DEV/stat io_ticks).
DEV_OF=$(if [[ -e "$MODEL" ]]; then echo "$MODEL"; else echo "$WORK"; fi)
DEV=$(lsblk -no PKNAME "$(df --output=source "$DEV_OF" | tail -1)" 2>/dev/null || true)
[[ -n "$DEV" ]] || DEV=$(basename "$(df --output=source "$DEV_OF" | tail -1)")
io_ticks() { awk '{print $10}' "/sys/block/$DEV/stat" 2>/dev/null || echo 0; }

# The model files present now (the folder's shards and/or the GGUF).
model_files() {
    local f
    for f in "$MODEL"/*.safetensors ${GGUF:+"$GGUF"}; do
        [[ -f "$f" ]] && echo "$f"
    done
    return 0
}

drop_model_cache() {
    # GNU dd: nocache with count=0 asks the kernel to drop the whole file from the page cache.
    local f
    while read -r f; do
        dd if="$f" iflag=nocache count=0 status=none
    done < <(model_files)
}

# measure_dd TAG FILE...: read FILEs with direct I/O (the disk's raw speed), MB/s into
# $WORK/dd.TAG and $DD_MBPS; the load average and machine into $WORK/load.TAG.
measure_dd() {
    local tag=$1
    shift
    echo "== $(du -shc "$@" | tail -1 | cut -f1) on disk; $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    cut -d' ' -f1-3 /proc/loadavg >"$WORK/load.$tag"
    echo "== dd iflag=direct (raw read speed of the model files)" >&2
    drop_model_cache
    local bytes=0 t0 t1 f
    t0=$(date +%s.%N)
    for f in "$@"; do
        dd if="$f" of=/dev/null bs=16M iflag=direct status=none
        bytes=$((bytes + $(stat -c %s "$f")))
    done
    t1=$(date +%s.%N)
    DD_MBPS=$(python3 -c "print(f'{$bytes/($t1-$t0)/1e6:.0f}')")
    echo "$DD_MBPS" >"$WORK/dd.$tag"
    echo "dd iflag=direct: $bytes bytes at $DD_MBPS MB/s" >&2
}

# need_free BYTES: refuse to go on unless BYTES plus MIN_FREE_GB stay free where WORK is.
need_free() {
    local free
    free=$(($(df -B1 --output=avail "$WORK" | tail -1)))
    if ((free < $1 + ${MIN_FREE_GB:-5} * 1000000000)); then
        echo "pager.sh: $(($1 / 1000000)) MB needed in $WORK, $((free / 1000000)) MB free; ${MIN_FREE_GB:-5} GB must stay free" >&2
        exit 1
    fi
}

# run NAME CGROUP-LIMIT(or "") EXTRA-ARGS...: one `swarmlm run`, its JSON in $WORK/NAME.json,
# its /proc/<pid>/io read_bytes in $WORK/NAME.io and stats table in $WORK/NAME.stats.
run() {
    local name=$1 limit=$2
    shift 2
    drop_model_cache
    local cmd
    if [[ "$name" == llama.cpp* ]]; then
        cmd=(python3 "$LLAMA_BENCH" "$GGUF" --prompt-ids "$PROMPT_IDS" --max-tokens "$TOKENS"
            --threads "$THREADS")
    else
        cmd=("$BIN" run "$MODEL" --prompt-ids "$PROMPT_IDS" --max-tokens "$TOKENS"
            --temperature 0 --threads "$THREADS" --json "$@")
    fi
    local t0 ticks0
    t0=$(date +%s.%N)
    ticks0=$(io_ticks)
    if [[ -z "$limit" ]]; then
        "${cmd[@]}" >"$WORK/$name.json" 2>"$WORK/$name.stats" &
    else
        CG=$(make_cgroup "$limit")
        # The child joins the cgroup before exec, so every page it touches is charged there.
        bash -c 'echo $$ > "$1/cgroup.procs" 2>/dev/null || echo $$ > "$1/tasks"; shift; exec "$@"' \
            _ "$CG" "${cmd[@]}" >"$WORK/$name.json" 2>"$WORK/$name.stats" &
    fi
    local pid=$! rb=0
    # A timeline (seconds, read_bytes, device io_ticks) to judge the decode phase on its own.
    : >"$WORK/$name.tl"
    while kill -0 "$pid" 2>/dev/null; do
        rb=$(awk '/^read_bytes/ {print $2}' "/proc/$pid/io" 2>/dev/null || echo "$rb")
        echo "$(date +%s.%N) $rb $(io_ticks)" >>"$WORK/$name.tl"
        sleep 0.2
    done
    local rc=0
    wait "$pid" || rc=$?
    echo "$rb" >"$WORK/$name.io"
    python3 -c "print(($(io_ticks) - $ticks0) / 1e3 / ($(date +%s.%N) - $t0))" >"$WORK/$name.busy"
    local oom=0 peak=0
    if [[ -n "$limit" ]]; then
        oom=$(cg_oom_kills "$CG")
        peak=$(cg_peak "$CG")
        rmdir "$CG"
        CG=""
    fi
    echo "$rc $oom $peak" >"$WORK/$name.rc"
}

make_cgroup() {
    local limit=$1 dir
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        dir=/sys/fs/cgroup/swarmlm-pager-$$
        grep -qw memory /sys/fs/cgroup/cgroup.subtree_control ||
            echo +memory >/sys/fs/cgroup/cgroup.subtree_control
        mkdir "$dir"
        echo "$limit" >"$dir/memory.max"
        echo 0 >"$dir/memory.swap.max" 2>/dev/null || true
    else
        dir=/sys/fs/cgroup/memory/swarmlm-pager-$$
        mkdir "$dir"
        echo "$limit" >"$dir/memory.limit_in_bytes"
    fi
    echo "$dir"
}
cg_oom_kills() {
    if [[ -f "$1/memory.events" ]]; then
        awk '/^oom_kill / {print $2}' "$1/memory.events"
    else
        awk '/^oom_kill / {print $2}' "$1/memory.oom_control" 2>/dev/null || echo "?"
    fi
}
cg_peak() {
    cat "$1/memory.peak" 2>/dev/null || cat "$1/memory.max_usage_in_bytes" 2>/dev/null || echo 0
}

LLAMA=0
llama_ok() {
    python3 -c "import llama_cpp" 2>/dev/null && [[ -f "$LLAMA_BENCH" ]]
}
if [[ -n "$GGUF" && $SEQUENTIAL != 1 ]]; then
    if llama_ok && [[ -f "$GGUF" ]]; then
        LLAMA=1
    else
        echo "== llama.cpp skipped: needs python3 -c 'import llama_cpp', $LLAMA_BENCH and $GGUF" >&2
    fi
fi

# The swarmlm runs: the unlimited reference, then each policy in the cgroup, ROUNDS times (with
# llama.cpp after each round when LLAMA=1).
swarmlm_runs() {
    echo "== unlimited run (reference output)" >&2
    run unlimited ""
    if [[ $LLAMA == 1 ]]; then
        echo "== llama.cpp (mmap, kernel paging), unlimited (its reference output)" >&2
        run llama.cpp-unlimited ""
    fi
    for ((r = 1; r <= ROUNDS; r++)); do
        sfx=""
        [[ $ROUNDS == 1 ]] || sfx="-r$r"
        for pp in $POLICIES; do
            policy=${pp%%:*}
            prefetch=${pp##*:}
            name="budget-$policy-$prefetch$sfx"
            echo "== $LIMIT cgroup, --memory-budget $BUDGET, policy $policy, prefetch $prefetch$sfx" >&2
            run "$name" "$LIMIT" --memory-budget "$BUDGET" --pager-policy "$policy" --prefetch "$prefetch" --stats
            sed -n '/expert pager/,$p' "$WORK/$name.stats" >&2 || true
        done
        if [[ $LLAMA == 1 ]]; then
            echo "== llama.cpp (mmap, kernel paging) in the $LIMIT cgroup$sfx" >&2
            run "llama.cpp-cgroup$sfx" "$LIMIT"
        fi
    done
}

# Sequential llama.cpp stage: its unlimited reference, then the cgroup runs.
llama_runs() {
    echo "== llama.cpp (mmap, kernel paging), unlimited (its reference output)" >&2
    run llama.cpp-unlimited ""
    for ((r = 1; r <= ROUNDS; r++)); do
        sfx=""
        [[ $ROUNDS == 1 ]] || sfx="-r$r"
        echo "== llama.cpp (mmap, kernel paging) in the $LIMIT cgroup$sfx" >&2
        run "llama.cpp-cgroup$sfx" "$LIMIT"
    done
}

# The forged size of the model, from a dry plan: the layers' bytes plus embeddings and head.
model_bytes() {
    python3 -c "
h, i, v, L = 4096, 14336, 32000, $LAYERS
print(L * (8 * 3 * h * i + 2 * (h * h + 1024 * h) + 8 * h + 2 * h) * 2 + 2 * v * h * 2)"
}

if [[ $SEQUENTIAL != 1 ]]; then
    measure_dd all "$MODEL"/*.safetensors
    remember_model
    swarmlm_runs
else
    case "$STAGE" in
    all | forge-hf | swarmlm | forge-gguf | llama | report) ;;
    *)
        echo "pager.sh: unknown STAGE '$STAGE' (all, forge-hf, swarmlm, forge-gguf, llama, report)" >&2
        exit 2
        ;;
    esac
    if [[ $STAGE == all || $STAGE == forge-hf ]] && [[ ! -f "$MODEL/config.json" ]]; then
        rm -rf "$MODEL"
        need_free "$(model_bytes)"
        echo "== forging mixtral-8x7b --layers $LAYERS into $MODEL" >&2
        "$BIN" forge "${forge_args[@]}" --out "$MODEL" >&2
        sync
    fi
    if [[ $STAGE == all || $STAGE == swarmlm ]]; then
        [[ -f "$MODEL/config.json" ]] || {
            echo "pager.sh: no forged folder in $MODEL (run STAGE=forge-hf first)" >&2
            exit 1
        }
        need_free 0
        remember_model
        mapfile -t DD_FILES < <(model_files)
        measure_dd swarmlm "${DD_FILES[@]}"
        GGUF_SAVED=$GGUF
        GGUF=""
        swarmlm_runs
        GGUF=$GGUF_SAVED
        [[ "${KEEP:-0}" == 1 ]] || rm -rf "$MODEL"
    fi
    if [[ $STAGE == all || $STAGE == forge-gguf ]] && [[ ! -f "$GGUF" ]]; then
        # Only one big model at a time: the folder goes before the GGUF comes.
        [[ "${KEEP:-0}" == 1 ]] || rm -rf "$MODEL"
        need_free "$(model_bytes)"
        echo "== forging mixtral-8x7b --layers $LAYERS as GGUF into $GGUF" >&2
        "$BIN" forge "${forge_args[@]}" --format gguf --out "$GGUF" >&2
        sync
    fi
    if [[ $STAGE == all || $STAGE == llama ]]; then
        [[ -f "$GGUF" ]] || {
            echo "pager.sh: no GGUF at $GGUF (run STAGE=forge-gguf first)" >&2
            exit 1
        }
        llama_ok || {
            echo "pager.sh: llama.cpp needs python3 -c 'import llama_cpp' and $LLAMA_BENCH" >&2
            exit 1
        }
        need_free 0
        SAVED_MODEL=$MODEL
        MODEL=/nonexistent
        measure_dd llama "$GGUF"
        llama_runs
        MODEL=$SAVED_MODEL
        [[ "${KEEP:-0}" == 1 ]] || rm -f "$GGUF"
    fi
    if [[ $STAGE != all && $STAGE != report ]]; then
        exit 0
    fi
    [[ -f "$WORK/config.json" ]] || {
        echo "pager.sh: no results in $WORK (run STAGE=swarmlm first)" >&2
        exit 1
    }
fi

python3 - "$WORK" "$TOKENS" "$LIMIT" "$BUDGET" <<'PY'
import json, os, re, statistics, sys
work, tokens, limit, budget = sys.argv[1:5]
tokens = int(tokens)
cfg = json.load(open(f"{work}/config.json"))
layers = cfg["num_hidden_layers"]
expert = 3 * cfg["hidden_size"] * cfg["intermediate_size"] * 2
# Non-expert weights are read once at load; the efficiency ratio compares the rest with misses.
shards = int(open(f"{work}/shard_bytes").read())
def read(name):
    return open(f"{work}/{name}").read().strip() if os.path.exists(f"{work}/{name}") else None
# Sequential stages measured dd (and load) each on their own files.
def dd_of(run):
    tag = "llama" if run.startswith("llama.cpp") else "swarmlm"
    return float(read(f"dd.{tag}") or read("dd.all"))
dd = " / ".join(f"{t} {read('dd.' + t)}" for t in ("all", "swarmlm", "llama") if read("dd." + t))
loads = " / ".join(f"{t} {read('load.' + t)}" for t in ("all", "swarmlm", "llama") if read("load." + t))
non_expert = shards - cfg["num_hidden_layers"] * cfg["num_local_experts"] * expert
def load(name):
    rc, oom, peak = open(f"{work}/{name}.rc").read().split()
    try:
        j = json.load(open(f"{work}/{name}.json"))
    except Exception:
        j = None
    busy = float(open(f"{work}/{name}.busy").read().strip() or 0)
    return j, int(rc), oom, int(peak), int(open(f"{work}/{name}.io").read().strip() or 0), busy
def decode_window(name, j):
    # The decode phase is the last (tokens - 1) / decode_tokens_per_s seconds before the
    # process exits; read MB/s and device busy over the timeline samples inside it.
    tl = [tuple(map(float, l.split())) for l in open(f"{work}/{name}.tl") if len(l.split()) == 3]
    if j is None or len(tl) < 2 or not j.get("decode_tokens_per_s"):
        return None, None
    secs = (len(j["generated_ids"]) - 1) / j["decode_tokens_per_s"]
    end = tl[-1]
    start = next((s for s in tl if s[0] >= end[0] - secs), tl[0])
    dt = end[0] - start[0]
    if dt < 0.5:
        return None, None
    return (end[1] - start[1]) / dt / 1e6, (end[2] - start[2]) / 1e3 / dt
refs = {}
for r in ("unlimited", "llama.cpp-unlimited"):
    if os.path.exists(f"{work}/{r}.json"):
        refs[r] = load(r)[0]
names = ["unlimited"] + sorted(n[:-5] for n in os.listdir(work)
                               if n.endswith(".json") and n != "unlimited.json"
                               and os.path.exists(f"{work}/{n[:-5]}.rc"))
print(f"mixtral-8x7b --layers {layers}, {tokens} greedy tokens; dd iflag=direct MB/s: {dd}; load: {loads}; "
      f"cgroup memory {limit}, --memory-budget {budget}; expert {expert/1e6:.0f} MB, "
      f"non-expert {non_expert/1e6:.0f} MB (read once; disk MB/tok counts it)")
print(f"{'run':<31} {'rc':>3} {'oom':>4} {'decode tok/s':>12} {'x llama':>7} {'disk MB/tok':>11} "
      f"{'disk/(miss*exp)':>15} {'hits':>6} {'misses':>6} {'hit%':>5} {'disk busy':>9} "
      f"{'dec MB/s':>8} {'dec/dd':>6} {'dec busy':>8} {'cg peak MB':>10} {'same ids':>8}")
def round_of(n):
    m = re.search(r"-r(\d+)$", n)
    return m.group(1) if m else ""
# llama.cpp's decode tok/s in the cgroup, per round (the ratio is taken within a round).
llama = {}
for n in names:
    if n.startswith("llama.cpp-cgroup"):
        j = load(n)[0]
        if j is not None:
            llama[round_of(n)] = j["decode_tokens_per_s"]
per_config = {}
for n in names:
    j, rc, oom, peak, rb, busy = load(n)
    if j is None:
        print(f"{n:<28} {rc:>3} {oom:>4}  (no output)")
        continue
    ntok = max(1, len(j["generated_ids"]))
    # llama.cpp is compared with its own unlimited run (its bf16 arithmetic differs from ours).
    ref = refs.get("llama.cpp-unlimited" if n.startswith("llama.cpp") else "unlimited")
    same = j["generated_ids"] == ref["generated_ids"] if ref else False
    hits, misses = j.get("expert_hits"), j.get("expert_misses")
    ratio = f"{(rb - non_expert) / (misses * expert):.3f}" if misses else "-"
    hr = f"{100 * hits / (hits + misses):.1f}" if hits is not None and hits + misses else "-"
    dmbs, dbusy = decode_window(n, j)
    dmbs_s = f"{dmbs:.0f}" if dmbs is not None else "-"
    ddr = f"{dmbs / dd_of(n):.2f}" if dmbs is not None else "-"
    dbusy_s = f"{100 * dbusy:.0f}%" if dbusy is not None else "-"
    tps = j["decode_tokens_per_s"]
    peer = llama.get(round_of(n)) if n.startswith("budget-") else None
    xl = f"{tps / peer:.2f}" if peer else "-"
    if n.startswith("budget-") or n.startswith("llama.cpp-cgroup"):
        c = per_config.setdefault(re.sub(r"-r\d+$", "", n), {"tps": [], "x": [], "busy": []})
        c["tps"].append(tps)
        if peer:
            c["x"].append(tps / peer)
        if dbusy is not None:
            c["busy"].append(dbusy)
    print(f"{n:<31} {rc:>3} {oom:>4} {tps:>12.3f} {xl:>7} {rb/ntok/1e6:>11.1f} "
          f"{ratio:>15} {str(hits if hits is not None else '-'):>6} "
          f"{str(misses if misses is not None else '-'):>6} {hr:>5} {100*busy:>8.0f}% "
          f"{dmbs_s:>8} {ddr:>6} {dbusy_s:>8} {peak/1e6:>10.0f} {str(same):>8}")
rounds = max((len(c["tps"]) for c in per_config.values()), default=0)
if rounds > 1:
    print(f"medians over {rounds} rounds (ratio to llama.cpp taken within each round):")
    for n, c in per_config.items():
        x = f"{statistics.median(c['x']):.2f} ({min(c['x']):.2f}-{max(c['x']):.2f})" if c["x"] else "-"
        b = f"{100 * statistics.median(c['busy']):.0f}%" if c["busy"] else "-"
        print(f"  {n:<28} decode tok/s {statistics.median(c['tps']):.3f} "
              f"({min(c['tps']):.3f}-{max(c['tps']):.3f}), x llama.cpp {x}, decode busy {b}")
PY
