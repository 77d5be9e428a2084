"""Drives a running `swarmlm serve` with the official `openai` Python client.

Usage: openai_client.py BASE_URL MODEL API_KEY EXPECTED_JSON

EXPECTED_JSON names the greedy answers `swarmlm run --temperature 0` gives:
{"prompt": ..., "max_tokens": N, "completion": TEXT, "chat_user": ..., "chat": TEXT}
Checks completions and chat, streamed and not, then prints "ok". Run by tests/serve_cli.rs.
"""

import json
import sys

try:
    import openai
except ImportError:
    sys.stderr.write(
        "the `openai` Python package is not installed for this python: "
        "install it with `python3 -m venv .ci/venv && .ci/venv/bin/pip install openai` and run "
        "the tests with SWARMLM_PYTHON=.ci/venv/bin/python (or set SWARMLM_SKIP_PYTHON_CLIENT=1 "
        "to skip this test)\n"
    )
    sys.exit(3)


def check(what, got, want):
    if got != want:
        sys.stderr.write(f"{what}: got {got!r}, expected {want!r}\n")
        sys.exit(1)


def main():
    base_url, model, api_key, expected = sys.argv[1:5]
    exp = json.loads(expected)
    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=60.0, max_retries=0)

    models = [m.id for m in client.models.list()]
    check("models", models, [model])

    c = client.completions.create(
        model=model, prompt=exp["prompt"], max_tokens=exp["max_tokens"], temperature=0
    )
    check("completion text", c.choices[0].text, exp["completion"])
    check("completion finish_reason", c.choices[0].finish_reason in ("stop", "length"), True)
    check(
        "completion usage",
        c.usage.total_tokens,
        c.usage.prompt_tokens + c.usage.completion_tokens,
    )

    text = ""
    for chunk in client.completions.create(
        model=model, prompt=exp["prompt"], max_tokens=exp["max_tokens"], temperature=0, stream=True
    ):
        text += chunk.choices[0].text
    check("streamed completion text", text, exp["completion"])

    messages = [{"role": "user", "content": exp["chat_user"]}]
    r = client.chat.completions.create(
        model=model, messages=messages, max_tokens=exp["max_tokens"], temperature=0
    )
    check("chat role", r.choices[0].message.role, "assistant")
    check("chat text", r.choices[0].message.content, exp["chat"])

    text = ""
    usage = None
    for chunk in client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=exp["max_tokens"],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
    check("streamed chat text", text, exp["chat"])
    check("streamed chat usage", usage is not None and usage.prompt_tokens == r.usage.prompt_tokens, True)

    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        check("unknown model", "accepted", "NotFoundError")
    except openai.NotFoundError as e:
        check("unknown model code", e.code, "model_not_found")

    print("ok")


if __name__ == "__main__":
    main()
