#!/usr/bin/env bash
# Convert a forged (or any HF-layout) Mixtral folder to a GGUF file for llama.cpp, with the
# converter llama.cpp itself ships (`convert_hf_to_gguf.py` in llama-cpp-python's source package).
#
#   benchmarks/make_gguf.sh HF_DIR OUT.gguf [bf16|f32|f16|q8_0]    # default bf16
#
# The converter comes from the llama-cpp-python sdist (version $LLAMA_CPP_PYTHON_VERSION, default
# 0.3.36, the one benchmarks/peers.sh builds llama.cpp from), downloaded once with pip into
# $SWARMLM_PEERS_CACHE (default ~/.cache/swarmlm-peers) and unpacked there; or point
# $LLAMA_CPP_SRC at a llama.cpp checkout. It needs python3 with torch, numpy and sentencepiece;
# the `gguf` package is taken from the vendored gguf-py next to the converter.
# An existing OUT is kept (delete it to rebuild): conversions of multi-GB models take minutes.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
HF_DIR=$1
OUT=$2
TYPE=${3:-bf16}
case "$TYPE" in
bf16 | f32 | f16 | q8_0) ;;
*)
    echo "make_gguf.sh: unknown type '$TYPE' (bf16, f32, f16 or q8_0)" >&2
    exit 2
    ;;
esac
[[ -f "$HF_DIR/config.json" ]] || {
    echo "make_gguf.sh: $HF_DIR has no config.json (not an HF model folder)" >&2
    exit 1
}
if [[ -s "$OUT" ]]; then
    echo "make_gguf.sh: $OUT exists, kept" >&2
    exit 0
fi

VER=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE=${SWARMLM_PEERS_CACHE:-$HOME/.cache/swarmlm-peers}
SRC=${LLAMA_CPP_SRC:-$CACHE/llama_cpp_python-$VER/vendor/llama.cpp}
if [[ ! -f "$SRC/convert_hf_to_gguf.py" ]]; then
    if [[ -n "${LLAMA_CPP_SRC:-}" ]]; then
        echo "make_gguf.sh: no convert_hf_to_gguf.py in LLAMA_CPP_SRC=$LLAMA_CPP_SRC" >&2
        exit 1
    fi
    mkdir -p "$CACHE"
    # Only llama-cpp-python itself as a source package; its build tools may come as wheels.
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VER" -d "$CACHE"
    tar -xzf "$CACHE/llama_cpp_python-$VER.tar.gz" -C "$CACHE"
fi

mkdir -p "$(dirname "$OUT")"
# Refuse before converting rather than fill the disk part-way: the GGUF is about the size of the
# bf16 safetensors (twice that at f32), and 2 GiB stays free for everything else.
src_bytes=$(du -cb "$HF_DIR"/*.safetensors | tail -1 | cut -f1)
case "$TYPE" in f32) need=$((src_bytes * 2)) ;; q8_0) need=$((src_bytes * 53 / 100)) ;; *) need=$src_bytes ;; esac
free=$(($(df -B1 --output=avail "$(dirname "$OUT")" | tail -1)))
if ((free < need + (2 << 30))); then
    echo "make_gguf.sh: $OUT needs about $((need >> 20)) MiB and $(dirname "$OUT") has $((free >> 20)) MiB free" \
        "(2 GiB must stay free); free some space or convert elsewhere" >&2
    exit 1
fi
TMP="$OUT.partial"
rm -f "$TMP"
echo "make_gguf.sh: $HF_DIR -> $OUT ($TYPE)" >&2
python3 "$SRC/convert_hf_to_gguf.py" "$HF_DIR" --outtype "$TYPE" --outfile "$TMP" >&2
mv "$TMP" "$OUT"
ls -l "$OUT" >&2
