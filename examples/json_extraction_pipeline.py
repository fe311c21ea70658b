"""JSON extraction pipeline: `run_batch` over short stories, each extracting a typed Pydantic `Character`.

`rg.gen("character", json_schema=Character)` constrains decoding with the model's JSON schema, so the text is
always valid JSON of that shape (unless `max_tokens` cuts it) and `state["character"]` is the validated model
instance. The instructions are constant text at the start of the program: `run_batch` traces that prefix,
prefills it once, and every program in the batch reuses it from the radix cache. A failing item fails alone
(`state.error()`); the others complete.

Run:  .venv/bin/python examples/json_extraction_pipeline.py [--model PATH | --url URL]
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Literal

from example_cli import example_parser, open_backend
from pydantic import BaseModel, Field

import radixgen as rg


class Character(BaseModel):
    """Small on purpose: the tiny model must close the object within max_tokens."""

    name: str = Field(pattern=r"^[A-Z][a-z]{1,9}$")
    age: int = Field(ge=1, le=12)
    mood: Literal["happy", "sad", "scared", "angry"]


INSTRUCTIONS = (
    "Read the story and describe its main character as JSON with the fields name, age and mood.\n"
    "Example: Story: Sam was a little boy of four. He laughed at the big red ball.\n"
    'Character: {"name": "Sam", "age": 4, "mood": "happy"}\n\n'
)

STORIES = [
    "Lily was five years old. She found a shiny stone and smiled all day.",
    "Tom, a boy of six, lost his red kite in the tall tree. He cried.",
    "Mia was three. A big dog barked at her and she hid behind her mom.",
    "Ben was seven. His sister broke his toy car and he stomped his feet.",
    "Sue, who was four, got a new puppy for her birthday and hugged it.",
    "Max was eight. The lights went out in the storm and he shook in bed.",
    "Anna was six. Her best friend moved far away and she felt alone.",
    "Jack was five. He won the race at the park and jumped up and down.",
]


@rg.function
def extract(s: Any, story: str, max_tokens: int) -> None:
    s += INSTRUCTIONS
    s += "Story: " + story + "\nCharacter: "
    s += rg.gen("character", json_schema=Character, max_tokens=max_tokens, temperature=0)


def main(backend: rg.Backend, max_tokens: int = 64, progress_bar: bool = True) -> dict[str, Any]:
    """Extract a Character from every story on ``backend``; print them and the batch's figures."""
    batch = [{"story": story, "max_tokens": max_tokens} for story in STORIES]
    t0 = time.perf_counter()
    states = extract.run_batch(batch, backend=backend, progress_bar=progress_bar)
    elapsed = time.perf_counter() - t0

    ok = 0
    for story, state in zip(STORIES, states, strict=True):
        print(f"- {story}")
        if state.error() is not None:
            print(f"    ERROR {type(state.error()).__name__}: {state.error()}")
            continue
        ok += 1
        character: Character = state["character"]
        print(f"    -> {character!r}")

    prompt = sum(s.usage()["prompt_tokens"] for s in states)
    cached = sum(s.usage()["cached_tokens"] for s in states)
    completion = sum(s.usage()["completion_tokens"] for s in states)
    hit_rate = cached / max(prompt, 1)
    print(
        f"\n{ok}/{len(states)} valid Character objects in {elapsed:.2f}s: {len(states) / elapsed:.2f} programs/s, "
        f"{completion / elapsed:.1f} output tok/s\nprompt_tokens={prompt} cached_tokens={cached} "
        f"hit_rate={hit_rate:.1%} completion_tokens={completion}"
    )
    return {"ok": ok, "total": len(states), "hit_rate": hit_rate, "seconds": elapsed, "completion_tokens": completion}


def parse_args() -> argparse.Namespace:
    parser = example_parser(__doc__)
    parser.add_argument("--max-tokens", type=int, default=64)
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    start = time.perf_counter()
    with open_backend(args) as backend:
        print(f"backend ready in {time.perf_counter() - start:.1f}s: {backend!r}\n")
        main(backend, max_tokens=args.max_tokens)
