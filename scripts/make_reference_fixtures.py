#!/usr/bin/env python3
"""Reference fixtures for swarmlm-engine, made with Hugging Face transformers.

For several forged models that differ in every shape field the engine branches on (GQA / MHA /
MQA, a sliding window shorter than the prompt, top-1/2/3 routing over 4 or 8 experts, an explicit
head_dim != hidden / heads), this script:

1. forges the model with `swarmlm forge` (deterministic: the engine tests re-forge the same bytes
   with the swarmlm-forge library, so no weights are committed);
2. loads it with transformers in float32 with eager attention and eager experts;
3. writes, per model, `<name>.safetensors` (teacher-forced logits `[T, vocab]` f32 and the router
   top-k experts of every layer `[T, k]` i32) and `<name>.json` (the forge shape, prompt ids,
   greedy ids with each step's top-1 margin, and perplexity chunk sums).

Usage (from the repository root, after `cargo build -p swarmlm-cli`):
    python3 scripts/make_reference_fixtures.py --swarmlm target/debug/swarmlm

Output: crates/swarmlm-engine/tests/fixtures/reference/ (a few hundred KB in all).
"""

import argparse
import json
import pathlib
import subprocess
import tempfile

import torch
import transformers
from safetensors.torch import save_file
from transformers import MixtralForCausalLM

# Every model starts from forge's `tiny` preset; these fields override it. Names are the
# config.json names; FORGE_FLAGS maps them to `swarmlm forge` options.
MODELS = [
    {
        # GQA (4 query heads over 2 KV heads), top-2 of 4, full causal attention.
        "name": "gqa_top2_of_4",
        "seed": 11,
        "shape": {"num_hidden_layers": 2, "num_local_experts": 4, "num_experts_per_tok": 2,
                  "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "vocab_size": 512},
    },
    {
        # Plain multi-head attention, top-1 of 8, sliding window 8 < prompt length 24.
        "name": "mha_top1_of_8_window8",
        "seed": 12,
        "shape": {"num_hidden_layers": 2, "num_local_experts": 8, "num_experts_per_tok": 1,
                  "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
                  "num_key_value_heads": 4, "sliding_window": 8, "vocab_size": 512},
    },
    {
        # Multi-query attention (1 KV head), top-3 of 8, explicit head_dim 32 != 64 / 4.
        "name": "mqa_top3_of_8_headdim32",
        "seed": 13,
        "shape": {"num_hidden_layers": 3, "num_local_experts": 8, "num_experts_per_tok": 3,
                  "hidden_size": 64, "intermediate_size": 64, "num_attention_heads": 4,
                  "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 512},
    },
    {
        # GQA 6/2, head_dim 8 (< hidden / heads = 16), top-2 of 8, window 5.
        "name": "gqa_top2_of_8_headdim8_window5",
        "seed": 14,
        "shape": {"num_hidden_layers": 2, "num_local_experts": 8, "num_experts_per_tok": 2,
                  "hidden_size": 96, "intermediate_size": 80, "num_attention_heads": 6,
                  "num_key_value_heads": 2, "head_dim": 8, "sliding_window": 5,
                  "vocab_size": 512},
    },
]

FORGE_FLAGS = {
    "num_hidden_layers": "--layers",
    "num_local_experts": "--experts",
    "num_experts_per_tok": "--top-k",
    "hidden_size": "--hidden",
    "intermediate_size": "--intermediate",
    "num_attention_heads": "--heads",
    "num_key_value_heads": "--kv-heads",
    "head_dim": "--head-dim",
    "sliding_window": "--sliding-window",
    "vocab_size": "--vocab",
}

PROMPT_LEN = 24  # teacher-forced positions (BOS + 23)
GREEDY_STEPS = 12
PPL_CTX = 16
PPL_CHUNKS = 3
BOS = 1


def lcg_ids(seed, n, vocab):
    """Deterministic pseudo-random ids in [3, vocab) (no special tokens)."""
    x = seed * 6364136223846793005 + 1442695040888963407
    out = []
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append(3 + (x >> 33) % (vocab - 3))
    return out


def forge(swarmlm, spec, out_dir):
    cmd = [swarmlm, "forge", "--preset", "tiny", "--seed", str(spec["seed"]), "--out", str(out_dir)]
    for field, value in spec["shape"].items():
        cmd += [FORGE_FLAGS[field], str(value)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


@torch.no_grad()
def make_fixture(swarmlm, spec, out_root):
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = pathlib.Path(tmp) / spec["name"]
        forge(swarmlm, spec, model_dir)
        model = MixtralForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="eager",
            experts_implementation="eager",
        ).eval()
    cfg = model.config
    vocab = cfg.vocab_size
    k = cfg.num_experts_per_tok

    prompt = [BOS] + lcg_ids(spec["seed"], PROMPT_LEN - 1, vocab)
    out = model(torch.tensor([prompt]), output_router_logits=True)
    logits = out.logits[0].float().contiguous()
    tensors = {"logits": logits}
    for layer, rl in enumerate(out.router_logits):
        probs = torch.softmax(rl.float(), dim=-1)
        tensors[f"router_topk.layer{layer}"] = torch.topk(probs, k, dim=-1).indices.to(torch.int32).contiguous()

    # Greedy decoding without a cache (one full forward per step), recording the top-1 margin
    # so tests know where float noise may legitimately flip the argmax.
    ids = list(prompt)
    greedy, margins = [], []
    for _ in range(GREEDY_STEPS):
        last = model(torch.tensor([ids])).logits[0, -1].float()
        top = torch.topk(last, 2)
        greedy.append(int(top.indices[0]))
        margins.append(float(top.values[0] - top.values[1]))
        ids.append(greedy[-1])

    # Perplexity exactly as for shakespeare-moe: chunks of PPL_CTX run alone as [BOS] + chunk.
    text_ids = lcg_ids(spec["seed"] + 1000, PPL_CTX * PPL_CHUNKS, vocab)
    chunk_sums = []
    for c in range(PPL_CHUNKS):
        chunk = text_ids[c * PPL_CTX:(c + 1) * PPL_CTX]
        lg = model(torch.tensor([[BOS] + chunk])).logits[0, :PPL_CTX].float()
        nll = -torch.log_softmax(lg, dim=-1).gather(1, torch.tensor(chunk)[:, None])[:, 0]
        chunk_sums.append(float(nll.sum()))

    meta = {
        "name": spec["name"],
        "forge": {"preset": "tiny", "seed": spec["seed"], "shape": spec["shape"]},
        "generated_by": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                        "float32, eager attention, eager experts",
        "prompt_ids": prompt,
        "greedy_new_ids": greedy,
        "greedy_top1_margins": margins,
        "perplexity": {"ctx": PPL_CTX, "ids": text_ids, "chunk_nll_sums": chunk_sums,
                       "nll_sum": sum(chunk_sums)},
    }
    save_file(tensors, str(out_root / f"{spec['name']}.safetensors"))
    (out_root / f"{spec['name']}.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{spec['name']}: min greedy margin {min(margins):.2e}, nll_sum {sum(chunk_sums):.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--swarmlm", default="target/debug/swarmlm", help="path to the swarmlm binary")
    ap.add_argument("--out", default="crates/swarmlm-engine/tests/fixtures/reference")
    args = ap.parse_args()
    torch.manual_seed(0)
    out_root = pathlib.Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    for spec in MODELS:
        make_fixture(args.swarmlm, spec, out_root)


if __name__ == "__main__":
    main()
