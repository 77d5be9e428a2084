#!/usr/bin/env bash
# Loopback transfer of a ~2 GB model, one seeder and one leecher, warm page cache, three
# pairs measured the same way (wall time of the leecher process, start to exit):
#   swarmlm seed -> swarmlm fetch   (by manifest, --peer; SHA-256 of every file included)
#   rqbit -> rqbit                  (the rqbit CLI built from its crate; RQBIT=/path/to/rqbit;
#                                    the seeder is `rqbit download --overwrite` on the data)
#   aria2c -> aria2c                (through a loopback opentracker: aria2c cannot be given a
#                                    peer by hand)
# Each seeder is started once; its leecher runs RUNS times into a fresh folder, deleted after
# each run. Everything stays on 127.0.0.1 with DHT, LSD and UPnP off.
#
# Usage: benchmarks/transfer.sh [SIZE_MB]      (default 2048)
#   RUNS=3        leecher runs per pair
#   RQBIT=path    the rqbit CLI (skipped when unset)
#   SWARMLM=path  the swarmlm binary (default: a release build, built here)
# Needs: aria2c, opentracker, python3 (writes the torrent).
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

mbps() { python3 -c "print(f'{$1/$2/1e6:.0f}')"; }
now() { date +%s.%N; }
RUNS=${RUNS:-3}
exec 3>&1 # time_leech's report, whatever its leecher's stdout is sent to
# time_leech NAME OUTDIR CMD...: runs the leecher, checks one shard, prints and records seconds.
declare -A TIMES
time_leech() {
    local name=$1 out=$2; shift 2
    rm -rf "$out"
    local t0 t1 s
    t0=$(now)
    "$@"
    t1=$(now)
    s=$(python3 -c "print(f'{$t1-$t0:.2f}')")
    local got
    got=$(find "$out" -name model-00002-of-00003.safetensors | head -1)
    cmp "$MODEL/model-00002-of-00003.safetensors" "$got"
    rm -rf "$out"
    TIMES[$name]="${TIMES[$name]:-} $s"
    echo "$name: $TOTAL bytes in ${s}s = $(mbps "$TOTAL" "$s") MB/s" >&3
}

echo "== starting seeders" >&2
"$SWARMLM" seed "$MODEL" --listen 127.0.0.1:0 --no-dht --json > "$WORK/seed.log" 2>/dev/null &
PIDS+=($!)
for _ in $(seq 600); do grep -q '"event":"seeding"' "$WORK/seed.log" && break; sleep 0.1; done
LISTEN=$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if "seeding" in l][0]["listen"])' "$WORK/seed.log")

RQ_COMMON=(--disable-dht --disable-dht-persistence --disable-upnp-port-forward --disable-lsd
    --disable-trackers --listen-ip 127.0.0.1 -v error)
if [[ -n "${RQBIT:-}" ]]; then
    RQ_PORT=$(free_port); RQ_API=$(free_port)
    "$RQBIT" "${RQ_COMMON[@]}" --listen-port "$RQ_PORT" --http-api-listen-addr "127.0.0.1:$RQ_API" \
        download --overwrite -o "$WORK/seed" "$WORK/bench.torrent" >/dev/null 2>&1 &
    PIDS+=($!)
    # Seeding starts once its check of the data is done.
    python3 - "$RQ_API" <<'PY'
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
fi

ARIA_COMMON=(--enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=false
    --interface=127.0.0.1 --disable-ipv6=true --file-allocation=none --summary-interval=0 --console-log-level=error)
aria2c "$WORK/bench.torrent" --dir="$WORK/seed" --seed-ratio=0.0 --bt-seed-unverified=true --check-integrity=false \
    --listen-port="$(free_port)" "${ARIA_COMMON[@]}" >/dev/null 2>&1 &
PIDS+=($!)
sleep 3

for run in $(seq "$RUNS"); do
    echo "== run $run of $RUNS" >&2
    time_leech swarmlm "$WORK/swarmlm-out" \
        "$SWARMLM" fetch "$WORK/bench.toml" --out "$WORK/swarmlm-out" --peer "$LISTEN" --no-dht \
        --listen 127.0.0.1:0 --json > "$WORK/fetch-$run.log"
    python3 - "$WORK/fetch-$run.log" <<'PY'
import json, sys
done = [json.loads(l) for l in open(sys.argv[1])][-1]
print("  (swarmlm fetch in-process: %.2fs)" % done["elapsed_secs"])
PY
    if [[ -n "${RQBIT:-}" ]]; then
        time_leech rqbit "$WORK/rqbit-out" \
            "$RQBIT" "${RQ_COMMON[@]}" download --disable-http-api --exit-on-finish \
            --initial-peers "127.0.0.1:$RQ_PORT" -o "$WORK/rqbit-out" "$WORK/bench.torrent" >/dev/null 2>&1
    fi
    if [[ -n "${RQBIT:-}" && -n "${CROSS:-}" ]]; then
        # Mixed pairs: which side (seeder or leecher) sets the pace.
        time_leech "swarmlm-seed>rqbit" "$WORK/rqbit-out" \
            "$RQBIT" "${RQ_COMMON[@]}" download --disable-http-api --exit-on-finish \
            --initial-peers "$LISTEN" -o "$WORK/rqbit-out" "$WORK/bench.torrent" >/dev/null 2>&1
        time_leech "rqbit-seed>swarmlm" "$WORK/swarmlm-out" \
            "$SWARMLM" fetch "$WORK/bench.toml" --out "$WORK/swarmlm-out" --peer "127.0.0.1:$RQ_PORT" \
            --no-dht --listen 127.0.0.1:0 --json > /dev/null
    fi
    time_leech aria2c "$WORK/aria-out" \
        aria2c "$WORK/bench.torrent" --dir="$WORK/aria-out" --seed-time=0 --bt-tracker-interval=1 \
        --listen-port="$(free_port)" "${ARIA_COMMON[@]}" >/dev/null
done

echo "== summary: $TOTAL bytes, $RUNS runs; ratio = swarmlm / peer, of the medians"
ARGS=(); for k in "${!TIMES[@]}"; do ARGS+=("$k=${TIMES[$k]}"); done
python3 - "$TOTAL" "${ARGS[@]}" <<'PY'
import statistics, sys
total = int(sys.argv[1])
rows = {}
for arg in sys.argv[2:]:
    name, ts = arg.split("=", 1)
    ts = [float(t) for t in ts.split()]
    rows[name] = (statistics.median(ts), min(ts), ts)
for name in sorted(rows, key=lambda n: (n not in ("swarmlm", "rqbit", "aria2c"), n)):
    med, best, ts = rows[name]
    print(f"{name:20} median {total/med/1e6:5.0f} MB/s  best {total/best/1e6:5.0f} MB/s  seconds {ts}")
sw = rows["swarmlm"][0]
for name in ("rqbit", "aria2c"):
    if name in rows:
        print(f"swarmlm / {name}: {rows[name][0]/sw:.2f}x")
PY
