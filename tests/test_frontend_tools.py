"""``rg.gen(tools=...)`` without a server: describing tools, typing calls, and assembling streamed call deltas."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, Field

import radixgen as rg
from radixgen.backends.openai_output import Accumulator, as_attrs
from radixgen.sampling import SamplingParams
from radixgen.tools import openai_tool_choice, parse_tool_calls, tool_spec, tool_specs
from radixgen.typed import TypedOutputError, gen_value


def get_weather(city: Annotated[str, Field(max_length=20)], days: int = 1, unit: str | None = None) -> str:
    """Forecast for a city.

    Longer explanation that is not part of the description.
    """
    return f"{city}/{days}/{unit}"


class Move(BaseModel):
    """Move a piece."""

    piece: str
    to: Annotated[str, Field(pattern=r"^[a-h][1-8]$")]


class Bare(BaseModel):
    x: int


def test_function_described_from_signature_and_docstring() -> None:
    spec = tool_spec(get_weather)
    fn = spec.tool["function"]
    assert spec.tool["type"] == "function" and fn["name"] == "get_weather"
    assert fn["description"] == "Forecast for a city."
    params = fn["parameters"]
    assert params["type"] == "object" and params["required"] == ["city"]
    assert params["properties"]["city"] == {"type": "string", "maxLength": 20}
    assert params["properties"]["days"] == {"type": "integer", "default": 1}
    assert "title" not in str(params)  # Pydantic's generated titles are left out of the prompt


def test_model_and_dict_tools() -> None:
    fn = tool_spec(Move).tool["function"]
    assert fn["name"] == "Move" and fn["description"] == "Move a piece."
    assert fn["parameters"]["properties"]["to"]["pattern"] == "^[a-h][1-8]$"
    assert "description" not in tool_spec(Bare).tool["function"]  # not BaseModel's own docstring
    bare = {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}
    assert tool_spec(bare).tool == {"type": "function", "function": bare}
    wrapped = {"type": "function", "function": bare}
    assert tool_spec(wrapped).tool == wrapped
    assert tool_spec({"name": "g"}).tool["function"]["parameters"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize(("tools", "words"), [
    ([lambda *a: 0], "*args"),
    ([{"name": "bad name"}], "must match"),
    ([get_weather, {"name": "get_weather"}], "two tools"),
    ([42], "not a function"),
    ([], "non-empty"),
    ([{"description": "no name"}], "needs a 'name'"),
])
def test_bad_tools(tools: list, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("*", r"\*")):
        tool_specs(tools)


def test_gen_with_tools_builds_the_request() -> None:
    g = rg.gen("x", tools=[get_weather, Move], tool_choice=Move, parallel_tool_calls=False, max_tokens=32)
    assert [s.name for s in g.tools] == ["get_weather", "Move"]
    kw = g.params.to_openai()
    assert [t["function"]["name"] for t in kw["tools"]] == ["get_weather", "Move"]
    assert kw["tool_choice"] == {"type": "function", "function": {"name": "Move"}}
    assert kw["parallel_tool_calls"] is False
    assert openai_tool_choice("required", g.tools) == "required"
    with pytest.raises(ValueError, match="tool_choice"):
        rg.gen("x", tools=[get_weather], tool_choice="nope")
    with pytest.raises(ValueError, match="cannot be combined"):
        rg.gen("x", tools=[get_weather], regex="a+")
    with pytest.raises(ValueError, match="tools"):
        rg.gen("x", tools=[get_weather], dtype=int)
    with pytest.raises(ValueError, match="needs tools"):
        SamplingParams(tool_choice="required")


def test_calls_are_typed_and_runnable() -> None:
    specs = tool_specs([get_weather, Move, {"name": "raw", "parameters": {"type": "object"}}])
    calls = parse_tool_calls(specs, [
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
        {"id": "call_2", "name": "Move", "arguments": '{"piece": "knight", "to": "f3"}'},
        {"id": "call_3", "name": "raw", "arguments": '{"k": [1]}'},
    ], "Sure.")
    assert isinstance(calls, rg.ToolCalls) and calls.content == "Sure." and len(calls) == 3
    assert calls[0].call() == "Paris/2/None"
    assert calls[1].arguments == Move(piece="knight", to="f3")
    assert calls[2].arguments == {"k": [1]}
    with pytest.raises(TypeError):
        calls[1].call()
    with pytest.raises(ValueError, match="call_9"):
        parse_tool_calls(specs, [{"id": "call_9", "name": "Move", "arguments": '{"piece": "k", "to": "z9"}'}], None)
    with pytest.raises(ValueError, match="unknown tool"):
        parse_tool_calls(specs, [{"id": "c", "name": "nope", "arguments": "{}"}], None)


def test_streamed_call_deltas_assemble_into_typed_calls() -> None:
    """The OpenAI backend's accumulator (also used for RuntimeEndpoint's JSON bodies) joins argument fragments by
    index, as the server streams them."""
    gen = rg.gen("m", tools=[Move, get_weather])
    assert not isinstance(gen, rg.ToolCalls)
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "Move", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"piece": '}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"q", "to": '}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"d8"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 1, "function": {"arguments": '{"city": "x"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    acc = Accumulator(True, gen.params)
    for c in chunks:
        acc.absorb(as_attrs(c))
    out = acc.output()
    assert out.meta["tool_calls"] == [
        {"id": "call_a", "name": "Move", "arguments": '{"piece": "q", "to": "d8"}'},
        {"id": "call_b", "name": "get_weather", "arguments": '{"city": "x"}'},
    ]
    assert out.text.split("\n") == [
        '{"name":"Move","arguments":{"piece":"q","to":"d8"}}', '{"name":"get_weather","arguments":{"city":"x"}}']
    calls = gen_value(gen, out)
    assert [c.name for c in calls] == ["Move", "get_weather"] and calls[0].arguments.to == "d8"
    out.meta["tool_calls"][0]["arguments"] = '{"piece": "q"}'
    with pytest.raises(TypedOutputError, match="call_a"):
        gen_value(gen, out)
