#!/usr/bin/env bash
# swarmlm against llama.cpp and candle, interleaved in one run (issue 9's benchmark).
#
#   benchmarks/peers.sh                       # 3 reps, 2 threads, 64 new tokens, both models
#   REPS=5 THREADS=2 TOKENS=64 benchmarks/peers.sh
#   MODELS=small benchmarks/peers.sh          # only the small preset
#   PEERS=llama PREFILL_LEN=64 benchmarks/peers.sh   # without candle, a shorter prefill prompt
#   BIG_F32=0 benchmarks/peers.sh             # skip llama.cpp f32 on the 6.33 GB model (12.7 GB GGUF)
#   SMALL_F32=0 benchmarks/peers.sh           # skip llama.cpp f32 on the small model (1.7 GB GGUF)
#   BIG_CANDLE=1 benchmarks/peers.sh          # candle f32 on the 6.33 GB model too (~13 GB of RAM)
#   SWARMLM_BIN=.. PROBE_BIN=.. CANDLE_BIN=.. benchmarks/peers.sh   # use binaries built elsewhere
#   LLAMA_PASSIVE=1 benchmarks/peers.sh       # also llama.cpp bf16 with OMP_WAIT_POLICY=passive
#   SWARMLM_BASE_BIN=/path/to/old/swarmlm benchmarks/peers.sh   # also an older swarmlm (before/after)
#   SEGMENTS=8 SEGMENT_TOKENS=16 benchmarks/peers.sh  # segmented roofline: rounds per rep (default 8; 0 = off),
#                                             # tokens per segment (default auto: ~0.5 s, 8 on the 6.33 GB model)
#   WHOLE=0 MODELS=mixtral-8x7b-2layers benchmarks/peers.sh   # only the segmented measurement
#   SEGMENT_SLEEP=0.05 benchmarks/peers.sh    # seconds from a segment's end to the next probe
#
# What it does:
# 1. builds target/release/swarmlm and the kernels' bandwidth probe (kernel_bench) if missing,
#    the candle peer (benchmarks/peers/candle-mixtral, outside the workspace, own target dir),
#    and checks that llama-cpp-python imports; if not, it installs it from source with pip:
#      CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --no-binary llama-cpp-python "llama-cpp-python[server]==0.3.36"
# 2. forges `small` and `mixtral-8x7b --layers 2` (seed 1) into $SWARMLM_BENCH_MODELS (default
#    ~/.cache/swarmlm-peers/models; kept between runs: forging and converting take minutes) and
#    converts them to GGUF at bf16 and f32 with benchmarks/make_gguf.sh;
# 3. runs benchmarks/peers/run_peers.py: for each model and repetition, swarmlm, llama.cpp bf16,
#    llama.cpp f32 and candle in turn, each bracketed by a bandwidth probe; greedy, batch 1,
#    TOKENS new tokens after a short prompt (decode tokens/s, roofline share), then a 256-token
#    prompt (prefill tokens/s); medians and ratios against llama.cpp bf16; swarmlm's per-op decode
#    times (SWARMLM_PROFILE=1); peak RSS; load-to-first-token on the 6.33 GB model, warm cache;
# 4. the segmented roofline (benchmarks/peers/segments.py; the probes around one whole 4 s run
#    differ by up to ~50% on a VM sharing the host's memory, so its share is a ±20% figure):
#    per model and rep, swarmlm (examples/decode_serve) and each llama.cpp type
#    (llama_cpp_bench.py --serve) stay loaded and decode SEGMENTS rounds of SEGMENT_TOKENS tokens
#    each (~0.5 s), in turns, after one unmeasured warm-up segment, with a 0.1 s read probe (one
#    kernel_bench --only probe-serve process, buffer faulted in once) between every two
#    segments, 50 ms after the last one (llama.cpp's OpenMP threads spin ~10-20 ms after an
#    eval; the CPU any idle process used during a probe is recorded). Share per segment =
#    tokens x weight bytes per token / segment time / mean(probe before, probe after); the
#    report gives the median and quartiles over all segments, the per-round swarmlm ÷ peer
#    ratio, on-CPU ÷ wall time, and FilePmdMapped (weights mapped with 2 MiB pages).
# Raw records: $OUT_DIR/peers-<time>.jsonl; the markdown summary is printed (and saved next to it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-64}
REPS=${REPS:-3}
PREFILL_LEN=${PREFILL_LEN:-256}
PEERS=${PEERS:-"llama candle"}
SEGMENTS=${SEGMENTS:-8}
SEGMENT_TOKENS=${SEGMENT_TOKENS:-auto}
WHOLE=${WHOLE:-1}
LLAMA_PASSIVE=${LLAMA_PASSIVE:-0}
MODELS=${MODELS:-"small mixtral-8x7b-2layers"}
BIG_F32=${BIG_F32:-1}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
export LLAMA_CPP_PYTHON_VERSION
MODELS_DIR=${SWARMLM_BENCH_MODELS:-$HOME/.cache/swarmlm-peers/models}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT_DIR=${OUT_DIR:-$TARGET/peers}
mkdir -p "$MODELS_DIR" "$OUT_DIR"

echo "machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) CPUs visible," \
    "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)," \
    "flags: $(grep -o -w -E 'avx2|fma|f16c|avx512f|avx512bw|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# -- 1. binaries -------------------------------------------------------------------------------
