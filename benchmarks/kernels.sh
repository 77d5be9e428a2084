#!/usr/bin/env bash
# Kernel roofline benchmark: memory read-bandwidth probe, then bf16 matvec and the fused expert
# FFN at the Mixtral-8x7B expert shape (14336 x 4096 bf16, 117 MB per matrix: far larger than
# any cache), in GB/s of weights streamed and as % of the probed bandwidth, per ISA path and
# thread count; plus pool dispatch latency and a prefill matmul figure.
#
#   benchmarks/kernels.sh             # full run (10 reps per figure), ~1.5 GiB of RAM
#   benchmarks/kernels.sh --quick     # 4 reps
#   SWARMLM_KERNELS_ISA=scalar benchmarks/kernels.sh   # force the auto-chosen path (A/B)
#   SWARMLM_BENCH_PROBE_MIB=2048 benchmarks/kernels.sh # bigger probe buffer
#
# The machines are shared: load from other jobs lowers every number; compare ratios from the
# same run (matvec GB/s vs probe GB/s), and prefer runs at a low load average (printed below).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
echo "machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) CPUs visible," \
    "flags: $(grep -o -w -E 'avx2|fma|f16c|avx512f|avx512bw|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo build --release -p swarmlm-kernels --example kernel_bench
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/kernel_bench"
"$BIN" "$@"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
