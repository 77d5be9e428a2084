#!/usr/bin/env bash
# Tokenizer load time and load to first token (issue 9), two builds interleaved rep by rep:
# `Tokenizer::from_model_dir` on MODEL (median of 11 per call, `examples/tokenizer_load`), and
# `swarmlm run MODEL --max-tokens 1 --json` with `--prompt-ids 1` and with a text `--prompt`
# (load_seconds, load + first token, whole process wall time).
#
#   OLD=dir NEW=dir MODEL=~/.cache/swarmlm-peers/models/mixtral-8x7b-2layers REPS=10 \
#       quiet benchmarks/tokenizer_load.sh
#
# OLD and NEW each hold release builds of `swarmlm` and `tokenizer_load` (copied from
# $CARGO_TARGET_DIR/release and release/examples). The model should be warm in the page cache in
# 2 MiB folios (BENCHMARKS.md, "Session 5: 2 MiB mappings"); one warm-up run per side goes first.
set -euo pipefail
MODEL=${MODEL:-$HOME/.cache/swarmlm-peers/models/mixtral-8x7b-2layers}
REPS=${REPS:-10}
PROMPT=${PROMPT:-"Hello, world! Paris est la capitale de la France."}
: "${OLD:?set OLD to a directory with the old swarmlm and tokenizer_load}"
: "${NEW:?set NEW to a directory with the new swarmlm and tokenizer_load}"
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# One line per measurement: side kind value(s).
run_once() { # side kind args...
    local side=$1 kind=$2 dir
    shift 2
    dir=$([[ $side == old ]] && echo "$OLD" || echo "$NEW")
    local t0 t1 json
    t0=$(date +%s%N)
    json=$("$dir/swarmlm" run "$MODEL" --max-tokens 1 --temperature 0 --json "$@" 2>/dev/null)
    t1=$(date +%s%N)
    python3 -c '
import json, sys
j = json.loads(sys.argv[1])
n = len(j["prompt_ids"])
first = n / j["prefill_tokens_per_s"]
print(sys.argv[2], sys.argv[3], j["load_seconds"], j["load_seconds"] + first, (int(sys.argv[5]) - int(sys.argv[4])) / 1e9, n)
' "$json" "$side" "$kind" "$t0" "$t1" >>"$OUT"
}

for side in old new; do
    run_once "$side" warmup --prompt-ids 1 >/dev/null
done
for rep in $(seq "$REPS"); do
    for side in old new; do
        dir=$([[ $side == old ]] && echo "$OLD" || echo "$NEW")
        ms=$("$dir/tokenizer_load" "$MODEL" 11 ours | sed -n 's/^Tokenizer::from_model_dir \([0-9.]*\) ms.*/\1/p')
        echo "$side tokenizer $ms" >>"$OUT"
        run_once "$side" ids --prompt-ids 1
        run_once "$side" text --prompt "$PROMPT"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(side, kind, col):
    v = [float(r[col]) for r in rows if r[0] == side and r[1] == kind]
    return statistics.median(v), min(v), max(v), len(v)
for side in ("old", "new"):
    m, lo, hi, n = med(side, "tokenizer", 2)
    print(f"{side}: Tokenizer::from_model_dir median {m:.1f} ms (calls' medians {lo:.1f}-{hi:.1f}, {n} calls x 11)")
    for kind in ("ids", "text"):
        load, _, _, n = med(side, kind, 2)
        ltft, lo, hi, _ = med(side, kind, 3)
        wall, _, _, _ = med(side, kind, 4)
        toks = next(r[5] for r in rows if r[0] == side and r[1] == kind)
        print(f"{side}: run --prompt-{'ids 1' if kind == 'ids' else 'TEXT (' + toks + ' tokens)'}: "
              f"load {load * 1e3:.0f} ms, load + first token {ltft * 1e3:.0f} ms "
              f"({lo * 1e3:.0f}-{hi * 1e3:.0f}), whole process {wall * 1e3:.0f} ms (median of {n})")
EOF
