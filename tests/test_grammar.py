"""Grammar package tests without a model: validation errors, keyword-support measurements, normalisation
semantics, matchers, bitmask application, the compile cache and jump-forward retokenization."""

from __future__ import annotations

import itertools
import json
import random
import re
import time

import pytest
import torch
from jsonschema import Draft202012Validator, validators
from shared_paths import LLAMA2_TOKENIZER, STORIES
from transformers import AutoTokenizer

from radixgen.grammar import GrammarError, GrammarLimits, GrammarManager, allocate_token_bitmask, jump_forward
from radixgen.grammar.base import apply_token_bitmask_cpu
from radixgen.grammar.jump_forward import plan_jump
from radixgen.grammar.outlines_backend import OutlinesBackend, ascii_classes
from radixgen.grammar.schema_normalize import normalize_schema
from radixgen.grammar.schema_rewrites import fix_optional_groups
from radixgen.grammar.schema_support import OUTLINES_SUPPORT, XGRAMMAR_SUPPORT, find_unenforced
from radixgen.grammar.xgrammar_backend import XGrammarBackend
from radixgen.kernels.reference import apply_token_bitmask_ref, unpack_token_bitmask
from radixgen.runtime.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def stories_tok():
    return AutoTokenizer.from_pretrained(str(STORIES))


@pytest.fixture(scope="module")
def llama_tok():
    return AutoTokenizer.from_pretrained(str(LLAMA2_TOKENIZER))


@pytest.fixture(scope="module")
def xgr_stories(stories_tok):
    return XGrammarBackend(stories_tok, 512, [2, 1])


def manager(backend: str = "xgrammar", **limits) -> GrammarManager:
    return GrammarManager(backend, lambda: None, GrammarLimits(**limits) if limits else None)


# ---------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kind", "spec", "needle"),
    [
        ("json_schema", "{", "not valid JSON"),
        ("json_schema", '{"type": "strin"}', "invalid schema at type"),
        ("json_schema", '{"type": "object", "properties": {"a": {"minLength": -1}}}', "invalid schema at properties/a"),
        ("json_schema", '{"$ref": "#/$defs/missing"}', "points to nothing"),
        ("json_schema", '{"type": "integer", "enum": ["a"]}', "no JSON document satisfies"),
        ("json_schema", "[1]", "must be a JSON object"),
        ("json_schema", '{"type": "array", "uniqueItems": true}', "'uniqueItems'"),
        ("json_schema", '{"type": "string", "not": {"pattern": "^a"}}', "'not'"),
        ("json_schema", '{"type": "integer", "if": {"minimum": 3}, "then": {"maximum": 5}}', "'if'"),
        ("json_schema", '{"type": "string", "format": "iri"}', "format 'iri'"),
        ("json_schema", '{"$ref": "http://example.com/s.json"}', "only local JSON-pointer"),
        ("json_schema", '{"oneOf": [{"type": "integer"}, {"type": "number"}]}', "'oneOf'"),
        ("json_schema", '{"type": "string", "format": "hostname", "maxLength": 3}', "ignored next to 'format'"),
        ("json_schema", '{"type": "number", "multipleOf": 0.5}', "'multipleOf'"),
        ("regex", "(a", "regex: invalid regular expression"),
        ("regex", "(a)\\1", "regex: "),
        ("ebnf", 'root ::= "a" |', "ebnf: EBNF parser error"),
        ("ebnf", "rot ::= [a-z]", "ebnf: "),
        ("json_object", "", None),
    ],
)
def test_validation_errors_name_the_problem(kind: str, spec: str, needle: str | None) -> None:
    gm = manager()
    if needle is None:
        gm.validate(kind, spec)
        return
    with pytest.raises(GrammarError, match=re.escape(needle)) as info:
        gm.validate(kind, spec)
    assert str(info.value).startswith(kind) and isinstance(info.value, ValueError)


def test_best_effort_accepts_unenforced_keywords() -> None:
    gm = manager()
    spec = '{"type": "array", "items": {"type": "integer"}, "uniqueItems": true, "maxItems": 3}'
    with pytest.raises(GrammarError, match="grammar_best_effort"):
        gm.validate("json_schema", spec)
    prepared = gm.validate("json_schema", spec, best_effort=True)
    assert [k for _, k, _ in prepared.ignored] == ["uniqueItems"]


