"""Grammar-constrained decoding end to end through the Engine: stories260K (real model, vocab 512) and a tiny
random model with the real Llama-2 32k tokenizer (vocab padded to 32064, so padding ids must be masked).

Every completed output must validate against its JSON schema (jsonschema, formats checked) or fully match its
regex; constrained and unconstrained requests share batches; retraction, chunked prefill, jump-forward, n > 1,
seeds, async compile failures, timeouts and aborts are covered."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from grammar_cases import EBNF, EBNF_PYTHON_REGEX, REGEXES, SCHEMAS, schema_errors
from shared_paths import LLAMA2_TOKENIZER, STORIES

from radixgen.grammar import GrammarError
from radixgen.runtime import Engine
from radixgen.runtime.io_struct import AbortReq, FinishReason, TokenizedGenerateReq
from radixgen.runtime.sampling_params import SamplingParams

PROMPT = "Once upon a time"
NAMES = ["stories", "llama32k"]


@pytest.fixture(scope="module")
def llama32k_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (2 layers, hidden 64) with the real Llama-2 tokenizer and a padded vocabulary."""
    d = tmp_path_factory.mktemp("llama32k")
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        shutil.copy(LLAMA2_TOKENIZER / name, d / name)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "vocab_size": 32064, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float32",
    }  # fmt: skip
    (d / "config.json").write_text(json.dumps(config))
    return d


_ENGINES: dict[tuple, Engine] = {}


def engine_for(name: str, llama32k_dir: Path, **kw) -> Engine:
    key = (name, tuple(sorted(kw.items())))
    if key not in _ENGINES:
        if name == "stories":
            _ENGINES[key] = Engine(str(STORIES), max_total_tokens=32768, max_running_requests=64, **kw)
        else:
            kw = {"load_format": "dummy", **kw}
            _ENGINES[key] = Engine(str(llama32k_dir), max_total_tokens=32768, max_running_requests=64, **kw)
    return _ENGINES[key]


def sampled(i: int, **extra) -> dict:
    return {"temperature": 1.0, "seed": 1000 + i, "max_new_tokens": 256, **extra}


def check_schema_outputs(schemas: list[dict], outs: list[dict]) -> None:
    for schema, out in zip(schemas, outs, strict=True):
        assert out["meta_info"]["finish_reason"]["type"] == "stop", (schema, out["meta_info"], out["text"][:200])
        assert schema_errors(schema, out["text"]) == [], schema


def check_regex_outputs(regexes: list[str], outs: list[dict]) -> None:
    for regex, out in zip(regexes, outs, strict=True):
        assert out["meta_info"]["finish_reason"]["type"] == "stop", (regex, out["meta_info"])
        assert re.fullmatch(regex, out["text"]), (regex, out["text"])


@pytest.mark.parametrize("name", NAMES)
def test_every_schema_output_validates(name: str, llama32k_dir: Path) -> None:
    engine = engine_for(name, llama32k_dir)
    params = [sampled(i, json_schema=json.dumps(s)) for i, s in enumerate(SCHEMAS)]
    outs = engine.generate([PROMPT] * len(SCHEMAS), params)
    check_schema_outputs(SCHEMAS, outs)
    engine.scheduler.check_integrity()


@pytest.mark.parametrize("name", NAMES)
def test_every_regex_output_matches(name: str, llama32k_dir: Path) -> None:
    engine = engine_for(name, llama32k_dir)
    regexes = REGEXES + EBNF_PYTHON_REGEX
    params = [sampled(i, regex=r, max_new_tokens=64) for i, r in enumerate(REGEXES)]
    params += [sampled(i, ebnf=g, max_new_tokens=64) for i, g in enumerate(EBNF)]
    outs = engine.generate([PROMPT] * len(params), params)
    check_regex_outputs(regexes, outs)


