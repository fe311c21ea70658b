"""The DSL's LoRA adapters (``rg.gen(..., lora=...)``, ``rg.select(..., lora=...)``, ``program.run(..., lora=...)``)
against a real stories260K server serving two PEFT adapters, greedy everywhere.

Every value is checked against an independent call of the server's own API with the adapter named there
(``/generate`` with ``lora_path``, ``/v1/...`` with ``model``), and the adapters are checked to change the model's
output, so these tests fail if the frontend drops or misroutes the adapter. Prefix warm-ups are checked through
``cached_tokens``: the server caches KV per adapter, so a warm-up under the wrong adapter is a miss.
"""

# ruff: noqa: F811 - test_frontend_dsl's `http` / `backend` fixtures are imported (and built on this module's `server`)
from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lora_adapters import ALL, ATTN, make_adapter
from server_fixtures import STORIES, ServerHandle, start_server
from test_frontend_dsl import backend, http, tokenize  # noqa: F401 - fixtures, used by name
from test_frontend_interpreter import ScriptedBackend

import radixgen as rg
from radixgen.backends.base import BackendRequestError
from radixgen.backends.runtime import Runtime, server_cli_args

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two adapters over stories260K: ``a`` (attention, r=4) and ``b`` (every projection, r=8)."""
    root = tmp_path_factory.mktemp("lora")
    return {"a": make_adapter(root / "a", ATTN, r=4, seed=1), "b": make_adapter(root / "b", ALL, r=8, seed=2)}


@pytest.fixture(scope="module")
def server(adapters: dict[str, Path]) -> Iterator[ServerHandle]:
    """The chatml stories260K server serving both adapters (``http`` and ``backend`` are built on it)."""
    lora_args = [f"{name}={path}" for name, path in adapters.items()]
    handle = start_server(["--chat-template", "chatml", "--lora-paths", *lora_args])
    yield handle
    handle.stop()


def native(http: httpx.Client, text: str, lora: str | None, **sampling: Any) -> dict[str, Any]:
    """An independent greedy ``/generate`` of ``text`` under adapter ``lora`` (None: the base model)."""
    body: dict[str, Any] = {"text": text, "sampling_params": {"temperature": 0.0, **sampling}}
    if lora is not None:
        body["lora_path"] = lora
    resp = http.post("/generate", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def choice_ids(http: httpx.Client, prompt: str, choice: str) -> tuple[list[int], int]:
    """The token ids of prompt+choice and where the choice's tokens start (past the common prefix with the
    prompt's ids), as the native select splits them."""
    p_ids, full = tokenize(http, prompt), tokenize(http, prompt + choice)
    return full, next((i for i, (x, y) in enumerate(zip(p_ids, full, strict=False)) if x != y), len(p_ids))


def input_logprobs(http: httpx.Client, ids: list[int], start: int, lora: str | None) -> list[float]:
    """Logprobs of ``ids[start:]`` under ``lora`` from one independent prefill-only ``/generate``."""
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 0}, "return_logprob": True,
            "logprob_start_len": start, **({"lora_path": lora} if lora else {})}
    resp = http.post("/generate", json=body)
    assert resp.status_code == 200, resp.text
    return [float(e[0]) for e in resp.json()["meta_info"]["input_token_logprobs"]]


def choice_means(http: httpx.Client, prompt: str, choices: tuple[str, ...], lora: str | None) -> list[float]:
    """Each choice's mean token logprob after ``prompt`` under ``lora`` (token_length_normalized's score)."""
    lps = [input_logprobs(http, *choice_ids(http, prompt, c), lora) for c in choices]
    return [sum(lp) / len(lp) for lp in lps]


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(a, b, strict=True))


@rg.function
def story(s: Any) -> None:
    s += PROMPT
    s += rg.gen("x", max_tokens=10)  # the run's default adapter
    s += rg.gen("y", max_tokens=6, lora="b")  # always adapter b


# ------------------------------------------------------------------------------------------------ gen
def test_gen_runs_under_the_default_and_the_call_adapter(backend: Any, http: httpx.Client) -> None:
    base, under_a = native(http, PROMPT, None, max_new_tokens=10)["text"], native(http, PROMPT, "a", max_new_tokens=10)
    assert base != under_a["text"]  # the adapter changes the greedy output: a dropped adapter cannot pass

    state = story.run(backend=backend, temperature=0, lora="a")
    assert state["x"] == under_a["text"]
    assert state["y"] == native(http, PROMPT + state["x"], "b", max_new_tokens=6)["text"]  # the call's own wins
    plain = story.run(backend=backend, temperature=0)  # no default: the base model, except the lora="b" call
    assert plain["x"] == base
    assert plain["y"] == native(http, PROMPT + base, "b", max_new_tokens=6)["text"]

    streamed = story.run(backend=backend, temperature=0, lora="a", stream=True)
    assert "".join(streamed.text_iter()) == state.text()  # SSE /generate carries the adapter too
    async_state = asyncio.run(story.run_async(backend=backend, temperature=0, lora="a"))
    assert async_state["x"] == state["x"] and async_state["y"] == state["y"]


