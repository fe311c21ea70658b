"""SGLang-language programs against a radixgen server, run twice: by SGLang's own frontend (the `sglang` 0.5.23
package, unmodified) and by radixgen's DSL with only the import changed (``import radixgen as sgl``).

Each program's generated variables are checked against independent native /generate calls with the same prompt and
sampling parameters (greedy, so they must be equal), and the server's access log must show no 4xx/5xx at all.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from server_fixtures import ServerHandle, start_server
from sglang_frontend import import_sglang

PROMPT = "Once upon a time"
FRONTENDS = ["sglang", "radixgen"]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_server(["--log-level", "debug"])  # debug: uvicorn's access log, read by the last test
    yield handle
    handle.stop()


@pytest.fixture(scope="module", params=FRONTENDS)
def sgl(request: pytest.FixtureRequest, server: ServerHandle) -> Any:
    """The frontend module (SGLang's, or radixgen's under the same name) with the server as default backend."""
    module = import_sglang() if request.param == "sglang" else importlib.import_module("radixgen")
    module.set_default_backend(module.RuntimeEndpoint(server.base_url))
    return module


@pytest.fixture(scope="module")
def progs(sgl: Any) -> SimpleNamespace:
    return programs(sgl)


def native(server: ServerHandle, text: str, **params: Any) -> dict[str, Any]:
    """An independent native /generate call (greedy)."""
    body = {"text": text, "sampling_params": {"temperature": 0, **params}}
    r = httpx.post(f"{server.base_url}/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def programs(sgl: Any) -> SimpleNamespace:
    """The SGLang-language programs, written against ``sgl``'s API (either frontend)."""

    @sgl.function
    def stops(s, start):  # type: ignore[no-untyped-def]
        s += start
        s += sgl.gen("a", max_tokens=40, stop=".", temperature=0)
        s += "."
        s += sgl.gen("b", max_tokens=40, stop_regex=r"p[a-z]+ ", temperature=0)

    @sgl.function
    def constrained(s):  # type: ignore[no-untyped-def]
        s += PROMPT + ", the number was "
        s += sgl.gen("two_digits", regex=r"[0-9]{2}", temperature=0)
        s += ". Age as an integer: "
        s += sgl.gen_int("age", max_tokens=4)
        s += ". As JSON: "
        s += sgl.gen("obj", max_tokens=64, json_schema=json.dumps(SCHEMA), temperature=0)
        s += " Was it happy? "
        s += sgl.select("mood", choices=["happy", "sad"])

    @sgl.function
    def branches(s):  # type: ignore[no-untyped-def]
        s += PROMPT
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f" there were {i + 2} cats."
            f += sgl.gen("x", max_tokens=12, temperature=0)
        forks.join()

    @sgl.function
    def with_logprobs(s, start):  # type: ignore[no-untyped-def]
        s += start
        s += sgl.gen("x", max_tokens=16, temperature=0, return_logprob=True, top_logprobs_num=2)

    return SimpleNamespace(stops=stops, constrained=constrained, branches=branches, with_logprobs=with_logprobs)


def test_gen_with_stop_and_stop_regex(server: ServerHandle, sgl: Any, progs: SimpleNamespace) -> None:
    state = progs.stops.run(start=PROMPT)
    assert state.error() is None
    a = native(server, PROMPT, max_new_tokens=40, stop=".")["text"]
    b = native(server, PROMPT + a + ".", max_new_tokens=40, stop_regex=r"p[a-z]+ ")
    assert state["a"] == a and state["b"] == b["text"]
    assert b["meta_info"]["finish_reason"] == {"type": "stop", "matched": r"p[a-z]+ "} and b["text"] == " She loved to "


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 1, "maximum": 9}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_regex_int_json_and_select(server: ServerHandle, sgl: Any, progs: SimpleNamespace) -> None:
    import jsonschema

    state = progs.constrained.run()
    assert state.error() is None
    assert re.fullmatch(r"[0-9]{2}", state["two_digits"])
    assert isinstance(int(state["age"]), int)  # SGLang keeps the digits as text, radixgen parses them
    jsonschema.validate(json.loads(state["obj"]), SCHEMA)
    assert state["mood"] in ("happy", "sad")


def test_fork_join(server: ServerHandle, sgl: Any, progs: SimpleNamespace) -> None:
    state = progs.branches.run()
    assert state.error() is None
    xs = state["x"]
    assert isinstance(xs, list) and len(xs) == 2
    for i, x in enumerate(xs):
        assert x == native(server, f"{PROMPT} there were {i + 2} cats.", max_new_tokens=12)["text"]


def test_streaming_with_logprobs(server: ServerHandle, sgl: Any, progs: SimpleNamespace) -> None:
    state = progs.with_logprobs.run(start=PROMPT, stream=True)
    pieces = list(state.text_iter())
    assert state.error() is None
    ref = native(server, PROMPT, max_new_tokens=16)
    assert "".join(pieces) == PROMPT + ref["text"] and state["x"] == ref["text"]
    meta = state.get_meta_info("x")
    assert len(meta["output_token_logprobs"]) == meta["completion_tokens"] == len(ref["output_ids"])
    assert [e[1] for e in meta["output_token_logprobs"]] == ref["output_ids"]
    assert all(len(top) == 2 for top in meta["output_top_logprobs"])


def test_run_batch(server: ServerHandle, sgl: Any, progs: SimpleNamespace) -> None:
    starts = ["The dog ran", "A little bird", "Tom and Sue"]
    states = progs.stops.run_batch([{"start": st} for st in starts], num_threads=3)
    for st, state in zip(starts, states, strict=True):
        assert state.error() is None
        assert state["a"] == native(server, st, max_new_tokens=40, stop=".")["text"]


def test_server_info_flush_cache_and_no_http_errors(server: ServerHandle, sgl: Any, progs: SimpleNamespace) -> None:
    info = sgl.get_server_info()
    assert info["internal_states"][0]["max_total_tokens"] > 0 and info["version"]
    sgl.flush_cache()
    # uvicorn's access log: '... "POST /generate HTTP/1.1" 200'; /health answers 503 while the model loads
    requests = re.findall(r'"[A-Z]+ (\S+) HTTP/[\d.]+" (\d{3})', server.logs())
    statuses = [(path, int(code)) for path, code in requests if path != "/health"]
    assert len(statuses) > 20, server.logs()[-2000:]  # the access log did record the programs' requests
    assert {path for path, _ in statuses} >= {"/get_model_info", "/generate", "/server_info", "/flush_cache"}
    assert all(code < 400 for _, code in statuses), [s for s in statuses if s[1] >= 400]