@pytest.mark.parametrize("name", NAMES)
def test_outlines_backend_subset(name: str, llama32k_dir: Path) -> None:
    engine = engine_for(name, llama32k_dir, grammar_backend="outlines", enable_jump_forward=name == "llama32k")
    manager = engine.scheduler.grammar.manager
    schemas = []
    for s in SCHEMAS:
        try:
            manager.validate("json_schema", json.dumps(s))
            schemas.append(s)
        except GrammarError:
            pass
    assert len(schemas) >= 15
    regexes = REGEXES[:16]
    params = [sampled(i, json_schema=json.dumps(s)) for i, s in enumerate(schemas)]
    params += [sampled(i, regex=r, max_new_tokens=64) for i, r in enumerate(regexes)]
    outs = engine.generate([PROMPT] * len(params), params)
    check_schema_outputs(schemas, outs[: len(schemas)])
    check_regex_outputs(regexes, outs[len(schemas) :])


def test_jump_forward_fixed_keys_and_all_schemas(llama32k_dir: Path) -> None:
    engine = engine_for("llama32k", llama32k_dir, enable_jump_forward=True)
    fixed = {
        "type": "object",
        "properties": {"first_name": {"type": "string", "maxLength": 6},
                       "last_name": {"type": "string", "maxLength": 6}, "kind": {"const": "person"}},
        "required": ["first_name", "last_name", "kind"], "additionalProperties": False,
    }  # fmt: skip
    schemas = [fixed, *SCHEMAS]
    params = [sampled(i, json_schema=json.dumps(s)) for i, s in enumerate(schemas)]
    outs = engine.generate([PROMPT] * len(schemas), params)
    check_schema_outputs(schemas, outs)
    jumped = outs[0]["meta_info"]["jump_forward_tokens"]
    assert jumped >= 8  # '{"first_name": "', '", "last_name": "', '", "kind": "person"}'
    assert outs[0]["meta_info"]["completion_tokens"] > jumped
    assert sum(o["meta_info"]["jump_forward_tokens"] > 0 for o in outs) > len(outs) // 2
    engine.scheduler.check_integrity()
    # the text the client sees is the text the grammar accepted
    tb = engine.scheduler.grammar.manager.backend.token_bytes
    for out in outs:
        assert b"".join(tb[t] for t in out["output_ids"]).decode() == out["text"]


