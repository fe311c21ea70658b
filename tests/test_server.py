"""End-to-end tests of the HTTP server (three processes, ZeroMQ IPC) on stories260K.

A module-scoped server (metrics on) serves the native API tests; separate short-lived servers cover the API
key, /health before ready, SIGTERM and a killed scheduler. The whole file runs in well under two minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import server_fixtures
from prometheus_client.parser import text_string_to_metric_families
from server_fixtures import STORIES, ServerHandle, sse_events, start_server

from radixgen.runtime.detokenizer import DetokState
from radixgen.runtime.errors import InvalidRequestError
from radixgen.runtime.fast_tokenizer import load_tokenizer
from radixgen.runtime.io_struct import DetokRegister, FinishReason, ReqOutput
from radixgen.runtime.sampling_params import SamplingParams

server = server_fixtures.server  # the module-scoped server fixture (metrics on)

GOLDEN = (STORIES / "reference_greedy_from_bos_200.txt").read_text()
GREEDY = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
PROMPTS = [
    "Once upon a time",
    "Lily and Tom went to the park",
    "The little dog was sad because",
    "One day, a big bird",
    "Mom said to Ben",
    "There was a small red ball",
    "The sun was hot and",
    "Sam liked to play with his",
]


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text exposition (parsed by prometheus_client)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def wait_idle(client: httpx.Client, timeout: float = 10.0) -> dict[str, Any]:
    """Poll /get_server_info until no request runs or waits and no KV is held by requests."""
    deadline = time.monotonic() + timeout
    while True:
        info = client.get("/get_server_info").json()
        idle = info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0 and info["kv_used_tokens"] == 0
        if idle or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------- native API
def test_generate_single_matches_golden(server: ServerHandle) -> None:
    with server.client() as c:
        r = c.post("/generate", json={"input_ids": [1], "sampling_params": {**GREEDY, "max_new_tokens": 200}})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["text"] == GOLDEN
    meta = out["meta_info"]
    assert meta["completion_tokens"] == 200 and meta["prompt_tokens"] == 1
    assert meta["finish_reason"] == {"type": "length", "length": 200}
    assert len(out["output_ids"]) == 200 and meta["e2e_latency"] > 0 and isinstance(meta["id"], str)


def test_generate_text_and_batch(server: ServerHandle) -> None:
    with server.client() as c:
        single = [c.post("/generate", json={"text": p, "sampling_params": GREEDY}).json() for p in PROMPTS[:3]]
        batch = c.post("/generate", json={"text": PROMPTS[:3], "sampling_params": GREEDY, "rid": ["a", "b", "c"]})
        per_item = c.post(
            "/generate",
            json={"text": PROMPTS[:2], "sampling_params": [GREEDY, {**GREEDY, "max_new_tokens": 3}]},
        ).json()
    assert batch.status_code == 200, batch.text
    outs = batch.json()
    assert isinstance(outs, list) and [o["meta_info"]["id"] for o in outs] == ["a", "b", "c"]
    assert [o["text"] for o in outs] == [s["text"] for s in single]
    assert [o["meta_info"]["completion_tokens"] for o in per_item] == [24, 3]


def test_generate_n_samples(server: ServerHandle) -> None:
    params = {"temperature": 1.0, "max_new_tokens": 8, "n": 3, "seed": 7, "ignore_eos": True}
    with server.client() as c:
        outs = c.post("/generate", json={"text": PROMPTS[0], "sampling_params": params, "rid": "s"}).json()
        again = c.post("/generate", json={"text": PROMPTS[0], "sampling_params": params}).json()
    assert [o["meta_info"]["id"] for o in outs] == ["s-0", "s-1", "s-2"]
    assert [o["output_ids"] for o in outs] == [o["output_ids"] for o in again]  # seeded: reproducible
    assert len({tuple(o["output_ids"]) for o in outs}) > 1  # seed + j: the samples differ


def test_generate_stream(server: ServerHandle) -> None:
    body = {"text": PROMPTS[1], "sampling_params": {**GREEDY, "max_new_tokens": 40}}
    with server.client() as c:
        full = c.post("/generate", json=body).json()
        with c.stream("POST", "/generate", json={**body, "stream": True}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks, "no updates"
    for prev, cur in zip(chunks, chunks[1:], strict=False):
        assert cur["text"].startswith(prev["text"])  # cumulative and append-only
        assert cur["output_ids"][: len(prev["output_ids"])] == prev["output_ids"]
    assert all(ch["meta_info"]["finish_reason"] is None for ch in chunks[:-1])
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 40}
    assert chunks[-1]["text"] == full["text"] and chunks[-1]["output_ids"] == full["output_ids"]


def test_generate_stream_batch_and_n(server: ServerHandle) -> None:
    params = [{**GREEDY, "max_new_tokens": 5 + 7 * i} for i in range(3)]
    body = {"text": PROMPTS[:3], "sampling_params": params}
    with server.client() as c:
        full = c.post("/generate", json=body).json()
        with c.stream("POST", "/generate", json={**body, "stream": True}) as r:
            events = sse_events(r)
    assert events[-1] == "[DONE]"
    last = {}
    for ev in events[:-1]:
        assert ev["index"] not in last or last[ev["index"]]["meta_info"]["finish_reason"] is None
        last[ev["index"]] = ev
    assert [last[i]["text"] for i in range(3)] == [o["text"] for o in full]
    assert [last[i]["meta_info"]["completion_tokens"] for i in range(3)] == [5, 12, 19]


def test_stop_string_trimmed_in_detokenizer(server: ServerHandle) -> None:
    with server.client() as c:
        base = c.post("/generate", json={"text": PROMPTS[0], "sampling_params": GREEDY}).json()["text"]
        stop = base.split()[3]  # a word in the middle of the greedy continuation
        body = {"text": PROMPTS[0], "sampling_params": {**GREEDY, "stop": [stop]}}
        out = c.post("/generate", json=body).json()
        with c.stream("POST", "/generate", json={**body, "stream": True}) as r:
            chunks = sse_events(r)[:-1]
        kept = c.post("/generate", json={**body, "sampling_params": {**body["sampling_params"], "no_stop_trim": True}})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert out["text"] == base[: base.index(stop)]
    assert all(stop not in ch["text"] for ch in chunks) and chunks[-1]["text"] == out["text"]
    assert kept.json()["text"] == base[: base.index(stop) + len(stop)]


def test_stop_token_text_trimmed_in_detokenizer(server: ServerHandle) -> None:
    with server.client() as c:
        base = c.post("/generate", json={"input_ids": [1], "sampling_params": {**GREEDY, "ignore_eos": True}}).json()
        stop_tok = base["output_ids"][4]
        params = {**GREEDY, "ignore_eos": True, "stop_token_ids": [stop_tok]}
        out = c.post("/generate", json={"input_ids": [1], "sampling_params": params}).json()
        kept = c.post("/generate", json={"input_ids": [1], "sampling_params": {**params, "no_stop_trim": True}}).json()
        want = c.post("/detokenize", json={"tokens": base["output_ids"][:4]}).json()["text"]
        want_kept = c.post("/detokenize", json={"tokens": base["output_ids"][:5]}).json()["text"]
    assert out["output_ids"] == base["output_ids"][:5]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_tok}
    assert out["text"] == want and kept["text"] == want_kept


def test_logprobs(server: ServerHandle) -> None:
    body = {
        "text": PROMPTS[2],
        "sampling_params": {**GREEDY, "max_new_tokens": 6},
        "return_logprob": True,
        "logprob_start_len": 0,
        "top_logprobs_num": 3,
        "return_text_in_logprobs": True,
    }
    with server.client() as c:
        out = c.post("/generate", json=body).json()
        plain = c.post("/generate", json={**body, "return_text_in_logprobs": False}).json()
    meta = out["meta_info"]
    n_prompt, n_out = meta["prompt_tokens"], meta["completion_tokens"]
    assert len(meta["input_token_logprobs"]) == n_prompt and len(meta["input_top_logprobs"]) == n_prompt
    assert len(meta["output_token_logprobs"]) == n_out == len(meta["output_top_logprobs"]) == 6
    for (lp, tid, text), top, chosen in zip(
        meta["output_token_logprobs"], meta["output_top_logprobs"], out["output_ids"], strict=True
    ):
        assert tid == chosen and lp <= 0 and isinstance(text, str)
        assert len(top) == 3 and top[0][1] == chosen  # greedy: the chosen token is the most likely
        assert top[0][0] >= top[1][0] >= top[2][0]
    assert all(e[2] is None for e in plain["meta_info"]["output_token_logprobs"])
    assert [e[1] for e in plain["meta_info"]["output_token_logprobs"]] == out["output_ids"]


def test_prefill_only_then_cached(server: ServerHandle) -> None:
    prompt = "Zed the zebra had a very long name that nobody could say, so the animals of the zoo"
    with server.client() as c:
        first = c.post("/generate", json={"text": prompt, "sampling_params": {"max_new_tokens": 0}}).json()
        second = c.post("/generate", json={"text": prompt, "sampling_params": GREEDY}).json()
    n = first["meta_info"]["prompt_tokens"]
    assert first["text"] == "" and first["output_ids"] == [] and first["meta_info"]["completion_tokens"] == 0
    assert first["meta_info"]["finish_reason"]["type"] == "length"
    assert first["meta_info"]["cached_tokens"] <= 1  # at most the shared BOS token
    assert second["meta_info"]["cached_tokens"] >= n - 1


def test_concurrent_streams_match_sequential(server: ServerHandle) -> None:
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} {'and then' * (i // len(PROMPTS))}".strip() for i in range(32)]
    params = {**GREEDY, "max_new_tokens": 20}
    with server.client() as c:
        c.post("/flush_cache", json={})
        sequential = [c.post("/generate", json={"text": p, "sampling_params": params}).json()["text"] for p in prompts]
        c.post("/flush_cache", json={})

    async def one(client: httpx.AsyncClient, prompt: str) -> str:
        last: dict[str, Any] = {}
        async with client.stream(
            "POST", "/generate", json={"text": prompt, "sampling_params": params, "stream": True}
        ) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    last = json.loads(line[6:])
        assert last["meta_info"]["finish_reason"] is not None
        return str(last["text"])

    async def all_streams() -> list[str]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    assert asyncio.run(all_streams()) == sequential
    with server.client() as c:
        assert wait_idle(c)["kv_used_tokens"] == 0


def _abort_count(client: httpx.Client) -> float:
    samples = metric_samples(client.get("/metrics").text)
    return samples.get(("radixgen_requests_total", (("finish_reason", "abort"),)), 0)


def test_disconnect_aborts_and_returns_kv(server: ServerHandle) -> None:
    long = {"temperature": 0, "max_new_tokens": 480, "ignore_eos": True}
    with server.client() as c:
        idle = wait_idle(c)
        aborts = _abort_count(c)
        with c.stream("POST", "/generate", json={"input_ids": [1, 400], "sampling_params": long, "stream": True}) as r:
            for i, _line in enumerate(r.iter_lines()):
                if i >= 4:
                    break  # leave mid-stream: the connection is closed
        # a non-streaming batch whose client gives up: 64 x 480 tokens take over a second even where stories260K
        # decodes one sequence's 480 tokens in well under the 0.3 s timeout
        batch = {"input_ids": [[1, 401 + i] for i in range(64)], "sampling_params": long}
        with pytest.raises(httpx.ReadTimeout):
            c.post("/generate", json=batch, timeout=0.3)
        after = wait_idle(c)
        metrics = metric_samples(c.get("/metrics").text)
        assert _abort_count(c) == aborts + 1 + 64
    assert after["kv_used_tokens"] == 0 == idle["kv_used_tokens"]
    assert after["kv_free_tokens"] + after["kv_evictable_tokens"] == after["max_total_tokens"]
    assert metrics[("radixgen_kv_used_tokens", ())] == 0 and metrics[("radixgen_num_running_reqs", ())] == 0


def test_abort_request_route(server: ServerHandle) -> None:
    long = {"temperature": 0, "max_new_tokens": 480, "ignore_eos": True}
    with server.client() as c:
        with c.stream(
            "POST", "/generate", json={"input_ids": [1, 402], "sampling_params": long, "stream": True, "rid": "victim"}
        ) as r:
            lines = r.iter_lines()
            next(lines)
            assert c.post("/abort_request", json={"rid": "victim"}).status_code == 200
            events = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
        assert events[-1]["meta_info"]["finish_reason"]["type"] == "abort"
        assert events[-1]["meta_info"]["completion_tokens"] < 480
        assert wait_idle(c)["kv_used_tokens"] == 0


def test_metrics_move(server: ServerHandle) -> None:
    with server.client() as c:
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        before = metric_samples(r.text)
        c.post("/generate", json={"text": PROMPTS[3], "sampling_params": {**GREEDY, "max_new_tokens": 5}})
        c.post("/generate", json={"text": PROMPTS[3], "sampling_params": {**GREEDY, "max_new_tokens": 5}})
        after = metric_samples(c.get("/metrics").text)

    def delta(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    assert delta("radixgen_requests_total", (("finish_reason", "length"),)) == 2
    assert delta("radixgen_generation_tokens_total") == 10
    assert delta("radixgen_prompt_tokens_total") > 0 and delta("radixgen_cached_tokens_total") > 0
    assert delta("radixgen_time_to_first_token_seconds_count") == 2
    assert delta("radixgen_e2e_request_latency_seconds_count") == 2
    assert delta("radixgen_time_per_output_token_seconds_count") == 2
    assert 0 < after[("radixgen_cache_hit_rate", ())] <= 1
    assert after[("radixgen_max_total_tokens", ())] == 8192


def test_info_tokenize_flush_health(server: ServerHandle) -> None:
    with server.client() as c:
        info = c.get("/get_model_info").json()
        assert info["model_path"] == str(STORIES) and info["is_generation"] is True and "tokenizer_path" in info
        sinfo = c.get("/get_server_info").json()
        assert sinfo["max_total_tokens"] == 8192 and sinfo["context_len"] == 512 and sinfo["enable_metrics"] is True
        assert set(sinfo["pids"]) == {"scheduler", "detokenizer"}
        tok = c.post("/tokenize", json={"text": "Once upon a time"}).json()
        assert tok["tokens"] == tok["input_ids"] == [1, 403, 407, 261, 378] and tok["count"] == 5
        assert c.post("/detokenize", json={"tokens": tok["tokens"][1:]}).json()["text"] == "Once upon a time"
        assert c.get("/health").status_code == 200 and c.get("/health_generate").status_code == 200
        assert c.post("/flush_cache", json={}).json()["success"] is True
        assert c.get("/get_server_info").json()["kv_cached_tokens"] == 0


def test_http_and_detokenizer_processes_do_not_load_torch(server: ServerHandle) -> None:
    with server.client() as c:
        pids = c.get("/get_server_info").json()["pids"]

    def maps(pid: int) -> str:
        return Path(f"/proc/{pid}/maps").read_text()

    assert "libtorch" in maps(pids["scheduler"])  # the check can see torch where it is loaded
    assert "libtorch" not in maps(server.proc.pid)
    assert "libtorch" not in maps(pids["detokenizer"])


BAD_INPUTS: list[tuple[str, Any, str]] = [
    ("malformed json", b'{"text": "hi"', "body"),
    ("body not an object", [1, 2], "body"),
    ("neither text nor input_ids", {"sampling_params": {}}, "text"),
    ("both text and input_ids", {"text": "a", "input_ids": [1]}, "input_ids"),
    ("text wrong type", {"text": 5}, "text"),
    ("empty text", {"text": ""}, "text"),
    ("empty input_ids", {"input_ids": []}, "input_ids"),
    ("input_ids wrong type", {"input_ids": ["a"]}, "input_ids"),
    ("token id out of vocab", {"input_ids": [1, 9999]}, "input_ids"),
    ("prompt longer than context", {"input_ids": [1] * 600}, "input_ids"),
    ("max_new_tokens beyond context", {"text": "hi", "sampling_params": {"max_new_tokens": 1000}}, "max_new_tokens"),
    ("negative max_new_tokens", {"text": "hi", "sampling_params": {"max_new_tokens": -1}}, "max_new_tokens"),
    ("negative temperature", {"text": "hi", "sampling_params": {"temperature": -0.5}}, "temperature"),
    ("top_p out of range", {"text": "hi", "sampling_params": {"top_p": 1.5}}, "top_p"),
    ("top_k wrong type", {"text": "hi", "sampling_params": {"top_k": "x"}}, "top_k"),
    ("sampling_params wrong type", {"text": "hi", "sampling_params": 3}, "sampling_params"),
    ("unknown sampling field", {"text": "hi", "sampling_params": {"foo": 1}}, "foo"),
    ("stop wrong type", {"text": "hi", "sampling_params": {"stop": [1, 2]}}, "stop"),
    ("logit_bias id out of vocab", {"text": "hi", "sampling_params": {"logit_bias": {"99999": 1}}}, "logit_bias"),
    ("stop_token_ids out of vocab", {"text": "hi", "sampling_params": {"stop_token_ids": [9999]}}, "stop_token_ids"),
    ("min > max new tokens", {"text": "hi", "sampling_params": {"min_new_tokens": 9, "max_new_tokens": 2}}, "min_new"),
    ("n zero", {"text": "hi", "sampling_params": {"n": 0}}, "n"),
    ("frequency_penalty range", {"text": "hi", "sampling_params": {"frequency_penalty": 3}}, "frequency_penalty"),
    ("return_logprob wrong type", {"text": "hi", "return_logprob": "yes"}, "return_logprob"),
    ("top_logprobs_num negative", {"text": "hi", "top_logprobs_num": -1}, "top_logprobs_num"),
    ("logprob_start_len too small", {"text": "hi", "logprob_start_len": -2}, "logprob_start_len"),
    ("stream wrong type", {"text": "hi", "stream": "yes"}, "stream"),
    ("rid wrong type", {"text": "hi", "rid": 5}, "rid"),
    ("sampling_params list length", {"text": ["a", "b"], "sampling_params": [{}]}, "sampling_params"),
    ("unknown top-level field", {"text": "hi", "foo": 1}, "foo"),
    ("bad value while streaming", {"text": "hi", "stream": True, "sampling_params": {"top_p": 0}}, "top_p"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_400_naming_the_field(server: ServerHandle, case: str, body: Any, field: str) -> None:
    with server.client() as c:
        if isinstance(body, bytes):
            r = c.post("/generate", content=body, headers={"content-type": "application/json"})
        else:
            r = c.post("/generate", json=body)
    assert r.status_code == 400, (case, r.text)
    err = r.json()["error"]
    assert field in err["message"], (case, err)
    assert err["type"] == "invalid_request_error" and err["code"] == 400 and "param" in err


def test_bad_input_on_other_routes_then_server_still_works(server: ServerHandle) -> None:
    with server.client() as c:
        cases = [
            ("/tokenize", {"text": 5}, "text"),
            ("/detokenize", {"tokens": [-1]}, "tokens"),
            ("/abort_request", {}, "rid"),
        ]
        for path, body, field in cases:
            r = c.post(path, json=body)
            assert r.status_code == 400 and field in r.json()["error"]["message"], (path, r.text)
        assert c.get("/no_such_route").json()["error"]["code"] == 404
        ok = c.post("/generate", json={"text": PROMPTS[0], "sampling_params": GREEDY})
        assert ok.status_code == 200 and ok.json()["meta_info"]["completion_tokens"] == 24


SMALL_SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["color", "n"],
    "additionalProperties": False,
}


def test_generate_regex_and_json_schema(server: ServerHandle) -> None:
    """Grammar fields pass through /generate: the text matches, the request ends with stop, meta_info counts
    jump-forward tokens."""
    import jsonschema

    pattern = r"(yes|no)-[0-9]{2}"
    with server.client() as c:
        r = c.post("/generate", json={"text": PROMPTS[0], "sampling_params": {"max_new_tokens": 16, "regex": pattern}})
        assert r.status_code == 200, r.text
        out = r.json()
        assert re.fullmatch(pattern, out["text"]), out["text"]
        assert out["meta_info"]["finish_reason"]["type"] == "stop"
        assert out["meta_info"]["jump_forward_tokens"] >= 0
        body = {"text": PROMPTS[1], "sampling_params": {"max_new_tokens": 48, "json_schema": json.dumps(SMALL_SCHEMA)}}
        r = c.post("/generate", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        jsonschema.validate(json.loads(out["text"]), SMALL_SCHEMA)


@pytest.mark.parametrize(
    ("sampling", "expect"),
    [
        ({"regex": "(unclosed"}, "regex"),
        ({"json_schema": "{not json"}, "json_schema"),
        ({"json_schema": json.dumps({"type": "object", "properties": {"a": {"type": "frobnicate"}}})}, "json_schema"),
        ({"ebnf": "root ::= "}, "ebnf"),
        ({"regex": "a", "json_schema": "{}"}, "json_schema/regex"),
    ],
)
def test_generate_bad_grammar_400_then_ok(server: ServerHandle, sampling: dict[str, Any], expect: str) -> None:
    with server.client() as c:
        r = c.post("/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 4, **sampling}})
        assert r.status_code == 400, r.text
        assert expect in r.json()["error"]["message"], r.text
        ok = c.post("/generate", json={"text": PROMPTS[0], "sampling_params": GREEDY})
        assert ok.status_code == 200 and ok.json()["meta_info"]["completion_tokens"] == 24


def test_detok_state_holds_back_possible_stop_strings() -> None:
    tok = load_tokenizer(str(STORIES))
    ids = tok.encode(" there was a little girl named Lily", add_special_tokens=False)
    st = DetokState(DetokRegister("r", [1], stop=["girl named"]), tok)
    sent = ""
    for i, t in enumerate(ids):
        done = i == len(ids) - 1
        finish = FinishReason.stopped("girl named") if done else None
        sent += st.step(ReqOutput("r", [t], finish, 1, i + 1, 0))
        assert "girl" not in sent or done
    assert sent == "there was a little "


# ---------------------------------------------------------------------------------------------------- units
def test_scheduler_loop_rejects_with_error_and_registers_accepted() -> None:
    import msgspec

    from radixgen.runtime.io_struct import ErrorOut, SchedulerOutput, TokenizedGenerateReq
    from radixgen.runtime.scheduler_process import SchedulerLoop

    class FakeScheduler:
        def handle(self, msg: Any) -> None:
            if msg.rid == "bad":
                raise InvalidRequestError("max_new_tokens", "max_new_tokens: too many")

    class FakeSocket:
        def __init__(self) -> None:
            self.sent: list[Any] = []

        def send(self, data: bytes, copy: bool = True) -> None:
            self.sent.append(msgspec.msgpack.decode(data, type=SchedulerOutput))

    sock = FakeSocket()
    loop = SchedulerLoop(FakeScheduler(), None, sock, os.getpid())  # type: ignore[arg-type]
    loop.on_generate(TokenizedGenerateReq("bad", [1, 2], SamplingParams()))
    good = SamplingParams(stop=["x"], skip_special_tokens=False)
    loop.on_generate(TokenizedGenerateReq("good", list(range(100)), good))
    assert sock.sent[0] == ErrorOut("bad", "max_new_tokens: too many", 400, "max_new_tokens")
    reg = sock.sent[1]
    assert isinstance(reg, DetokRegister) and reg.rid == "good" and reg.stop == ["x"]
    assert reg.prompt_tail == list(range(36, 100)) and reg.skip_special_tokens is False


def test_cli_flags_derive_from_server_args() -> None:
    from radixgen.runtime.server_args import server_args_from_cli

    path = str(STORIES)
    flags = ["--model", path, "--tokenizer", path, "--port", "1234", "--enable-metrics", "--schedule-policy", "lpm"]
    args = server_args_from_cli([*flags, "--max_total_tokens", "100", "--api-key", "k"])
    assert (args.model_path, args.tokenizer_path, args.port, args.enable_metrics) == (path, path, 1234, True)
    assert (args.schedule_policy, args.max_total_tokens, args.api_key) == ("lpm", 100, "k")
    assert args.disable_radix_cache is False
    with pytest.raises(SystemExit):
        server_args_from_cli(["--model", str(STORIES), "--port", "0"])  # invalid value: argparse error naming port


# ---------------------------------------------------------------------------------------------------- lifecycle
class AuxServer:
    """A second server (``--api-key``), started before the module's main server so the two start in parallel.
    A thread records the first /health and /generate statuses it gets while the model is still loading."""

    def __init__(self) -> None:
        self.handle = start_server(["--api-key", "sekret"], wait=False, env={"RADIXGEN_TEST_READY_DELAY": "2"})
        self.early: dict[str, httpx.Response] = {}
        self.thread = threading.Thread(target=self._probe, daemon=True)
        self.thread.start()

    def _probe(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.handle.proc.poll() is None:
            try:
                self.early["health"] = httpx.get(f"{self.handle.base_url}/health", timeout=5)
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            body = {"text": "hi"}
            self.early["generate"] = httpx.post(
                f"{self.handle.base_url}/generate", json=body, headers=self.handle.headers(), timeout=5
            )
            return


@pytest.fixture(scope="module", autouse=True)
def aux_server() -> Iterator[AuxServer]:
    aux = AuxServer()
    yield aux
    aux.handle.stop()


def test_api_key_health_before_ready_then_killed_scheduler(aux_server: AuxServer) -> None:
    """/health is 503 while the model loads, the API key is enforced, and when the scheduler is killed the
    server logs why and exits non-zero, taking the detokenizer with it."""
    handle = aux_server.handle
    aux_server.thread.join(120)
    assert aux_server.early["health"].status_code == 503
    assert aux_server.early["health"].json()["error"]["code"] == 503
    assert aux_server.early["generate"].status_code == 503
    handle.wait_ready()
    url = handle.base_url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
        r = httpx.post(f"{url}/generate", json={"text": "hi"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{url}/get_model_info").status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200  # the one route without a key
    with handle.client() as c:
        assert c.post("/generate", json={"text": "hi", "sampling_params": GREEDY}).status_code == 200
        assert c.get("/metrics").status_code == 404  # metrics off
        info = c.get("/get_server_info").json()
    assert info["api_key"] == "<redacted>"
    detok = psutil.Process(info["pids"]["detokenizer"])
    os.kill(info["pids"]["scheduler"], signal.SIGKILL)
    assert handle.proc.wait(15) != 0
    detok.wait(5)
    assert "scheduler process" in handle.logs() and "SIGKILL" in handle.logs()


def test_sigterm_stops_every_process(server: ServerHandle) -> None:
    """Last test of the module: SIGTERM the module's server (its fixture teardown is then a no-op)."""
    with server.client() as c:
        assert c.get("/health").status_code == 200
    children = psutil.Process(server.proc.pid).children(recursive=True)
    assert len(children) >= 2  # scheduler, detokenizer (and multiprocessing's resource tracker)
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0
    assert time.monotonic() - start < 10
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, alive