def test_outlines_rejects_what_it_cannot_do() -> None:
    gm = manager("outlines")
    with pytest.raises(GrammarError, match="'minimum'"):
        gm.validate("json_schema", '{"type": "integer", "minimum": 3}')
    with pytest.raises(GrammarError, match="lookaround"):
        gm.validate("regex", "a(?=b)b")
    with pytest.raises(GrammarError, match="not supported by the outlines backend"):
        gm.validate("ebnf", 'root ::= "a"')
    with pytest.raises(GrammarError, match="unrolls"):
        gm.validate("regex", "((a{1,100}){1,100}){1,100}")


def test_size_and_nesting_limits_bound_every_kind() -> None:
    gm = manager(max_spec_bytes=2000, max_nesting_depth=20)
    with pytest.raises(GrammarError, match="grammar_max_spec_bytes"):
        gm.validate("regex", "a" * 3000)
    deep = '{"type": "array", "items": ' * 30 + "{}" + "}" * 30
    t0 = time.perf_counter()
    with pytest.raises(GrammarError, match="grammar_max_nesting_depth"):
        gm.validate("json_schema", deep)
    with pytest.raises(GrammarError, match="grammar_max_nesting_depth"):
        gm.validate("regex", "(" * 25 + "a" + ")" * 25)
    with pytest.raises(GrammarError, match="grammar_max_nesting_depth"):
        gm.validate("ebnf", "root ::= " + "(" * 25 + '"a"' + ")" * 25)
    huge = "[" * 100_000  # would overflow a recursive parser
    with pytest.raises(GrammarError, match="grammar_max"):
        manager().validate("json_schema", huge)
    assert time.perf_counter() - t0 < 2


def test_sampling_params_constraint_fields() -> None:
    assert SamplingParams(regex="a+").constraint == ("regex", "a+")
    assert SamplingParams(json_object=True).constraint == ("json_object", "")
    assert SamplingParams(json_schema={"type": "integer"}).constraint == ("json_schema", '{"type": "integer"}')
    assert SamplingParams().constraint is None
    with pytest.raises(ValueError, match="json_schema/regex/ebnf: give at most one"):
        SamplingParams.from_dict({"json_schema": "{}", "regex": "a", "ebnf": "root ::= [a]"})
    with pytest.raises(ValueError, match="regex: must be a string"):
        SamplingParams(regex=3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- support tables
# (schema, a document violating only that keyword, a valid one) — the measurements behind schema_support
PROBES = {
    "minimum": ({"type": "integer", "minimum": 5}, "3", "6"),
    "exclusiveMaximum": ({"type": "number", "exclusiveMaximum": 1.5}, "1.5", "1.25"),
    "multipleOf": ({"type": "integer", "multipleOf": 3}, "4", "6"),
    "minLength": ({"type": "string", "minLength": 3}, '"ab"', '"abc"'),
    "maxLength": ({"type": "string", "maxLength": 2}, '"abc"', '"ab"'),
    "pattern": ({"type": "string", "pattern": "^[a-z]+$"}, '"A1"', '"ab"'),
    "format": ({"type": "string", "format": "uuid"}, '"x"', '"123e4567-e89b-12d3-a456-426614174000"'),
    "minItems": ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, "[1]", "[1, 2]"),
    "maxItems": ({"type": "array", "items": {"type": "integer"}, "maxItems": 1}, "[1, 2]", "[1]"),
    "prefixItems": ({"type": "array", "prefixItems": [{"type": "integer"}], "items": False}, '["a"]', "[1]"),
    "required": ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, "{}", '{"a": 1}'),
    "additionalProperties": ({"type": "object", "additionalProperties": {"type": "integer"}}, '{"b": "x"}', '{"b": 1}'),
    "propertyNames": (
        {"type": "object", "propertyNames": {"maxLength": 1}, "additionalProperties": {"type": "integer"}},
        '{"ab": 1}',
        '{"a": 1}',
    ),
    "maxProperties": ({"type": "object", "additionalProperties": True, "maxProperties": 1}, '{"a": 1, "b": 2}', "{}"),
    "enum": ({"enum": ["a", 1]}, '"b"', "1"),
    "const": ({"const": "x"}, '"y"', '"x"'),
    "anyOf": ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, "true", "null"),
    "$ref": ({"$defs": {"i": {"type": "integer"}}, "$ref": "#/$defs/i"}, '"a"', "1"),
    # rewritten by schema_normalize (checked after the rewrite)
    "allOf": ({"allOf": [{"type": "integer"}, {"minimum": 5}]}, "3", "6"),
    "enum+minLength": ({"type": "string", "enum": ["a", "bb"], "minLength": 2}, '"a"', '"bb"'),
    "anyOf+properties": (
        {"type": "object", "properties": {"a": {"type": "integer"}}, "anyOf": [{"required": ["a"]}]},
        '{"a": "x"}',
        '{"a": 1}',
    ),
    "format date": ({"type": "string", "format": "date"}, '"2023-02-30"', '"2023-02-28"'),
    "format ipv4": ({"type": "string", "format": "ipv4"}, '"1.02.3.4"', '"1.2.3.4"'),
    "dependentRequired": (
        {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a"],
         "dependentRequired": {"a": ["b"]}},
        '{"a": 1}',
        '{"a": 1, "b": 2}',
    ),
    "lengths into pattern": ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}, '"abcd"', '"abc"'),
    "optional group": ({"type": "string", "pattern": "^0(x[0-9]{1,2})?Z$"}, '"00Z"', '"0x1Z"'),
    "draft-4 exclusiveMinimum": (
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer", "minimum": 3,
         "exclusiveMinimum": True},
        "3",
        "4",
    ),
}  # fmt: skip


