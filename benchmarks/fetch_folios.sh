#!/usr/bin/env bash
# Page-cache folios after `swarmlm fetch` and `swarmlm verify` (issue 9): a loopback seed ->
# fetch of MODEL's files (symlinked, so nothing big is copied), then the folio sizes of its
# largest file (benchmarks/page_cache_folios.py, root), and two runs of examples/decode_steady,
# which reports how much of the weights it mapped with 2 MiB pages. Each repetition once
# fetch -> run, once fetch -> verify -> run. Everything on 127.0.0.1, DHT off.
#
#   MODEL=~/.cache/swarmlm-peers/models/small REPS=2 quiet benchmarks/fetch_folios.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${MODEL:-$HOME/.cache/swarmlm-peers/models/small}
REPS=${REPS:-2}
(cd "$ROOT" && cargo build --release -p swarmlm-cli && cargo build --release -p swarmlm-engine --example decode_steady)
R="${CARGO_TARGET_DIR:-$ROOT/target}/release"
B=$R/swarmlm D=$R/examples/decode_steady FOLIOS=$ROOT/benchmarks/page_cache_folios.py
WORK=$(mktemp -d "${WORK_PARENT:-/tmp}/swarmlm-folios.XXXXXX")
SP=
cleanup() { [[ -n $SP ]] && kill "$SP" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
cd "$WORK"
export SWARMLM_HOME=$WORK/home
mkdir -p src/m/.swarmlm home
for f in "$MODEL"/*; do ln -s "$f" src/m/; done
$B create src/m -q --out src/m/.swarmlm/manifest.toml --torrent-out src/m/.swarmlm/model.torrent >/dev/null
$B seed src/m --listen 127.0.0.1:0 --no-dht --json > seed.log 2>seed.err &
SP=$!
for _ in $(seq 240); do grep -q '"listen"' seed.log && break; sleep 0.5; done
LISTEN=$(grep -o '"listen":"[^"]*"' seed.log | head -1 | cut -d'"' -f4)
[[ -n $LISTEN ]] || { echo "seeder did not start: $(cat seed.err)" >&2; exit 1; }
W=dst/m/$(cd "$MODEL" && ls -S ./*.safetensors | head -1)
now() { date +%s.%N; }
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in $(seq "$REPS"); do
    for then in run verify; do
        rm -rf dst; sync
        s=$(now); $B fetch src/m/.swarmlm/model.torrent --out dst/m --peer "$LISTEN" --no-dht \
            --listen 127.0.0.1:0 --stall-timeout 60s -q
        printf "rep %s, fetch -> %s: fetch %.2f s\n  after fetch: " "$rep" "$then" "$(echo "$(now)-$s" | bc)"
        python3 "$FOLIOS" "$W"
        if [[ $then == verify ]]; then
            s=$(now); $B verify dst/m -q >/dev/null
            printf "  verify %.2f s; after verify: " "$(echo "$(now)-$s" | bc)"
            python3 "$FOLIOS" "$W"
        fi
        for run in 1 2; do
            s=$(now); echo -n "  run $run: "; $D dst/m 32 | tr '\n' ' '
            printf "(wall %.2f s)\n" "$(echo "$(now)-$s" | bc)"
        done
        echo -n "  after the runs: "; python3 "$FOLIOS" "$W"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
