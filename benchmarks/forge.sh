#!/usr/bin/env bash
# Forge speed against the disk: `swarmlm forge --preset mixtral-8x7b --layers 2` (6.33 GB, the
# real 8x7B layer shape) timed with /usr/bin/time -v (elapsed, peak RSS), then `dd` writing the
# same number of bytes from /dev/zero with conv=fdatasync in the same folder, buffered and
# with oflag=direct (forge writes its shards with direct I/O where the filesystem allows). All
# end on disk (forge fsyncs every file itself; a final `sync` is included in its time for
# fairness), so the ratio forge/dd says how close forge comes to disk speed.
#
#   benchmarks/forge.sh                   # builds target/release/swarmlm if missing
#   SWARMLM_BIN=/path/to/swarmlm TMPDIR=/mnt/fast benchmarks/forge.sh
#   LAYERS=4 benchmarks/forge.sh          # a bigger cut
#
# Everything is written under a temporary folder that is deleted afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LAYERS=${LAYERS:-2}
BIN=${SWARMLM_BIN:-}
if [[ -z "$BIN" ]]; then
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/swarmlm"
    if [[ ! -x "$BIN" ]]; then
        (cd "$ROOT" && cargo build --release -p swarmlm-cli)
    fi
fi

# About 2.9 GB per layer plus 0.6 GB of embeddings and head; one copy exists at a time.
NEED_KB=$(((LAYERS * 2900 + 600) * 1000 + 500000))
FREE_KB=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print $4}')
if ((FREE_KB < NEED_KB)); then
    echo "not enough free space in ${TMPDIR:-/tmp}: $((FREE_KB / 1000000)) GB free, need $((NEED_KB / 1000000)) GB" >&2
    exit 1
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/swarmlm-forge-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Value of one field of `/usr/bin/time -v` output.
field() { grep -F "$1" "$2" | head -1 | sed 's/.*: //'; }
# "h:mm:ss" or "m:ss.ss" → seconds.
secs() { awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.2f", s }' <<<"$1"; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), folder $WORK ($(df -h "$WORK" | awk 'NR==2 {print $1}'))"
echo "binary:  $BIN"
sync

/usr/bin/time -v -o "$WORK/forge.time" sh -c \
    '"$1" forge --preset mixtral-8x7b --layers "$2" --out "$3" --json > "$4" && sync' \
    sh "$BIN" "$LAYERS" "$WORK/model" "$WORK/forge.json"
BYTES=$(sed -n 's/^  "total_bytes": \([0-9]*\),\{0,1\}$/\1/p' "$WORK/forge.json")
FILES=$(ls "$WORK/model" | wc -l)
FORGE_S=$(secs "$(field 'Elapsed (wall clock)' "$WORK/forge.time")")
FORGE_RSS=$(field 'Maximum resident set size' "$WORK/forge.time")
FORGE_CPU=$(field 'Percent of CPU' "$WORK/forge.time")
ls "$WORK/model"/*.partial >/dev/null 2>&1 && { echo "leftover .partial files" >&2; exit 1; }
rm -rf "$WORK/model"
sync

# Same bytes, rounded up to whole 16 MiB blocks.
BLOCK=$((16 * 1024 * 1024))
COUNT=$(((BYTES + BLOCK - 1) / BLOCK))
/usr/bin/time -v -o "$WORK/dd.time" dd if=/dev/zero of="$WORK/dd.bin" bs=16M count="$COUNT" \
    conv=fdatasync status=none
DD_BYTES=$((COUNT * BLOCK))
DD_S=$(secs "$(field 'Elapsed (wall clock)' "$WORK/dd.time")")
rm -f "$WORK/dd.bin"
sync
# The same with direct I/O (no page-cache copy), as forge writes its shards where it can.
/usr/bin/time -v -o "$WORK/ddd.time" dd if=/dev/zero of="$WORK/dd.bin" bs=16M count="$COUNT" \
    oflag=direct conv=fdatasync status=none
DDD_S=$(secs "$(field 'Elapsed (wall clock)' "$WORK/ddd.time")")
rm -f "$WORK/dd.bin"

awk -v b="$BYTES" -v fs="$FORGE_S" -v rss="$FORGE_RSS" -v cpu="$FORGE_CPU" -v files="$FILES" \
    -v db="$DD_BYTES" -v ds="$DD_S" -v dds="$DDD_S" -v layers="$LAYERS" 'BEGIN {
    printf "forge mixtral-8x7b --layers %d: %d files, %.3f GB in %.2f s = %.0f MB/s, peak RSS %.1f MB, CPU %s\n",
        layers, files, b / 1e9, fs, b / 1e6 / fs, rss / 1024, cpu
    printf "dd bs=16M conv=fdatasync:        %.3f GB in %.2f s = %.0f MB/s\n", db / 1e9, ds, db / 1e6 / ds
    printf "dd bs=16M oflag=direct:           %.3f GB in %.2f s = %.0f MB/s\n", db / 1e9, dds, db / 1e6 / dds
    printf "forge / dd throughput:            %.2f (buffered dd), %.2f (direct dd)\n", (b / fs) / (db / ds), (b / fs) / (db / dds)
}'
