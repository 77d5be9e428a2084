#!/usr/bin/env python3
"""Writes the swarmlm-weights test fixtures: one small forged Mixtral in both of its shapes,
plus hostile and broken `.pth` files.

    python3 scripts/make_pth_fixtures.py [OUT_DIR]   # default crates/swarmlm-weights/tests/fixtures

Needs torch and safetensors (pip install torch safetensors). Deterministic for a given torch
version (fixed seed); the committed outputs were made with the versions recorded in
OUT_DIR/README.md.

Outputs:
  tiny-hf/   config.json + model.safetensors   hub names, q/k rows in HF half-split order
  tiny-pth/  params.json + consolidated.00.pth Mistral names, q/k rows in the ORIGINAL
             interleaved order (inverse of the HF conversion's permutation)
  hostile-reduce/  a .pth whose pickle calls os.system via __reduce__ (must be refused)
  hostile-global/  a .pth holding an nn.Parameter (global torch._utils._rebuild_parameter)
  truncated/       tiny-pth's archive cut short (no end-of-central-directory record)
"""

import collections
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

SEED = 20231211  # Mixtral 8x7B's release week
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 64, 2, 4, 2, 16
INTER, EXPERTS, TOPK, VOCAB = 128, 4, 2, 256

HF_CONFIG = {
    "architectures": ["MixtralForCausalLM"],
    "model_type": "mixtral",
    "hidden_size": HIDDEN,
    "intermediate_size": INTER,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "num_local_experts": EXPERTS,
    "num_experts_per_tok": TOPK,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "vocab_size": VOCAB,
    "max_position_embeddings": 32768,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}

# Mixtral 8x7B's params.json has no rope_theta (1e6 is implied); leave it out here too.
PARAMS = {
    "dim": HIDDEN,
    "n_layers": LAYERS,
    "head_dim": HEAD_DIM,
    "hidden_dim": INTER,
    "n_heads": HEADS,
    "n_kv_heads": KV_HEADS,
    "norm_eps": 1e-05,
    "vocab_size": VOCAB,
    "moe": {"num_experts_per_tok": TOPK, "num_experts": EXPERTS},
}


def hf_tensors(gen):
    """All tensors with hub names and shapes, bf16, HF (half-split) q/k row order."""
    out = collections.OrderedDict()

    def rnd(*shape, scale=0.05):
        return (torch.randn(*shape, generator=gen) * scale).to(torch.bfloat16)

    out["model.embed_tokens.weight"] = rnd(VOCAB, HIDDEN, scale=1.0)
    for l in range(LAYERS):
        p = f"model.layers.{l}"
        out[f"{p}.input_layernorm.weight"] = (1.0 + rnd(HIDDEN, scale=0.1).float()).to(torch.bfloat16)
        out[f"{p}.self_attn.q_proj.weight"] = rnd(HEADS * HEAD_DIM, HIDDEN)
        out[f"{p}.self_attn.k_proj.weight"] = rnd(KV_HEADS * HEAD_DIM, HIDDEN)
        out[f"{p}.self_attn.v_proj.weight"] = rnd(KV_HEADS * HEAD_DIM, HIDDEN)
        out[f"{p}.self_attn.o_proj.weight"] = rnd(HIDDEN, HEADS * HEAD_DIM)
        out[f"{p}.post_attention_layernorm.weight"] = (1.0 + rnd(HIDDEN, scale=0.1).float()).to(torch.bfloat16)
        out[f"{p}.block_sparse_moe.gate.weight"] = rnd(EXPERTS, HIDDEN)
        for e in range(EXPERTS):
            x = f"{p}.block_sparse_moe.experts.{e}"
            out[f"{x}.w1.weight"] = rnd(INTER, HIDDEN)
            out[f"{x}.w2.weight"] = rnd(HIDDEN, INTER)
            out[f"{x}.w3.weight"] = rnd(INTER, HIDDEN)
    out["model.norm.weight"] = (1.0 + rnd(HIDDEN, scale=0.1).float()).to(torch.bfloat16)
    out["lm_head.weight"] = rnd(VOCAB, HIDDEN)
    return out


def hf_to_original_rows(w, n_heads):
    """Inverse of the HF conversion's permute: HF row (h, j*d/2 + i) = original row (h, 2i + j)."""
    d = w.shape[0] // n_heads
    # HF layout viewed as (h, j, i, in); original is (h, i, j, in).
    return w.reshape(n_heads, 2, d // 2, w.shape[1]).transpose(1, 2).reshape(w.shape).contiguous()


def original_to_hf_rows(w, n_heads):
    """The HF conversion script's permute (convert_mixtral_weights_to_hf.py)."""
    d = w.shape[0] // n_heads
    return w.view(n_heads, d // 2, 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


MISTRAL_NAMES = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def mistral_name(hf):
    if hf == "model.embed_tokens.weight":
        return "tok_embeddings.weight"
    if hf == "model.norm.weight":
        return "norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    rest = hf[len("model.layers."):]
    layer, rest = rest.split(".", 1)
    return f"layers.{layer}.{MISTRAL_NAMES.get(rest, rest)}"


def mistral_tensors(hf):
    out = collections.OrderedDict()
    for name, w in hf.items():
        if name.endswith("q_proj.weight"):
            w = hf_to_original_rows(w, HEADS)
            assert torch.equal(original_to_hf_rows(w, HEADS), hf[name])
        elif name.endswith("k_proj.weight"):
            w = hf_to_original_rows(w, KV_HEADS)
            assert torch.equal(original_to_hf_rows(w, KV_HEADS), hf[name])
        out[mistral_name(name)] = w.clone()
    return out


class Evil:
    """Pickles as a call of os.system: what a malicious checkpoint does to torch.load."""

    def __reduce__(self):
        return (os.system, ("echo swarmlm-fixture-would-have-run-this",))


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "crates", "swarmlm-weights", "tests", "fixtures")
    out = os.path.abspath(out)
    gen = torch.Generator().manual_seed(SEED)
    hf = hf_tensors(gen)

    d = os.path.join(out, "tiny-hf")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    write_json(os.path.join(d, "config.json"), HF_CONFIG)
    save_file(hf, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    os.chmod(os.path.join(d, "model.safetensors"), 0o644)

    d = os.path.join(out, "tiny-pth")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    write_json(os.path.join(d, "params.json"), PARAMS)
    good = os.path.join(d, "consolidated.00.pth")
    torch.save(mistral_tensors(hf), good)

    d = os.path.join(out, "hostile-reduce")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    write_json(os.path.join(d, "params.json"), PARAMS)
    sd = collections.OrderedDict()
    sd["norm.weight"] = hf["model.norm.weight"].clone()
    sd["evil"] = Evil()
    torch.save(sd, os.path.join(d, "consolidated.00.pth"))

    d = os.path.join(out, "hostile-global")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    write_json(os.path.join(d, "params.json"), PARAMS)
    sd = collections.OrderedDict()
    sd["norm.weight"] = torch.nn.Parameter(hf["model.norm.weight"].clone(), requires_grad=False)
    torch.save(sd, os.path.join(d, "consolidated.00.pth"))

    d = os.path.join(out, "truncated")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    write_json(os.path.join(d, "params.json"), PARAMS)
    with open(good, "rb") as f:
        data = f.read()
    with open(os.path.join(d, "consolidated.00.pth"), "wb") as f:
        f.write(data[: len(data) * 2 // 3])

    print(f"wrote fixtures under {out} with torch {torch.__version__}")


if __name__ == "__main__":
    main()
