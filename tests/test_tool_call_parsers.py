"""Tool-call detectors, streaming assembly, reasoning splitting and the tool grammars, on recorded texts.

Recorded outputs in each format (content around calls, parallel calls, malformed calls) are parsed whole and fed to
the streaming parser in every chunking; the real-format templates of ``tool_templates`` are rendered with the
shared llama2 tokenizer and the calls they write back into the history must parse; the structural tags built for
each format are compiled by the grammar layer (xgrammar, llama2 vocabulary) and must accept exactly the calls the
parser reads.
"""

from __future__ import annotations

import json
import random

import pytest
from shared_paths import LLAMA2_TOKENIZER
from tool_templates import HERMES, LLAMA31, MISTRAL

from radixgen.reasoning import REASONING_FORMATS, ReasoningStream, split_reasoning
from radixgen.runtime.function_call import FunctionTool, ToolCallStream, get_detector, parse
from radixgen.runtime.function_call.constraint import after_reasoning, constraint_format, limit_whitespace, tool_format

NAMES = frozenset({"get_weather", "add"})
WEATHER = '{"city": "Paris", "days": 3}'
ADD = '{"a": 1, "b": [2, {"c": "}]\\"x"}]}'

RECORDED = {
    "hermes": (
        f'Let me check.\n<tool_call>\n{{"name": "get_weather", "arguments": {WEATHER}}}\n</tool_call>\n'
        f'<tool_call>\n{{"name": "add", "arguments": {ADD}}}\n</tool_call>'
    ),
    "llama3": (
        f'<|python_tag|>{{"name": "get_weather", "parameters": {WEATHER}}}; '
        f'{{"name": "add", "parameters": {ADD}}}'
    ),
    "mistral": (
        f'Let me check. [TOOL_CALLS] [{{"name": "get_weather", "arguments": {WEATHER}}}, '
        f'{{"name": "add", "arguments": {ADD}}}]'
    ),
    "pythonic": 'Let me check. [get_weather(city="Paris", days=3), add(a=1, b=[2, {"c": "}]\\"x"}])]',
}
CONTENT = {"hermes": "Let me check.", "llama3": None, "mistral": "Let me check.", "pythonic": "Let me check."}


def assemble(parser: str, text: str, cuts: list[int]) -> tuple[str, list[tuple[str, str]], list[str]]:
    """Stream ``text`` cut at ``cuts`` (cumulative, as the chat route does) and assemble the deltas like the openai
    client: content, then each call's name and concatenated argument fragments by index."""
    stream = ToolCallStream(get_detector(parser), NAMES)
    content = ""
    calls: dict[int, dict[str, str]] = {}
    ids: list[str] = []
    bounds = sorted(set(cuts) | {len(text)})
    for k, end in enumerate(bounds):
        delta, deltas = stream.update(text[:end], final=k == len(bounds) - 1)
        content += delta
        for d in deltas:
            call = calls.setdefault(d["index"], {"name": "", "arguments": ""})
            if "id" in d:
                assert not call["name"], "a call is announced once"
                ids.append(d["id"])
                call["name"] = d["function"]["name"]
            else:
                assert call["name"], "arguments never come before the name"
            call["arguments"] += d["function"]["arguments"]
    return content, [(c["name"], c["arguments"]) for _, c in sorted(calls.items())], ids


@pytest.mark.parametrize("parser", sorted(RECORDED))
def test_parse_parallel_calls(parser: str) -> None:
    content, calls = parse(get_detector(parser), RECORDED[parser], NAMES)
    assert content == CONTENT[parser]
    assert [c.name for c in calls] == ["get_weather", "add"]
    assert [json.loads(c.arguments) for c in calls] == [json.loads(WEATHER), json.loads(ADD)]
    assert [c.index for c in calls] == [0, 1]


