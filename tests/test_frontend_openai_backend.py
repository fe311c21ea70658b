"""The DSL's ``OpenAI`` backend against this project's own OpenAI-compatible server (stories260K, greedy).

Every result is checked against an independent computation through the official ``openai`` client: the same
greedy request made directly, or choice scores recomputed from per-choice ``echo`` calls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import jsonschema
import openai
import pytest
from server_fixtures import STORIES, ServerHandle, free_port, start_server

from radixgen.backends.base import BackendError, BackendRequestError, PromptView
from radixgen.backends.openai_backend import OpenAI
from radixgen.choices import token_length_normalized, unconditional_likelihood_normalized
from radixgen.sampling import SamplingParams

MODEL = str(STORIES)
PROMPT = "Once upon a time, there was a little girl named Lily. She"
MESSAGES = ({"role": "system", "content": "You tell stories."}, {"role": "user", "content": "Tell me a story."})
CHAT_PROMPT = PromptView(text="(display only)", messages=MESSAGES, open_role="assistant")
GREEDY = SamplingParams(max_tokens=24, temperature=0.0)
# closed: a dict schema is sent as written, and JSON Schema's default admits other keys (issue 17)
SCHEMA = {
    "type": "object", "properties": {"happy": {"type": "boolean"}}, "required": ["happy"], "additionalProperties": False
}


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerHandle]:
    handle = start_server(["--chat-template", "chatml"])
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def direct(srv: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key="EMPTY")


@pytest.fixture(scope="module")
def chat(srv: ServerHandle) -> Iterator[OpenAI]:
    with OpenAI(MODEL, f"{srv.base_url}/v1") as backend:
        yield backend


@pytest.fixture(scope="module")
def comp(srv: ServerHandle) -> Iterator[OpenAI]:
    with OpenAI(MODEL, f"{srv.base_url}/v1", is_chat_model=False) as backend:
        yield backend


def test_chat_gen_matches_direct_call(chat: OpenAI, direct: openai.OpenAI) -> None:
    want = direct.chat.completions.create(model=MODEL, messages=list(MESSAGES), max_tokens=24, temperature=0.0)
    out = chat.generate(CHAT_PROMPT, GREEDY)
    assert out.text == want.choices[0].message.content and out.text
    assert out.meta["prompt_tokens"] == want.usage.prompt_tokens
    assert out.meta["completion_tokens"] == want.usage.completion_tokens
    assert out.meta["finish_reason"]["type"] == want.choices[0].finish_reason
    assert out.meta["id"].startswith("chatcmpl-") and out.meta["e2e_latency"] > 0
    template = chat.chat_template()  # display-only template for s.text()
    assert template is not None and template.role_prefix("user", None, True) == "<|im_start|>user\n"


def test_chat_logprobs(chat: OpenAI, direct: openai.OpenAI) -> None:
    params = GREEDY.with_updates(return_logprob=True, top_logprobs_num=2)
    want = direct.chat.completions.create(
        model=MODEL, messages=list(MESSAGES), max_tokens=24, temperature=0.0, logprobs=True, top_logprobs=2
    )
    out = chat.generate(CHAT_PROMPT, params)
    lps = want.choices[0].logprobs.content
    assert [e[2] for e in out.meta["output_token_logprobs"]] == [t.token for t in lps]
    assert [e[0] for e in out.meta["output_token_logprobs"]] == pytest.approx([t.logprob for t in lps], abs=1e-4)
    assert [len(top) for top in out.meta["output_top_logprobs"]] == [2] * len(lps)
    assert "".join(t[2] for t in out.meta["output_token_logprobs"]) == out.text


def test_completions_gen_matches_direct_call(comp: OpenAI, direct: openai.OpenAI) -> None:
    want = direct.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0.0, logprobs=3)
    out = comp.generate(PromptView(text=PROMPT), GREEDY.with_updates(return_logprob=True, top_logprobs_num=3))
    assert out.text == want.choices[0].text and out.text
    got = [e[0] for e in out.meta["output_token_logprobs"]]  # a cached prefix may change the float rounding
    assert got == pytest.approx(want.choices[0].logprobs.token_logprobs, abs=1e-4)
    top = out.meta["output_top_logprobs"][0]
    assert len(top) == 3 and top[0][0] >= top[1][0] >= top[2][0]
    assert out.meta["completion_tokens"] == want.usage.completion_tokens == 24
    assert out.meta["finish_reason"] == {"type": "length"}
    assert comp.chat_template() is None  # completions mode without a named template: roles cannot be used


@pytest.mark.parametrize("mode", ["chat", "completions"])
def test_streaming_deltas_concatenate_to_text(mode: str, chat: OpenAI, comp: OpenAI) -> None:
    backend, prompt = (chat, CHAT_PROMPT) if mode == "chat" else (comp, PromptView(text=PROMPT))
    params = GREEDY.with_updates(return_logprob=True)
    whole = backend.generate(prompt, params)
    deltas: list[str] = []
    streamed = backend.generate(prompt, params, on_delta=deltas.append)
    assert len(deltas) > 1 and "".join(deltas) == streamed.text == whole.text
    for key in ("prompt_tokens", "completion_tokens", "finish_reason"):
        assert streamed.meta[key] == whole.meta[key], key
    assert [e[2] for e in streamed.meta["output_token_logprobs"]] == [e[2] for e in whole.meta["output_token_logprobs"]]


@pytest.mark.parametrize("mode", ["chat", "completions"])
def test_json_schema_output_is_valid(mode: str, chat: OpenAI, comp: OpenAI) -> None:
    backend, prompt = (chat, CHAT_PROMPT) if mode == "chat" else (comp, PromptView(text=PROMPT))
    out = backend.generate(prompt, SamplingParams(max_tokens=64, temperature=0.0, json_schema=SCHEMA))
    jsonschema.validate(json.loads(out.text), SCHEMA)
    assert out.meta["finish_reason"]["type"] == "stop"


def test_cached_tokens_reported(comp: OpenAI) -> None:
    prompt = PromptView(text=PROMPT + " liked to sing songs about the sun.")
    comp.generate(prompt, SamplingParams(max_tokens=2))
    again = comp.generate(prompt, SamplingParams(max_tokens=2))
    assert again.meta["cached_tokens"] > 0 and again.meta["cached_tokens"] < again.meta["prompt_tokens"] + 1


def _echo_logprobs(direct: openai.OpenAI, text: str) -> list[float | None]:
    resp = direct.completions.create(model=MODEL, prompt=text, max_tokens=0, echo=True, logprobs=1)
    return list(resp.choices[0].logprobs.token_logprobs)


def test_select_matches_independent_scores(comp: OpenAI, direct: openai.OpenAI) -> None:
    choices = (" dog", " little girl", " big red ball")
    prompt = "Once upon a time, there was a"
    n_prompt = len(_echo_logprobs(direct, prompt))  # space-led choices tokenize after the prompt's own tokens
    cond = [_echo_logprobs(direct, prompt + c)[n_prompt:] for c in choices]
    want = [sum(lp) / len(lp) for lp in cond]  # type: ignore[arg-type]
    out = comp.select(PromptView(text=prompt), choices, token_length_normalized)
    assert out.index == max(range(3), key=lambda i: want[i]) and out.choice == choices[out.index]
    assert out.scores == pytest.approx(want, abs=1e-4)
    assert [len(lp) for lp in out.meta["input_token_logprobs"]] == [len(lp) for lp in cond]
    assert out.meta["choices"] == list(choices) and out.meta["choices_method"] == "token_length_normalized"
    assert out.meta["normalized_prompt_logprobs"] == pytest.approx(want, abs=1e-4)
    assert out.meta["prompt_tokens"] > 0 and "cached_tokens" in out.meta

    uncond = [_echo_logprobs(direct, c)[1:] for c in choices]  # after the server's BOS
    pmi = [sum(a - b for a, b in zip(x, y, strict=True)) / len(x) for x, y in zip(cond, uncond, strict=True)]  # type: ignore[operator]
    out = comp.select(PromptView(text=prompt), choices, unconditional_likelihood_normalized)
    assert out.scores == pytest.approx(pmi, abs=1e-4)
    assert out.index == max(range(3), key=lambda i: pmi[i])


def test_chat_mode_misuse_raises(chat: OpenAI) -> None:
    user_turn = PromptView(text="", messages=MESSAGES[:1], open_role="user")
    outside = PromptView(text="hi", messages=MESSAGES, open_role="assistant", outside_text="hi")
    after_text = PromptView(text="", messages=MESSAGES, open_role="assistant", open_content="Sure:")
    no_role = PromptView(text="hi", messages=MESSAGES)
    for prompt in (user_turn, outside, after_text, no_role):
        with pytest.raises(BackendRequestError, match="chat model: .*is_chat_model=False"):
            chat.generate(prompt, GREEDY)
    with pytest.raises(BackendRequestError, match="select needs prompt logprobs"):
        chat.select(CHAT_PROMPT, ("a", "b"), token_length_normalized)


def test_errors_are_translated(comp: OpenAI) -> None:
    with pytest.raises(BackendRequestError, match="HTTP 400: regex"):
        comp.generate(PromptView(text=PROMPT), SamplingParams(regex="(("))
    with OpenAI(MODEL, f"http://127.0.0.1:{free_port()}/v1", is_chat_model=False, max_retries=0) as dead:
        with pytest.raises(BackendError, match="cannot reach") as info:
            dead.generate(PromptView(text=PROMPT), GREEDY)
        assert not isinstance(info.value, BackendRequestError)
    assert comp.cache_prefix(PromptView(text=PROMPT)) == {}


def test_async_on_two_event_loops(srv: ServerHandle, chat: OpenAI, comp: OpenAI) -> None:
    choices = (" dog", " cat")
    want = (
        chat.generate(CHAT_PROMPT, GREEDY).text,
        comp.generate(PromptView(text=PROMPT), GREEDY).text,
        comp.select(PromptView(text="There was a"), choices, token_length_normalized).index,
    )
    achat = OpenAI(MODEL, f"{srv.base_url}/v1")
    acomp = OpenAI(MODEL, f"{srv.base_url}/v1", is_chat_model=False)

    async def run() -> tuple[str, str, int]:
        deltas: list[str] = []
        a, b, s = await asyncio.gather(
            achat.agenerate(CHAT_PROMPT, GREEDY),
            acomp.agenerate(PromptView(text=PROMPT), GREEDY, on_delta=deltas.append),
            acomp.aselect(PromptView(text="There was a"), choices, token_length_normalized),
        )
        assert "".join(deltas) == b.text and await acomp.acache_prefix(PromptView(text="x")) == {}
        await achat.aclose()  # closes this loop's AsyncOpenAI (and the sync client)
        await acomp.aclose()
        return a.text, b.text, s.index

    for _ in range(2):  # a fresh event loop each time: the backend makes one AsyncOpenAI per loop
        assert asyncio.run(run()) == want


def test_select_with_one_generated_token_ignored(srv: ServerHandle, comp: OpenAI) -> None:
    """Servers that refuse max_tokens=0 (vLLM) get max_tokens=1; the generated token must not be scored."""
    prompt, choices = PromptView(text="Once upon a time, there was a"), (" dog", " little girl")
    want = comp.select(prompt, choices, unconditional_likelihood_normalized)
    with OpenAI(MODEL, f"{srv.base_url}/v1", is_chat_model=False) as backend:
        backend._echo_max_tokens = 1
        got = backend.select(prompt, choices, unconditional_likelihood_normalized)
    assert got.index == want.index and got.scores == pytest.approx(want.scores, abs=1e-4)
    assert [len(lp) for lp in got.meta["input_token_logprobs"]] == [len(lp) for lp in want.meta["input_token_logprobs"]]
