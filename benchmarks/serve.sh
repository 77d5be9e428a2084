#!/usr/bin/env bash
# `swarmlm serve` under load: time to first token and generated tokens per second for 1, 4 and
# 16 concurrent streaming clients on the forged `small` model, next to llama.cpp's server
# (llama-cpp-python[server]) on the same model in the same run when it is installed.
#
#   benchmarks/serve.sh                      # builds target/release/swarmlm if missing
#   SWARMLM_BIN=/path/to/swarmlm GGUF=/path/small.gguf benchmarks/serve.sh
#
# Each client streams one completion of TOKENS tokens (greedy, a short prompt) per round;
# ROUNDS rounds per concurrency level. The load generator is plain Python (http.client).
# llama.cpp needs the model as GGUF: pass GGUF=..., or set CONVERT=/path/convert_hf_to_gguf.py
# to convert the forged folder (bf16). Without llama_cpp the table has swarmlm alone.
# llama-cpp-python runs with --interrupt_requests False: by default a new request aborts the
# stream in progress, which is not a queue. It sends no usage chunk, so its tokens are counted
# as streamed chunks (one per token).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-32}
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-18080}
LPORT=${LPORT:-18081}
PYTHON=${PYTHON:-python3}
BIN=${SWARMLM_BIN:-}
if [[ -z "$BIN" ]]; then
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/swarmlm"
    if [[ ! -x "$BIN" ]]; then
        (cd "$ROOT" && cargo build --release -p swarmlm-cli)
    fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/swarmlm-serve-bench.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== forging small" >&2
"$BIN" forge --preset small --seed 1 --out "$WORK/small" >/dev/null

cat >"$WORK/load.py" <<'PY'
import http.client, json, sys, threading, time

def one(port, model, tokens, out):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"model": model, "prompt": "The old lighthouse keeper climbed the stairs",
                       "max_tokens": tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    first = None
    n = 0
    pieces = 0
    buf = b""
    while True:
        chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            data = ev.decode().removeprefix("data: ")
            if data == "[DONE]":
                continue
            v = json.loads(data)
            if v.get("choices") and v["choices"][0].get("text"):
                pieces += 1
                if first is None:
                    first = time.perf_counter() - t0
            if v.get("usage"):
                n = v["usage"]["completion_tokens"]
    # llama-cpp-python's server sends no usage chunk; it streams one chunk per token.
    out.append((first if first is not None else time.perf_counter() - t0, n or pieces, time.perf_counter() - t0))

def level(port, model, tokens, clients, rounds):
    res = []
    t0 = time.perf_counter()
    for _ in range(rounds):
        ts = [threading.Thread(target=one, args=(port, model, tokens, res)) for _ in range(clients)]
        [t.start() for t in ts]
        [t.join() for t in ts]
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in res)
    toks = sum(r[1] for r in res)
    return {"clients": clients, "requests": len(res), "tokens": toks, "wall_s": wall,
            "tok_per_s": toks / wall, "ttft_median_s": ttft[len(ttft) // 2], "ttft_max_s": ttft[-1]}

port, model, tokens, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for c in (1, 4, 16):
    print(json.dumps(level(port, model, tokens, c, rounds)), flush=True)
PY

wait_ready() {
    local port=$1
    for _ in $(seq 1 600); do
        if "$PYTHON" -c "import http.client,sys; c=http.client.HTTPConnection('127.0.0.1',$port,timeout=2); c.request('GET','/v1/models'); sys.exit(c.getresponse().status!=200)" 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    echo "server on $port did not come up" >&2
    return 1
}

peak_rss() { awk '/VmHWM/ {print $2 / 1024 " MiB"}' "/proc/$1/status" 2>/dev/null || echo "?"; }

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "== swarmlm serve (threads $THREADS, max-concurrent 1, FIFO queue)" >&2
"$BIN" serve "$WORK/small" --port "$PORT" --no-seed --threads "$THREADS" >"$WORK/swarmlm.log" 2>&1 &
PIDS+=($!)
SPID=$!
wait_ready "$PORT"
"$PYTHON" "$WORK/load.py" "$PORT" small "$TOKENS" "$ROUNDS" | sed 's/^/swarmlm /'
echo "swarmlm peak RSS $(peak_rss "$SPID")"
kill "$SPID"; wait "$SPID" 2>/dev/null || true

if ! "$PYTHON" -c "import llama_cpp.server" 2>/dev/null; then
    echo "llama.cpp: llama_cpp (llama-cpp-python[server]) is not installed for $PYTHON; swarmlm alone"
    exit 0
fi
if [[ -z "${GGUF:-}" ]]; then
    if [[ -z "${CONVERT:-}" ]]; then
        echo "llama.cpp: no GGUF=... and no CONVERT=convert_hf_to_gguf.py given; swarmlm alone"
        exit 0
    fi
    "$PYTHON" "$CONVERT" "$WORK/small" --outtype bf16 --outfile "$WORK/small.gguf" >&2
    GGUF="$WORK/small.gguf"
fi
echo "== llama.cpp server (llama-cpp-python, $THREADS threads)" >&2
"$PYTHON" -m llama_cpp.server --model "$GGUF" --model_alias small --host 127.0.0.1 --port "$LPORT" \
    --n_threads "$THREADS" --n_ctx 2048 --interrupt_requests False >"$WORK/llama.log" 2>&1 &
PIDS+=($!)
LPID=$!
wait_ready "$LPORT"
"$PYTHON" "$WORK/load.py" "$LPORT" small "$TOKENS" "$ROUNDS" | sed 's/^/llama.cpp /'
echo "llama.cpp peak RSS $(peak_rss "$LPID")"
