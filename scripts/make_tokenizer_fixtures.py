#!/usr/bin/env python3
"""Regenerate the tokenizer test fixtures of swarmlm-engine.

Why: swarmlm-engine ships its own SentencePiece (tokenizer.model) reader and BPE encoder and
wraps Hugging Face `tokenizers` for tokenizer.json. Both must give exactly the ids the
reference libraries give, so this script encodes a committed corpus with the reference
implementations (Python `sentencepiece` and `tokenizers`) and writes the expected ids and
decoded text to JSON. The Rust tests (crates/swarmlm-engine/tests/tokenizer*.rs) compare
against that JSON; they never run Python.

Usage (from anywhere):
    pip install sentencepiece tokenizers protobuf
    python3 scripts/make_tokenizer_fixtures.py

Inputs (committed):
    crates/swarmlm-engine/tests/fixtures/tokenizer/corpus.txt   one test text per line
    assets/tokenizers/mistral-v1/tokenizer.model, tokenizer.json
    assets/models/shakespeare-moe/tokenizer.json
Outputs (committed):
    crates/swarmlm-engine/tests/fixtures/tokenizer/tiny-*.model  small SentencePiece models
        trained here to exercise options the Mistral model does not use (no byte fallback,
        remove_extra_whitespaces, user-defined symbols, UNUSED pieces, whitespace as suffix)
    crates/swarmlm-engine/tests/fixtures/tokenizer/expected.json
"""

import json
import random
import sys
from pathlib import Path

import sentencepiece as spm
import tokenizers
from sentencepiece import sentencepiece_model_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "crates/swarmlm-engine/tests/fixtures/tokenizer"
MISTRAL = ROOT / "assets/tokenizers/mistral-v1"
SHAKESPEARE = ROOT / "assets/models/shakespeare-moe"


def corpus_cases():
    text = (FIX / "corpus.txt").read_bytes().decode("utf-8")
    # Split on "\n" only: lines may hold \r, \x0b, \x0c, which are test data.
    lines = text.split("\n")
    assert lines[-1] == "", "corpus.txt must end with a newline"
    lines = lines[:-1]
    cases = list(lines)
    # Multi-line texts: blocks of 7 lines joined by newlines.
    for i in range(0, len(lines), 7):
        cases.append("\n".join(lines[i : i + 7]))
    return cases


def train_tiny(name, **options):
    """Trains a small BPE model on the corpus + the held-out Shakespeare text."""
    src = FIX / "corpus.txt"
    extra = (SHAKESPEARE / "reference/heldout.txt").read_text(encoding="utf-8")
    train_txt = FIX / f"{name}.train.tmp"
    train_txt.write_text(src.read_text(encoding="utf-8") + extra, encoding="utf-8")
    prefix = FIX / name
    spm.SentencePieceTrainer.train(
        input=str(train_txt),
        model_prefix=str(prefix),
        model_type="bpe",
        num_threads=1,
        normalization_rule_name="identity",
        shuffle_input_sentence=False,
        minloglevel=2,
        **options,
    )
    train_txt.unlink()
    (FIX / f"{name}.vocab").unlink()
    return prefix.with_suffix(".model")


def mark_unused(model_path, pieces):
    """Marks some merged pieces UNUSED: SentencePiece then re-splits them after merging."""
    m = pb.ModelProto()
    m.ParseFromString(model_path.read_bytes())
    wanted = set(pieces)
    found = set()
    for p in m.pieces:
        if p.piece in wanted:
            p.type = pb.ModelProto.SentencePiece.UNUSED
            found.add(p.piece)
    assert found == wanted, f"pieces not in model: {wanted - found}"
    model_path.write_bytes(m.SerializeToString())


def case(index, ids, decode):
    """One expected encoding of texts[index]; "decoded" is stored only where decode(ids) is not
    the text itself (e.g. runs of spaces lost by remove_extra_whitespaces, or unk)."""
    out = {"i": index, "ids": ids}
    decoded = decode(ids)
    if decoded != CASES[index]:
        out["decoded"] = decoded
    return out


def sp_section(model_path, cases, decode_cases):
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    out = [case(i, sp.encode(text), sp.decode) for i, text in enumerate(cases)]
    with_bos = [
        case(i, sp.encode(text, add_bos=True, add_eos=True), sp.decode)
        for i, text in enumerate(cases[:40])
    ]
    decoded = [{"ids": ids, "decoded": sp.decode(ids)} for ids in decode_cases(sp.get_piece_size())]
    return {
        "file": str(model_path.relative_to(ROOT)),
        "vocab_size": sp.get_piece_size(),
        "bos_id": sp.bos_id(),
        "eos_id": sp.eos_id(),
        "unk_id": sp.unk_id(),
        "cases": out,
        "with_bos_eos": with_bos,
        "decode_only": decoded,
    }