BIN=${SWARMLM_BIN:-$TARGET/release/swarmlm}
if [[ ! -x "$BIN" ]]; then
    (cd "$ROOT" && cargo build --release -p swarmlm-cli)
fi
PROBE=${PROBE_BIN:-$TARGET/release/examples/kernel_bench}
if [[ ! -x "$PROBE" ]]; then
    (cd "$ROOT" && cargo build --release -p swarmlm-kernels --example kernel_bench)
fi
# Same target dir as the workspace (and the same release profile): candle-core, gemm and
# friends are then reused from the swarmlm build instead of compiled twice.
DECODE_SERVE=${DECODE_SERVE_BIN:-$TARGET/release/examples/decode_serve}
if [[ "$SEGMENTS" != 0 && ! -x "$DECODE_SERVE" ]]; then
    (cd "$ROOT" && cargo build --release -p swarmlm-engine --example decode_serve)
fi
CANDLE_TARGET=${CANDLE_TARGET_DIR:-$TARGET}
CANDLE=${CANDLE_BIN:-$CANDLE_TARGET/release/candle-mixtral-peer}
if [[ " $PEERS " == *" candle "* && ! -x "$CANDLE" ]]; then
    (cd "$ROOT/benchmarks/peers/candle-mixtral" && CARGO_TARGET_DIR=$CANDLE_TARGET cargo build --release)
fi
if [[ " $PEERS " == *" llama "* ]] && ! python3 -c "import llama_cpp" 2>/dev/null; then
    echo "llama-cpp-python is not installed: building it from source (compiles llama.cpp)" >&2
    CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=ON"} python3 -m pip install \
        --no-binary llama-cpp-python "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
fi
echo "swarmlm: $("$BIN" --version); llama-cpp-python $(python3 -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || echo -)"

# -- 2. models ---------------------------------------------------------------------------------
declare -a RUN_ARGS=()
for m in $MODELS; do
    case "$m" in
    small) forge_args=(--preset small --seed 1) ;;
    mixtral-8x7b-2layers) forge_args=(--preset mixtral-8x7b --layers 2 --seed 1) ;;
    *)
        echo "unknown model $m (small, mixtral-8x7b-2layers)" >&2
        exit 2
        ;;
    esac
    dir=$MODELS_DIR/$m
    if [[ ! -f "$dir/config.json" ]]; then
        rm -rf "$dir"
        echo "== forging $m" >&2
        "$BIN" forge "${forge_args[@]}" --out "$dir" >/dev/null
    fi
    RUN_ARGS+=(--model "$m=$dir")
    types="bf16 f32"
    if [[ ("$m" == mixtral-8x7b-2layers && "$BIG_F32" == 0) || ("$m" == small && "${SMALL_F32:-1}" == 0) ]]; then
        types="bf16"
    fi
    for t in $types; do
        [[ " $PEERS " == *" llama "* ]] || continue
        "$ROOT/benchmarks/make_gguf.sh" "$dir" "$MODELS_DIR/$m-$t.gguf" "$t"
        RUN_ARGS+=(--gguf "$m:$t=$MODELS_DIR/$m-$t.gguf")
    done
    # candle-transformers 0.11.1's Mixtral fails in bf16 on the CPU ("dtype mismatch in mul,
    # lhs: BF16, rhs: F32" in its forward), so candle runs in f32, which copies every weight
    # into memory at twice its size: only on the small model (12.7 GB for the 6.33 GB one)
    # unless BIG_CANDLE=1. CANDLE_DTYPES=bf16,f32 tries bf16 too.
    if [[ " $PEERS " == *" candle "* && ("$m" == small || "${BIG_CANDLE:-0}" == 1) ]]; then
        RUN_ARGS+=(--candle-dtype "$m=${CANDLE_DTYPES:-f32}")
    fi
done
if [[ "$LLAMA_PASSIVE" == 1 ]]; then
    RUN_ARGS+=(--llama-passive)
fi
if [[ "$SEGMENTS" != 0 ]]; then
    RUN_ARGS+=(--segments "$SEGMENTS" --segment-tokens "$SEGMENT_TOKENS" --decode-serve "$DECODE_SERVE"
        --segment-sleep "${SEGMENT_SLEEP:-0.05}")
fi
if [[ "$WHOLE" == 0 ]]; then
    RUN_ARGS+=(--no-whole)
fi
if [[ -n "${SWARMLM_BASE_BIN:-}" ]]; then
    RUN_ARGS+=(--swarmlm-base "$SWARMLM_BASE_BIN")
fi
case " $MODELS " in
*" mixtral-8x7b-2layers "*) RUN_ARGS+=(--ttft-model mixtral-8x7b-2layers) ;;
esac

# -- 3. interleaved runs -----------------------------------------------------------------------
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
python3 "$ROOT/benchmarks/peers/run_peers.py" --swarmlm "$BIN" --candle "$CANDLE" --probe "$PROBE" \
    --reps "$REPS" --tokens "$TOKENS" --threads "$THREADS" --prefill-len "$PREFILL_LEN" --raw "$OUT_DIR/peers-$STAMP.jsonl" \
    "${RUN_ARGS[@]}" | tee "$OUT_DIR/peers-$STAMP.md"
echo "raw records: $OUT_DIR/peers-$STAMP.jsonl" >&2
