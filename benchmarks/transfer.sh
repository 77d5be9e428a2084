#!/usr/bin/env bash
# Loopback transfer of a ~2 GB model, one seeder and one leecher, warm page cache:
# `swarmlm seed` → `swarmlm fetch`, against aria2c → aria2c (through a loopback opentracker,
# since aria2c cannot be given a peer by hand) and, if RQBIT=/path/to/rqbit is set, the rqbit
# CLI leeching from `swarmlm seed`. Everything stays on 127.0.0.1 with DHT off.
#
# Usage: benchmarks/transfer.sh [SIZE_MB]      (default 2048)
# Needs: aria2c, opentracker, python3 (writes the torrent), a release build of swarmlm
#        (built here with cargo unless SWARMLM=/path/to/swarmlm is given).
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
cat "$MODEL"/* > /dev/null   # warm page cache

echo "$INFO_HASH" > "$WORK/whitelist"; chmod 644 "$WORK/whitelist"
OT_USER=(); [[ $(id -u) == 0 ]] && OT_USER=(-u nobody)
# -w is relative to -d: as root opentracker chroots there before reading the list.
opentracker -i 127.0.0.1 -p "$TRACKER_PORT" -P "$TRACKER_PORT" -d "$WORK" -w whitelist "${OT_USER[@]}" >/dev/null 2>&1 &
PIDS+=($!)

mbps() { python3 -c "print(f'{$1/$2/1e6:.0f}')"; }
now() { date +%s.%N; }

echo "== 1. swarmlm seed -> swarmlm fetch" >&2
"$SWARMLM" seed "$MODEL" --listen 127.0.0.1:0 --no-dht --json > "$WORK/seed.log" 2>/dev/null &
SEED_PID=$!; PIDS+=($SEED_PID)
for _ in $(seq 600); do grep -q '"event":"seeding"' "$WORK/seed.log" && break; sleep 0.1; done
LISTEN=$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if "seeding" in l][0]["listen"])' "$WORK/seed.log")
T0=$(now)
"$SWARMLM" fetch "$WORK/bench.toml" --out "$WORK/swarmlm-out" --peer "$LISTEN" --no-dht --listen 127.0.0.1:0 --json > "$WORK/fetch.log"
T1=$(now)
SWARMLM_S=$(python3 -c "print($T1-$T0)")
cmp "$MODEL/model-00002-of-00003.safetensors" "$WORK/swarmlm-out/model-00002-of-00003.safetensors"
echo "swarmlm fetch: $TOTAL bytes in ${SWARMLM_S}s = $(mbps "$TOTAL" "$SWARMLM_S") MB/s (verified, SHA-256 included)"

if [[ -n "${RQBIT:-}" ]]; then
    echo "== 1b. swarmlm seed -> rqbit CLI" >&2
    T0=$(now)
    "$RQBIT" --disable-dht --disable-dht-persistence --disable-upnp-port-forward --disable-lsd \
        download --exit-on-finish --initial-peers "$LISTEN" -o "$WORK/rqbit-out" "$WORK/bench.torrent" >/dev/null 2>&1 || true
    T1=$(now)
    RQ_S=$(python3 -c "print($T1-$T0)")
    echo "rqbit download: $TOTAL bytes in ${RQ_S}s = $(mbps "$TOTAL" "$RQ_S") MB/s"
fi
kill "$SEED_PID"; wait "$SEED_PID" 2>/dev/null || true

echo "== 2. aria2c seed -> aria2c (peers via the loopback tracker)" >&2
ARIA_COMMON=(--enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=false
    --interface=127.0.0.1 --disable-ipv6=true --file-allocation=none --summary-interval=0 --console-log-level=error)
aria2c "$WORK/bench.torrent" --dir="$WORK/seed" --seed-ratio=0.0 --bt-seed-unverified=true --check-integrity=false \
    --listen-port="$(free_port)" "${ARIA_COMMON[@]}" >/dev/null 2>&1 &
PIDS+=($!)
sleep 3
T0=$(now)
aria2c "$WORK/bench.torrent" --dir="$WORK/aria-out" --seed-time=0 --bt-tracker-interval=1 \
    --listen-port="$(free_port)" "${ARIA_COMMON[@]}" >/dev/null
T1=$(now)
ARIA_S=$(python3 -c "print($T1-$T0)")
cmp "$MODEL/model-00002-of-00003.safetensors" "$WORK/aria-out/bench-model/model-00002-of-00003.safetensors"
echo "aria2c: $TOTAL bytes in ${ARIA_S}s = $(mbps "$TOTAL" "$ARIA_S") MB/s (SHA-1 pieces only)"
echo "ratio swarmlm/aria2c: $(python3 -c "print(f'{$ARIA_S/$SWARMLM_S:.2f}')")"