@pytest.mark.parametrize("parser", sorted(RECORDED))
def test_stream_assembles_the_same_calls_in_any_chunking(parser: str) -> None:
    text = RECORDED[parser]
    content, calls = parse(get_detector(parser), text, NAMES)
    expected = [(c.name, c.arguments) for c in calls]
    rng = random.Random(0)
    chunkings = [list(range(1, len(text))), [len(text)]]  # one character at a time; everything at once
    chunkings += [sorted(rng.sample(range(1, len(text)), rng.randint(1, 12))) for _ in range(30)]
    for cuts in chunkings:
        got_content, got_calls, ids = assemble(parser, text, cuts)
        assert got_calls == expected, cuts
        assert got_content == (content or ""), cuts
        assert len(set(ids)) == len(ids) == 2 and all(i.startswith("call_") for i in ids)


def test_json_arguments_stream_as_fragments() -> None:
    """Arguments arrive in several fragments while the call is written, not in one piece at the end."""
    text = RECORDED["hermes"]
    stream = ToolCallStream(get_detector("hermes"), NAMES)
    fragments = []
    for end in range(1, len(text) + 1):
        _, deltas = stream.update(text[:end], final=end == len(text))
        fragments += [d["function"]["arguments"] for d in deltas if d["index"] == 0 and "id" not in d]
    assert len(fragments) > 10 and "".join(fragments) == WEATHER


@pytest.mark.parametrize(
    ("parser", "text"),
    [
        ("hermes", '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'),  # not an offered function
        ("hermes", '<tool_call>\n{"arguments": {}}\n</tool_call>'),  # no name
        ("hermes", '<tool_call>\n{"name": "add", "arguments": [1, 2]}\n</tool_call>'),  # arguments not an object
        ("hermes", "<tool_call> plain words </tool_call> tail"),
        ("llama3", '<|python_tag|>print("hi")'),  # code, not a JSON call
        ("mistral", "[TOOL_CALLS] not a list"),
        ("pythonic", "[add(1, 2)]"),  # positional arguments
        ("pythonic", "[add(a=open('x'))]"),  # not a literal
        ("pythonic", "[os.system(a=1)]"),
        ("pythonic", "[add(a=1"),  # cut off
    ],
)
def test_malformed_calls_stay_content(parser: str, text: str) -> None:
    content, calls = parse(get_detector(parser), text, NAMES)
    assert calls == [] and content == text
    got_content, got_calls, _ = assemble(parser, text, list(range(1, len(text))))
    assert got_calls == [] and got_content == text


@pytest.mark.parametrize(
    ("parser", "text", "sent"),
    [
        ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call> after', '{"city": '),
        ("llama3", 'I think {"name": "add", "parameters": {"a": }} is it', '{"a": '),
        ("mistral", '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1}} {"name": "add"}]', '{"a": 1}'),
    ],
)
def test_arguments_malformed_midway(parser: str, text: str, sent: str) -> None:
    """Parsed whole, the text is content; streamed, the call announced before the arguments broke stays announced
    (a stream cannot take it back) and the whole text is still delivered as content."""
    assert parse(get_detector(parser), text, NAMES) == (text, [])
    content, calls, _ = assemble(parser, text, list(range(1, len(text))))
    assert content == text and len(calls) == 1 and calls[0][1] == sent


def test_cut_off_call() -> None:
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1'
    assert parse(get_detector("hermes"), text, NAMES) == (text, [])
    assert assemble("hermes", text, list(range(1, len(text))))[:2] == ("", [("add", '{"a": 1')])


def test_malformed_call_then_valid_call() -> None:
    text = (
        '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call> then '
        '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>'
    )
    content, calls = parse(get_detector("hermes"), text, NAMES)
    assert [(c.name, c.arguments) for c in calls] == [("add", '{"a": 1}')]
    assert content == '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call> then'
    assert assemble("hermes", text, list(range(1, len(text))))[:2] == (content, [("add", '{"a": 1}')])


def test_plain_text_and_trigger_prefixes() -> None:
    """Text that only looks like the start of a trigger is held back while streaming, then released."""
    for parser, text in [("hermes", "a < b and <tool"), ("mistral", "see [TOOL"), ("pythonic", "x [1, 2] and [ab"),
                         ("llama3", 'json {"nam')]:
        content, calls = parse(get_detector(parser), text, NAMES)
        assert (content, calls) == (text, [])
        stream = ToolCallStream(get_detector(parser), NAMES)
        held, _ = stream.update(text, final=False)
        assert text.startswith(held) and len(held) < len(text)
        rest, _ = stream.update(text, final=True)
        assert held + rest == text


def test_string_encoded_arguments_are_decoded() -> None:
    text = '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1}"}\n</tool_call>'
    _, calls = parse(get_detector("hermes"), text, NAMES)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("add", {"a": 1})]


