"""RuntimeEndpoint and Runtime against a real stories260K server (greedy everywhere for determinism)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from server_fixtures import STORIES, ServerHandle, start_server

from radixgen.backends.base import BackendError, BackendRequestError, PromptView
from radixgen.backends.runtime import Runtime
from radixgen.backends.runtime_endpoint import RuntimeEndpoint
from radixgen.chat_template import get_chat_template
from radixgen.choices import CHOICES_METHODS, token_length_normalized
from radixgen.sampling import SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)
PROMPT = PromptView("Once upon a time, there was a little girl named Lily. She")
SELECT_PROMPT = PromptView("Tom and his mom went to the")
CHOICES = ("park", "store", "big red house", "zoo")


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ServerHandle, Runtime]]:
    """The shared chatml server and a Runtime, started side by side (startup is most of this file's time)."""
    handle = start_server(["--chat-template", "chatml"], wait=False)
    try:
        rt = Runtime(str(STORIES), max_total_tokens=4096, max_running_requests=16, num_threads=1)
        try:
            handle.wait_ready()
            yield handle, rt
        finally:
            rt.close()
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def chat_server(servers: tuple[ServerHandle, Runtime]) -> ServerHandle:
    return servers[0]


@pytest.fixture(scope="module")
def endpoint(chat_server: ServerHandle) -> Iterator[RuntimeEndpoint]:
    ep = RuntimeEndpoint(chat_server.base_url)
    yield ep
    ep.close()


def _direct_generate(server: ServerHandle, body: dict) -> dict:
    with server.client() as c:
        r = c.post("/generate", json=body)
        r.raise_for_status()
        return r.json()


def _independent_means(server: ServerHandle, prompt: str, choices: tuple[str, ...]) -> list[float]:
    """Mean logprob of each choice's tokens, from one full-prompt logprob request per choice."""
    with server.client() as c:
        prompt_ids = c.post("/tokenize", json={"text": prompt}).json()["input_ids"]
        means = []
        for choice in choices:
            ids = c.post("/tokenize", json={"text": prompt + choice}).json()["input_ids"]
            common = next(i for i, (a, b) in enumerate(zip(prompt_ids + [-1], ids, strict=False)) if a != b)
            body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 0}, "return_logprob": True,
                    "logprob_start_len": 0}
            entries = c.post("/generate", json=body).json()["meta_info"]["input_token_logprobs"][common:]
            means.append(sum(e[0] for e in entries) / len(entries))
    return means


def test_generate_matches_direct_call(endpoint: RuntimeEndpoint, chat_server: ServerHandle) -> None:
    out = endpoint.generate(PROMPT, GREEDY)
    direct = _direct_generate(chat_server, {"text": PROMPT.text, "sampling_params": GREEDY.to_native()})
    assert out.text == direct["text"] and out.text
    assert out.meta["completion_tokens"] == direct["meta_info"]["completion_tokens"]
    assert out.meta["finish_reason"]["type"] in ("length", "stop")


def test_streaming_deltas_concatenate(endpoint: RuntimeEndpoint) -> None:
    # 128 tokens: several deltas even where the server folds the updates that arrive while its stream lags
    params = GREEDY.with_updates(max_tokens=128, ignore_eos=True)
    deltas: list[str] = []
    out = endpoint.generate(PROMPT, params, on_delta=deltas.append)
    assert len(deltas) > 1 and all(deltas) and "".join(deltas) == out.text
    assert out.text == endpoint.generate(PROMPT, params).text
    assert out.meta["completion_tokens"] > 0


def test_logprobs_in_meta(endpoint: RuntimeEndpoint) -> None:
    out = endpoint.generate(PROMPT, GREEDY.with_updates(return_logprob=True, top_logprobs_num=2))
    entries = out.meta["output_token_logprobs"]
    assert len(entries) == out.meta["completion_tokens"]
    assert all(lp <= 0 and isinstance(tid, int) and isinstance(text, str) for lp, tid, text in entries)
    assert all(len(top) == 2 for top in out.meta["output_top_logprobs"])


def test_bad_regex_names_the_field(endpoint: RuntimeEndpoint) -> None:
    with pytest.raises(BackendRequestError, match="regex"):
        endpoint.generate(PROMPT, SamplingParams(regex="([a-z"))
    with pytest.raises(BackendRequestError, match="regex"):  # streaming too
        endpoint.generate(PROMPT, SamplingParams(regex="([a-z"), on_delta=lambda _: None)


def test_unreachable_server_is_a_backend_error() -> None:
    with RuntimeEndpoint("http://127.0.0.1:9", timeout=2.0) as ep:
        with pytest.raises(BackendError, match="127.0.0.1:9"):
            ep.generate(PROMPT, GREEDY)
        assert ep.health() is False


def test_cache_prefix_then_generate_hits_cache(endpoint: RuntimeEndpoint) -> None:
    prefix = "Sam had a blue kite. Every day he flew the kite in the big green park near his house.\n"
    meta = endpoint.cache_prefix(PromptView(prefix))
    assert meta["completion_tokens"] == 0 and meta["prompt_tokens"] > 10
    out = endpoint.generate(PromptView(prefix + "One day"), GREEDY)
    assert out.meta["cached_tokens"] >= meta["prompt_tokens"]


