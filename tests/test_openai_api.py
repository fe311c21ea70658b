"""The OpenAI-compatible API against a real stories260K server, through the official ``openai`` client.

One server (``--chat-template chatml``; stories260K's tokenizer has none) serves the module. The 400 for chat
without any template is checked on the routes mounted in-process (it is raised before anything is generated), so
the file starts only one server.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from server_fixtures import STORIES, ServerHandle, start_server

from radixgen.runtime.fast_tokenizer import load_tokenizer
from radixgen.runtime.openai_api import register_openai_routes
from radixgen.runtime.server_args import ServerArgs

MODEL = str(STORIES)
PROMPT = "Once upon a time, there was a little girl named Lily."
GREEDY = {"temperature": 0.0}
IGNORE_EOS = {"ignore_eos": True}


@pytest.fixture(scope="module")
def oai_server() -> Iterator[ServerHandle]:
    handle = start_server(["--chat-template", "chatml"])
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(oai_server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{oai_server.base_url}/v1", api_key="unused", max_retries=0, timeout=60.0)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL)  # the server's own (torch-free) tokenizer


def native_text(server: ServerHandle, prompt: str, max_new_tokens: int) -> str:
    body = {"text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": True}}
    r = httpx.post(f"{server.base_url}/generate", json=body, timeout=60.0)
    r.raise_for_status()
    return r.json()["text"]


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_completion_single(client: openai.OpenAI, oai_server: ServerHandle, tokenizer) -> None:
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, extra_body=IGNORE_EOS, **GREEDY)
    assert r.object == "text_completion" and len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0 and c.finish_reason == "length"
    assert c.text == native_text(oai_server, PROMPT, 12)
    n_prompt = len(tokenizer.encode(PROMPT))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, 12, n_prompt + 12)
    # default max_tokens is OpenAI's 16
    r = client.completions.create(model=MODEL, prompt=PROMPT, extra_body=IGNORE_EOS, **GREEDY)
    assert r.usage.completion_tokens == 16


def test_completion_batch_and_token_ids(client: openai.OpenAI, tokenizer) -> None:
    prompts = [PROMPT, "The cat sat on the mat and"]
    single = [
        client.completions.create(model=MODEL, prompt=p, max_tokens=8, extra_body=IGNORE_EOS, **GREEDY).choices[0].text
        for p in prompts
    ]
    r = client.completions.create(model=MODEL, prompt=prompts, max_tokens=8, extra_body=IGNORE_EOS, **GREEDY)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == single
    ids = [tokenizer.encode(p) for p in prompts]
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, extra_body=IGNORE_EOS, **GREEDY)
    assert [c.text for c in r.choices] == single
    assert r.usage.prompt_tokens == sum(len(x) for x in ids) and r.usage.completion_tokens == 16
    r = client.completions.create(model=MODEL, prompt=ids[0], max_tokens=8, extra_body=IGNORE_EOS, **GREEDY)
    assert r.choices[0].text == single[0]


def test_completion_echo_logprobs(client: openai.OpenAI, tokenizer) -> None:
    n_prompt = len(tokenizer.encode(PROMPT))
    r = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=5, echo=True, logprobs=2, extra_body=IGNORE_EOS, **GREEDY
    )
    c = r.choices[0]
    assert c.text.startswith(PROMPT) and len(c.text) > len(PROMPT)
    lp = c.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n_prompt + 5
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x <= 0.0 for x in lp.token_logprobs[1:])
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset)
    # offsets index the echoed text: every prompt token after the first text token starts where its text is
    for tok, off in zip(lp.tokens[2:n_prompt], lp.text_offset[2:n_prompt], strict=True):
        assert c.text[off : off + len(tok)] == tok
    # greedy: every generated token is its position's best alternative
    for tok, top in zip(lp.tokens[n_prompt:], lp.top_logprobs[n_prompt:], strict=True):
        assert max(top, key=top.get) == tok
    assert "".join(lp.tokens[n_prompt:]) == c.text[len(PROMPT) :]


def test_stop_string(client: openai.OpenAI) -> None:
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, extra_body=IGNORE_EOS, **GREEDY)
    text = full.choices[0].text
    word = text.split()[2]
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, stop=[word], **GREEDY)
    c = r.choices[0]
    assert c.finish_reason == "stop" and word not in c.text and text.startswith(c.text)
    assert c.model_extra["matched_stop"] == word


def test_chat_completion(client: openai.OpenAI, tokenizer) -> None:
    messages = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "Tell me a story."}]
    r = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=10, logprobs=True, top_logprobs=3, extra_body=IGNORE_EOS, **GREEDY
    )
    assert r.object == "chat.completion"
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content and c.finish_reason == "length"
    rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    rendered += "<|im_start|>assistant\n"
    assert r.usage.prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))
    assert r.usage.completion_tokens == 10
    content = c.logprobs.content
    assert len(content) == 10 and "".join(t.token for t in content) == c.message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token and t.logprob <= 0.0
        assert bytes(t.bytes) == t.token.encode()


def test_stream_include_usage(client: openai.OpenAI) -> None:
    expect = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, extra_body=IGNORE_EOS, **GREEDY)
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=12, stream=True, stream_options={"include_usage": True},
            extra_body=IGNORE_EOS, **GREEDY,
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(ch.usage is None for ch in chunks[:-1])
    assert "".join(ch.choices[0].text for ch in chunks[:-1]) == expect.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == expect.usage.prompt_tokens
    assert chunks[-1].usage.total_tokens == expect.usage.prompt_tokens + 12

    messages = [{"role": "user", "content": "Hello"}]
    chat = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=8, stream=True, stream_options={"include_usage": True},
            extra_body=IGNORE_EOS, **GREEDY,
        )
    )
    assert chat[0].object == "chat.completion.chunk" and chat[0].choices[0].delta.role == "assistant"
    assert chat[-1].choices == [] and chat[-1].usage.completion_tokens == 8
    assert chat[-2].choices[0].finish_reason == "length"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chat[:-1])
    plain = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, extra_body=IGNORE_EOS, **GREEDY
    )
    assert streamed == plain.choices[0].message.content


def test_n_choices(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, n=3, temperature=1.0, seed=7,
                                  extra_body=IGNORE_EOS)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert r.usage.completion_tokens == 18 and r.usage.prompt_tokens < 18
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, n=2,
                                       extra_body=IGNORE_EOS)
    assert sorted(c.index for c in r.choices) == [0, 1] and r.usage.completion_tokens == 8
    r = client.completions.create(model=MODEL, prompt=[PROMPT, "A dog"], max_tokens=3, n=2, extra_body=IGNORE_EOS)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3] and r.usage.completion_tokens == 12


def test_seed_reproducible(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=1.0, seed=seed,
                                      extra_body=IGNORE_EOS)
        return r.choices[0].text

    a, b, c = sample(1234), sample(1234), sample(4321)
    assert a == b
    assert a != c


def test_cached_tokens(client: openai.OpenAI) -> None:
    prompt = f"{uuid.uuid4().hex} " + " ".join(["Lily and Ben went to the park to play with a big red ball."] * 12)
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, **GREEDY)
    second = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, **GREEDY)
    n = second.usage.prompt_tokens
    assert n > 100
    assert first.usage.prompt_tokens_details.cached_tokens < n // 2
    assert second.usage.prompt_tokens_details.cached_tokens >= n - 2


def test_unknown_model_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=2)
    assert e.value.param == "model" and "no-such-model" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 10_000}, "max_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"n": 0}, "n"),
        ({"logprobs": 50}, "logprobs"),
        ({"logit_bias": {"100000": 5}}, "logit_bias"),
        ({"extra_body": {"regex": "(unclosed"}}, "regex"),
        ({"extra_body": {"json_schema": "{not json"}}, "json_schema"),
        ({"extra_body": {"ebnf": "root ::= "}}, "ebnf"),
        ({"extra_body": {"response_format": {"type": "xml"}}}, "response_format"),
        ({"extra_body": {"top_k": -5}}, "top_k"),
        ({"extra_body": {"min_tokens": 20}}, "min_tokens"),
        ({"prompt": "word " * 600}, "prompt"),
        ({"prompt": [[1, 2], "mixed"]}, "prompt"),
        ({"prompt": [1, 10_000]}, "prompt"),
    ],
)
def test_completion_400(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    args = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**args)
    assert e.value.param == param, e.value.body
    assert param in e.value.message and e.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "Hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"max_completion_tokens": 100_000}, "max_completion_tokens"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_object"}, "extra_body": {"regex": "a"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ],
)
def test_chat_400(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    args = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    assert e.value.param == param, e.value.body


def test_chat_without_template_400(tokenizer) -> None:
    async def never(_obj):  # pragma: no cover - the request is refused before generation
        raise AssertionError("nothing should be generated")
        yield

    assert tokenizer.chat_template is None
    tm = SimpleNamespace(tokenizer=tokenizer, context_len=512, vocab_size=512, generate_request=never)
    app = FastAPI()
    register_openai_routes(app, tm, ServerArgs(model_path=MODEL))
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "messages"
    assert "chat template" in err["message"] and "--chat-template" in err["message"]


SMALL_SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["color", "n"],
    "additionalProperties": False,
}


def test_chat_response_format_json_schema(client: openai.OpenAI) -> None:
    import jsonschema

    rf = {"type": "json_schema", "json_schema": {"name": "pick", "schema": SMALL_SCHEMA, "strict": True}}
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Pick one."}], max_tokens=48, response_format=rf
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice
    jsonschema.validate(json.loads(choice.message.content), SMALL_SCHEMA)


def test_completion_regex_and_response_format(client: openai.OpenAI) -> None:
    import jsonschema

    pattern = r"(yes|no)-[0-9]{2}"
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, extra_body={"regex": pattern})
    assert r.choices[0].finish_reason == "stop" and re.fullmatch(pattern, r.choices[0].text), r.choices[0]
    rf = {"type": "json_schema", "json_schema": {"name": "pick", "schema": SMALL_SCHEMA}}
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=48, extra_body={"response_format": rf})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].text), SMALL_SCHEMA)
    r = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=16, extra_body={"response_format": {"type": "text"}}
    )
    assert r.choices[0].finish_reason in ("stop", "length")


def test_response_format_json_object(client: openai.OpenAI) -> None:
    """Any JSON object: stories260K may not close one within the budget, so the content is checked only when the
    request ended with stop (the grammar was complete)."""
    for _ in range(2):
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Give JSON."}],
            max_tokens=200,
            response_format={"type": "json_object"},
        )
        choice = r.choices[0]
        assert choice.finish_reason in ("stop", "length"), choice
        assert choice.message.content.lstrip().startswith("{"), choice.message.content
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
    r = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=200, extra_body={"response_format": {"type": "json_object"}}
    )
    assert r.choices[0].finish_reason in ("stop", "length")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].text), dict)


def test_unknown_fields_are_refused_like_on_the_native_api(client: openai.OpenAI) -> None:
    base = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**base, extra_body={"no_such_field": 1})
    assert e.value.param == "no_such_field" and "unknown field" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, extra_body={"top_kk": 3})
    assert e.value.param == "top_kk"
    with pytest.raises(openai.BadRequestError) as e:  # an OpenAI field this server cannot honour, set
        client.chat.completions.create(**base, store=True)
    assert e.value.param == "store" and "not supported" in e.value.message
    # the same OpenAI fields at their defaults are accepted
    r = client.chat.completions.create(**base, store=False, service_tier="auto", parallel_tool_calls=True)
    assert r.choices[0].message.content is not None
