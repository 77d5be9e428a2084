#!/usr/bin/env bash
# Seeding from a cold page cache: one `swarmlm seed` whose payload was just dropped from the
# page cache (so every block it uploads is read from the disk) and one `swarmlm fetch` on
# 127.0.0.1, timed from the fetch's start to its exit. Two seeder binaries are compared in the
# same run, alternating, with the same fetch binary: e.g. a build before and after a change to
# the seeder's runtime (8db2058 moved `seed` and `fetch` to a current-thread runtime; warm-cache
# transfers are measured by benchmarks/transfer.sh).
#
# Usage: SWARMLM=new/swarmlm SWARMLM_BASE=old/swarmlm benchmarks/seed_cold.sh [SIZE_MB] [RUNS]
#   SIZE_MB  payload, in 3 shards + a config (default 2040); RUNS  pairs of runs (default 3)
#   SEED_COLD_DIR  where the payload and the download go (default: a folder under /var/tmp,
#                  on disk: a tmpfs would make "cold" meaningless); deleted at the end.
set -euo pipefail
NEW=${SWARMLM:?set SWARMLM to the swarmlm binary (fetch, and the seeder under test)}
OLD=${SWARMLM_BASE:?set SWARMLM_BASE to the swarmlm binary to compare the seeder with}
SIZE_MB=${1:-2040}
RUNS=${2:-3}
W=$(mktemp -d "${SEED_COLD_DIR:-/var/tmp}/swarmlm-seed-cold.XXXXXX")
SP=""
cleanup() {
    [[ -n "$SP" ]] && kill "$SP" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

M=$W/model
mkdir -p "$M"
head -c 1500 /dev/urandom > "$M/config.json"
for i in 1 2 3; do
    head -c $((SIZE_MB / 3 * 1024 * 1024)) /dev/urandom > "$M/model-0000$i-of-00003.safetensors"
done
"$NEW" create "$M" --out "$W/model.toml" --torrent-out "$W/model.torrent" >/dev/null 2>&1
TOTAL=$(du -sb --apparent-size "$M" | cut -f1)

# Drops the payload from the page cache (the seeder keeps its files open; that is fine).
drop_cache() {
    python3 - "$M" <<'PY'
import glob, os, sys
for f in glob.glob(sys.argv[1] + "/*"):
    fd = os.open(f, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY
}

one_run() { # LABEL SEEDER_BINARY
    local log=$W/seed.log
    "$2" seed "$M" --listen 127.0.0.1:0 --no-dht --json > "$log" 2>/dev/null &
    SP=$!
    for _ in $(seq 600); do grep -q '"event":"seeding"' "$log" 2>/dev/null && break; sleep 0.1; done
    local listen
    listen=$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if "seeding" in l][0]["listen"])' "$log")
    sync
    drop_cache
    # Freed guest memory goes back to the host within seconds (free page reporting) and page
    # cache written into it costs a host fault per page: touch and free 3 GiB first so every
    # run's download lands in the same kind of memory (see BENCHMARKS.md, Swarm).
    python3 -c 'b = bytearray(3 << 30); b[::4096] = b"\x01" * len(b[::4096])'
    local t0 t1 cpu
    t0=$(date +%s.%N)
    "$NEW" fetch "$W/model.toml" --out "$W/out" --peer "$listen" --no-dht --listen 127.0.0.1:0 \
        --stall-timeout 60s --json > "$W/fetch.log" 2>&1 || { echo "fetch failed:"; tail -3 "$W/fetch.log"; exit 1; }
    t1=$(date +%s.%N)
    cpu=$(awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$SP/stat")
    kill "$SP"
    wait "$SP" 2>/dev/null || true
    SP=""
    python3 -c 'import sys; t = float(sys.argv[2]) - float(sys.argv[1]); print("%-16s %6.2f s %6.0f MB/s   seeder CPU %5.2f s (incl. its start-up check)" % (sys.argv[3], t, int(sys.argv[4]) / 1e6 / t, float(sys.argv[5])))' \
        "$t0" "$t1" "$1" "$TOTAL" "$cpu"
    rm -rf "$W/out"
    sync
}

echo "payload: $TOTAL bytes; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$RUNS"); do
    if ((r % 2)); then
        one_run "base seeder" "$OLD"
        one_run "seeder" "$NEW"
    else
        one_run "seeder" "$NEW"
        one_run "base seeder" "$OLD"
    fi
done