def _accepts(backend: XGrammarBackend, schema: dict, doc: str) -> bool:
    spec = manager().validate("json_schema", json.dumps(schema)).spec
    m = backend.compile("json_schema", spec).matcher()
    ids = backend.encode(doc)
    return all(m.accept_token(t) for t in ids) and m.accept_token(2)


@pytest.mark.parametrize("name", list(PROBES))
def test_xgrammar_enforces_what_the_table_says(xgr_stories: XGrammarBackend, name: str) -> None:
    schema, bad, good = PROBES[name]
    assert find_unenforced(normalize_schema(schema), XGRAMMAR_SUPPORT) == []
    assert _accepts(xgr_stories, schema, good), f"{name}: valid document refused"
    assert not _accepts(xgr_stories, schema, bad), f"{name}: violating document accepted"


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "uniqueItems": True},
        {"type": "array", "contains": {"const": 1}},
        {"type": "object", "dependentRequired": {k: [k + "2"] for k in "abcde"}},  # > MAX_DEPENDENCIES
        {"not": {"const": 1}},
        {"type": "integer", "if": {"minimum": 1}, "then": {"maximum": 3}},
        {"type": "string", "format": "regex"},
        {"type": "string", "not": {"pattern": "x"}},
        {"type": "string", "format": "email", "pattern": "^a"},
    ],
)
def test_unenforced_keywords_are_found(schema: dict) -> None:
    assert find_unenforced(normalize_schema(schema), XGRAMMAR_SUPPORT)
    assert find_unenforced(normalize_schema(schema), OUTLINES_SUPPORT)


def test_disjoint_one_of_is_accepted_and_overlapping_made_exclusive() -> None:
    tagged = {
        "oneOf": [
            {"type": "object", "properties": {"t": {"const": "a"}}, "required": ["t"]},
            {"type": "object", "properties": {"t": {"const": "b"}}, "required": ["t"]},
        ]
    }
    assert find_unenforced(normalize_schema(tagged), XGRAMMAR_SUPPORT) == []
    shapes = {
        "type": "object",
        "properties": {"r": {"type": "number"}, "w": {"type": "number"}},
        "oneOf": [{"required": ["r"]}, {"required": ["w"]}],
    }
    norm = normalize_schema(shapes)
    assert find_unenforced(norm, XGRAMMAR_SUPPORT) == []
    for doc in ({"r": 1}, {"w": 2}, {"r": 1, "w": 2}):  # at most one branch matches; a match is valid
        matches = sum(Draft202012Validator(b).is_valid(doc) for b in norm["oneOf"])
        assert matches <= 1
        assert matches == 0 or Draft202012Validator(shapes).is_valid(doc)


# ---------------------------------------------------------------------------------------------------- normalisation
def _docs() -> list:
    return [None, True, 0, 3, 4, 6, 7, 2.5, -1, "", "a", "bb", "2023-02-28", [], [1], [1, 2], ["a", 1], {}, {"a": 1},
            {"a": "x"}, {"a": 1, "b": "y"}, {"b": "y"}, {"a": 1, "b": 2, "c": 3}]  # fmt: skip


