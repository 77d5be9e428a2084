#!/usr/bin/env bash
# Huge-page mappings of the weights (issue 9): the same warm page cache mapped with 4 KiB pages
# (SWARMLM_HUGE_PAGES=0, MADV_NOHUGEPAGE) and with huge pages (the default, MADV_HUGEPAGE),
# interleaved, each run bracketed by the read probe. Prints the load steps, the first token, and
# decode ms/token over the first N steps (experts' first use) and the next N (steady state).
#
#   MODEL=~/.cache/swarmlm-peers/models/mixtral-8x7b-2layers REPS=3 benchmarks/hugepages.sh
#   COLD=1 benchmarks/hugepages.sh   # each side first evicts the model from the page cache and
#                                    # loads it itself (so the cache holds the folios that side
#                                    # creates), then is measured on a second, warm run
#
# How much of the model is in 2 MiB page-cache folios decides what huge mappings can do: pages
# cached by other readers in small folios stay small. Run under scripts/share/quiet.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODEL=${MODEL:-$HOME/.cache/swarmlm-peers/models/mixtral-8x7b-2layers}
REPS=${REPS:-3}
STEPS=${STEPS:-64}
cargo build --release -p swarmlm-engine --example decode_steady
cargo build --release -p swarmlm-kernels --example kernel_bench
T="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples"
probe() { SWARMLM_BENCH_PROBE_MIB=512 "$T/kernel_bench" --only probe --quick | sed -n 's/^threads 2: /probe: /p'; }
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in $(seq "$REPS"); do
    for huge in 0 1; do
        echo "## rep $rep, SWARMLM_HUGE_PAGES=$huge"
        if [[ "${COLD:-0}" == 1 ]]; then
            for f in "$MODEL"/*.safetensors; do dd if="$f" iflag=nocache count=0 status=none; done
            echo -n "cold load: "
            SWARMLM_HUGE_PAGES=$huge "$T/decode_steady" "$MODEL" "$STEPS" | sed -n 1p
        fi
        probe
        SWARMLM_HUGE_PAGES=$huge "$T/decode_steady" "$MODEL" "$STEPS"
        probe
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
