"""The DSL against a real server: one module-scoped stories260K server (chatml template), greedy everywhere.

Every generated value is checked against an independent call of the server's native API on the same prompt text
(``/generate``, ``/tokenize``), so these tests pin down what the frontend sends, not only that it runs. (The
interpreter's own semantics on a scripted backend are in test_frontend_interpreter.py.)
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import jinja2
import pytest
from pydantic import BaseModel
from server_fixtures import ServerHandle, start_server

import radixgen as rg
from radixgen.backends.base import BackendRequestError

STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside.\n"
BAD_SCHEMA = {"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_server(["--chat-template", "chatml"])
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def http(server: ServerHandle) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def backend(server: ServerHandle) -> Iterator[Any]:
    be = rg.RuntimeEndpoint(server.base_url)
    yield be
    be.close()


def generate(http: httpx.Client, text: str, **sampling: Any) -> dict[str, Any]:
    """An independent greedy ``/generate`` of ``text`` (sampling params in the native API's names)."""
    body = {"text": text, "sampling_params": {"temperature": 0.0, **sampling}}
    resp = http.post("/generate", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def tokenize(http: httpx.Client, text: str) -> list[int]:
    return http.post("/tokenize", json={"text": text}).json()["input_ids"]


def choice_logprobs(http: httpx.Client, prompt: str, choice: str) -> list[float]:
    """Logprobs of ``choice``'s tokens after ``prompt``: the tokens of prompt+choice past their common prefix
    with the prompt's tokens, scored by a prefill-only request with ``logprob_start_len`` at that prefix."""
    p_ids, full = tokenize(http, prompt), tokenize(http, prompt + choice)
    start = next((i for i, (a, b) in enumerate(zip(p_ids, full, strict=False)) if a != b), len(p_ids))
    body = {"input_ids": full, "sampling_params": {"max_new_tokens": 0}, "return_logprob": True}
    out = http.post("/generate", json={**body, "logprob_start_len": start}).json()
    entries = out["meta_info"]["input_token_logprobs"]
    assert len(entries) == len(full) - start and all(e[0] is not None for e in entries)
    return [float(e[0]) for e in entries]


def render_chatml(http: httpx.Client, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The server's own chat template (chatml), rendered with plain Jinja."""
    tpl = http.get("/get_chat_template").json()
    assert tpl["name"] == "chatml"
    return jinja2.Template(tpl["template"]).render(messages=messages, add_generation_prompt=add_generation_prompt)


def line_of(marker: str) -> int:
    """The line number of the (unique) line of this file holding ``marker`` in a trailing comment."""
    with open(__file__) as f:
        hits = [i for i, line in enumerate(f, 1) if line.rstrip().endswith(f"# {marker}")]
    assert len(hits) == 1, marker
    return hits[0]


# ------------------------------------------------------------------------------------------------ gen
def test_gen_equals_independent_generate_and_meta(backend: Any, http: httpx.Client) -> None:
    @rg.function
    def story(s: Any) -> None:
        s += "Once upon a time"
        s += rg.gen("a", max_tokens=8, return_logprob=True)
        s += " Then"
        s += rg.gen("b", max_tokens=12, stop="girl")
        s += "\n"
        s += rg.gen("c", max_tokens=5, min_tokens=5, stop=[" ", ","])

    state = story.run(backend=backend, temperature=0)
    ref_a = generate(http, "Once upon a time", max_new_tokens=8)
    assert state["a"] == ref_a["text"] and state["a"]
    meta_a = state.get_meta_info("a")
    assert meta_a["prompt_tokens"] == ref_a["meta_info"]["prompt_tokens"] == len(tokenize(http, "Once upon a time"))
    assert meta_a["completion_tokens"] == 8 and meta_a["finish_reason"]["type"] == "length"
    assert isinstance(meta_a["cached_tokens"], int) and meta_a["cached_tokens"] >= 0
    logprobs = meta_a["output_token_logprobs"]
    assert len(logprobs) == 8 and all(lp[0] <= 0 for lp in logprobs)
    assert [lp[1] for lp in logprobs] == ref_a["output_ids"]

    prompt_b = "Once upon a time" + state["a"] + " Then"
    ref_b = generate(http, prompt_b, max_new_tokens=12, stop=["girl"])
    assert state["b"] == ref_b["text"] and "girl" not in state["b"]
    meta_b = state.get_meta_info("b")
    assert meta_b["finish_reason"]["type"] == ref_b["meta_info"]["finish_reason"]["type"]
    # consecutive gens: the second call reuses the first call's prompt (and output) from the radix cache
    assert meta_b["cached_tokens"] >= meta_a["prompt_tokens"] - 1

    # min_tokens: neither stop string may end it before 5 tokens
    meta_c = state.get_meta_info("c")
    assert meta_c["completion_tokens"] == 5
    ref_c = generate(http, prompt_b + state["b"] + "\n", max_new_tokens=5, min_new_tokens=5, stop=[" ", ","])
    assert state["c"] == ref_c["text"]
    assert state.text() == prompt_b + state["b"] + "\n" + state["c"]
    usage = state.usage()
    assert usage["calls"] == 3 and usage["completion_tokens"] == sum(
        state.get_meta_info(n)["completion_tokens"] for n in "abc"
    )


def test_roles_messages_and_text_are_the_chatml_rendering(backend: Any, http: httpx.Client) -> None:
    @rg.function
    def chat(s: Any, question: str) -> None:
        s += rg.system("You tell short stories.")
        with s.user():
            s += "Tell me about "
            s += question
        s += rg.assistant(rg.gen("reply", max_tokens=10))

    state = chat.run(question="Lily.", backend=backend, temperature=0)
    messages = [
        {"role": "system", "content": "You tell short stories."},
        {"role": "user", "content": "Tell me about Lily."},
    ]
    prompt = render_chatml(http, messages, add_generation_prompt=True)
    ref = generate(http, prompt, max_new_tokens=10, stop=["<|im_end|>"])
    assert state["reply"] == ref["text"]
    assert state.messages() == [*messages, {"role": "assistant", "content": ref["text"]}]
    assert state.text() == render_chatml(http, state.messages())


def test_var_scope_captures_text_and_generations(backend: Any, http: httpx.Client) -> None:
    @rg.function
    def scoped(s: Any) -> None:
        s += "Once upon a time"
        with s.var_scope("part"):
            s += ", there was"
            s += rg.gen("x", max_tokens=4)
        s += "."

    state = scoped.run(backend=backend, temperature=0)
    assert state["part"] == ", there was" + state["x"]
    assert state["x"] == generate(http, "Once upon a time, there was", max_new_tokens=4)["text"]
    assert state.text() == "Once upon a time" + state["part"] + "."


# ------------------------------------------------------------------------------------------------ select
@pytest.mark.parametrize(
    "prompt, choices",
    [
        ("Once upon a time, there was a little", (" girl", " dog", " tree")),
        ("Lily went to the park. She saw a", (" big red ball", " cat", " bird that sang")),
    ],
)
def test_select_picks_the_independent_argmax(backend: Any, http: httpx.Client, prompt: str, choices: Any) -> None:
    mine = [choice_logprobs(http, prompt, c) for c in choices]
    means = [sum(lp) / len(lp) for lp in mine]
    best = max(range(len(choices)), key=lambda i: means[i])

    @rg.function
    def pick(s: Any, method: str) -> None:
        s += prompt
        s += rg.select("c", choices=list(choices), choices_method=method)
        s += "."

    state = pick.run(method="token_length_normalized", backend=backend)
    assert state["c"] == choices[best] and state.text() == prompt + choices[best] + "."
    meta = state.get_meta_info("c")
    assert meta["choices_method"] == "token_length_normalized"
    assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(meta["scores"], means, strict=True))
    for got, ref in zip(meta["input_token_logprobs"], mine, strict=True):
        assert len(got) == len(ref) and all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(got, ref, strict=True))

    greedy = pick.run(method="greedy_token_selection", backend=backend)
    # greedy token selection: the best first token wins unless tied (the choices here start differently)
    assert greedy["c"] == choices[max(range(len(choices)), key=lambda i: mine[i][0])]
    uncond = pick.run(method="unconditional_likelihood_normalized", backend=backend)
    assert uncond["c"] in choices
    umeta = uncond.get_meta_info("c")
    assert len(umeta["unconditional_token_logprobs"]) == len(choices) and len(umeta["scores"]) == len(choices)


# ------------------------------------------------------------------------------------------------ fork
def test_fork_branches_hit_the_shared_prefix_and_join_in_order(backend: Any, http: httpx.Client) -> None:
    suffixes = ["She saw a", "He had a", "They found a"]

    @rg.function
    def tree(s: Any) -> None:
        s += STORY
        forks = s.fork(len(suffixes))
        for f, suffix in zip(forks, suffixes, strict=True):
            f += suffix
        forks += rg.gen("idea", max_tokens=6)
        forks.join()
        s += "The end."

    state = tree.run(backend=backend, temperature=0)
    prefix_tokens = len(tokenize(http, STORY))
    refs = [generate(http, STORY + suffix, max_new_tokens=6)["text"] for suffix in suffixes]
    assert state["idea"] == refs  # every branch finished and join gathered them in branch order
    metas = state.get_meta_info("idea")["branches"]
    assert len(metas) == 3 and all(m["cached_tokens"] >= prefix_tokens for m in metas)
    assert state.text() == STORY + "The end."
    assert state.usage()["calls"] == 4  # the prefix prefill + three branch gens


# ------------------------------------------------------------------------------------------------ batch
def test_run_batch_keeps_order_and_isolates_errors(backend: Any, http: httpx.Client) -> None:
    @rg.function
    def cont(s: Any, start: str, schema: Any = None) -> None:
        s += "Once upon a time, " + start
        if schema is None:
            s += rg.gen("x", max_tokens=5)
        else:
            s += rg.gen("x", max_tokens=5, json_schema=schema)

    starts = ["there was", "a cat", "Lily", "Tom", "the sun"]
    batch: list[dict[str, Any]] = [{"start": st} for st in starts]
    batch[2]["schema"] = BAD_SCHEMA
    states = cont.run_batch(batch, backend=backend, temperature=0, progress_bar=False)
    assert len(states) == len(starts)
    for i, (state, st) in enumerate(zip(states, starts, strict=True)):
        if i == 2:
            assert isinstance(state.error(), BackendRequestError) and "json_schema" in str(state.error())
            assert not state.ok
            with pytest.raises(BackendRequestError):
                state["x"]
        else:
            assert state.ok and state["x"] == generate(http, "Once upon a time, " + st, max_new_tokens=5)["text"]


# ------------------------------------------------------------------------------------------------ streaming
@rg.function
def two_gens(s: Any) -> None:
    s += "Once upon a time"
    s += rg.gen("a", max_tokens=6)
    s += ". Then"
    s += rg.gen("b", max_tokens=6)


def test_streaming_whole_text_and_one_variable(backend: Any) -> None:
    full = two_gens.run(backend=backend, temperature=0)
    state = two_gens.run(backend=backend, temperature=0, stream=True)
    pieces = list(state.text_iter())
    assert "".join(pieces) == state.text() == full.text() and len(pieces) > 3
    state2 = two_gens.run(backend=backend, temperature=0, stream=True)
    assert "".join(state2.text_iter("b")) == state2["b"] == full["b"]

    async def consume() -> tuple[str, str]:
        s3 = two_gens.run(backend=backend, temperature=0, stream=True)
        text = "".join([p async for p in s3.text_async_iter()])
        return text, s3.text()

    streamed, text = asyncio.run(consume())
    assert streamed == text == full.text()


# ------------------------------------------------------------------------------------------------ typed
class Pet(BaseModel):
    kind: Literal["cat", "dog"]
    happy: bool


def test_typed_outputs(backend: Any) -> None:
    @rg.function
    def typed(s: Any) -> None:
        s += "Lily had 3 cats and 2 dogs. The number of cats is "
        s += rg.gen("n", dtype=int, max_tokens=6)
        s += ". Half of that is "
        s += rg.gen("f", dtype=float, max_tokens=8)
        s += ". Is it true? "
        s += rg.gen("b", dtype=bool, max_tokens=8)
        s += "\nPet: "
        s += rg.gen("pet", json_schema=Pet, max_tokens=40)

    state = typed.run(backend=backend, temperature=0)
    assert isinstance(state["n"], int) and not isinstance(state["n"], bool)
    assert str(state["n"]) in state.get_meta_info("n")["text"]
    assert isinstance(state["f"], float) and isinstance(state["b"], bool)
    pet = state["pet"]
    assert isinstance(pet, Pet)
    raw = state.get_meta_info("pet")["text"]
    assert raw in state.text() and Pet.model_validate_json(raw) == pet


# ------------------------------------------------------------------------------------------------ async
def test_run_async_with_an_async_program(backend: Any, http: httpx.Client) -> None:
    @rg.function
    async def agent(s: Any, start: str) -> None:
        s += "Once upon a time, " + start
        s += rg.gen("x", max_tokens=4)
        x = await s.aget("x")
        s += " (" + str(len(x)) + ")"
        s += rg.gen("y", max_tokens=3)

    async def main() -> list[Any]:
        return list(await asyncio.gather(*(agent.run_async(start=st, backend=backend, temperature=0) for st in "AB")))

    states = asyncio.run(main())
    for state, st in zip(states, "AB", strict=True):
        assert state["x"] == generate(http, "Once upon a time, " + st, max_new_tokens=4)["text"]
        prompt = "Once upon a time, " + st + state["x"] + f" ({len(state['x'])})"
        assert state["y"] == generate(http, prompt, max_new_tokens=3)["text"]


# ------------------------------------------------------------------------------------------------ control flow
def test_python_control_flow_over_generated_values(backend: Any, http: httpx.Client) -> None:
    @rg.function
    def loop(s: Any) -> None:
        s += "Once upon a time"
        lengths = []
        for i in range(3):
            s += f"\nStep {i}:"
            s += rg.gen("step", max_tokens=4)
            lengths.append(len(s["step"]))
            if "Lily" in s["step"]:
                s += " [Lily]"
        s += "\nTotal " + str(sum(lengths))

    state = loop.run(backend=backend, temperature=0)
    # replay the same control flow with independent /generate calls
    text, lengths = "Once upon a time", []
    for i in range(3):
        text += f"\nStep {i}:"
        out = generate(http, text, max_new_tokens=4)["text"]
        text += out
        lengths.append(len(out))
        if "Lily" in out:
            text += " [Lily]"
    text += "\nTotal " + str(sum(lengths))
    assert state.text() == text


# ------------------------------------------------------------------------------------------------ OpenAI backend
@pytest.fixture(scope="module")
def model_name(http: httpx.Client) -> str:
    return http.get("/v1/models").json()["data"][0]["id"]


SYSTEM, USER = "You tell short stories.", "Tell me about Lily."


def chat_completion(http: httpx.Client, model: str, messages: list[dict[str, str]], **kw: Any) -> dict[str, Any]:
    body = {"model": model, "messages": messages, "temperature": 0.0, **kw}
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_openai_backend_chat_roles_and_gen(server: ServerHandle, http: httpx.Client, model_name: str) -> None:
    chat_be = rg.OpenAI(model=model_name, base_url=server.base_url + "/v1", api_key="EMPTY")

    @rg.function
    def chat(s: Any) -> None:
        s += rg.system(SYSTEM)
        with s.user():
            s += USER
        s += rg.assistant(rg.gen("reply", max_tokens=10))

    try:
        state = chat.run(backend=chat_be, temperature=0)
    finally:
        chat_be.close()
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    ref = chat_completion(http, model_name, messages, max_tokens=10)
    assert state["reply"] == ref["choices"][0]["message"]["content"]
    assert state.messages() == [*messages, {"role": "assistant", "content": state["reply"]}]
    assert state.text() == render_chatml(http, state.messages())
    meta = state.get_meta_info("reply")
    assert meta["prompt_tokens"] == ref["usage"]["prompt_tokens"] and meta["completion_tokens"] == 10


def test_openai_backend_chat_json_schema(server: ServerHandle, http: httpx.Client, model_name: str) -> None:
    chat_be = rg.OpenAI(model=model_name, base_url=server.base_url + "/v1", api_key="EMPTY")

    @rg.function
    def extract(s: Any) -> None:
        s += rg.user("What pet did Lily have?")
        s += rg.assistant(rg.gen("pet", json_schema=Pet, max_tokens=40))

    try:
        state = extract.run(backend=chat_be, temperature=0)
    finally:
        chat_be.close()
    # what the DSL sends for a model: strict (every object closed), as OpenAI's SDK does
    fmt = {"type": "json_schema", "json_schema": {"name": "output", "schema": Pet.model_json_schema(), "strict": True}}
    ref = chat_completion(
        http, model_name, [{"role": "user", "content": "What pet did Lily have?"}], max_tokens=40, response_format=fmt
    )
    raw = ref["choices"][0]["message"]["content"]
    assert isinstance(state["pet"], Pet) and state["pet"] == Pet.model_validate_json(raw)
    assert state.get_meta_info("pet")["text"] == raw


def test_openai_backend_completions_select_and_gen(server: ServerHandle, http: httpx.Client, model_name: str) -> None:
    comp_be = rg.OpenAI(model=model_name, base_url=server.base_url + "/v1", api_key="EMPTY", is_chat_model=False)
    prompt, choices = "Once upon a time, there was a little", [" girl", " dog", " tree"]

    @rg.function
    def pick(s: Any) -> None:
        s += prompt
        s += rg.select("c", choices=choices)
        s += rg.gen("after", max_tokens=4)

    try:
        state = pick.run(backend=comp_be, temperature=0)
    finally:
        comp_be.close()
    means = [sum(lp) / len(lp) for lp in (choice_logprobs(http, prompt, c) for c in choices)]
    assert state["c"] == choices[max(range(3), key=lambda i: means[i])]
    assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(state.get_meta_info("c")["scores"], means, strict=True))
    assert state["after"] == generate(http, prompt + state["c"], max_new_tokens=4)["text"]