@pytest.mark.parametrize(
    "schema",
    [
        {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                   {"properties": {"b": {"type": "string"}}}]},
        {"$defs": {"n": {"type": "integer", "minimum": 0}}, "allOf": [{"$ref": "#/$defs/n"}, {"maximum": 5}]},
        {"type": "object", "properties": {"a": {"type": "integer"}},
         "anyOf": [{"required": ["a"]}, {"required": ["b"]}]},
        {"type": ["integer", "string"], "enum": [1, "a", True, 4], "minimum": 2},
        {"type": "object", "required": ["a", "b"], "additionalProperties": {"type": "integer"}},
        {"type": "integer", "minimum": 2.5, "exclusiveMaximum": 6.5},
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array", "items": [{"type": "integer"}],
         "additionalItems": {"type": "string"}},
        {"type": "object", "minProperties": 2},
        {"type": "object", "properties": {"a": {}, "b": {}, "c": {}}, "required": ["a"],
         "dependencies": {"a": ["b"], "c": ["a"]}},
    ],
)  # fmt: skip
def test_normalisation_preserves_or_narrows_semantics(schema: dict) -> None:
    cls = validators.validator_for(schema, default=Draft202012Validator)
    norm = normalize_schema(schema)
    for doc in _docs():
        if Draft202012Validator(norm).is_valid(doc):
            assert cls(schema).is_valid(doc), (doc, norm)


def test_fix_optional_groups_keeps_the_language() -> None:
    rng = random.Random(0)
    alphabet = "0x.Z"
    docs = ["".join(p) for n in range(5) for p in itertools.product(alphabet, repeat=n)]

    def atom(d: int) -> str:
        r = rng.random()
        if d > 2 or r < 0.4:
            return rng.choice(["0", "x", "\\.", "Z", "[0x]", "[0-9]", "[^x]", "[)]"])
        inner = "".join(quant(atom(d + 1)) for _ in range(rng.randint(1, 3)))
        return f"({inner})" if r < 0.8 else f"(?:{inner}|Z)"

    def quant(a: str) -> str:
        return a + rng.choice(["", "", "?", "*", "+", "{1,2}", "{2}", "??"])

    for _ in range(300):
        pat = "".join(quant(atom(0)) for _ in range(rng.randint(1, 3)))
        fixed = fix_optional_groups(pat)
        assert [bool(re.fullmatch(pat, d)) for d in docs] == [bool(re.fullmatch(fixed, d)) for d in docs], pat
    assert fix_optional_groups(r"^0(x[0-9]{1,2})?Z$") == r"^0(x[0-9]{1,2}|)Z$"
    assert ascii_classes(r"\d+[\w.]\\d") == r"[0-9]+[0-9A-Za-z_.]\\d"


# ---------------------------------------------------------------------------------------------------- matchers
def _allowed(matcher, vocab: int) -> set[int]:
    bm = allocate_token_bitmask(1, vocab)
    matcher.fill_next_token_bitmask(bm, 0)
    return set(unpack_token_bitmask(bm, vocab)[0].nonzero().flatten().tolist())


@pytest.mark.parametrize("backend_cls", [XGrammarBackend, OutlinesBackend])
def test_matchers_mask_accept_terminate_rollback(stories_tok, backend_cls) -> None:
    backend = backend_cls(stories_tok, 512, [2, 1])
    m = backend.compile("regex", "(ab|ac)d").matcher()
    tb = backend.token_bytes
    first = _allowed(m, 512)
    assert first and all(tb[t] and b"abd".startswith(tb[t]) or b"acd".startswith(tb[t]) for t in first)
    assert 2 not in first and 1 not in first
    ids = backend.encode("abd")
    assert all(m.accept_token(t) for t in ids)
    assert _allowed(m, 512) == {1, 2}  # complete: only the stop tokens
    assert not m.accept_token(ids[0]) and not m.is_terminated()
    m.rollback(len(ids))
    assert _allowed(m, 512) == first
    assert all(m.accept_token(t) for t in ids) and m.accept_token(1) and m.is_terminated()