@pytest.mark.parametrize("method_name", sorted(CHOICES_METHODS))
def test_select_each_method(endpoint: RuntimeEndpoint, method_name: str) -> None:
    method = CHOICES_METHODS[method_name]
    out = endpoint.select(SELECT_PROMPT, CHOICES, method)
    assert out.choice == CHOICES[out.index] and len(out.scores) == len(CHOICES)
    meta = out.meta
    assert meta["choices"] == list(CHOICES) and meta["choices_method"] == method_name
    assert [len(lp) for lp in meta["input_token_logprobs"]][2] >= 3  # "big red house" has several tokens
    assert meta["prompt_tokens"] > 0 and "cached_tokens" in meta
    if method.requires_unconditional_logprobs:
        lengths = [len(lp) for lp in meta["input_token_logprobs"]]
        assert [len(u) for u in meta["unconditional_token_logprobs"]] == lengths
    else:
        assert "unconditional_token_logprobs" not in meta


def test_select_matches_independent_logprobs(endpoint: RuntimeEndpoint, chat_server: ServerHandle) -> None:
    means = _independent_means(chat_server, SELECT_PROMPT.text, CHOICES)
    out = endpoint.select(SELECT_PROMPT, CHOICES, token_length_normalized)
    assert out.index == max(range(len(means)), key=means.__getitem__)
    assert out.meta["normalized_prompt_logprobs"] == pytest.approx(means, abs=1e-3)


def test_async_on_two_event_loops(endpoint: RuntimeEndpoint) -> None:
    expected_text = endpoint.generate(PROMPT, GREEDY).text
    expected_choice = endpoint.select(SELECT_PROMPT, CHOICES, token_length_normalized).choice

    async def main() -> tuple[str, str, str]:
        deltas: list[str] = []
        gen, streamed, sel = await asyncio.gather(
            endpoint.agenerate(PROMPT, GREEDY),
            endpoint.agenerate(PROMPT, GREEDY, on_delta=deltas.append),
            endpoint.aselect(SELECT_PROMPT, CHOICES, token_length_normalized),
        )
        assert "".join(deltas) == streamed.text
        await endpoint.acache_prefix(PROMPT)
        return gen.text, streamed.text, sel.choice

    for _ in range(2):  # asyncio.run makes a new loop each time: each needs its own AsyncClient
        assert asyncio.run(main()) == (expected_text, expected_text, expected_choice)


def test_chat_template_from_server(endpoint: RuntimeEndpoint) -> None:
    tpl = endpoint.chat_template()
    ref = get_chat_template("chatml")
    assert tpl is not None and tpl is endpoint.chat_template()  # fetched once
    assert (tpl.name, tpl.preamble, tpl.prefixes, tpl.suffixes, tpl.stop) == (
        ref.name, ref.preamble, ref.prefixes, ref.suffixes, ref.stop
    )
    assert endpoint.health() and endpoint.get_model_info()["model_path"]
    assert endpoint.get_server_info()["chat_template"] == "chatml"


def test_named_template_uses_server_bos_once(chat_server: ServerHandle) -> None:
    """Llama-2's template writes "<s>"; the server's tokenizer adds that BOS itself, so the endpoint sends the text
    without it (as SGLang's llama-2 template does) instead of a prompt starting with two BOS tokens."""
    with RuntimeEndpoint(chat_server.base_url, chat_template="llama-2") as ep:
        tpl = ep.chat_template()
        assert tpl is not None and tpl.name == "llama-2" and tpl.role_prefix("user", None, True) == "<s>[INST] "
        text = tpl.render([{"role": "user", "content": "Hi"}]) + tpl.role_prefix("assistant", "user", False)
        assert ep._run(ep._wire_text(text)) == text.removeprefix("<s>")
        assert ep._run(ep._wire_text("plain text")) == "plain text"
        out = ep.generate(PromptView(text), GREEDY.with_updates(max_tokens=2))
        with chat_server.client() as c:
            ids = c.post("/tokenize", json={"text": text.removeprefix("<s>")}).json()["input_ids"]
        assert ids[0] == 1 and ids[1] != 1 and out.meta["prompt_tokens"] == len(ids)


def test_runtime_rejects_bad_server_args(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client does not import ServerArgs: the server's argument parser rejects a bad setting and exits at once
    (before loading anything), and Runtime raises that usage error by type, naming the setting."""
    import subprocess

    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr("radixgen.backends.runtime.subprocess.Popen", recording_popen)
    with pytest.raises(TypeError, match="no_such_flag") as unknown:
        Runtime(str(STORIES), no_such_flag=1, startup_timeout=30)
    assert "unrecognized arguments: --no-such-flag 1" in str(unknown.value)
    with pytest.raises(ValueError, match="dtype"):
        Runtime(str(STORIES), dtype="float8", startup_timeout=30)
    with pytest.raises(ValueError, match="model_path"):
        Runtime("/nonexistent/model", startup_timeout=30)
    with pytest.raises(TypeError, match="max_total_tokens"):  # no CLI spelling: rejected before any process
        Runtime(str(STORIES), max_total_tokens=[1])
    assert len(started) == 3 and all(p.returncode == 2 for p in started)  # each exited with a usage error


def test_runtime_starts_and_stops(servers: tuple[ServerHandle, Runtime]) -> None:
    rt = servers[1]
    try:
        assert rt.url.startswith("http://127.0.0.1:") and "running" in repr(rt)
        out = rt.generate(PROMPT, GREEDY)
        assert out.text and out.meta["completion_tokens"] > 0
        proc = rt.process
        assert proc is not None
        children = [psutil.Process(pid) for pid in rt.get_server_info()["pids"].values()]
        assert len(children) == 2  # scheduler and detokenizer
    finally:
        rt.close()
    assert proc.poll() is not None and "stopped" in repr(rt)
    assert all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)
    rt.close()  # idempotent

