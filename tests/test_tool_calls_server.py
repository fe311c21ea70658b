"""Tool calling and reasoning output of /v1/chat/completions against a real stories260K server (official client).

One server: the Hermes/Qwen-style template of ``tool_templates`` (stories260K has none), ``--tool-call-parser qwen25``
and ``--reasoning-parser qwen3``; the DSL's ``gen(tools=...)`` runs on it through both backends. Tool requests pass
``enable_thinking: false`` as Qwen 3 users do for direct calls (the template then writes an empty think block and no
reasoning is parsed). 50 seeded samples per forced mode run as one request with ``n``. Input errors are checked on the
routes mounted in-process (they are refused before anything is generated), so the module starts one server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Annotated

import jsonschema
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field
from server_fixtures import STORIES, ServerHandle, start_server
from tool_templates import HERMES

import radixgen as rg
from radixgen.grammar.schema_support import XGRAMMAR_SUPPORT
from radixgen.reasoning import REASONING_FORMATS, split_reasoning
from radixgen.runtime.fast_tokenizer import load_tokenizer
from radixgen.runtime.openai_api import register_openai_routes
from radixgen.runtime.server_args import ServerArgs

MODEL = str(STORIES)
# small schemas: the tool list is rendered into a 512-token context (1-2 characters per token)
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"]}
ADD = {"properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["a"]}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "parameters": ADD}}]
SCHEMAS = {"weather": WEATHER, "add": ADD}
MESSAGES = [{"role": "user", "content": "Weather?"}]
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_server(["--chat-template", HERMES, "--tool-call-parser", "qwen25", "--reasoning-parser", "qwen3"])
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120.0)


def check_calls(message, names: set[str]) -> list[tuple[str, str]]:
    assert message.tool_calls, message
    out = []
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        out.append((call.function.name, call.function.arguments))
    return out


def test_required_always_calls_a_valid_function(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required", n=50,
                                       seed=7, max_tokens=89, parallel_tool_calls=False, extra_body=NO_THINKING)
    assert len(r.choices) == 50
    names = set()
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.content is None
        calls = check_calls(choice.message, {"weather", "add"})
        assert len(calls) == 1  # parallel_tool_calls false
        names.add(calls[0][0])
    assert names == {"weather", "add"}  # the grammar does not pin one function


def test_named_function_single_call(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, n=50, seed=11, max_tokens=89, parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "add"}}, extra_body=NO_THINKING,
    )
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls"
        assert [n for n, _ in check_calls(choice.message, {"add"})] == ["add"]


def test_stream_helpers_assemble_the_same_calls(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required", n=6, seed=3, max_tokens=89,
                  parallel_tool_calls=False, extra_body=NO_THINKING)
    whole = client.chat.completions.create(**kwargs)
    with client.chat.completions.stream(**kwargs) as stream:
        names_seen = [e.name for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert len(names_seen) == sum(len(c.message.tool_calls) for c in whole.choices)
    for a, b in zip(whole.choices, sorted(final.choices, key=lambda c: c.index), strict=True):
        assert b.finish_reason == "tool_calls"
        assert [(c.function.name, c.function.arguments) for c in b.message.tool_calls] == [
            (c.function.name, c.function.arguments) for c in a.message.tool_calls]


def test_auto_without_a_call_is_plain_content(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}],
                                       tools=TOOLS, n=4, seed=5, max_tokens=40, extra_body=NO_THINKING)
    for choice in r.choices:
        assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
        assert choice.message.content and "<tool_call>" not in choice.message.content


def test_history_with_calls_and_results(client: openai.OpenAI) -> None:
    messages = [
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "3"},
    ]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS[1:], tool_choice="required",
                                       seed=1, max_tokens=60, parallel_tool_calls=False, extra_body=NO_THINKING)
    check_calls(r.choices[0].message, {"add"})


THINK_REGEX = "<think>[a-z ]{4,30}</think>\n\n[a-z ]{4,30}"


def test_reasoning_parser_splits_seeded_outputs(client: openai.OpenAI) -> None:
    """Outputs shaped by a regex (SGLang's extra field constrains the whole output) are split like
    ``split_reasoning`` splits the same seeded output returned unsplit; the stream carries the same parts."""
    base = dict(model=MODEL, messages=MESSAGES, n=6, seed=2, max_tokens=120)
    raw = client.chat.completions.create(**base, extra_body={"regex": THINK_REGEX, "separate_reasoning": False})
    split = client.chat.completions.create(**base, extra_body={"regex": THINK_REGEX})
    stream = client.chat.completions.create(**base, stream=True, extra_body={"regex": THINK_REGEX})
    streamed: dict[int, list[str]] = {}
    for chunk in stream:
        for c in chunk.choices:
            parts = streamed.setdefault(c.index, ["", ""])
            parts[0] += (c.delta.model_extra or {}).get("reasoning_content") or ""
            parts[1] += c.delta.content or ""
    fmt = REASONING_FORMATS["qwen3"]
    for a, b in zip(raw.choices, split.choices, strict=True):
        assert a.message.model_extra.get("reasoning_content") is None and "</think>" in a.message.content
        reasoning, content = split_reasoning(a.message.content, fmt)
        assert reasoning and content
        assert (b.message.model_extra["reasoning_content"], b.message.content) == (reasoning, content)
        assert streamed[b.index] == [reasoning, content]


def test_response_format_applies_after_reasoning(client: openai.OpenAI) -> None:
    """With ``--reasoning-parser`` the schema is enforced on what follows the (optional) reasoning block: '<' is
    banned here so that this small model skips the block, and the content must be the constrained JSON."""
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"]}
    lt = load_tokenizer(MODEL).encode("a<", add_special_tokens=False)[-1]
    r = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, n=4, seed=4, max_tokens=60, logit_bias={str(lt): -100},
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    )
    for c in r.choices:
        assert c.finish_reason == "stop" and c.message.model_extra.get("reasoning_content") is None
        jsonschema.validate(json.loads(c.message.content), schema)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def routes() -> TestClient:
    async def never(*_: object, **__: object):
        raise AssertionError("nothing is generated for invalid input")
        yield  # pragma: no cover

    tm = SimpleNamespace(tokenizer=load_tokenizer(MODEL), context_len=512, vocab_size=512, generate_request=never)
    app = FastAPI()
    register_openai_routes(app, tm, ServerArgs(model_path=MODEL, chat_template=HERMES, tool_call_parser="qwen25"))
    plain = FastAPI()
    register_openai_routes(plain, tm, ServerArgs(model_path=MODEL, chat_template=HERMES))
    pythonic = FastAPI()
    register_openai_routes(pythonic, tm, ServerArgs(model_path=MODEL, chat_template=HERMES,
                                                    tool_call_parser="pythonic"))
    return TestClient(app), TestClient(plain), TestClient(pythonic)


def tool(parameters: object, name: str = "f") -> dict:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


UNENFORCED = next(k for k in ("uniqueItems", "contains", "not", "if", "dependentSchemas")
                  if k not in XGRAMMAR_SUPPORT.enforced)
UNENFORCED_SCHEMA = {"uniqueItems": {"type": "array", "uniqueItems": True}, "contains": {"type": "array",
                     "contains": {"type": "integer"}}, "not": {"not": {"type": "string"}},
                     "if": {"if": {"type": "string"}, "then": {"minLength": 2}},
                     "dependentSchemas": {"type": "object", "dependentSchemas": {"a": {"required": ["b"]}}}}


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"tools": [tool({"type": "object", "properties": {"a": {"type": "nope"}}})]}, "tools[0].function.parameters",
     ["'f'"]),
    ({"tools": [tool({"type": "object", "properties": {"x": UNENFORCED_SCHEMA[UNENFORCED]}}, "g")]},
     "tools[0].function.parameters", ["'g'", UNENFORCED]),
    ({"tools": [tool({}), tool({})]}, "tools[1].function.name", ["duplicate"]),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type", []),
    ({"tools": [tool({}, "bad name!")]}, "tools[0].function.name", []),
    ({"tools": [tool({})], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     ["'nope'"]),
    ({"tools": [tool({})], "tool_choice": "sometimes"}, "tool_choice", []),
    ({"tool_choice": "required"}, "tool_choice", ["needs tools"]),
    ({"tools": [tool({})], "response_format": {"type": "json_object"}}, "response_format", []),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_1", "content": "3"}]},
     "messages[1].tool_call_id", ["call_1"]),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"id": "c", "type":
      "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, "messages[1].tool_calls[0].function.arguments",
     []),
])
def test_bad_tool_input_is_a_400_naming_the_field(routes, body: dict, param: str, words: list[str]) -> None:
    r = routes[0].post("/v1/chat/completions", json={"messages": MESSAGES, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and all(w in err["message"] for w in words), err


def test_tools_need_a_tool_call_parser(routes) -> None:
    r = routes[1].post("/v1/chat/completions", json={"messages": MESSAGES, "tools": [tool({})]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    assert "--tool-call-parser" in r.json()["error"]["message"]


def test_pythonic_refuses_what_it_cannot_enforce(routes) -> None:
    schema = {"anyOf": [{"type": "object"}, {"type": "array"}]}
    r = routes[2].post("/v1/chat/completions", json={"messages": MESSAGES, "tools": [tool(schema)]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools[0].function.parameters"
    assert "'anyOf'" in r.json()["error"]["message"] and "pythonic" in r.json()["error"]["message"]


# ------------------------------------------------------------------------------------------------ DSL
class Add(BaseModel):
    """Add to a counter."""

    a: int = Field(ge=0, le=99)


def weather(city: Annotated[str, Field(max_length=6)], days: Annotated[int, Field(ge=1, le=7)]) -> str:
    """Forecast."""
    return f"{city}: sunny for {days} days"


@rg.function
def tool_step(s, tools, choice):
    with s.user():
        s += "Weather?"
    with s.assistant():
        s += rg.gen("calls", tools=tools, tool_choice=choice, parallel_tool_calls=False, max_tokens=89, temperature=0)


@pytest.mark.parametrize(("tools", "choice"), [([weather], "required"), ([Add], Add)])
def test_dsl_gen_with_tools_on_both_backends(server: ServerHandle, tools, choice) -> None:
    """``rg.gen(tools=[function | Pydantic model])`` gives typed calls, the same on the native backend and rg.OpenAI
    (greedy: the same request reaches the same server). One tool per gen: the 512-token context."""
    native = rg.RuntimeEndpoint(server.base_url, chat_template="chatml")
    oai = rg.OpenAI(MODEL, base_url=f"{server.base_url}/v1", chat_template="chatml")
    results = []
    for backend in (native, oai):
        state = tool_step.run(tools=tools, choice=choice, backend=backend)
        calls = state["calls"]
        assert isinstance(calls, rg.ToolCalls) and len(calls) == 1, calls
        call = calls[0]
        assert call.id.startswith("call_")
        if tools == [weather]:
            assert call.name == "weather" and 1 <= call.arguments.days <= 7 and len(call.arguments.city) <= 6
            assert call.call() == f"{call.arguments.city}: sunny for {call.arguments.days} days"
        else:
            assert call.name == "Add" and isinstance(call.arguments, Add) and 0 <= call.arguments.a <= 99
        record = json.dumps({"name": call.name, "arguments": json.loads(call.raw)}, separators=(",", ":"))
        assert record in state.text()  # what the program's text records of the call
        results.append((call.name, call.raw))
    assert results[0] == results[1]
    native.close()
    oai.close()