def test_run_batch_warms_the_prefix_under_the_default_adapter(backend: Any, http: httpx.Client) -> None:
    prefix = "Tom had a small blue boat. Every day he sailed on the lake with his dog.\n"

    @rg.function
    def cont(s: Any, start: str) -> None:
        s += prefix
        s += start
        s += rg.gen("x", max_tokens=5)

    starts = ["One day", "Then"]
    states = cont.run_batch([{"start": st} for st in starts], backend=backend, temperature=0, lora="a", num_threads=1)
    prefix_tokens = len(tokenize(http, prefix))
    # one thread: the first program runs alone, so only the warm-up (under adapter a) can have cached its prefix
    assert states[0].get_meta_info("x")["cached_tokens"] >= prefix_tokens - 1
    for state, st in zip(states, starts, strict=True):
        assert state["x"] == native(http, prefix + st, "a", max_new_tokens=5)["text"]
    # the base model's namespace was never warmed: at most the BOS every base prompt shares is cached there
    assert native(http, prefix + "X", None, max_new_tokens=1)["meta_info"]["cached_tokens"] <= 1


def test_fork_warm_up_runs_under_the_default_adapter_and_branches_inherit_it(backend: Any, http: httpx.Client) -> None:
    prefix = "Anna found a red kite in the garden. The wind was strong that morning.\n"

    @rg.function
    def tree(s: Any) -> None:
        s += prefix
        forks = s.fork(2)
        forks[0] += rg.gen("idea", max_tokens=6)  # inherits the run's adapter a
        forks[1] += rg.gen("idea", max_tokens=6, lora="b")
        forks.join()

    state = tree.run(backend=backend, temperature=0, lora="a")
    metas = state.get_meta_info("idea")["branches"]
    assert metas[0]["cached_tokens"] >= len(tokenize(http, prefix)) - 1  # the warm-up was under a
    assert metas[1]["cached_tokens"] <= 1  # adapter b's KV is its own: at most its BOS from earlier b calls
    assert state["idea"] == [native(http, prefix, lora, max_new_tokens=6)["text"] for lora in ("a", "b")]


# ------------------------------------------------------------------------------------------------ select
SELECT_PROMPT, CHOICES = "Once upon a time, there was a little", (" girl", " dog", " tree")


@rg.function
def pick(s: Any) -> None:
    s += SELECT_PROMPT
    s += rg.select("c", choices=list(CHOICES))  # the run's default adapter
    s += rg.gen("d", choices=list(CHOICES), lora="a")  # gen with choices is a select: its lora goes along


def test_select_scores_under_the_adapter(backend: Any, http: httpx.Client) -> None:
    means = {lora: choice_means(http, SELECT_PROMPT, CHOICES, lora) for lora in (None, "a", "b")}
    assert not close(means[None], means["b"]) and not close(means["a"], means["b"])  # the adapters change scores

    state = pick.run(backend=backend, lora="b")
    assert close(state.get_meta_info("c")["scores"], means["b"])
    assert state["c"] == CHOICES[max(range(3), key=lambda i: means["b"][i])]
    after = choice_means(http, SELECT_PROMPT + state["c"], CHOICES, "a")
    assert close(state.get_meta_info("d")["scores"], after)
    assert state["d"] == CHOICES[max(range(3), key=lambda i: after[i])]


def test_unconditional_select_scores_the_choices_alone_under_the_adapter(backend: Any, http: httpx.Client) -> None:
    @rg.function
    def pick_pmi(s: Any) -> None:
        s += SELECT_PROMPT
        s += rg.select("c", choices=list(CHOICES), choices_method="unconditional_likelihood_normalized", lora="a")

    meta = pick_pmi.run(backend=backend).get_meta_info("c")
    bos = tokenize(http, "")
    for choice, got in zip(CHOICES, meta["unconditional_token_logprobs"], strict=True):
        full, start = choice_ids(http, SELECT_PROMPT, choice)
        assert close(got, input_logprobs(http, bos + full[start:], len(bos), "a"))
        assert not close(got, input_logprobs(http, bos + full[start:], len(bos), None))


