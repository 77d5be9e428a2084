#!/usr/bin/env python3
"""llama.cpp peer for benchmarks/peers.sh: greedy decode through llama-cpp-python on a GGUF file,
timed the way `swarmlm run --json` times itself, printed as one JSON object with the same fields
(load_seconds, prefill_tokens_per_s, decode_tokens_per_s, prompt_ids, generated_ids,
peak_rss_bytes), plus llama.cpp's own eval counters (llama_perf_context) for comparison.

    llama_cpp_bench.py MODEL.gguf --prompt-ids 1,2,3 --max-tokens 64 --threads 2

Prefill = evaluating the prompt as one batch and picking the first token; decode = each further
token (one eval + greedy pick), so decode tokens = max_tokens - 1, as in swarmlm.

    llama_cpp_bench.py MODEL.gguf --prompt-ids 1,2,3 --max-tokens 200 --threads 2 --serve

--serve is the segment mode of run_peers.py --segments, the counterpart of swarmlm's
`examples/decode_serve`: load and prefill, print {"ready": true, "first_id": ..}, then per stdin
line `decode N` decode N more tokens and print {"tokens", "seconds", "cpu_seconds", "ids"};
`quit` or end of input stops. --max-tokens is then the context's capacity for generated tokens.
"""
import argparse
import json
import resource
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt-ids", required=True)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--serve", action="store_true")
    a = ap.parse_args()
    prompt = [int(x) for x in a.prompt_ids.split(",")]

    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_ctx=len(prompt) + a.max_tokens + 8,
        n_batch=max(512, len(prompt)),
        n_ubatch=max(512, len(prompt)),
        n_threads=a.threads,
        n_threads_batch=a.threads,
        use_mmap=True,
        logits_all=False,
        verbose=False,
    )
    load = time.perf_counter() - t0

    n_vocab = llm.n_vocab()

    import numpy as np

    def greedy():
        # Logits of the last evaluated position (llama.cpp keeps only that row), argmax in numpy.
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).argmax())

    llama_cpp.llama_perf_context_reset(llm.ctx)
    t1 = time.perf_counter()
    llm.eval(prompt)
    tok = greedy()
    prefill = time.perf_counter() - t1
    generated = [tok]
    if a.serve:
        return serve(llm, greedy, tok, prefill, load, a.max_tokens)
    t2 = time.perf_counter()
    for _ in range(a.max_tokens - 1):
        llm.eval([tok])
        tok = greedy()
        generated.append(tok)
    decode = time.perf_counter() - t2
    perf = llama_cpp.llama_perf_context(llm.ctx)
    n_dec = max(len(generated) - 1, 1)
    out = {
        "prompt_ids": prompt,
        "generated_ids": generated,
        "load_seconds": load,
        "prefill_tokens_per_s": len(prompt) / prefill,
        "decode_tokens_per_s": n_dec / decode,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "llama_perf": {
            "t_p_eval_ms": perf.t_p_eval_ms,
            "n_p_eval": perf.n_p_eval,
            "t_eval_ms": perf.t_eval_ms,
            "n_eval": perf.n_eval,
        },
    }
    print(json.dumps(out))


def serve(llm, greedy, tok, prefill, load, capacity):
    """Decode segments on demand (see the module doc); `time.process_time` is the CPU time of
    every thread of the process, so on-CPU time and wall time of a segment can be compared."""
    print(json.dumps({"ready": True, "first_id": tok, "load_seconds": load, "prefill_seconds": prefill}),
          flush=True)
    left = capacity - 1
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["quit"]:
            break
        if len(words) != 2 or words[0] != "decode" or not words[1].isdigit() or int(words[1]) > left:
            print(json.dumps({"error": f"expected `decode N` ({left} tokens left) or `quit`, got {line!r}"}),
                  flush=True)
            continue
        n = int(words[1])
        c0 = time.process_time()
        t0 = time.perf_counter()
        ids = []
        for _ in range(n):
            llm.eval([tok])
            tok = greedy()
            ids.append(tok)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
        left -= n
        print(json.dumps({"tokens": n, "seconds": seconds, "cpu_seconds": cpu, "ids": ids}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