def test_constrained_and_unconstrained_share_batches(llama32k_dir: Path) -> None:
    engine = engine_for("stories", llama32k_dir)
    greedy = {"temperature": 0, "max_new_tokens": 48}
    prompts = ["Once upon a time", "Tom had a dog", "The sun was", "Lily saw a bird"] * 4
    constrained = [{"json_schema": json.dumps(s)} for s in SCHEMAS[19:23]] + [{"regex": r} for r in REGEXES[:4]]
    params = [{**greedy, **constrained[i // 2]} if i % 2 == 0 else {**greedy, "ignore_eos": True} for i in range(16)]
    alone = [engine.generate(p, sp)["output_ids"] for p, sp in zip(prompts, params, strict=True)]
    engine.flush_cache()
    together = engine.generate(prompts, params)
    assert [o["output_ids"] for o in together] == alone
    engine.scheduler.check_integrity()


@pytest.mark.parametrize("jump", [False, True])
def test_retraction_keeps_matchers(jump: bool, llama32k_dir: Path) -> None:
    schema = {"type": "object", "properties": {"story": {"type": "string", "minLength": 80, "maxLength": 100},
              "n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["story", "n"]}  # fmt: skip
    prompts = ["Once upon a time there was a", "Tom had a big red", "The sun was hot and", "Lily saw a bird in"] * 3
    params = {"temperature": 0, "max_new_tokens": 60, "json_schema": json.dumps(schema)}
    big = engine_for("stories", llama32k_dir, enable_jump_forward=jump)
    expected = [o["output_ids"] for o in big.generate(prompts, params)]
    small = Engine(
        str(STORIES), max_total_tokens=240, max_running_requests=16, enable_jump_forward=jump,
        init_new_token_ratio=0.1, min_new_token_ratio=0.05,  # optimistic admission: decode runs out of KV
    )  # fmt: skip
    outs = small.generate(prompts, params)
    assert small.scheduler.num_retractions > 0
    assert [o["output_ids"] for o in outs] == expected
    for out in outs:
        assert out["meta_info"]["finish_reason"]["type"] in ("stop", "length")
        if out["meta_info"]["finish_reason"]["type"] == "stop":
            assert schema_errors(schema, out["text"]) == []
    small.scheduler.check_integrity()


def test_chunked_prefill_with_constraints(llama32k_dir: Path) -> None:
    long_prompt = "Once upon a time there was a little girl named Lily. She liked to play outside in the sun. " * 3
    params = [{"temperature": 0, "max_new_tokens": 40, "json_schema": json.dumps(s)} for s in SCHEMAS[19:27]]
    normal = engine_for("stories", llama32k_dir).generate([long_prompt] * len(params), params)
    chunked = Engine(str(STORIES), max_total_tokens=8192, chunked_prefill_size=16, enable_jump_forward=True)
    outs = chunked.generate([long_prompt] * len(params), params)
    assert chunked.scheduler.num_extend_steps > len(params)
    for a, b, s in zip(normal, outs, SCHEMAS[19:27], strict=True):
        if b["meta_info"]["finish_reason"]["type"] == "stop":
            assert schema_errors(s, b["text"]) == []
        if a["meta_info"]["jump_forward_tokens"] == b["meta_info"]["jump_forward_tokens"] == 0:
            assert a["output_ids"] == b["output_ids"]
    chunked.scheduler.check_integrity()


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"json_schema": '{"type": "object", "properties": {"a": {"type": "strnig"}}}'}, "json_schema: invalid schema"),
        ({"json_schema": "{not json"}, "json_schema: not valid JSON"),
        ({"regex": "[a-"}, "regex: invalid regular expression"),
        ({"ebnf": 'root ::= "a" "b'}, "ebnf:"),
        ({"json_schema": '{"type": "array", "uniqueItems": true}'}, "'uniqueItems'"),
        ({"json_schema": '{"type": "string", "format": "idn-email"}'}, "format 'idn-email'"),
        ({"regex": "a", "json_schema": "{}"}, "give at most one grammar constraint"),
    ],
)
def test_bad_constraints_raise_before_queueing(params: dict, needle: str, llama32k_dir: Path) -> None:
    engine = engine_for("stories", llama32k_dir)
    with pytest.raises(ValueError, match=re.escape(needle)):
        engine.generate([PROMPT, PROMPT], [{"max_new_tokens": 4}, {"max_new_tokens": 4, **params}])
    assert not engine.scheduler.has_work()
    assert engine.generate(PROMPT, {"max_new_tokens": 3, "temperature": 0})["meta_info"]["completion_tokens"] == 3


def test_best_effort_generates_with_unenforced_keyword(llama32k_dir: Path) -> None:
    engine = engine_for("stories", llama32k_dir)
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3,
              "uniqueItems": True}  # fmt: skip
    out = engine.generate(PROMPT, sampled(0, json_schema=json.dumps(schema), grammar_best_effort=True))
    assert out["meta_info"]["finish_reason"]["type"] == "stop"
    doc = json.loads(out["text"])
    assert isinstance(doc, list) and len(doc) <= 3 and all(0 <= x <= 9 for x in doc)