# ------------------------------------------------------------------------------------------ templates
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast.", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {}}, "required": ["a"]}}},
]
HISTORY = [
    {"role": "user", "content": "Weather in Paris, and 1 + 2?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.loads(WEATHER)}},
        {"id": "call_2", "type": "function", "function": {"name": "add", "arguments": json.loads(ADD)}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "3"},
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(LLAMA2_TOKENIZER))


@pytest.mark.parametrize(("parser", "template", "start", "end"), [
    ("hermes", HERMES, "<|im_start|>assistant", "<|im_end|>"),
    ("llama3", LLAMA31, "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eom_id|>"),
    ("mistral", MISTRAL, "[/INST]", "</s>"),
])
def test_template_history_calls_parse_back(hf_tokenizer, parser: str, template: str, start: str, end: str) -> None:
    """The calls a real-format template writes back into the prompt are read by the same format's parser, and the
    tools reach the template's ``tools`` argument."""
    text = hf_tokenizer.apply_chat_template(HISTORY, tools=TOOLS, chat_template=template, tokenize=False,
                                            add_generation_prompt=True)
    assert '"name": "get_weather"' in text and "Weather forecast." in text  # the tool list was rendered
    turn = text[text.index(start) + len(start) :]
    turn = turn[: turn.index(end)]
    _, calls = parse(get_detector(parser), turn, NAMES)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", json.loads(WEATHER)), ("add", json.loads(ADD))]
    assert "sunny" in text and "3" in text
    ids = hf_tokenizer.encode(text, add_special_tokens=False)
    assert hf_tokenizer.decode(ids).replace(" ", "") == text.replace(" ", "")


# -------------------------------------------------------------------------------------------- reasoning
@pytest.mark.parametrize("name", ["deepseek-r1", "qwen3"])
@pytest.mark.parametrize("text", [
    "<think>\nLet me think: 2 < 3.\n</think>\n\nThe answer is 3.",
    "Let me think: </thi and more</think>answer",
    "no reasoning at all",
    "<think>cut off while thinking",
    "",
])
def test_reasoning_stream_matches_split(name: str, text: str) -> None:
    fmt = REASONING_FORMATS[name]
    want = split_reasoning(text, fmt)
    for cuts in (list(range(1, len(text))), [3, 9, 20], []):
        stream = ReasoningStream(fmt)
        reasoning = ""
        content = ""
        for k, end in enumerate([*cuts, len(text)]):
            delta, content = stream.update(text[:end], final=k == len(cuts))
            assert want[0].startswith(reasoning + delta)
            reasoning += delta
        assert (reasoning, content) == want


# ---------------------------------------------------------------------------------------------- grammars
@pytest.fixture(scope="module")
def xgrammar(hf_tokenizer):
    from radixgen.grammar import backend_class

    return backend_class("xgrammar")(hf_tokenizer, len(hf_tokenizer), [hf_tokenizer.eos_token_id])


def accepts(backend, tag: dict, text: str, complete: bool = True) -> bool:
    """Whether the compiled structural tag accepts ``text`` token by token (and then eos, when ``complete``)."""
    matcher = backend.compile("structural_tag", json.dumps(tag)).matcher()
    for t in backend.encode(text):
        if not matcher.accept_token(t):
            return False
    return not complete or matcher.accept_token(backend.stop_ids[0])


def _tools() -> list[tuple[FunctionTool, dict]]:
    return [(FunctionTool(t["function"]["name"], t["function"]["parameters"]), t["function"]["parameters"])
            for t in TOOLS]


@pytest.mark.parametrize("parser", sorted(RECORDED))
def test_required_grammar_accepts_exactly_valid_calls(xgrammar, parser: str) -> None:
    det = get_detector(parser)
    fmt = limit_whitespace(tool_format(det, _tools(), required=True, parallel=True), 1)
    tag = after_reasoning(None, fmt, False)
    canonical = {
        "hermes": '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": [2]}}\n</tool_call>\n'
                  '<tool_call>\n{"name": "get_weather", "arguments": {"city": "x"}}\n</tool_call>',
        "llama3": '{"name": "add", "parameters": {"a": 1, "b": [2]}}; {"name": "get_weather", "parameters": '
                  '{"city": "x"}}',
        "mistral": '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": [2]}}, {"name": "get_weather", '
                   '"arguments": {"city": "x"}}]',
        "pythonic": '[add(a=1, b=[2]), get_weather(city="x")]',
    }[parser]
    assert accepts(xgrammar, tag, canonical)
    _, calls = parse(det, canonical, NAMES)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("add", {"a": 1, "b": [2]}),
                                                                 ("get_weather", {"city": "x"})]
    bad_args = canonical.replace('"a": 1', '"a": "one"').replace("a=1", 'a="one"')
    assert not accepts(xgrammar, tag, bad_args)  # arguments must match the schema
    assert not accepts(xgrammar, tag, canonical.replace("get_weather", "get_wether"))  # only offered functions
    assert not accepts(xgrammar, tag, "Sure! " + canonical)  # nothing but calls
    assert not accepts(xgrammar, tag, "")  # at least one call
    single = limit_whitespace(tool_format(det, _tools(), required=True, parallel=False), 1)
    first = parse(det, canonical, NAMES)[1][0]
    one = {"hermes": canonical.split("\n<tool_call>\n{\"name\": \"get_weather")[0],
           "llama3": canonical.split("; ")[0], "mistral": canonical.split(", {")[0] + "]",
           "pythonic": canonical.split(", get_")[0] + "]"}[parser]
    assert first.name == "add" and accepts(xgrammar, after_reasoning(None, single, False), one)
    assert not accepts(xgrammar, after_reasoning(None, single, False), canonical)  # parallel_tool_calls false