def test_jump_forward_retokenizes_canonically(llama_tok) -> None:
    backend = XGrammarBackend(llama_tok, 32000, [2])
    spec = manager().validate("json_schema", json.dumps({"type": "object", "properties": {"name": {"type": "string"}},
                                                          "required": ["name"]})).spec  # fmt: skip
    m = backend.compile("json_schema", spec).matcher()
    brace = llama_tok.convert_tokens_to_ids("{")
    assert m.accept_token(brace)
    jump = jump_forward(backend, m, [brace], retokenize=1, budget=100)
    assert jump is not None and jump.num_removed == 1  # '{' merged into '{"'
    assert jump.new_ids == backend.encode('{"name": "')  # canonical
    assert [llama_tok.convert_ids_to_tokens(t) for t in jump.new_ids] == ['{"', "name", '":', '▁"']
    assert b"".join(backend.token_bytes[t] for t in jump.new_ids) == b'{"name": "'
    assert plan_jump(backend, [], "") is None
    short = jump_forward(backend, backend.compile("json_schema", spec).matcher(), [], retokenize=0, budget=2)
    assert short is not None and len(short.new_ids) == 2


def test_apply_token_bitmask_cpu_matches_reference_and_masks_padding() -> None:
    g = torch.Generator().manual_seed(0)
    vocab, width = 100, 130  # logits wider than the bitmask's vocabulary: padding columns untouched here
    logits = torch.randn(5, width, generator=g)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (5, 4), dtype=torch.int32, generator=g)
    rows = [0, 3]
    expected = apply_token_bitmask_ref(logits.clone(), bitmask, torch.tensor(rows), vocab_size=vocab)
    got = logits.clone()
    apply_token_bitmask_cpu(got, bitmask, rows, vocab)
    assert torch.equal(got, expected)
    backend_bits = XGrammarBackend(AutoTokenizer.from_pretrained(str(STORIES)), 600, [2])
    m = backend_bits.compile("regex", "[a-z]+").matcher()
    assert max(_allowed(m, 600)) < 512  # ids past the tokenizer's 512 are never allowed


def test_manager_caches_and_compiles_off_thread(stories_tok) -> None:
    gm = GrammarManager("xgrammar", lambda: XGrammarBackend(stories_tok, 512, [2]))
    a = gm.submit("regex", "[0-9]{3}")
    b = gm.submit("regex", "[0-9]{3}")
    assert a is b and gm.num_compiles == 1 and gm.num_cache_hits == 1
    assert a.result(timeout=30).matcher() is not None
    with pytest.raises(GrammarError):
        gm.submit("regex", "(")
    gm.shutdown()


def test_cuda_path_kernel_agrees_with_cpu_path() -> None:
    """The Triton kernel the scheduler uses on CUDA (run here in the interpreter), with the same arguments."""
    from radixgen.kernels import INTERPRET, apply_token_bitmask_inplace

    if not INTERPRET and not torch.cuda.is_available():
        pytest.skip("triton was imported in compiled mode without CUDA")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 96, generator=g)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (4, 3), dtype=torch.int32, generator=g)
    rows = [1, 2]
    a, b = logits.clone(), logits.clone()
    apply_token_bitmask_inplace(a, bitmask, torch.tensor(rows), vocab_size=90)
    apply_token_bitmask_cpu(b, bitmask, rows, 90)
    assert torch.equal(a, b)


def test_structural_tag_free_text_until_a_trigger_then_the_schema(xgr_stories: XGrammarBackend) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    tag = json.dumps({"type": "structural_tag", "triggers": ["<f>"],
                      "structures": [{"begin": "<f>", "schema": schema, "end": "</f>"}]})
    spec = manager().validate("structural_tag", tag).spec

    def accepts(text: str) -> bool:
        m = xgr_stories.compile("structural_tag", spec).matcher()
        return all(m.accept_token(t) for t in xgr_stories.encode(text)) and m.accept_token(2)

    assert accepts("Once upon a time there was a cat.")  # no trigger: any text
    assert accepts('Once upon a time <f>{"n": 3}</f> the end.')
    assert not accepts('Once upon a time <f>{"n": 30}</f>')  # the call breaks its schema
    assert not accepts("Once upon a time <f>hello</f>")
    for bad in ('{"type": "structural_tag"}', '{"type": "x"}', "[1]", "{",
                json.dumps({"type": "structural_tag", "triggers": ["<g>"],
                            "structures": [{"begin": "<f>", "schema": schema, "end": "</f>"}]})):
        with pytest.raises(GrammarError, match="structural_tag"):
            manager().validate("structural_tag", bad)
    with pytest.raises(GrammarError, match="structural_tag: not supported by the outlines backend"):
        manager("outlines").validate("structural_tag", tag)
