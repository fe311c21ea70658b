"""Issue 17: JSON Schema enforced as written, keyword by keyword, on the default backend (xgrammar) and on
llguidance — through the server's path (GrammarManager.validate, then the backend's compile and matchers).

Each case is (schema, valid documents, invalid documents); jsonschema confirms the labels first, so a case
cannot pass by mislabelling. Documents are fed token by token (stories260K's tokenizer), then eos."""

from __future__ import annotations

import json
from typing import Any

import pytest
from grammar_cases import schema_errors
from shared_paths import STORIES
from transformers import AutoTokenizer

from radixgen.grammar import GrammarError, GrammarManager, allocate_token_bitmask, backend_class, strict_json_schema
from radixgen.kernels.reference import unpack_token_bitmask

EOS = 2
VOCAB = 512

CASES: dict[str, tuple[dict[str, Any], list[str], list[str]]] = {
    "unlisted properties allowed": (
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        ['{"a": 1}', '{"a": 1, "b": [true, {"c": null}]}', '{"a": 1, "zz": "x"}'],
        ['{"a": "x"}', '{"b": 1}', '{"a": 1, "a2": }'],
    ),
    "additionalProperties false closes": (
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
        ['{"a": 1}', "{}"],
        ['{"a": 1, "b": 2}'],
    ),
    "additionalProperties schema": (
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": {"type": "string"}},
        ['{"a": 1, "b": "x"}'],
        ['{"a": 1, "b": 2}'],
    ),
    "array without items": ({"type": "array"}, ['[1, "a", {"b": null}]', "[]"], ["[1,]", '{"a": 1}']),
    "minLength/maxLength with pattern": (
        {"type": "string", "pattern": "[0-9a-f]+", "minLength": 3, "maxLength": 4},
        ['"abc"', '"x0y"', '"ab01"'],
        ['"ab"', '"abcde"', '"xyz"'],
    ),
    "maxLength with format": (
        {"type": "string", "format": "date", "maxLength": 10},
        ['"2024-02-29"'],
        ['"2023-02-29"', '"2024-1-01"'],
    ),
    "pattern searched, not anchored": ({"type": "string", "pattern": "ab"}, ['"xaby"', '"ab"'], ['"ba"']),
    "allOf merged": (
        {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}, "required": ["a"]},
                {"properties": {"a": {"maximum": 5}, "b": {"type": "string"}}, "required": ["b"]},
            ]
        },
        ['{"a": 3, "b": "x"}'],
        ['{"a": 7, "b": "x"}', '{"a": 3}', '{"b": "x"}'],
    ),
    "oneOf exclusive by const": (
        {
            "oneOf": [
                {"type": "object", "properties": {"t": {"const": "a"}, "n": {"type": "integer"}}, "required": ["t"]},
                {"type": "object", "properties": {"t": {"const": "b"}, "s": {"type": "string"}}, "required": ["t"]},
            ]
        },
        ['{"t": "a", "n": 1}', '{"t": "b", "s": "x"}'],
        ['{"t": "c"}', '{"t": "a", "n": "x"}'],
    ),
    "oneOf exclusive by required": (
        {
            "type": "object",
            "properties": {"r": {"type": "number"}, "w": {"type": "number"}},
            "oneOf": [{"required": ["r"]}, {"required": ["w"]}],
        },
        ['{"r": 1}', '{"w": 2}'],
        ['{"r": 1, "w": 2}', "{}"],
    ),
    "oneOf exclusive by type": (
        {"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
        ['"x"', "3", "null"],
        ["1.5", "true"],
    ),
    "dependentRequired": (
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "dependentRequired": {"a": ["b"]},
        },
        ['{"a": 1, "b": 2}', '{"b": 2}', "{}"],
        ['{"a": 1}'],
    ),
    "dependencies (draft 7, schema form)": (
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "dependencies": {"a": {"properties": {"b": {"minimum": 10}}, "required": ["b"]}},
        },
        ['{"a": 1, "b": 10}', '{"b": 2}'],
        ['{"a": 1, "b": 2}', '{"a": 1}'],
    ),
    "format without type": ({"format": "date"}, ['"2024-01-31"', "1", "null", "[]"], ['"2024-01-32"', '"x"']),
    "object keywords without type": (
        {"properties": {"a": {"type": "integer"}}, "required": ["a"]},
        ['{"a": 1}', "null", '"x"', "[1]"],
        ['{"a": "x"}', "{}"],
    ),
    "not type": ({"not": {"type": ["string", "null"]}}, ["1", "true", "[]", "{}"], ['"x"', "null"]),
    "not required": (
        {"type": "object", "not": {"required": ["secret"]}},
        ['{"a": 1}', "{}"],
        ['{"secret": 1}', '{"a": 1, "secret": 2}'],
    ),
    "not of a disjoint schema": ({"type": "integer", "not": {"type": "string"}}, ["3"], ['"x"']),
    "patternProperties with $ref": (
        {
            "$defs": {"n": {"type": "integer", "minimum": 0}},
            "type": "object",
            "patternProperties": {"^x_": {"$ref": "#/$defs/n"}},
            "additionalProperties": False,
        },
        ['{"x_a": 1}', "{}"],
        ['{"x_a": -1}', '{"x_a": "s"}', '{"y": 1}'],
    ),
    "patternProperties next to $ref siblings": (
        {
            "$defs": {"base": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}},
            "$ref": "#/$defs/base",
            "patternProperties": {"^t_": {"type": "string"}},
        },
        ['{"id": 1, "t_a": "x"}', '{"id": 1, "other": 2}'],
        ['{"id": 1, "t_a": 2}', '{"t_a": "x"}'],
    ),
}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(str(STORIES))