def test_async_compile_failure_timeout_and_abort(llama32k_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(str(STORIES), max_total_tokens=4096, grammar_compile_timeout=0.3)
    manager = engine.scheduler.grammar.manager

    def failing(prepared):
        raise GrammarError("regex: backend refused it")

    monkeypatch.setattr(manager, "_compile", failing)
    out = engine.generate(PROMPT, {"regex": "[a-z]{3}", "max_new_tokens": 8})
    assert out["meta_info"]["finish_reason"] == {"type": "abort", "message": "regex: backend refused it"}

    release = threading.Event()

    def slow(prepared):
        release.wait(20.0)  # a compile that outlives the 0.3 s timeout by far
        raise GrammarError("too late")

    monkeypatch.setattr(manager, "_compile", slow)
    t0 = time.perf_counter()
    outs = engine.generate([PROMPT, PROMPT], [{"regex": "[a-z]{4}", "max_new_tokens": 8}, {"max_new_tokens": 8}])
    elapsed = time.perf_counter() - t0
    release.set()
    assert "grammar_compile_timeout" in outs[0]["meta_info"]["finish_reason"]["message"]
    assert outs[1]["meta_info"]["completion_tokens"] == 8  # the other request was not held up
    assert elapsed < 10.0  # aborted at the timeout, not after the 20 s compile (a loose bound: shared machine)
    sched = engine.scheduler
    params = SamplingParams(regex="[a-z]{5}", max_new_tokens=8)
    sched.add_request(TokenizedGenerateReq(rid="slow", input_ids=[1, 2, 3], sampling_params=params))
    assert sched.grammar.pending() and sched.abort_request(AbortReq("slow"))  # aborted while compiling
    assert [o.finish_reason for o in sched.step()] == [FinishReason.aborted("aborted")]
    assert not engine.scheduler.has_work()
    engine.scheduler.check_integrity()


def test_n_samples_seeds_json_object_and_length_cut(llama32k_dir: Path) -> None:
    engine = engine_for("llama32k", llama32k_dir)
    schema = json.dumps(SCHEMAS[19])
    outs = engine.generate(PROMPT, {"json_schema": schema, "n": 3, "temperature": 1.0, "seed": 7})
    again = engine.generate(PROMPT, {"json_schema": schema, "n": 3, "temperature": 1.0, "seed": 7})
    assert [o["output_ids"] for o in outs] == [o["output_ids"] for o in again]
    assert len({tuple(o["output_ids"]) for o in outs}) == 3
    check_schema_outputs([SCHEMAS[19]] * 3, outs)
    # json_object: any object; a random model may not close it, so a cut output must be a grammar prefix
    objs = engine.generate([PROMPT] * 4, [sampled(i, json_object=True, max_new_tokens=48) for i in range(4)])
    manager = engine.scheduler.grammar.manager
    for out in objs:
        if out["meta_info"]["finish_reason"]["type"] == "stop":
            assert isinstance(json.loads(out["text"]), dict)
        else:
            assert out["meta_info"]["finish_reason"]["type"] == "length"
            matcher = manager.submit("json_object", "").result().matcher()
            assert all(matcher.accept_token(t) for t in out["output_ids"]) and out["text"].startswith("{")
    cut = engine.generate(PROMPT, sampled(0, json_schema=schema, max_new_tokens=5))
    assert cut["meta_info"]["finish_reason"] == {"type": "length", "length": 5}
    matcher = manager.submit("json_schema", schema).result().matcher()
    assert all(matcher.accept_token(t) for t in cut["output_ids"])


def test_grammar_with_logprobs_stop_strings_and_min_new_tokens(llama32k_dir: Path) -> None:
    engine = engine_for("stories", llama32k_dir, enable_jump_forward=True)
    schema = SCHEMAS[19]
    out = engine.generate(PROMPT, sampled(1, json_schema=json.dumps(schema)), return_logprob=True)
    assert len(out["meta_info"]["output_token_logprobs"]) == len(out["output_ids"])
    assert out["meta_info"]["jump_forward_tokens"] == 0  # jumped tokens have no logprobs: no jump-forward
    check_schema_outputs([schema], [out])
    # min_new_tokens never keeps a complete document from ending (the grammar decides where eos may come)
    out = engine.generate(PROMPT, {"regex": "(yes|no)", "min_new_tokens": 10, "max_new_tokens": 20})
    assert out["meta_info"]["finish_reason"]["type"] == "stop" and out["text"] in ("yes", "no")
    # a stop string inside the constrained text ends the request (and jump-forward keeps the check)
    out = engine.generate(PROMPT, sampled(2, json_schema=json.dumps(schema), stop=['"age"']))
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": '"age"'}
    assert out["text"].startswith('{"name": "') and out["text"].endswith(", ")
