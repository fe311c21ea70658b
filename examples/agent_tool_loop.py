"""ReAct-style agent loop: Python control flow over generated values, with constrained tool calls.

Each step generates a thought, picks a tool with `rg.select` (scored by the model's logprobs, so it is always
one of the registered names), then generates the tool's argument under a regex chosen *by Python from the picked
tool* (digits and operators for the calculator, words for the word counter). The program calls the Python tool
and appends `Observation: ...`; `finish` (offered from the second step on) ends the loop early. Every call
reuses the growing transcript from the radix cache. Two tasks run concurrently with `run_batch`.

Run:  .venv/bin/python examples/agent_tool_loop.py [--model PATH | --url URL] [--steps N]
"""

from __future__ import annotations

import argparse
import ast
import operator
import time
from collections.abc import Callable
from typing import Any

from example_cli import example_parser, open_backend

import radixgen as rg

_OPS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.USub: operator.neg, ast.UAdd: operator.pos,
}  # fmt: skip


def calculator(expression: str) -> str:
    """Evaluate + - * / over numbers with ``ast`` (no names, calls or attributes: nothing to exploit)."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"unsupported expression: {ast.dump(node)[:40]}")

    return str(ev(ast.parse(expression.strip(), mode="eval").body))


def word_count(text: str) -> str:
    return str(len(text.split()))


# tool name -> (function, regex its argument must match)
TOOLS: dict[str, tuple[Callable[[str], str], str]] = {
    "calculator": (calculator, r"[0-9]{1,4}( ?[-+*/] ?[0-9]{1,4}){1,2}"),
    "word_count": (word_count, r"[A-Za-z]{1,10}( [A-Za-z]{1,10}){0,5}"),
}

PROMPT = (
    "You can use tools: calculator[expression] and word_count[text]. Use finish[] when done.\n"
    "Task: What is 3 * 4?\nThought: I should multiply.\nAction: calculator[3 * 4]\nObservation: 12\n"
    "Action: finish[]\nFinal answer: 12\n\n"
)

TASKS = ["What is 12 * 7 + 5?", "How many words are in the sentence the cat sat on the mat?"]


@rg.function
def agent(s: Any, task: str, max_steps: int) -> None:
    s += PROMPT
    s += "Task: " + task + "\n"
    for i in range(max_steps):
        s += "Thought:" + rg.gen(f"thought_{i}", max_tokens=16, stop="\n", temperature=0) + "\n"
        choices = [*TOOLS] if i == 0 else [*TOOLS, "finish"]  # act at least once before finishing
        s += "Action: " + rg.select(f"tool_{i}", choices=choices)
        tool = s[f"tool_{i}"]  # waits for the select: what follows depends on it
        if tool == "finish":
            s += "[]\n"
            break
        func, arg_regex = TOOLS[tool]
        s += "[" + rg.gen(f"arg_{i}", regex=arg_regex, max_tokens=16, temperature=0) + "]\n"
        try:
            observation = func(s[f"arg_{i}"])
        except (ValueError, SyntaxError, ZeroDivisionError) as e:
            observation = f"error: {e}"
        s += f"Observation: {observation}\n"
    s += "Final answer:" + rg.gen("answer", max_tokens=16, stop="\n", temperature=0)


def main(backend: rg.Backend, max_steps: int = 3) -> dict[str, Any]:
    """Run the agent on every task concurrently; print each trace and the cache figures."""
    t0 = time.perf_counter()
    states = agent.run_batch([{"task": t, "max_steps": max_steps} for t in TASKS], backend=backend, progress_bar=False)
    elapsed = time.perf_counter() - t0
    prompt = cached = calls = 0
    for task, state in zip(TASKS, states, strict=True):
        print(f"=== {task}")
        if state.error() is not None:
            print(f"ERROR {type(state.error()).__name__}: {state.error()}")
            continue
        print(state.text()[len(PROMPT) :].rstrip())
        usage = state.usage()
        prompt, cached, calls = prompt + usage["prompt_tokens"], cached + usage["cached_tokens"], calls + usage["calls"]
        print(f"--- {usage['calls']} calls, prompt_tokens={usage['prompt_tokens']} cached={usage['cached_tokens']}\n")
    hit_rate = cached / max(prompt, 1)
    print(f"{len(TASKS)} agents, {calls} calls in {elapsed:.2f}s; prompt_tokens={prompt} cached_tokens={cached} "
          f"hit_rate={hit_rate:.1%}")  # fmt: skip
    return {"hit_rate": hit_rate, "seconds": elapsed, "calls": calls}


def parse_args() -> argparse.Namespace:
    parser = example_parser(__doc__)
    parser.add_argument("--steps", type=int, default=3, help="most tool steps per task")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    start = time.perf_counter()
    with open_backend(args) as backend:
        print(f"backend ready in {time.perf_counter() - start:.1f}s: {backend!r}\n")
        main(backend, max_steps=args.steps)