@pytest.fixture(scope="module", params=["xgrammar", "llguidance"])
def backend(request: pytest.FixtureRequest, tokenizer: Any) -> Any:
    return backend_class(request.param)(tokenizer, VOCAB, [EOS, 1])


def compiled(backend: Any, schema: dict[str, Any], strict: bool = False) -> Any:
    manager = GrammarManager(backend.name, lambda: backend, strict_json_schema=strict)
    prepared = manager.validate("json_schema", json.dumps(schema))
    return backend.compile(prepared.kind, prepared.spec)


def accepts(backend: Any, grammar: Any, doc: str) -> bool:
    m = grammar.matcher()
    return all(m.accept_token(t) for t in backend.encode(doc)) and m.accept_token(EOS) and m.is_terminated()


@pytest.mark.parametrize("name", list(CASES))
def test_keyword_is_enforced(backend: Any, name: str) -> None:
    schema, valid, invalid = CASES[name]
    for doc in valid:
        assert not schema_errors(schema, doc), (name, doc)
    for doc in invalid:
        assert schema_errors(schema, doc), (name, doc)
    grammar = compiled(backend, schema)
    assert [d for d in valid if not accepts(backend, grammar, d)] == [], f"{name}: valid document refused"
    assert [d for d in invalid if accepts(backend, grammar, d)] == [], f"{name}: invalid document accepted"


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ({"type": "array", "uniqueItems": True}, "'uniqueItems'"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "'oneOf'"),  # 1 matches both
        ({"oneOf": [{"type": "object", "required": ["a"]}, {"type": "object", "properties": {"b": {}}}]}, "'oneOf'"),
        ({"type": "string", "not": {"pattern": "^a"}}, "'not'"),
        ({"type": "integer", "if": {"minimum": 3}, "then": {"maximum": 5}}, "'if'"),
    ],
)
def test_what_a_grammar_cannot_enforce_is_refused_by_name(schema: dict[str, Any], needle: str) -> None:
    for name in ("xgrammar", "llguidance"):
        with pytest.raises(GrammarError, match=needle):
            GrammarManager(name, lambda: None).validate("json_schema", json.dumps(schema))


