"""The server's edges: request-size limits and tokenization off the event loop, malformed JSON, Content-Type and
CORS (CSRF), unknown abort ids, and one temperature range for every route."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from server_fixtures import ServerHandle, start_server

JSON_ROUTES = ["/generate", "/v1/completions", "/v1/chat/completions", "/tokenize", "/abort_request"]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_server(["--chat-template", "chatml", "--max-prompts-per-request", "64"])
    yield handle
    handle.stop()


def test_deeply_nested_json_is_a_400_not_a_500(server: ServerHandle) -> None:
    with server.client() as c:
        for path in JSON_ROUTES:
            r = c.post(path, content=b"[" * 100_000, headers={"content-type": "application/json"})
            assert r.status_code == 400, (path, r.text)
            err = r.json()["error"]
            assert "malformed JSON" in err["message"] and "Recursion" not in err["message"], (path, err)


def test_non_json_content_type_is_refused_and_state_changing_routes_need_json(server: ServerHandle) -> None:
    with server.client() as c:
        for path in JSON_ROUTES:
            r = c.post(path, content=b'{"text": "hi"}', headers={"content-type": "text/plain"})
            assert r.status_code == 415 and r.json()["error"]["param"] == "Content-Type", (path, r.text)
        for method, path in [("POST", "/flush_cache"), ("GET", "/flush_cache"), ("GET", "/start_profile"),
                             ("POST", "/stop_profile")]:
            assert c.request(method, path).status_code == 415, (method, path)  # what a form or <img> could send
        assert c.post("/flush_cache", json={}).status_code == 200


def test_cors_is_denied_unless_origins_are_allowed(server: ServerHandle) -> None:
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    with server.client() as c:
        r = c.options("/generate", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    allowed = start_server(["--allowed-origins", "http://ok.example"])
    try:
        with allowed.client() as c:
            ok = c.options("/generate", headers={**preflight, "Origin": "http://ok.example"})
            assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://ok.example"
            bad = c.options("/generate", headers=preflight)
            assert bad.headers.get("access-control-allow-origin") != "http://evil.example"
    finally:
        allowed.stop()


def test_body_size_char_bound_and_prompt_count_limits(server: ServerHandle) -> None:
    with server.client() as c:
        r = c.post("/generate", content=b'{"text": "' + b"a" * (5 << 20) + b'"}',
                   headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["param"] == "body"
        big = "word " * 400_000  # 2 MB: under the body limit, far more characters than the context can hold
        for path, body, field in [("/generate", {"text": big}, "text"),
                                  ("/v1/completions", {"prompt": big, "max_tokens": 1}, "prompt"),
                                  ("/tokenize", {"text": big}, "text"),
                                  ("/v1/chat/completions", {"messages": [{"role": "user", "content": big}]},
                                   "messages")]:
            r = c.post(path, json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == field, (path, r.text[:300])
            assert "characters" in r.json()["error"]["message"]
        r = c.post("/generate", json={"text": ["hi"] * 65, "sampling_params": {"max_new_tokens": 1}})
        assert r.status_code == 400 and "max_prompts_per_request" in r.json()["error"]["message"]
        r = c.post("/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 1, "n": 65}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "text"


def test_a_maximal_request_does_not_stall_other_clients(server: ServerHandle) -> None:
    """While maximal-size requests are being read, parsed and refused, /health and a small generate answer within
    200 ms (before: a 2 MB prompt stalled /health for 2.2 s)."""
    limit = 4 << 20
    body = b'{"text": "' + b"x " * ((limit - 100) // 2) + b'"}'  # just under the body limit
    stop = threading.Event()
    statuses: list[int] = []

    def flood() -> None:
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            while not stop.is_set():
                statuses.append(c.post("/generate", content=body, headers={"content-type": "application/json"})
                                .status_code)

    threads = [threading.Thread(target=flood) for _ in range(2)]
    for t in threads:
        t.start()
    worst = 0.0
    try:
        with server.client() as c:
            time.sleep(0.3)
            for _ in range(10):
                t0 = time.perf_counter()
                assert c.get("/health").status_code == 200
                r = c.post("/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 1}})
                assert r.status_code == 200
                worst = max(worst, time.perf_counter() - t0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert statuses and set(statuses) == {400}, statuses  # the big prompts were refused, by the character bound
    assert worst < 0.2, f"a small request took {worst * 1000:.0f} ms while maximal ones were handled"


def test_unknown_abort_id_is_404(server: ServerHandle) -> None:
    with server.client() as c:
        r = c.post("/abort_request", json={"rid": "no-such-request"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "rid"


@pytest.mark.parametrize("temperature", [1e308, -1.0, 70000.0])
def test_one_temperature_range_for_every_route(server: ServerHandle, temperature: float) -> None:
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("/generate", {"text": "hi", "sampling_params": {"temperature": temperature}}),
        ("/v1/completions", {"prompt": "hi", "temperature": temperature}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": temperature}),
    ]
    with server.client() as c:
        for path, body in bodies:
            r = c.post(path, json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == "temperature", (path, r.text)
