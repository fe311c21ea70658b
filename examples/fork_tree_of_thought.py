"""Tree of thought with `s.fork`: 3 approaches, each forked again into 2 steps, joined, then one summary.

`s.fork(n)` prefills the shared prefix once (a max_new_tokens=0 request) before the branches start, so every
branch's first call finds that prefix in the radix cache: each approach's `cached_tokens` is at least the
question's length, and each step's is at least its approach's text. All branches run concurrently and the
server batches them. `join("concate_and_append")` appends every branch's text to its parent, so the summary
sees the whole tree.

Run:  .venv/bin/python examples/fork_tree_of_thought.py [--model PATH | --url URL] [--question TEXT]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx
from example_cli import example_parser, open_backend

import radixgen as rg

QUESTION = "Lily has three red balls and two blue balls. How can she share them with her friend Ben?"


@rg.function
def tree_of_thought(s: Any, question: str, width: int, depth2: int, max_tokens: int) -> None:
    s += "Question: " + question + "\nLet us think about it in different ways.\n"
    approaches = s.fork(width)
    for i, approach in enumerate(approaches):
        approach += f"Approach {i + 1}:"
        approach += rg.gen("thought", max_tokens=max_tokens, stop="\n", temperature=0)
        approach += "\n"
        steps = approach.fork(depth2)  # depth 2: every approach branches again
        for j, step in enumerate(steps):
            step += f"  Step {j + 1}:"
            step += rg.gen("step", max_tokens=max_tokens, stop="\n", temperature=0)
            step += "\n"
        steps.join("concate_and_append")
    approaches.join("concate_and_append")
    s += "Summary:" + rg.gen("summary", max_tokens=max_tokens, stop="\n", temperature=0)


def count_tokens(backend: rg.Backend, text: str) -> int:
    """Tokens of ``text`` (with the BOS the server adds) via the server's ``POST /tokenize``."""
    url = getattr(backend, "url", None) or backend.base_url
    return int(httpx.post(f"{url}/tokenize", json={"text": text}, timeout=30).json()["count"])


def main(backend: rg.Backend, question: str = QUESTION, max_tokens: int = 24) -> dict[str, Any]:
    """Run the tree on ``backend``; print it with each node's token counts; return the figures."""
    t0 = time.perf_counter()
    state = tree_of_thought.run(question=question, width=3, depth2=2, max_tokens=max_tokens, backend=backend)
    elapsed = time.perf_counter() - t0

    prefix_tokens = count_tokens(backend, "Question: " + question + "\nLet us think about it in different ways.\n")
    thought_meta = state.get_meta_info("thought")["branches"]
    step_meta = state.get_meta_info("step")["branches"]
    print(f"Question: {question}   (shared prefix: {prefix_tokens} tokens)")
    ok = True
    for i, (thought, steps) in enumerate(zip(state["thought"], state["step"], strict=True)):
        meta = thought_meta[i]
        ok &= meta["cached_tokens"] >= prefix_tokens
        print(
            f"├─ Approach {i + 1}:{thought.rstrip()!r}\n"
            f"│    prompt={meta['prompt_tokens']} cached={meta['cached_tokens']} (>= prefix {prefix_tokens})"
        )
        for j, step in enumerate(steps):
            smeta = step_meta[i]["branches"][j]
            ok &= smeta["cached_tokens"] >= meta["prompt_tokens"]
            print(
                f"│    └─ Step {j + 1}:{step.rstrip()!r}  prompt={smeta['prompt_tokens']} "
                f"cached={smeta['cached_tokens']} (>= approach prompt {meta['prompt_tokens']})"
            )
    summary = state.get_meta_info("summary")
    print(f"└─ Summary:{state['summary']!r}  prompt={summary['prompt_tokens']} cached={summary['cached_tokens']}")

    usage = state.usage()
    hit_rate = usage["cached_tokens"] / max(usage["prompt_tokens"], 1)
    print(
        f"\n{usage['calls']} calls (incl. fork prefills), prompt_tokens={usage['prompt_tokens']} "
        f"cached_tokens={usage['cached_tokens']} hit_rate={hit_rate:.1%} completion_tokens="
        f"{usage['completion_tokens']} in {elapsed:.2f}s; every branch hit its shared prefix: {ok}"
    )
    return {"usage": usage, "hit_rate": hit_rate, "seconds": elapsed, "branches_hit_prefix": ok}


def parse_args() -> argparse.Namespace:
    parser = example_parser(__doc__)
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--max-tokens", type=int, default=24)
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    start = time.perf_counter()
    with open_backend(args) as backend:
        print(f"backend ready in {time.perf_counter() - start:.1f}s: {backend!r}\n")
        main(backend, question=args.question, max_tokens=args.max_tokens)
