"""SGLang 0.5.x native-protocol parity, against a real server: each field and route an SGLang client may send.

stop_regex, sampling_seed, stream_interval, custom_params / session_id / stop_regex defaults, SGLang fields this
build cannot honour (400 naming them), /server_info, /model_info, /ready, /ping, /abort_request with abort_all, the
profiler routes, output_token_logprobs_length, and --incremental-streaming-output.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fixtures import ServerHandle, sse_events, start_server

PROMPT = "Once upon a time"
GREEDY = {"temperature": 0, "max_new_tokens": 48}
PATTERN = r"l[a-z]+ g"  # "little girl" in stories260K's greedy continuation of PROMPT
JSON_TYPE = {"Content-Type": "application/json; charset=utf-8"}  # what SGLang's http_request always sends


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_server()
    yield handle
    handle.stop()


def generate(c: httpx.Client, **body: Any) -> dict[str, Any]:
    r = c.post("/generate", json={"text": PROMPT, **body})
    assert r.status_code == 200, r.text
    return r.json()


def error(c: httpx.Client, path: str, body: Any) -> dict[str, Any]:
    r = c.post(path, json=body)
    assert r.status_code == 400, r.text
    return r.json()["error"]


def test_stop_regex_stops_trims_and_streams_append_only(server: ServerHandle) -> None:
    with server.client() as c:
        free = generate(c, sampling_params=GREEDY)["text"]
        m = re.search(PATTERN, free)
        assert m is not None, free
        out = generate(c, sampling_params={**GREEDY, "stop_regex": PATTERN})
        assert out["text"] == free[: m.start()]
        assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": PATTERN}
        kept = generate(c, sampling_params={**GREEDY, "stop_regex": [r"\d{9}", PATTERN], "no_stop_trim": True})
        assert kept["text"] == free[: m.end()]
        with c.stream("POST", "/generate", json={"text": PROMPT, "stream": True,
                                                 "sampling_params": {**GREEDY, "stop_regex": PATTERN}}) as r:
            chunks = [e for e in sse_events(r) if e != "[DONE]"]
        texts = [ch["text"] for ch in chunks]
        assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False)) and texts[-1] == out["text"]
        assert not any(re.search(PATTERN, t) for t in texts)  # held back: no chunk ever showed the match
        for bad in ("a*", "(", ""):
            err = error(c, "/generate", {"text": PROMPT, "sampling_params": {"stop_regex": bad}})
            assert err["param"] == "stop_regex", err


def test_sampling_seed_is_the_per_request_seed(server: ServerHandle) -> None:
    sampled = {"temperature": 1.0, "max_new_tokens": 24}
    with server.client() as c:
        a = generate(c, sampling_params={**sampled, "sampling_seed": 7})["output_ids"]
        b = generate(c, sampling_params={**sampled, "sampling_seed": 7})["output_ids"]
        s = generate(c, sampling_params={**sampled, "seed": 7})["output_ids"]
        other = generate(c, sampling_params={**sampled, "sampling_seed": 8})["output_ids"]
        assert a == b == s and a != other
        err = error(c, "/generate", {"text": PROMPT, "sampling_params": {"seed": 1, "sampling_seed": 2}})
        assert err["param"] == "sampling_seed"


def test_sglang_defaults_accepted_and_unsupported_values_named(server: ServerHandle) -> None:
    defaults = {"stop_regex": [], "custom_params": None, "stream_interval": None, "sampling_seed": None,
                "beam_width": None, "watermark": None, "ebnf_full_assistant": False}
    body = {"sampling_params": {**GREEDY, **defaults}, "session_id": None, "image_data": None, "lora_path": None,
            "return_logprob": None, "token_ids_logprob": None, "log_metrics": True, "return_hidden_states": False}
    with server.client() as c:
        ref = generate(c, sampling_params=GREEDY)["text"]
        assert generate(c, **body)["text"] == ref
        assert generate(c, sampling_params=GREEDY, session_id="chat-42", log_metrics=False)["text"] == ref
        for field, value in [("image_data", "cat.png"), ("lora_id", "adapter"), ("return_hidden_states", True)]:
            err = error(c, "/generate", {"text": PROMPT, field: value})
            assert err["param"] == field and "not supported" in err["message"], err
        err = error(c, "/generate", {"text": PROMPT, "lora_path": "adapter"})  # served with --lora-paths only
        assert err["param"] == "lora_path" and "serves no LoRA adapters" in err["message"], err
        err = error(c, "/generate", {"text": PROMPT, "sampling_params": {"custom_params": {"k": 1}}})
        assert err["param"] == "custom_params"
        err = error(c, "/generate", {"text": PROMPT, "sampling_params": {"beam_width": 4}})
        assert err["param"] == "beam_width" and "not supported" in err["message"]
        err = error(c, "/generate", {"text": PROMPT, "no_such_field": 1})
        assert err["param"] == "no_such_field" and "unknown" in err["message"]
        err = error(c, "/generate", {"text": PROMPT, "session_id": 5})
        assert err["param"] == "session_id"


def test_stream_interval_batches_chunks(server: ServerHandle) -> None:
    params = {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True, "stream_interval": 5}
    with server.client() as c, c.stream("POST", "/generate", json={"text": PROMPT, "stream": True,
                                                                    "sampling_params": params}) as r:
        chunks = [e for e in sse_events(r) if e != "[DONE]"]
    lengths = [len(ch["output_ids"]) for ch in chunks]
    steps = [b - a for a, b in zip(lengths, lengths[1:-1], strict=False)]
    # the first token (SGLang: outputs at 1, 6, 11, ...), then an update every 5 tokens at the least (several may
    # be folded into one when the client lags), then the end
    assert lengths[-1] == 16 and len(chunks) <= 4 and all(s >= 5 for s in steps), lengths


def test_logprob_stream_chunks_carry_output_token_logprobs_length(server: ServerHandle) -> None:
    params = {**GREEDY, "max_new_tokens": 256, "ignore_eos": True}  # several chunks even when updates merge
    body = {"text": PROMPT, "stream": True, "return_logprob": True, "sampling_params": params}
    with server.client() as c, c.stream("POST", "/generate", json=body) as r:
        chunks = [e for e in sse_events(r) if e != "[DONE]"]
    assert len(chunks) > 2
    for ch in chunks:
        meta = ch["meta_info"]
        assert meta["output_token_logprobs_length"] == len(meta["output_token_logprobs"]) == len(ch["output_ids"])


def test_info_and_readiness_routes(server: ServerHandle) -> None:
    with server.client() as c:
        info, legacy = c.get("/server_info"), c.get("/get_server_info")
        assert info.status_code == legacy.status_code == 200
        assert set(info.json()) == set(legacy.json())
        assert info.json()["internal_states"][0]["max_total_tokens"] == info.json()["max_total_tokens"]
        assert info.json()["version"]
        assert c.get("/model_info").json() == c.get("/get_model_info").json()
        assert c.get("/ready").status_code == 200 and c.get("/ping").status_code == 200


def test_abort_all_aborts_every_request_and_frees_kv(server: ServerHandle) -> None:
    results: list[dict[str, Any]] = []
    long = {"temperature": 0, "max_new_tokens": 400, "ignore_eos": True}

    def run(i: int) -> None:
        with server.client() as c:
            results.append(generate(c, sampling_params=long, rid=f"abort-all-{i}"))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    with server.client() as c:
        while c.get("/server_info").json()["num_running_reqs"] < 3:
            pass
        r = c.post("/abort_request", json={"rid": "", "abort_all": True})
        assert r.status_code == 200
        for t in threads:
            t.join(timeout=60)
        assert [res["meta_info"]["finish_reason"]["type"] for res in results] == ["abort"] * 3
        assert all(res["meta_info"]["completion_tokens"] < 400 for res in results)
        assert c.get("/server_info").json()["kv_used_tokens"] == 0
        assert error(c, "/abort_request", {"abort_all": "yes"})["param"] == "abort_all"
        assert error(c, "/abort_request", {})["param"] == "rid"


def test_profiler_routes_write_a_chrome_trace(server: ServerHandle, tmp_path: Path) -> None:
    with server.client() as c:
        r = c.post("/start_profile", json={"output_dir": str(tmp_path), "record_shapes": True})
        assert r.status_code == 200, r.text
        assert c.post("/start_profile", json={"output_dir": str(tmp_path)}).status_code == 400  # already running
        generate(c, sampling_params={**GREEDY, "max_new_tokens": 8})
        r = c.post("/stop_profile", headers=JSON_TYPE)
        assert r.status_code == 200, r.text
        traces = list(tmp_path.glob("*-scheduler.trace.json"))
        assert len(traces) == 1 and json.loads(traces[0].read_text())["traceEvents"]
        assert c.get("/stop_profile", headers=JSON_TYPE).status_code == 400  # nothing running
        assert error(c, "/start_profile", {"profile_by_stage": True})["param"] == "profile_by_stage"
        assert error(c, "/start_profile", {"bogus": 1})["param"] == "bogus"
        assert c.get("/start_profile").status_code == 415  # state-changing: no form-type (cross-site) requests
        r = c.get("/start_profile", headers=JSON_TYPE)  # no body (SGLang's defaults), as SGLang's client sends it
        assert r.status_code == 200
        assert c.post("/stop_profile", headers=JSON_TYPE).status_code == 200


def test_incremental_streaming_output_sends_deltas() -> None:
    handle = start_server(["--incremental-streaming-output", "--stream-interval", "3"])
    try:
        # long enough that the stream cannot arrive in one piece: updates that reach the HTTP process while a
        # chunk is being sent are merged into the next one (by design, as in SGLang), and 48 tokens of stories260K
        # took under two event-loop turns once the CPU decode path got faster
        params = {**GREEDY, "max_new_tokens": 256, "ignore_eos": True}
        body = {"text": PROMPT, "return_logprob": True, "sampling_params": params}
        with handle.client() as c:
            full = generate(c, **body)
            with c.stream("POST", "/generate", json={**body, "stream": True}) as r:
                chunks = [e for e in sse_events(r) if e != "[DONE]"]
    finally:
        handle.stop()
    assert len(chunks) > 2
    assert "".join(ch["text"] for ch in chunks) == full["text"]
    assert [t for ch in chunks for t in ch["output_ids"]] == full["output_ids"]
    total = 0
    for ch in chunks:
        meta = ch["meta_info"]
        assert len(meta["output_token_logprobs"]) == len(ch["output_ids"])
        total += len(ch["output_ids"])
        assert meta["output_token_logprobs_length"] == total
    assert all(len(ch["output_ids"]) >= 3 for ch in chunks[1:-1])  # --stream-interval 3 after the first token


def test_token_ids_logprob_returns_the_asked_ids_at_every_position(server: ServerHandle) -> None:
    asked = [5, 17, 300]
    body = {"text": PROMPT, "sampling_params": {**GREEDY, "max_new_tokens": 6}, "return_logprob": True,
            "logprob_start_len": 0, "token_ids_logprob": asked}
    with server.client() as c:
        out = generate(c, **body)
        full = generate(c, **{**body, "token_ids_logprob": None, "top_logprobs_num": 512})  # the whole vocabulary
        meta, ref = out["meta_info"], full["meta_info"]
        for side in ("input", "output"):
            got, tops = meta[f"{side}_token_ids_logprobs"], ref[f"{side}_top_logprobs"]
            assert len(got) == len(tops) == len(meta[f"{side}_token_logprobs"]) > 0
            for position, (entries, top) in enumerate(zip(got, tops, strict=True)):
                if side == "input" and position == 0:
                    assert entries == [] and top == []  # the first prompt token has no logprob
                    continue
                by_id = {tid: lp for lp, tid, _ in top}
                assert [tid for _, tid, _ in entries] == asked
                assert all(abs(lp - by_id[tid]) < 1e-5 for lp, tid, _ in entries)
        assert error(c, "/generate", {**body, "return_logprob": False})["param"] == "token_ids_logprob"
        assert error(c, "/generate", {**body, "token_ids_logprob": [9999]})["param"] == "token_ids_logprob"


def test_structural_tag_constrains_the_tagged_part(server: ServerHandle) -> None:
    whole = {"type": "structural_tag",  # xgrammar's format form: the whole output is one tagged digit
             "format": {"type": "tag", "begin": "<f>", "content": {"type": "regex", "pattern": "[0-9]"},
                        "end": "</f>"}}
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    legacy = {"type": "structural_tag", "triggers": ["<f>"],  # free text; a call once the trigger appears
              "structures": [{"begin": "<f>", "schema": schema, "end": "</f>"}]}
    with server.client() as c:
        for seed in range(3):
            params = {"max_new_tokens": 16, "temperature": 1.0, "seed": seed}
            out = generate(c, sampling_params={**params, "structural_tag": json.dumps(whole)})
            assert re.fullmatch(r"<f>[0-9]</f>", out["text"]), out
            assert out["meta_info"]["finish_reason"]["type"] == "stop"
            free = generate(c, sampling_params={**params, "structural_tag": legacy})  # (enforcement: test_grammar)
            assert free["meta_info"]["completion_tokens"] > 0
        for bad, why in [({"type": "structural_tag"}, "structures"), ({"type": "other"}, "type"),
                         ({**legacy, "triggers": ["<g>"]}, "triggers")]:
            err = error(c, "/generate", {"text": PROMPT, "sampling_params": {"structural_tag": json.dumps(bad)}})
            assert err["param"] == "structural_tag" and why in err["message"], err