@pytest.mark.parametrize("parser", sorted(RECORDED))
def test_auto_grammar_constrains_only_after_the_trigger(xgrammar, parser: str) -> None:
    det = get_detector(parser)
    tag = after_reasoning(None, tool_format(det, _tools(), required=False, parallel=True), True)
    assert accepts(xgrammar, tag, "Just text, no call.")
    call = {"hermes": '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>',
            "llama3": '{"name": "add", "parameters": {"a": 2}}',
            "mistral": '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 2}}]',
            "pythonic": "[add(a=2)]"}[parser]
    assert accepts(xgrammar, tag, "Checking. " + call)
    assert not accepts(xgrammar, tag, "Checking. " + call.replace("2", '"two"'), complete=False)


def test_pythonic_optional_arguments(xgrammar) -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "string"},
                                               "z": {"type": "boolean"}}, "required": ["y"]}
    tag = after_reasoning(None, tool_format(get_detector("pythonic"), [(FunctionTool("f", schema), schema)],
                                            required=True, parallel=True), False)
    names = frozenset({"f"})
    for text in ['[f(y="a")]', '[f(x=1, y="a")]', '[f(y="a", z=true)]', '[f(x=1, y="a", z=false)]']:
        assert accepts(xgrammar, tag, text), text
        assert parse(get_detector("pythonic"), text, names)[1], text
    for text in ["[f()]", '[f(x=1)]', '[f(z=true, y="a")]', '[f(y="a",)]']:
        assert not accepts(xgrammar, tag, text), text


@pytest.mark.parametrize("name", ["deepseek-r1", "qwen3"])
def test_constraint_starts_after_reasoning(xgrammar, name: str) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    tag = after_reasoning(REASONING_FORMATS[name], constraint_format("json_schema", schema), False)
    opened = "" if name == "deepseek-r1" else "<think>"
    assert accepts(xgrammar, tag, opened + 'free { "text" ] here</think>\n\n{"a": 1}')
    assert not accepts(xgrammar, tag, opened + 'reasoning</think>\n\n{"a": "x"}')
    assert accepts(xgrammar, tag, '{"a": 1}') == (name == "qwen3")  # Qwen3 may skip the block