# ------------------------------------------------------------------------------------------------ errors
def test_failing_program_raises_with_the_program_line_and_server_survives(
    server: ServerHandle, backend: Any, http: httpx.Client
) -> None:
    @rg.function
    def bad_regex(s: Any) -> None:
        s += "Once upon a time"
        s += rg.gen("ok", max_tokens=2)
        s += rg.gen("x", max_tokens=4, regex="(")  # failing-regex-line

    with pytest.raises(BackendRequestError, match="regex") as info:
        bad_regex.run(backend=backend, temperature=0)
    notes = getattr(info.value, "__notes__", [])
    assert any(f"{__file__}:{line_of('failing-regex-line')}" in n and "bad_regex" in n for n in notes), notes

    @rg.function
    def user_bug(s: Any) -> None:
        s += "Once upon a time"
        s += rg.gen("x", max_tokens=2)
        {}[s["x"]]  # user-bug-line

    with pytest.raises(KeyError) as kinfo:
        user_bug.run(backend=backend, temperature=0)
    tb = kinfo.tb
    frames = []
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    assert (__file__, line_of("user-bug-line")) in frames

    @rg.function
    def too_short(s: Any) -> None:
        s += "Lily is "
        s += rg.gen("age", dtype=int, max_tokens=0)  # typed-error-line

    with pytest.raises(rg.TypedOutputError, match="age") as tinfo:
        too_short.run(backend=backend)
    assert any(f":{line_of('typed-error-line')}" in n for n in getattr(tinfo.value, "__notes__", []))

    # the server keeps serving
    assert http.get("/health").status_code == 200
    assert (
        two_gens.run(backend=backend, temperature=0)["a"]
        == generate(http, "Once upon a time", max_new_tokens=6)["text"]
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