def hf_section(json_path, cases, decode_cases):
    tok = tokenizers.Tokenizer.from_file(str(json_path))
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    out = [case(i, tok.encode(t, add_special_tokens=False).ids, decode) for i, t in enumerate(cases)]
    vocab = tok.get_vocab_size(with_added_tokens=True)
    decoded = [
        {"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)}
        for ids in decode_cases(vocab)
    ]
    return {
        "file": str(json_path.relative_to(ROOT)),
        "vocab_size": vocab,
        "cases": out,
        "decode_only": decoded,
    }


def make_decode_cases(seed):
    """Random id sequences biased toward what breaks decoders: byte pieces that form partial or
    invalid UTF-8, control ids mid-stream, pieces that start with the space symbol."""

    def gen(vocab):
        rng = random.Random(seed)
        cases = [[], [1], [2], [0], [1, 2], [3], [3 + 0x20], [3 + 0xE4, 3 + 0xB8]]
        for _ in range(150):
            ids = []
            for _ in range(rng.randint(1, 24)):
                r = rng.random()
                if r < 0.35:
                    ids.append(3 + rng.randrange(256))  # any byte piece
                elif r < 0.5:
                    # a valid multi-byte char spelled as byte pieces
                    ch = rng.choice("é中😀ß∑한")
                    ids.extend(3 + b for b in ch.encode("utf-8"))
                elif r < 0.6:
                    ids.append(rng.randrange(3))  # unk / bos / eos
                else:
                    ids.append(rng.randrange(259, vocab))
            cases.append(ids)
        return cases

    return gen


CASES = corpus_cases()


def main():
    cases = CASES
    dec = make_decode_cases(7)

    tiny_a = train_tiny(
        "tiny-bpe-nobytes",
        vocab_size=400,
        byte_fallback=False,
        remove_extra_whitespaces=True,
        character_coverage=0.98,
        user_defined_symbols=["<sep>", "[MASK]", "▁▁"],
    )
    mark_unused(tiny_a, ["he", "▁the"])
    tiny_b = train_tiny(
        "tiny-bpe-suffix",
        vocab_size=1000,
        byte_fallback=True,
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        treat_whitespace_as_suffix=True,
        character_coverage=0.98,
    )

    expected = {
        "generated_by": (
            f"scripts/make_tokenizer_fixtures.py with sentencepiece {spm.__version__}, "
            f"tokenizers {tokenizers.__version__}, Python {sys.version.split()[0]}"
        ),
        "corpus": "crates/swarmlm-engine/tests/fixtures/tokenizer/corpus.txt",
        "note": "texts: every corpus line, then blocks of 7 lines joined by newlines; a case's i indexes texts",
        "texts": cases,
        "mistral_sp": sp_section(MISTRAL / "tokenizer.model", cases, dec),
        "mistral_hf": hf_section(MISTRAL / "tokenizer.json", cases, dec),
        "shakespeare_hf": hf_section(SHAKESPEARE / "tokenizer.json", cases, dec),
        "tiny_nobytes_sp": sp_section(tiny_a, cases, make_decode_cases(8)),
        "tiny_suffix_sp": sp_section(tiny_b, cases, make_decode_cases(9)),
    }
    # One case per line keeps diffs of the fixture readable.
    out = FIX / "expected.json"
    with out.open("w", encoding="utf-8") as f:
        f.write("{\n")
        keys = list(expected)
        for ki, k in enumerate(keys):
            v = expected[k]
            f.write(f"{json.dumps(k)}: ")
            if isinstance(v, dict):
                f.write("{\n")
                sub = list(v)
                for si, sk in enumerate(sub):
                    sv = v[sk]
                    f.write(f"  {json.dumps(sk)}: ")
                    if isinstance(sv, list):
                        f.write("[\n")
                        f.write(",\n".join("    " + json.dumps(x, ensure_ascii=False) for x in sv))
                        f.write("\n  ]")
                    else:
                        f.write(json.dumps(sv, ensure_ascii=False))
                    f.write(",\n" if si + 1 < len(sub) else "\n")
                f.write("}")
            elif isinstance(v, list):
                f.write("[\n")
                f.write(",\n".join("  " + json.dumps(x, ensure_ascii=False) for x in v))
                f.write("\n]")
            else:
                f.write(json.dumps(v, ensure_ascii=False))
            f.write(",\n" if ki + 1 < len(keys) else "\n")
        f.write("}\n")
    json.loads(out.read_text(encoding="utf-8"))
    print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
