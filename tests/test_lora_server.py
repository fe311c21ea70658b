"""Multi-LoRA over HTTP: a real stories260K server with adapters, the official ``openai`` client and the native API.

One server starts with two PEFT adapters (``--lora-paths``) and two slots; adapters are loaded and unloaded at run
time while requests run, an adapter in use is unloaded only after its requests finish, and every bad input is a 4xx
naming its field while the server keeps serving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from lora_adapters import ALL, make_adapter
from server_fixtures import STORIES, ServerHandle, start_server

GREEDY = {"max_new_tokens": 8, "temperature": 0.0}
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora_server")
    return {
        "a": make_adapter(root / "a", ALL, r=8, seed=1),
        "b": make_adapter(root / "b", ("q_proj", "v_proj", "down_proj"), r=4, seed=2, alpha=64.0),
        "c": make_adapter(root / "c", ALL, r=16, seed=3),
    }


@pytest.fixture(scope="module")
def server(adapters: dict[str, Path]) -> Iterator[ServerHandle]:
    lora = [f"a={adapters['a']}", f"b={adapters['b']}"]
    handle = start_server(
        ["--lora-paths", *lora, "--max-loras-per-batch", "2", "--max-lora-rank", "16", "--chat-template", "chatml"]
    )
    yield handle
    handle.stop()


def _generate(client: httpx.Client, lora_path: str | None, **kw: object) -> httpx.Response:
    body = {"text": PROMPT, "sampling_params": {**GREEDY, **kw}, **({"lora_path": lora_path} if lora_path else {})}
    return client.post("/generate", json=body)


def test_models_and_openai_model_field(server: ServerHandle) -> None:
    api = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none")
    models = {m.id: m for m in api.models.list().data}
    base = str(STORIES)
    assert set(models) == {base, "a", "b"}
    assert models["a"].model_extra is not None and models["a"].model_extra["parent"] == base
    with server.client() as client:
        native = {n: _generate(client, n).json()["text"] for n in ("a", "b", None)}
    assert len(set(native.values())) == 3  # each adapter changes the output
    for model, name in (("a", "a"), (f"{base}:b", "b"), (base, None)):
        out = api.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
        assert out.choices[0].text == native[name], model
    chat = api.chat.completions.create(model="a", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat.model  # served under the adapter without error
    with pytest.raises(openai.NotFoundError, match="`nope` does not exist"):
        api.completions.create(model="nope", prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("nope")
    assert api.models.retrieve("b").id == "b"


def test_native_errors_name_the_field(server: ServerHandle) -> None:
    with server.client() as client:
        r = _generate(client, "nope")
        assert r.status_code == 404 and r.json()["error"]["param"] == "lora_path"
        assert "no LoRA adapter named 'nope'" in r.json()["error"]["message"]
        r = client.post("/generate", json={"text": [PROMPT, PROMPT], "lora_path": ["a"], "sampling_params": GREEDY})
        assert r.status_code == 400 and r.json()["error"]["param"] == "lora_path"
        r = client.post("/load_lora_adapter", json={"lora_name": "x", "lora_path": "/nonexistent"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "lora_path"
        assert "is not a directory" in r.json()["error"]["message"]
        r = client.post("/load_lora_adapter", json={"lora_name": "a", "lora_path": str(STORIES)})
        assert r.status_code == 400 and r.json()["error"]["param"] == "lora_name"  # name taken
        r = client.post("/load_lora_adapter", json={"lora_name": "x", "lora_path": str(STORIES)})
        assert r.status_code == 400 and "no adapter_config.json" in r.json()["error"]["message"]
        r = client.post("/load_lora_adapter", json={"lora_name": "", "lora_path": "p"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "lora_name"
        r = client.post("/unload_lora_adapter", json={"lora_name": "nope"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "lora_name"
        per_prompt = client.post(
            "/generate", json={"text": [PROMPT, PROMPT], "lora_path": ["a", None], "sampling_params": GREEDY}
        )
        assert per_prompt.status_code == 200
        assert [o["text"] for o in per_prompt.json()] == [_generate(client, "a").json()["text"],
                                                          _generate(client, None).json()["text"]]
        info = client.get("/get_server_info").json()
        assert info["lora_buffer_bytes"] > 0
        # sglang-router's model field on /generate names the served model or an adapter, as on /v1
        by_model = client.post("/generate", json={"text": PROMPT, "model": "a", "sampling_params": GREEDY})
        assert by_model.json()["text"] == _generate(client, "a").json()["text"]
        r = client.post("/generate", json={"text": PROMPT, "model": "nope", "sampling_params": GREEDY})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_cache_isolation_over_http(server: ServerHandle) -> None:
    body = {"input_ids": [5, 6, 7, 8, 9, 10, 11, 12], "sampling_params": GREEDY}
    with server.client() as client:
        first = client.post("/generate", json={**body, "lora_path": "a"}).json()
        second = client.post("/generate", json={**body, "lora_path": "b"}).json()
        again = client.post("/generate", json={**body, "lora_path": "a"}).json()
    assert first["meta_info"]["cached_tokens"] == 0
    assert second["meta_info"]["cached_tokens"] == 0
    assert again["meta_info"]["cached_tokens"] == 7


def test_load_and_unload_under_load(server: ServerHandle, adapters: dict[str, Path]) -> None:
    """Load c while requests on a and b run (three adapters, two slots: c's requests wait for a slot), use it, then
    unload it while a long request still runs on it: new requests are refused at once, the unload answers after the
    long request has finished (which completes normally), and the server keeps serving."""
    results: dict[str, httpx.Response] = {}

    def run(key: str, lora: str | None, **kw: object) -> None:
        with server.client() as client:
            results[key] = _generate(client, lora, **kw)

    background = [threading.Thread(target=run, args=(f"bg{i}", "ab"[i % 2]), kwargs={"max_new_tokens": 48})
                  for i in range(4)]  # fmt: skip
    for t in background:
        t.start()
    with server.client() as client:
        r = client.post("/v1/load_lora_adapter", json={"lora_name": "c", "lora_path": str(adapters["c"])})
        assert r.status_code == 200 and r.json()["success"] and set(r.json()["loaded_adapters"]) == {"a", "b", "c"}
        solo = _generate(client, "c")
        assert solo.status_code == 200
        long = threading.Thread(target=run, args=("long", "c"), kwargs={"max_new_tokens": 200, "ignore_eos": True})
        long.start()
        time.sleep(0.5)  # the long request is running
        unload = threading.Thread(target=run_unload, args=(server, results))
        unload.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # refused as soon as the unload is asked for
            r = _generate(client, "c")
            if r.status_code == 404:
                break
            time.sleep(0.05)
        assert r.status_code == 404 and r.json()["error"]["param"] == "lora_path"
        long.join(120)
        unload.join(120)
        assert results["long"].status_code == 200
        assert len(results["long"].json()["output_ids"]) == 200
        assert results["unload"].status_code == 200 and "c" not in results["unload"].json()["loaded_adapters"]
        for t in background:
            t.join(120)
        assert all(results[f"bg{i}"].status_code == 200 for i in range(4))
        assert client.get("/health_generate").status_code == 200
        assert _generate(client, "a").status_code == 200
        info = client.get("/get_server_info").json()
    assert info["kv_used_tokens"] == 0  # every request's KV went back (into the cache or the free list)
    assert "Traceback" not in server.logs()


def run_unload(server: ServerHandle, results: dict[str, httpx.Response]) -> None:
    results["unload"] = httpx.post(f"{server.base_url}/unload_lora_adapter", json={"lora_name": "c"}, timeout=120.0)
