"""Server demo: start `radixgen serve` on stories260K, call the native and the OpenAI APIs, stop the server.

Run: python examples/server_demo.py --model ../shared/models/stories260K
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not become ready")


def tokens(meta: dict) -> str:
    return f"in={meta['prompt_tokens']} out={meta['completion_tokens']} cached={meta['cached_tokens']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="../shared/models/stories260K")
    args = parser.parse_args()
    model = str(Path(args.model).resolve())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-P", "-m", "radixgen.runtime.launch_server", "--model", model, "--port", str(port),
           "--chat-template", "chatml", "--max-total-tokens", "16384", "--log-level", "warning"]  # fmt: skip
    # started outside the repository root, so its top-level folders cannot shadow installed packages
    proc = subprocess.Popen(cmd, cwd=tempfile.gettempdir())
    try:
        wait_ready(base, proc)
        print(f"server ready at {base} ({model})")
        story = "Once upon a time, there was a little girl named Lily. She loved to play outside."
        greedy = {"temperature": 0, "max_new_tokens": 48}

        print("\n== native /generate: a batch of two prompts sharing a prefix")
        outs = httpx.post(f"{base}/generate", json={"text": [story, story + " One day"], "sampling_params": greedy},
                          timeout=120).json()  # fmt: skip
        for o in outs:
            print(f"  {o['text']!r}\n    {tokens(o['meta_info'])} finish={o['meta_info']['finish_reason']}")
        again = httpx.post(f"{base}/generate", json={"text": story, "sampling_params": greedy}, timeout=120).json()
        print(f"  the first prompt again: {tokens(again['meta_info'])} (its prefix comes from the radix cache)")

        print("\n== native /generate, streaming (SSE, cumulative text)")
        sent = 0
        with httpx.stream(
            "POST",
            f"{base}/generate",
            json={
                "text": "Tom had a red ball.",
                "stream": True,
                "sampling_params": {"temperature": 0.8, "seed": 3, "max_new_tokens": 40},
            },
            timeout=120,
        ) as r:
            print("  ", end="")
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    text = httpx.Response(200, content=line[6:]).json()["text"]
                    print(text[sent:], end="", flush=True)
                    sent = len(text)
        print()

        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none")
        print("\n== OpenAI /v1/completions (official client)")
        comp = client.completions.create(model=model, prompt=story, max_tokens=32, temperature=0)
        usage = comp.usage
        assert usage is not None
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        print(f"  {comp.choices[0].text!r}")
        print(f"    in={usage.prompt_tokens} out={usage.completion_tokens} cached={cached}")

        print("\n== OpenAI /v1/chat/completions (chatml template), streaming with usage")
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Tell me a story about a cat."}],
            max_tokens=40,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        print("  ", end="")
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
            if chunk.usage:
                print(f"\n    in={chunk.usage.prompt_tokens} out={chunk.usage.completion_tokens}")
        info = httpx.get(f"{base}/get_server_info", timeout=10).json()
        print(f"\nKV pool: {info.get('max_total_tokens')} tokens")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        print(f"server stopped (exit {proc.returncode})")


if __name__ == "__main__":
    main()
