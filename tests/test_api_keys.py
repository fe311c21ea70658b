"""API keys: the key file, per-key rate limits and token quotas (429 + Retry-After), abort ownership, usage metrics."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fixtures import ServerHandle, start_server

from radixgen.runtime.api_keys import KeyLimiter, KeyPolicy, load_api_keys
from radixgen.runtime.http_common import HttpError

KEYS = """# key  requests/min  tokens/min  max concurrent  [admin]
sk-alice 3 0 0
sk-bob   0 0 0
sk-carol 0 40 0
sk-admin 0 0 0 admin
"""


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def test_key_file_parsing_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(KEYS)
    policies = load_api_keys(str(f))
    assert [(p.key, p.requests_per_min, p.tokens_per_min, p.admin) for p in policies] == [
        ("sk-alice", 3, 0, False), ("sk-bob", 0, 0, False), ("sk-carol", 0, 40, False), ("sk-admin", 0, 0, True)]
    assert policies[0].key_id == key_id("sk-alice")
    for bad, line in [("k 1 2\n", 1), ("\nk 1 2 3 root\n", 2), ("k -1 0 0\n", 1), ("k 1 0 0\nk 2 0 0\n", None)]:
        f.write_text(bad)
        with pytest.raises(ValueError, match=f"keys:{line}" if line else "twice"):
            load_api_keys(str(f))


def test_limiter_buckets_and_concurrency() -> None:
    rpm, conc = KeyPolicy("r", requests_per_min=2), KeyPolicy("c", max_concurrent=1)
    limiter = KeyLimiter([rpm, conc])
    limiter.admit(rpm)
    limiter.admit(rpm)
    with pytest.raises(HttpError) as e:
        limiter.admit(rpm)
    assert e.value.status == 429 and 1 <= int(e.value.headers["Retry-After"]) <= 31
    limiter.admit(conc)
    with pytest.raises(HttpError):
        limiter.admit(conc)  # one in flight already
    limiter.release(conc)
    limiter.admit(conc)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(KEYS)
    handle = start_server(["--api-key-file", str(keys), "--enable-metrics"])
    yield handle
    handle.stop()


def call(server: ServerHandle, key: str | None, path: str = "/generate", **body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    payload = body or {"text": "Once upon a time", "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
    return httpx.post(f"{server.base_url}{path}", json=payload, headers=headers, timeout=60)


def test_unknown_key_is_401(server: ServerHandle) -> None:
    assert call(server, None).status_code == 401 and call(server, "sk-nobody").status_code == 401
    assert httpx.get(f"{server.base_url}/health").status_code == 200  # exempt


def test_limited_key_gets_429_while_the_other_is_unaffected(server: ServerHandle) -> None:
    results: dict[str, list[httpx.Response]] = {"sk-alice": [], "sk-bob": []}

    def load(key: str) -> None:
        for _ in range(6):
            results[key].append(call(server, key))

    threads = [threading.Thread(target=load, args=(k,)) for k in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    alice = [r.status_code for r in results["sk-alice"]]
    assert alice.count(200) == 3 and alice.count(429) == 3, alice
    limited = next(r for r in results["sk-alice"] if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1 and limited.json()["error"]["type"] == "rate_limit_error"
    assert [r.status_code for r in results["sk-bob"]] == [200] * 6
    metrics = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": "Bearer sk-admin"}).text
    assert f'radixgen_api_key_requests_total{{key_id="{key_id("sk-alice")}",outcome="429"}} 3.0' in metrics
    assert f'radixgen_api_key_requests_total{{key_id="{key_id("sk-bob")}",outcome="admitted"}} 6.0' in metrics


def test_token_quota(server: ServerHandle) -> None:
    body = {"text": "Once upon a time", "sampling_params": {"max_new_tokens": 48, "temperature": 0, "ignore_eos": True}}
    first = call(server, "sk-carol", **body)
    assert first.status_code == 200  # 53 tokens: more than the 40/min quota, charged when it finished
    second = call(server, "sk-carol", **body)
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1
    metrics = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": "Bearer sk-admin"}).text
    assert f'radixgen_api_key_tokens_total{{key_id="{key_id("sk-carol")}"}} 53.0' in metrics


def test_only_the_owner_or_an_admin_may_abort(server: ServerHandle) -> None:
    long = {"input_ids": [1, 402], "stream": True, "rid": "bobs-request",
            "sampling_params": {"temperature": 0, "max_new_tokens": 480, "ignore_eos": True}}
    assert call(server, "sk-carol", "/abort_request", rid="", abort_all=True).status_code == 403
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        with c.stream("POST", "/generate", json=long, headers={"Authorization": "Bearer sk-bob"}) as r:
            lines = r.iter_lines()
            next(lines)
            # two calls while Bob's 480 tokens decode (a fraction of a second on stories260K): the admin's 200 shows it
            # was still running when Carol's abort came back 404
            assert call(server, "sk-carol", "/abort_request", rid="bobs-request").status_code == 404
            assert call(server, "sk-admin", "/abort_request", rid="bobs-request").status_code == 200
            events = [line for line in lines if line.startswith("data: {")]
        assert '"abort"' in events[-1]