# ------------------------------------------------------------------------------------------------ OpenAI backend
def test_openai_backend_sends_the_adapter_as_model(server: ServerHandle, http: httpx.Client) -> None:
    comp = rg.OpenAI(model="unused-base", base_url=server.base_url + "/v1", api_key="EMPTY", is_chat_model=False)
    chat = rg.OpenAI(model="unused-base", base_url=server.base_url + "/v1", api_key="EMPTY")

    @rg.function
    def chat_turn(s: Any) -> None:
        s += rg.user("Tell me about Lily.")
        s += rg.assistant(rg.gen("reply", max_tokens=8, lora="b"))

    try:
        state = story.run(backend=comp, temperature=0, lora="a")
        picked = pick.run(backend=comp, lora="b")
        replied = chat_turn.run(backend=chat, temperature=0)
    finally:
        comp.close()
        chat.close()
    assert state["x"] == native(http, PROMPT, "a", max_new_tokens=10)["text"]
    assert state["y"] == native(http, PROMPT + state["x"], "b", max_new_tokens=6)["text"]
    assert close(picked.get_meta_info("c")["scores"], choice_means(http, SELECT_PROMPT, CHOICES, "b"))
    assert close(picked.get_meta_info("d")["scores"], choice_means(http, SELECT_PROMPT + picked["c"], CHOICES, "a"))
    body = {"model": "b", "messages": [{"role": "user", "content": "Tell me about Lily."}], "max_tokens": 8,
            "temperature": 0.0}
    ref = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert replied["reply"] == ref


# ------------------------------------------------------------------------------------------------ errors
def test_unknown_adapter_is_a_clear_error(server: ServerHandle, backend: Any) -> None:
    with pytest.raises(BackendRequestError, match="lora_path: no LoRA adapter named 'nope'"):
        story.run(backend=backend, lora="nope")
    with pytest.raises(BackendRequestError, match="lora_path.*'nope'"):
        pick.run(backend=backend, lora="nope")
    with pytest.raises(BackendRequestError, match="The model `nope` does not exist"):
        tool_turn.run(backend=backend, lora="nope")  # a tool-call gen is a chat completion: the adapter is its model
    chat = rg.OpenAI(model="base", base_url=server.base_url + "/v1", api_key="EMPTY", is_chat_model=False)
    try:
        with pytest.raises(BackendRequestError, match="The model `nope` does not exist"):
            story.run(backend=chat, lora="nope")
    finally:
        chat.close()


def get_weather(city: str) -> str:
    """The weather in ``city``."""
    return "sunny"


@rg.function
def tool_turn(s: Any) -> None:
    s += rg.user("What is the weather in Paris?")
    s += rg.assistant(rg.gen("calls", tools=[get_weather], max_tokens=24))


def test_bad_lora_values_and_backends_that_cannot_send_it() -> None:
    for bad in ("", 3):
        with pytest.raises(ValueError, match="lora: must be a LoRA adapter name"):
            rg.gen("x", lora=bad)
        with pytest.raises(ValueError, match="lora: must be a LoRA adapter name"):
            rg.select("x", choices=["a", "b"], lora=bad)
        with pytest.raises(ValueError, match="lora: must be a LoRA adapter name"):
            story.run(backend=ScriptedBackend(), lora=bad)
    scripted = ScriptedBackend()
    with pytest.raises(BackendRequestError, match="lora: ScriptedBackend cannot run a call under a LoRA adapter"):
        story.run(backend=scripted, lora="a")  # refused before anything runs
    with pytest.raises(BackendRequestError, match="lora: ScriptedBackend cannot"):
        story.run(backend=scripted)  # the call-level lora="b"
    assert [c[0] for c in scripted.calls] == ["gen"]  # the base-model gen ran, the adapter one was refused
    with pytest.raises(BackendRequestError, match="lora: ScriptedBackend cannot"):
        story.run_batch([{}, {}], backend=scripted, lora="a")


# ------------------------------------------------------------------------------------------------ Runtime
def test_runtime_flags_for_adapters(adapters: dict[str, Path], http: httpx.Client) -> None:
    assert server_cli_args("m", lora_paths={"a": "/x", "b": "/y"}, max_loras_per_batch=2) == [
        "--model-path", "m", "--lora-paths", "a=/x", "b=/y", "--max-loras-per-batch", "2"
    ]
    assert server_cli_args("m", lora_paths=["a=/x"], enable_lora=True)[2:] == ["--lora-paths", "a=/x", "--enable-lora"]
    for bad in ([], [1], {"a": 1}):  # no CLI spelling (the server's multi-value flags take strings)
        with pytest.raises(TypeError, match="lora_paths"):
            server_cli_args("m", lora_paths=bad)
    relative = os.path.relpath(adapters["a"])  # the server runs elsewhere: the Runtime makes it absolute
    with Runtime(str(STORIES), lora_paths={"a": relative}, max_total_tokens=2048, num_threads=1) as rt:
        assert rt.server_args["lora_paths"] == [f"a={adapters['a']}"]
        with pytest.raises(BackendRequestError, match="lora_path: no LoRA adapter named 'b'"):
            story.run(backend=rt, temperature=0, lora="a")  # its y asks for b, which rt does not serve
        state = pick.run(backend=rt, lora="a")  # both selects under a, as on the other server
        assert close(state.get_meta_info("c")["scores"], choice_means(http, SELECT_PROMPT, CHOICES, "a"))
