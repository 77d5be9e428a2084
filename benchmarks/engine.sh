#!/usr/bin/env bash
# Engine throughput on forged models: prompt (prefill) and generation (decode) tokens per second
# and peak resident memory, from `swarmlm run --json`.
#
#   benchmarks/engine.sh                 # builds target/release/swarmlm if missing
#   SWARMLM_BIN=/path/to/swarmlm THREADS=4 benchmarks/engine.sh
#
# Models (forged in a temporary folder, deleted afterwards):
#   small                     hidden 1024, 4 layers, 8 experts (~0.86 GB)
#   mixtral-8x7b --layers 2   the real 8x7B layer shape, 2 layers (~6.33 GB): per-token work of
#                             a real layer, so decode tok/s here × 2/32 ≈ the full model's bound.
# Greedy decoding, 64 new tokens, a short prompt, 2 threads by default.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-64}
PROMPT=${PROMPT:-"The old lighthouse keeper climbed the stairs and looked out over the sea"}
BIN=${SWARMLM_BIN:-}
if [[ -z "$BIN" ]]; then
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/swarmlm"
    if [[ ! -x "$BIN" ]]; then
        (cd "$ROOT" && cargo build --release -p swarmlm-cli)
    fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/swarmlm-engine-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

bench() {
    local name=$1
    shift
    local dir="$WORK/$name"
    echo "== $name: forging" >&2
    "$BIN" forge "$@" --out "$dir" >/dev/null
    echo "== $name: $(du -sh "$dir" | cut -f1) on disk; running $TOKENS tokens, $THREADS threads" >&2
    "$BIN" run "$dir" --prompt "$PROMPT" --max-tokens "$TOKENS" --temperature 0 \
        --threads "$THREADS" --json >"$WORK/$name.json"
    python3 - "$name" "$WORK/$name.json" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
print(f"{name:24s} prompt {len(r['prompt_ids']):3d} tok  prefill {r['prefill_tokens_per_s']:9.1f} tok/s  "
      f"decode {r['decode_tokens_per_s']:8.2f} tok/s ({len(r['generated_ids'])} tokens, {r['stop_reason']})  "
      f"load {r['load_seconds']:.2f} s  peak RSS {r['peak_rss_bytes'] / 2**20:8.1f} MiB")
PY
    rm -rf "$dir"
}

echo "swarmlm engine benchmark: $(nproc) CPUs visible, threads=$THREADS, $("$BIN" --version)" >&2
bench small --preset small --seed 1
bench mixtral-8x7b-2layers --preset mixtral-8x7b --layers 2 --seed 1
