"""Multi-turn chat: a system prompt and three user/assistant turns in one radixgen program.

Every `rg.gen` sends the whole conversation so far. The server's radix cache still holds the previous turns
(their prompt and the reply just generated), so each turn only prefills what is new: `cached_tokens` grows turn
by turn while the uncached part stays small.

The bundled stories260K model has no chat template, so roles are rendered with the built-in ChatML template
(`--chat-template`); it writes children's stories, not answers — the point is the machinery.

Run:  .venv/bin/python examples/multi_turn_chat.py [--model PATH | --url URL]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from example_cli import example_parser, open_backend

import radixgen as rg

SYSTEM = "You are a storyteller for small children. Keep every answer short and happy."
QUESTIONS = [
    "Tell me about a little cat named Tom.",
    "What did Tom find in the garden?",
    "How did the story end?",
]


@rg.function
def chat(s: Any, questions: list[str], max_tokens: int) -> None:
    s += rg.system(SYSTEM)
    for i, question in enumerate(questions):
        with s.user():
            s += question
        s += rg.assistant(rg.gen(f"answer_{i}", max_tokens=max_tokens, temperature=0))


def main(backend: rg.Backend, max_tokens: int = 48) -> dict[str, Any]:
    """Run the chat on ``backend``; print the messages and each turn's token counts; return the figures."""
    t0 = time.perf_counter()
    state = chat.run(questions=QUESTIONS, max_tokens=max_tokens, backend=backend)
    elapsed = time.perf_counter() - t0

    print("== messages ==")
    for message in state.messages():
        print(f"[{message['role']}] {message['content'].strip()!r}")

    print("\n== per turn ==")
    for i in range(len(QUESTIONS)):
        meta = state.get_meta_info(f"answer_{i}")
        prompt, cached = meta["prompt_tokens"], meta["cached_tokens"]
        print(
            f"turn {i + 1}: prompt_tokens={prompt:4d} cached_tokens={cached:4d} new={prompt - cached:3d} "
            f"completion_tokens={meta['completion_tokens']:3d} hit_rate={cached / max(prompt, 1):.0%}"
        )
    usage = state.usage()
    hit_rate = usage["cached_tokens"] / max(usage["prompt_tokens"], 1)
    print(
        f"total: {usage['calls']} calls, prompt_tokens={usage['prompt_tokens']} cached_tokens={usage['cached_tokens']}"
        f" hit_rate={hit_rate:.1%} completion_tokens={usage['completion_tokens']} in {elapsed:.2f}s"
    )
    return {"usage": usage, "hit_rate": hit_rate, "seconds": elapsed}


def parse_args() -> argparse.Namespace:
    parser = example_parser(__doc__)
    parser.add_argument("--max-tokens", type=int, default=48)
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    start = time.perf_counter()
    with open_backend(args) as backend:
        print(f"backend ready in {time.perf_counter() - start:.1f}s: {backend!r}\n")
        main(backend, max_tokens=args.max_tokens)
