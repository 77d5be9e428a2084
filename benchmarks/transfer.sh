#!/usr/bin/env bash
# Loopback transfer of a ~2 GB model, one seeder and one leecher, warm page cache. Pairs
# (wall time of the leecher process, start to exit):
#   swarmlm          swarmlm seed -> swarmlm fetch by manifest (--peer; BEP 9 metadata first,
#                    SHA-256 of every file included)
#   swarmlm-torrent  the same fetch given the .torrent (what rqbit and aria2c are given)
#   rqbit            the rqbit CLI, default runtime (RQBIT=/path/to/rqbit; the seeder is
#                    `rqbit download --overwrite` on the data)
#   rqbit-st         the rqbit CLI with --single-thread-runtime on both sides (RQBIT_ST=1)
#   aria2c           through a loopback opentracker (aria2c cannot be given a peer by hand)
#   swarmlm-seed>rqbit, rqbit-seed>swarmlm   mixed pairs (CROSS=1)
# Each seeder is started once. Before every timed run, whatever the client: the previous
# output is deleted and `sync`ed away, PRIME_MB of memory is touched and freed, and the
# payload is read again. The priming matters in a VM with free page reporting (as here):
# page cache that lands on guest memory the host has reclaimed costs a host fault per page
# (2 GB written into it: 3.6 s, against 0.7 s into memory just freed), so without it the
# first client of a run, or any run after a pause, is slower for reasons of its own. The
# pair order rotates from run to run. Each line reports the CPU seconds of the leecher
# (user+sys), of its seeder, and of everything else on the machine in that window (kernel
# softirq work of loopback TCP included): a large "other" means the run was disturbed.
# Everything stays on 127.0.0.1 with DHT, LSD and UPnP off.
#
# Usage: benchmarks/transfer.sh [SIZE_MB]      (default 2048)
#   RUNS=5        timed runs per pair
#   RQBIT=path    the rqbit CLI (its pairs skipped when unset); RQBIT_ST=1 adds rqbit-st
#   CROSS=1       adds the mixed pairs
#   PRIME_MB=3072 memory touched and freed before each run (0: none)
#   SWARMLM=path  the swarmlm binary (default: a release build, built here)
# Needs: aria2c, opentracker, python3 (writes the torrent), /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB=${1:-2048}
WORK=$(mktemp -d /tmp/swarmlm-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -z "${SWARMLM:-}" ]]; then
    cargo build --release -p swarmlm-cli >&2
    SWARMLM="${CARGO_TARGET_DIR:-target}/release/swarmlm"
