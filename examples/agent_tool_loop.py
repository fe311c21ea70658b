"""ReAct-style agent loop on OpenAI tool calling: the model calls Python tools, the program runs them.

Each step is one `rg.gen(..., tools=[calc, Finish])` in an assistant turn: the tools are a Python function
(described from its signature and docstring) and a Pydantic model; the server renders them with the
model's chat template (here a Hermes/Qwen-style one: the bundled model has none), enforces the call with its grammar
(`tool_choice=calc` on the first step, then `"required"`: always a call of an offered tool with schema-valid
arguments) and parses it
(`--tool-call-parser qwen25`). The variable holds typed `rg.ToolCall`s: `call.call()` runs a function tool, and
`Finish` ends the loop with its validated `answer`. Observations (`= result`) go back as user turns. Two tasks run
concurrently with `run_batch`; the growing conversation is reused from the radix cache. The same program runs on the
native backend and on `rg.OpenAI` against the server's `/v1` (`--backend openai`).

Run:  .venv/bin/python examples/agent_tool_loop.py [--model PATH | --url URL] [--backend native|openai] [--steps N]
(`--url`: a server started with `--tool-call-parser qwen25` and a tool-calling chat template.)
"""

from __future__ import annotations

import argparse
import ast
import operator
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
from example_cli import example_parser
from pydantic import BaseModel, Field

import radixgen as rg

# A Hermes / Qwen 2.5-style template (tools in the system turn, calls as <tool_call> JSON, results as
# <tool_response>), its prose cut to fit stories260K's 512-token context.
TOOL_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\n# Tools\n<tools>' }}"
    "{%- for tool in tools %}{{- '\n' }}{{- tool['function'] | tojson }}{%- endfor %}{{- '\n</tools><|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

_OPS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.USub: operator.neg, ast.UAdd: operator.pos,
}  # fmt: skip


def calc(expr: Annotated[str, Field(pattern=r"^[0-9][0-9+*/-]{0,5}$")]) -> str:
    """Arithmetic."""

    def ev(node: ast.AST) -> Any:  # ast-based: no names, calls or attributes, nothing to exploit
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"unsupported expression: {ast.dump(node)[:40]}")

    return str(ev(ast.parse(expr.strip(), mode="eval").body))


class Finish(BaseModel):  # no docstring: no description (stories260K's 512-token context is tight)
    answer: str = Field(max_length=6)


TOOLS = [calc, Finish]
TASKS = ["12*7+5?", "3-8/2?"]


@rg.function
def agent(s: Any, task: str, max_steps: int) -> None:
    with s.user():
        s += task
    for i in range(max_steps):
        with s.assistant():
            choice = calc if i == 0 else "required"  # act once before finishing: a named function, then any
            s += rg.gen(f"step_{i}", tools=TOOLS, tool_choice=choice, parallel_tool_calls=False,
                        max_tokens=60, temperature=0)
        calls = s[f"step_{i}"]  # waits for the gen: what follows depends on the call
        if not calls:  # only when cut off by max_tokens: the grammar admits nothing but a call
            return
        call = calls[0]
        if call.name == "Finish":
            s["answer"] = call.arguments.answer
            return
        try:
            observation = call.call()
        except (ValueError, SyntaxError, ZeroDivisionError, TypeError) as e:
            observation = f"error: {e}"
        with s.user():
            s += f"= {observation}"


def main(backend: rg.Backend, max_steps: int = 2) -> dict[str, Any]:
    """Run the agent on every task concurrently; print each trace and the cache figures."""
    t0 = time.perf_counter()
    states = agent.run_batch([{"task": t, "max_steps": max_steps} for t in TASKS], backend=backend, progress_bar=False)
    elapsed = time.perf_counter() - t0
    calls = valid = 0
    for task, state in zip(TASKS, states, strict=True):
        print(f"=== {task}")
        if state.error() is not None:
            print(f"ERROR {type(state.error()).__name__}: {state.error()}")
            continue
        for i in range(max_steps):
            if f"step_{i}" not in state:
                break
            step = state[f"step_{i}"]
            calls += 1
            valid += all(c.name in ("calc", "Finish") for c in step)
            print(f"step {i}: {[(c.name, c.raw) for c in step]}")
        print(f"answer: {state['answer'] if 'answer' in state else '(no Finish call)'}\n")
    print(f"{len(TASKS)} agents, {calls} tool calls ({valid} valid) in {elapsed:.2f}s")
    return {"seconds": elapsed, "calls": calls, "valid": valid}


def open_tool_backend(args: argparse.Namespace) -> tuple[rg.Backend, rg.Backend]:
    """``(server, backend)``: a running server (``--url``) or a local one with the tool template and parser, and the
    backend the program uses on it (``--backend``: native ``RuntimeEndpoint`` or ``rg.OpenAI`` on its ``/v1``)."""
    if args.url:
        server: rg.Backend = rg.RuntimeEndpoint(args.url)
        url = args.url
    else:
        print(f"starting a radixgen runtime on {Path(args.model).resolve()} ...")
        server = rg.Runtime(args.model, chat_template=TOOL_TEMPLATE, tool_call_parser="qwen25")
        url = server.base_url  # type: ignore[attr-defined]
    if args.backend == "openai":
        model = httpx.get(f"{url}/v1/models", timeout=30.0).json()["data"][0]["id"]  # the served model's name
        return server, rg.OpenAI(model=model, base_url=f"{url}/v1", chat_template="chatml")
    return server, server


def parse_args() -> argparse.Namespace:
    parser = example_parser(__doc__)
    parser.add_argument("--steps", type=int, default=2, help="most tool steps per task")
    parser.add_argument("--backend", choices=["native", "openai"], default="native", help="DSL backend")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    start = time.perf_counter()
    server, backend = open_tool_backend(args)
    with server:
        print(f"backend ready in {time.perf_counter() - start:.1f}s: {backend!r}\n")
        main(backend, max_steps=args.steps)