def test_strict_closes_objects(backend: Any) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}}}
    strict = compiled(backend, schema, strict=True)
    assert accepts(backend, strict, '{"a": {"b": 1}}')
    assert not accepts(backend, strict, '{"a": {"b": 1}, "c": 2}')
    assert not accepts(backend, strict, '{"a": {"b": 1, "c": 2}}')
    assert accepts(backend, compiled(backend, schema), '{"a": {"b": 1, "c": 2}, "d": 3}')
    closed = strict_json_schema(schema)
    assert closed["additionalProperties"] is False and closed["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the input is not modified
    allof = {"allOf": [{"properties": {"a": {"type": "integer"}}}, {"properties": {"b": {"type": "integer"}}}]}
    assert schema_errors(strict_json_schema(allof), '{"a": 1, "b": 2}') == []  # parts merged before closing


def test_compact_generation_any_whitespace_accepted(backend: Any, tokenizer: Any) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "array"}}}
    grammar = compiled(backend, schema)
    for doc in ['{"a": 1, "b": [1, 2]}', '{"a":1,"b":[1,2]}', '{\n  "a": 1,\n  "b": [\n    1\n  ]\n}', '{ "a" : 1 }']:
        assert accepts(backend, grammar, doc), doc
    whitespace = {i for i, b in enumerate(backend.token_bytes) if b and not b.strip()}
    assert whitespace
    m = grammar.matcher()
    bitmask = allocate_token_bitmask(1, VOCAB)
    assert m.accept_token(backend.encode("{")[0])
    m.fill_next_token_bitmask(bitmask, 0)
    allowed = set(unpack_token_bitmask(bitmask, VOCAB)[0].nonzero().flatten().tolist())
    assert allowed and not allowed & whitespace  # generation stays compact
    newline = backend.encode("\n")[-1]
    assert m.accept_token(newline)  # ... but other whitespace is accepted
    m.fill_next_token_bitmask(bitmask, 0)
    assert set(unpack_token_bitmask(bitmask, VOCAB)[0].nonzero().flatten().tolist()) & whitespace
    m.rollback(1)  # back before the newline: compact again
    m.fill_next_token_bitmask(bitmask, 0)
    assert set(unpack_token_bitmask(bitmask, VOCAB)[0].nonzero().flatten().tolist()) == allowed


def test_openai_strict_response_format_closes_objects() -> None:
    from radixgen.runtime.openai_api.protocol import ChatCompletionRequest
    from radixgen.runtime.openai_api.serving import grammar_params

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for strict, closed in ((True, True), (False, False), (None, False)):
        req = ChatCompletionRequest.model_validate(
            {
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": schema, "strict": strict},
                },
            }
        )
        spec = json.loads(grammar_params(req)["json_schema"])
        assert (spec.get("additionalProperties") is False) == closed, strict


def test_server_flag_and_backend_choice() -> None:
    from radixgen.runtime.server_args import server_args_from_cli

    args = server_args_from_cli(
        ["--model", str(STORIES), "--grammar-strict-json-schema", "--grammar-backend", "llguidance"]
    )
    assert args.grammar_strict_json_schema and args.grammar_backend == "llguidance"
    assert not server_args_from_cli(["--model", str(STORIES)]).grammar_strict_json_schema
    with pytest.raises(GrammarError, match="grammar_backend"):
        backend_class("guidance")


def test_llguidance_backend_decodes_through_the_scheduler() -> None:
    """The llguidance matcher fills the scheduler's shared bitmask (same layout as xgrammar's) and its outputs,
    jump-forward included, validate."""
    from grammar_cases import REGEXES, SCHEMAS

    from radixgen.runtime import Engine

    engine = Engine(str(STORIES), max_total_tokens=4096, grammar_backend="llguidance", enable_jump_forward=True)
    try:
        schemas = SCHEMAS[19:25]
        params = [
            {"temperature": 0.8, "seed": i, "max_new_tokens": 160, "json_schema": json.dumps(s)}
            for i, s in enumerate(schemas)
        ]
        params += [{"temperature": 0.8, "seed": i, "max_new_tokens": 48, "regex": r} for i, r in enumerate(REGEXES[:4])]
        outs = engine.generate(["Once upon a time"] * len(params), params)
        stopped = 0
        for schema, out in zip(schemas, outs[: len(schemas)], strict=True):
            if out["meta_info"]["finish_reason"]["type"] == "stop":  # else a random model looping in a number
                stopped += 1
                assert schema_errors(schema, out["text"]) == []
        assert stopped >= len(schemas) // 2
        import re

        for regex, out in zip(REGEXES[:4], outs[len(schemas) :], strict=True):
            assert re.fullmatch(regex, out["text"]), (regex, out["text"])
        engine.scheduler.check_integrity()
    finally:
        engine.shutdown()