fi
command -v aria2c >/dev/null && command -v opentracker >/dev/null || {
    echo "needs aria2c and opentracker: apt-get install -y aria2 opentracker" >&2
    exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
TRACKER_PORT=$(free_port)
ANNOUNCE="http://127.0.0.1:$TRACKER_PORT/announce"

echo "== payload: ${SIZE_MB} MB of random weights in 3 shards + a config" >&2
MODEL="$WORK/seed/bench-model"
mkdir -p "$MODEL/.swarmlm"
head -c 1500 /dev/urandom > "$MODEL/config.json"
SHARD_MB=$((SIZE_MB / 3))
for i in 1 2 3; do
    head -c $((SHARD_MB * 1024 * 1024)) /dev/urandom > "$MODEL/model-0000$i-of-00003.safetensors"
done

echo "== torrent + manifest (4 MiB pieces)" >&2
INFO_HASH=$(python3 - "$MODEL" "$ANNOUNCE" <<'EOF'
import hashlib, os, sys
model, announce = sys.argv[1], sys.argv[2]
name = os.path.basename(model)
files = sorted(f for f in os.listdir(model) if not f.startswith("."))
pl = 4 << 20
def enc(v):
    if isinstance(v, int): return b"i%de" % v
    if isinstance(v, str): v = v.encode()
    if isinstance(v, bytes): return b"%d:%s" % (len(v), v)
    if isinstance(v, list): return b"l" + b"".join(enc(x) for x in v) + b"e"
    return b"d" + b"".join(enc(k) + enc(v[k]) for k in sorted(v)) + b"e"
pieces, buf, entries, shas = [], b"", [], []
for f in files:
    h = hashlib.sha256()
    with open(os.path.join(model, f), "rb") as fh:
        while True:
            chunk = fh.read(pl)
            if not chunk: break
            h.update(chunk)
            buf += chunk
            while len(buf) >= pl:
                pieces.append(hashlib.sha1(buf[:pl]).digest()); buf = buf[pl:]
    size = os.path.getsize(os.path.join(model, f))
    entries.append({"length": size, "path": [f]}); shas.append((f, size, h.hexdigest()))
if buf: pieces.append(hashlib.sha1(buf).digest())
info = {"files": entries, "name": name, "piece length": pl, "pieces": b"".join(pieces)}
ih = hashlib.sha1(enc(info)).hexdigest()
torrent = enc({"announce": announce, "info": info})
for p in (os.path.join(model, ".swarmlm", "model.torrent"), os.path.join(model, "..", "..", "bench.torrent")):
    open(p, "wb").write(torrent)
magnet = "magnet:?xt=urn:btih:%s&dn=%s" % (ih, name)
m = ['name = "%s"' % name, 'description = "benchmark payload"', 'license = ""', 'source = ""',
     'format = "hf-safetensors"', 'magnet = "%s"' % magnet, "piece_length = %d" % pl,
     "total_size = %d" % sum(s for _, s, _ in shas)]
for f, s, h in shas:
    m += ["", "[[files]]", 'path = "%s"' % f, "size = %d" % s, 'sha256 = "%s"' % h]
text = "\n".join(m) + "\n"
open(os.path.join(model, ".swarmlm", "manifest.toml"), "w").write(text)
open(os.path.join(model, "..", "..", "bench.toml"), "w").write(text)
print(ih)
EOF
)
TOTAL=$(du -cb "$MODEL"/*.json "$MODEL"/*.safetensors | tail -1 | cut -f1)
sync                         # write the payload back now, not during the first timed run
cat "$MODEL"/* > /dev/null   # warm page cache

echo "$INFO_HASH" > "$WORK/whitelist"; chmod 644 "$WORK/whitelist"
OT_USER=(); [[ $(id -u) == 0 ]] && OT_USER=(-u nobody)
# -w is relative to -d: as root opentracker chroots there before reading the list.
opentracker -i 127.0.0.1 -p "$TRACKER_PORT" -P "$TRACKER_PORT" -d "$WORK" -w whitelist "${OT_USER[@]}" >/dev/null 2>&1 &
PIDS+=($!)

echo "== starting seeders" >&2
"$SWARMLM" seed "$MODEL" --listen 127.0.0.1:0 --no-dht --json > "$WORK/seed.log" 2>/dev/null &
PIDS+=($!)
SW_PID=$!
for _ in $(seq 600); do grep -q '"event":"seeding"' "$WORK/seed.log" && break; sleep 0.1; done
LISTEN=$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if "seeding" in l][0]["listen"])' "$WORK/seed.log")

# rqbit_ready API_PORT: waits until that rqbit seeder has checked its data and is seeding.
rqbit_ready() {
    python3 - "$1" <<'PY'
import json, sys, time, urllib.request
for _ in range(1200):
    try:
        s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/torrents/0/stats/v1"))
        if s.get("finished") and s.get("state") == "live":
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.25)
sys.exit("rqbit seeder did not finish checking its data")
PY
}

RQ_COMMON=(--disable-dht --disable-dht-persistence --disable-upnp-port-forward --disable-lsd
    --disable-trackers --listen-ip 127.0.0.1 -v error)
if [[ -n "${RQBIT:-}" ]]; then
    RQ_PORT=$(free_port); RQ_API=$(free_port)
    "$RQBIT" "${RQ_COMMON[@]}" --listen-port "$RQ_PORT" --http-api-listen-addr "127.0.0.1:$RQ_API" \
        download --overwrite -o "$WORK/seed" "$WORK/bench.torrent" >/dev/null 2>&1 &
    PIDS+=($!)
    RQ_PID=$!
    rqbit_ready "$RQ_API"
fi

if [[ -n "${RQBIT:-}" && -n "${RQBIT_ST:-}" ]]; then
    RQS_PORT=$(free_port); RQS_API=$(free_port)
    "$RQBIT" --single-thread-runtime "${RQ_COMMON[@]}" --listen-port "$RQS_PORT" \
        --http-api-listen-addr "127.0.0.1:$RQS_API" \
        download --overwrite -o "$WORK/seed" "$WORK/bench.torrent" >/dev/null 2>&1 &
    PIDS+=($!)
    RQS_PID=$!
    rqbit_ready "$RQS_API"
fi

ARIA_COMMON=(--enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=false
    --interface=127.0.0.1 --disable-ipv6=true --file-allocation=none --summary-interval=0 --console-log-level=error)
aria2c "$WORK/bench.torrent" --dir="$WORK/seed" --seed-ratio=0.0 --bt-seed-unverified=true --check-integrity=false \
    --listen-port="$(free_port)" "${ARIA_COMMON[@]}" >/dev/null 2>&1 &
PIDS+=($!)
AR_PID=$!
sleep 3

PAIRS=(swarmlm swarmlm-torrent)
[[ -n "${RQBIT:-}" ]] && PAIRS+=(rqbit)
[[ -n "${RQBIT:-}" && -n "${RQBIT_ST:-}" ]] && PAIRS+=(rqbit-st)
PAIRS+=(aria2c)
[[ -n "${RQBIT:-}" && -n "${CROSS:-}" ]] && PAIRS+=("swarmlm-seed>rqbit" "rqbit-seed>swarmlm")

# pair_cmd PAIR OUT: sets SEEDER (pid) and CMD (the leecher) for one pair.
pair_cmd() {
    local out=$2
    local sw_fetch=("$SWARMLM" fetch --out "$out" --no-dht --listen 127.0.0.1:0 --json)
    local rq_dl=(download --disable-http-api --exit-on-finish -o "$out" "$WORK/bench.torrent")
    case $1 in
    swarmlm) SEEDER=$SW_PID; CMD=("${sw_fetch[@]}" --peer "$LISTEN" "$WORK/bench.toml") ;;
    swarmlm-torrent) SEEDER=$SW_PID; CMD=("${sw_fetch[@]}" --peer "$LISTEN" "$WORK/bench.torrent") ;;
    rqbit) SEEDER=$RQ_PID; CMD=("$RQBIT" "${RQ_COMMON[@]}" "${rq_dl[@]}" --initial-peers "127.0.0.1:$RQ_PORT") ;;
    rqbit-st) SEEDER=$RQS_PID
        CMD=("$RQBIT" --single-thread-runtime "${RQ_COMMON[@]}" "${rq_dl[@]}" --initial-peers "127.0.0.1:$RQS_PORT") ;;
    aria2c) SEEDER=$AR_PID
        CMD=(aria2c "$WORK/bench.torrent" --dir="$out" --seed-time=0 --bt-tracker-interval=1
            --listen-port="$(free_port)" "${ARIA_COMMON[@]}") ;;
    "swarmlm-seed>rqbit") SEEDER=$SW_PID; CMD=("$RQBIT" "${RQ_COMMON[@]}" "${rq_dl[@]}" --initial-peers "$LISTEN") ;;
    "rqbit-seed>swarmlm") SEEDER=$RQ_PID; CMD=("${sw_fetch[@]}" --peer "127.0.0.1:$RQ_PORT" "$WORK/bench.toml") ;;
    esac
}

proc_cpu() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }       # utime+stime, s
busy_cpu() { awk '/^cpu /{printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / 100; exit}' /proc/stat; }
PRIME_MB=${PRIME_MB:-3072}
RUNS=${RUNS:-5}
RESULTS="$WORK/results.tsv"
: > "$RESULTS"
OUT="$WORK/out"
for run in $(seq "$RUNS"); do
    echo "== run $run of $RUNS ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
    n=${#PAIRS[@]}
    for i in $(seq 0 $((n - 1))); do
        pair=${PAIRS[$(((i + run - 1) % n))]}
        rm -rf "$OUT"
        sync
        if [[ $PRIME_MB -gt 0 ]]; then
            python3 -c "b = bytearray($PRIME_MB << 20); b[::4096] = b'\x01' * len(b[::4096])"
        fi
        cat "$MODEL"/* > /dev/null
        pair_cmd "$pair" "$OUT"
        s0=$(proc_cpu "$SEEDER"); b0=$(busy_cpu); t0=$(date +%s.%N)
        /usr/bin/time -f "%U %S" -o "$WORK/time.txt" "${CMD[@]}" > "$WORK/leech.log" 2>&1
        t1=$(date +%s.%N); b1=$(busy_cpu); s1=$(proc_cpu "$SEEDER")
        got=$(find "$OUT" -name model-00002-of-00003.safetensors | head -1)
        cmp "$MODEL/model-00002-of-00003.safetensors" "$got"
        read -r lu ls < "$WORK/time.txt"
        python3 - "$pair" "$run" "$TOTAL" "$t0" "$t1" "$lu" "$ls" "$s0" "$s1" "$b0" "$b1" "$RESULTS" <<'PY'
import sys
pair, run, total, t0, t1, lu, ls, s0, s1, b0, b1, out = sys.argv[1:]
secs = float(t1) - float(t0)
leech, seed = float(lu) + float(ls), float(s1) - float(s0)
other = float(b1) - float(b0) - leech - seed
print(f"  {pair:20} {secs:6.2f} s {int(total) / secs / 1e6:5.0f} MB/s   cpu: leecher {leech:5.2f} s"
      f" (user {float(lu):.2f}), seeder {seed:5.2f} s, other {other:5.2f} s")
open(out, "a").write(f"{pair}\t{run}\t{secs:.3f}\t{leech:.2f}\t{seed:.2f}\t{other:.2f}\n")
PY
    done
done
rm -rf "$OUT"

echo "== summary: $TOTAL bytes, $RUNS runs, load $(cut -d' ' -f1-3 /proc/loadavg); ratio = swarmlm / peer"
python3 - "$TOTAL" "$RESULTS" "${PAIRS[@]}" <<'PY'
import statistics, sys
total, path, pairs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
rows = {}
for line in open(path):
    pair, run, secs, leech, seed, other = line.split("\t")
    rows.setdefault(pair, {})[int(run)] = (float(secs), float(leech), float(seed))
def mbs(s): return total / s / 1e6
for p in pairs:
    r = rows[p]
    ts = [r[k][0] for k in sorted(r)]
    med = statistics.median(ts)
    print(f"{p:20} median {mbs(med):5.0f} MB/s  runs {' '.join(f'{mbs(t):.0f}' for t in ts)} MB/s"
          f"  median cpu: leecher {statistics.median(v[1] for v in r.values()):.2f} s,"
          f" seeder {statistics.median(v[2] for v in r.values()):.2f} s")
for me in ("swarmlm", "swarmlm-torrent"):
    for peer in ("rqbit", "rqbit-st", "aria2c"):
        if peer not in rows:
            continue
        a, b = rows[me], rows[peer]
        per_run = [b[k][0] / a[k][0] for k in sorted(a) if k in b]
        med = statistics.median(v[0] for v in b.values()) / statistics.median(v[0] for v in a.values())
        print(f"{me} / {peer}: {med:.2f}x of the medians; per run "
              + " ".join(f"{x:.2f}" for x in per_run))
PY
