"""Offline Engine demo on the bundled stories260K model: a few prompts, text and tokens in/out/cached.

Run: python examples/offline_demo.py --model ../shared/models/stories260K
"""

from __future__ import annotations

import argparse
import time

from radixgen.runtime import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="../shared/models/stories260K")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    engine = Engine(args.model)
    prompts = [
        "Once upon a time, there was a little girl named Lily.",
        "Once upon a time, there was a little girl named Lily. She loved",
        "Once upon a time, there was a big dog",
        "Tom and his mom went to the park.",
    ]
    greedy = {"temperature": 0, "max_new_tokens": args.max_new_tokens}
    t0 = time.perf_counter()
    outs = engine.generate(prompts, greedy)
    dt = time.perf_counter() - t0
    assert isinstance(outs, list)
    for prompt, out in zip(prompts, outs, strict=True):
        meta = out["meta_info"]
        print(f"--- {prompt!r}")
        print(f"    {out['text']!r}")
        print(
            f"    tokens in={meta['prompt_tokens']} out={meta['completion_tokens']} "
            f"cached={meta['cached_tokens']} finish={meta['finish_reason']}"
        )
    total = sum(o["meta_info"]["completion_tokens"] for o in outs)
    print(f"batch of {len(prompts)}: {total} tokens in {dt:.2f} s ({total / dt:.0f} tok/s)")

    # the same first prompt again: its whole sequence is now in the radix cache
    again = engine.generate(prompts[0], greedy)
    assert isinstance(again, dict)
    print(
        f"repeat of prompt 0: cached_tokens={again['meta_info']['cached_tokens']} "
        f"(prompt {again['meta_info']['prompt_tokens']} tokens), same text: {again['text'] == outs[0]['text']}"
    )

    print("streaming:", end=" ", flush=True)
    sent = 0
    stream = engine.generate("Once upon a time", {"temperature": 0.8, "seed": 7, "max_new_tokens": 40}, stream=True)
    for chunk in stream:  # type: ignore[union-attr]
        print(chunk["text"][sent:], end="", flush=True)
        sent = len(chunk["text"])
    print()
    engine.shutdown()


if __name__ == "__main__":
    main()
