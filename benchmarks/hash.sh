#!/usr/bin/env bash
# Hashing throughput of `swarmlm create` (one read pass: SHA-256 per file + SHA-1 pieces, two
# threads) and `swarmlm verify` (SHA-256, files in parallel), against coreutils `sha256sum` and
# `sha1sum` on the same files with a warm page cache. Ratios are what compare across runs.
#
# usage: benchmarks/hash.sh [MODEL_DIR]
#   MODEL_DIR  folder to hash (default: 2 GiB of random data in 4 files, in a temp folder)
#   SWARMLM    path of the binary (default: target/release/swarmlm, built if missing)
#   RUNS       repetitions, best time kept (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
BIN=${SWARMLM:-${CARGO_TARGET_DIR:-target}/release/swarmlm}
if [[ ! -x "$BIN" ]]; then
    cargo build --release -p swarmlm-cli >&2
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
DIR=${1:-}
if [[ -z "$DIR" ]]; then
    DIR="$WORK/bench-model"
    mkdir -p "$DIR"
    echo "generating 2 GiB of random files in $DIR" >&2
    for i in 1 2 3 4; do
        head -c 512M /dev/urandom > "$DIR/model-0000$i-of-00004.safetensors"
    done
fi
mapfile -t FILES < <(find -L "$DIR" -type f -not -path '*/.swarmlm/*' | sort)
BYTES=$(cat "${FILES[@]}" | wc -c)
cat "${FILES[@]}" > /dev/null # warm the page cache

now() { date +%s.%N; }
# best_of CMD...: the smallest wall time over $RUNS runs, in seconds.
best_of() {
    local best="" t0 t1 t
    for _ in $(seq "$RUNS"); do
        t0=$(now)
        "$@" > /dev/null 2>&1
        t1=$(now)
        t=$(echo "$t1 - $t0" | bc -l)
        if [[ -z "$best" ]] || (( $(echo "$t < $best" | bc -l) )); then best=$t; fi
    done
    echo "$best"
}
mbps() { echo "scale=0; $BYTES / $1 / 1000000" | bc -l; }

create_once() {
    rm -f "$WORK/b.toml" "$WORK/b.torrent"
    "$BIN" create "$DIR" --name bench --format hf-safetensors \
        --out "$WORK/b.toml" --torrent-out "$WORK/b.torrent"
}
verify_once() { "$BIN" verify "$DIR" --manifest "$WORK/b.toml"; }

t_sha256=$(best_of sha256sum "${FILES[@]}")
t_sha1=$(best_of sha1sum "${FILES[@]}")
t_create=$(best_of create_once)
create_once
t_verify=$(best_of verify_once)
rm -rf "$DIR/.swarmlm"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "data: ${#FILES[@]} files, $BYTES bytes, warm page cache, best of $RUNS"
printf '%-34s %8s s %7s MB/s\n' "sha256sum (1 core)" "$t_sha256" "$(mbps "$t_sha256")"
printf '%-34s %8s s %7s MB/s\n' "sha1sum (1 core)" "$t_sha1" "$(mbps "$t_sha1")"
printf '%-34s %8s s %7s MB/s\n' "swarmlm create (sha256+sha1)" "$t_create" "$(mbps "$t_create")"
printf '%-34s %8s s %7s MB/s\n' "swarmlm verify (sha256)" "$t_verify" "$(mbps "$t_verify")"
echo "create / sha256sum throughput: $(echo "scale=2; $t_sha256 / $t_create" | bc -l)x (target >= 0.9: two digests on two cores)"
echo "verify / sha256sum throughput: $(echo "scale=2; $t_sha256 / $t_verify" | bc -l)x (files hashed in parallel)"
