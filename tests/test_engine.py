"""End-to-end Engine tests on the real stories260K model: golden output, batching invariance (plain, chunked,
under retraction), prefix reuse, sampling controls, logprobs against Hugging Face, and bad input."""

from __future__ import annotations

import pytest
import torch
from device_env import ENGINE_KW
from shared_paths import STORIES

from radixgen.runtime import Engine

GREEDY = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
GOLDEN = (STORIES / "reference_greedy_from_bos_200.txt").read_text()


def golden_ids(engine: Engine) -> list[int]:
    return engine.tokenizer.encode(GOLDEN)


def prompts_of_lengths(engine: Engine, lengths: list[int]) -> list[list[int]]:
    ids = golden_ids(engine)
    # different start offsets so prompts share little
    return [[1, *ids[(7 * i) % 60 : (7 * i) % 60 + n - 1]] for i, n in enumerate(lengths)]


def test_golden_greedy_from_bos(engine: Engine) -> None:
    out = engine.generate(input_ids=[1], sampling_params={"temperature": 0, "max_new_tokens": 200, "ignore_eos": True})
    assert out["text"] == GOLDEN
    assert out["meta_info"]["completion_tokens"] == 200
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 200}


def _alone(engine: Engine, prompts: list[list[int]]) -> list[list[int]]:
    return [engine.generate(input_ids=p, sampling_params=GREEDY)["output_ids"] for p in prompts]


def test_batching_invariance(engine: Engine) -> None:
    prompts = prompts_of_lengths(engine, [3 + 4 * i for i in range(16)])
    alone = _alone(engine, prompts)
    engine.flush_cache()
    together = [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=GREEDY)]
    assert together == alone
    engine.scheduler.check_integrity()


def test_batching_invariance_chunked_prefill(engine: Engine) -> None:
    prompts = prompts_of_lengths(engine, [10 + 3 * i for i in range(16)])
    alone = _alone(engine, prompts)
    chunked = Engine(str(STORIES), max_total_tokens=8192, chunked_prefill_size=8, **ENGINE_KW)
    outs = chunked.generate(input_ids=prompts, sampling_params=GREEDY)
    assert [o["output_ids"] for o in outs] == alone
    assert chunked.scheduler.num_extend_steps > len(prompts)  # every prompt took several chunks
    assert chunked.scheduler.step_timer.summary()["mixed"]["steps"] > 0  # chunks rode with decode rows
    chunked.scheduler.check_integrity()


@pytest.mark.parametrize("disable_mixed_chunk", [False, True])
def test_batching_invariance_mixed_batches(engine: Engine, disable_mixed_chunk: bool) -> None:
    """Prefill chunks longer than the CPU kernel's short extends beside running requests' decode rows (the rows
    take the kernel, the chunks SDPA) give each request its output alone; so do alternating steps."""
    prompts = prompts_of_lengths(engine, [12 + 5 * i for i in range(10)])
    alone = _alone(engine, prompts)
    eng = Engine(str(STORIES), max_total_tokens=8192, chunked_prefill_size=40, max_prefill_tokens=40,
                 disable_mixed_chunk=disable_mixed_chunk, **ENGINE_KW)  # fmt: skip
    outs = eng.generate(input_ids=prompts, sampling_params=GREEDY)
    assert [o["output_ids"] for o in outs] == alone
    timing = eng.scheduler.step_timer.summary()
    assert ("mixed" in timing) is not disable_mixed_chunk
    if not disable_mixed_chunk:
        assert timing["mixed"]["mean_batch_size"] > 2
    eng.scheduler.check_integrity()


def test_batching_invariance_with_retraction(engine: Engine) -> None:
    prompts = prompts_of_lengths(engine, [8 + 2 * i for i in range(16)])
    params = {**GREEDY, "max_new_tokens": 40}
    alone = [engine.generate(input_ids=p, sampling_params=params)["output_ids"] for p in prompts]
    small = Engine(str(STORIES), max_total_tokens=300, max_running_requests=16, **ENGINE_KW)
    outs = small.generate(input_ids=prompts, sampling_params=params)
    assert small.scheduler.num_retractions > 0
    assert [o["output_ids"] for o in outs] == alone
    assert all(o["meta_info"]["completion_tokens"] == 40 for o in outs)
    small.scheduler.check_integrity()


def test_prefix_reuse_reports_cached_tokens() -> None:
    shared = [1, *golden_ids_from_tokenizer()[:110]]
    a, b = shared + [300, 301], shared + [302]
    on = Engine(str(STORIES), max_total_tokens=4096, **ENGINE_KW)
    off = Engine(str(STORIES), max_total_tokens=4096, disable_radix_cache=True, **ENGINE_KW)
    on.generate(input_ids=a, sampling_params=GREEDY)
    out_on = on.generate(input_ids=b, sampling_params=GREEDY)
    off.generate(input_ids=a, sampling_params=GREEDY)
    out_off = off.generate(input_ids=b, sampling_params=GREEDY)
    assert out_on["meta_info"]["cached_tokens"] >= 100
    assert out_off["meta_info"]["cached_tokens"] == 0
    assert out_on["output_ids"] == out_off["output_ids"]


def golden_ids_from_tokenizer() -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(STORIES)).encode(GOLDEN, add_special_tokens=False)


def test_seeded_sampling_reproducible_in_any_batch(engine: Engine) -> None:
    p = {"temperature": 1.0, "top_p": 0.9, "seed": 1234, "max_new_tokens": 30, "ignore_eos": True}
    a = engine.generate("Once upon a time", p)["output_ids"]
    others = [
        {"temperature": 0.7, "max_new_tokens": 30},
        {"temperature": 1.2, "seed": 5, "max_new_tokens": 12},
    ]
    batch = engine.generate(["Tom had a dog", "Once upon a time", "The sun"], [others[0], p, others[1]])
    assert batch[1]["output_ids"] == a
    c = engine.generate("Once upon a time", {**p, "seed": 4321})["output_ids"]
    assert c != a


def test_top_k_1_equals_greedy(engine: Engine) -> None:
    greedy = engine.generate("Lily saw a bird", GREEDY)["output_ids"]
    topk = engine.generate("Lily saw a bird", {**GREEDY, "temperature": 1.0, "top_k": 1})["output_ids"]
    assert topk == greedy


def test_stop_string_spanning_tokens_is_trimmed(engine: Engine) -> None:
    stop = "little girl"
    assert len(engine.tokenizer.encode(stop, add_special_tokens=False)) > 1  # spans several tokens
    params = {"temperature": 0, "max_new_tokens": 200, "ignore_eos": True, "stop": [stop]}
    out = engine.generate(input_ids=[1], sampling_params=params)
    assert out["text"] == GOLDEN[: GOLDEN.index(stop)]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    kept = engine.generate(input_ids=[1], sampling_params={**params, "no_stop_trim": True})
    assert kept["text"] == GOLDEN[: GOLDEN.index(stop) + len(stop)]


def test_max_and_min_new_tokens(engine: Engine) -> None:
    out = engine.generate("Once upon a time", {"temperature": 0, "max_new_tokens": 5})
    assert out["meta_info"]["completion_tokens"] == 5
    assert out["meta_info"]["finish_reason"]["type"] == "length"
    # greedy from BOS ends a story with <s> (id 1) well before 400 tokens
    free = engine.generate(input_ids=[1], sampling_params={"temperature": 0, "max_new_tokens": 400})
    n = free["meta_info"]["completion_tokens"]
    assert free["meta_info"]["finish_reason"]["type"] == "stop" and n < 400
    assert free["output_ids"][-1] in (1, 2)
    forced = engine.generate(
        input_ids=[1], sampling_params={"temperature": 0, "max_new_tokens": 400, "min_new_tokens": n + 10}
    )
    assert forced["meta_info"]["completion_tokens"] >= n + 10
    assert not any(t in (1, 2) for t in forced["output_ids"][: n + 9])


def test_logprobs_match_hf_log_softmax(engine: Engine) -> None:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(STORIES), torch_dtype=torch.float32).eval()
    prompt = [1, *golden_ids_from_tokenizer()[:12]]
    out = engine.generate(
        input_ids=prompt,
        sampling_params={**GREEDY, "max_new_tokens": 10},
        return_logprob=True,
        logprob_start_len=0,
        top_logprobs_num=3,
        return_text_in_logprobs=True,
    )
    meta = out["meta_info"]
    full = torch.tensor([prompt + out["output_ids"]])
    with torch.no_grad():
        ref = torch.log_softmax(hf(full).logits[0].float(), dim=-1)  # [seq, vocab]
    n = len(prompt)
    assert meta["input_token_logprobs"][0][:2] == [None, prompt[0]]
    for p in range(1, n):
        lp, tok, _ = meta["input_token_logprobs"][p]
        assert tok == prompt[p]
        assert lp == pytest.approx(ref[p - 1, tok].item(), abs=1e-4)
    for j, (lp, tok, text) in enumerate(meta["output_token_logprobs"]):
        assert tok == out["output_ids"][j] == int(ref[n - 1 + j].argmax())
        assert lp == pytest.approx(ref[n - 1 + j, tok].item(), abs=1e-4)
        assert isinstance(text, str)
        top = meta["output_top_logprobs"][j]
        assert len(top) == 3 and top[0][1] == tok
        assert [t[0] for t in top] == sorted([t[0] for t in top], reverse=True)


def test_max_new_tokens_zero_prefills_and_caches(engine: Engine) -> None:
    prompt = [1, *golden_ids_from_tokenizer()[20:60]]
    out = engine.generate(
        input_ids=prompt, sampling_params={"max_new_tokens": 0}, return_logprob=True, logprob_start_len=1
    )
    assert out["output_ids"] == [] and len(out["meta_info"]["input_token_logprobs"]) == len(prompt) - 1
    again = engine.generate(input_ids=prompt + [300], sampling_params=GREEDY)
    assert again["meta_info"]["cached_tokens"] >= len(prompt) - 1


def test_streaming_yields_cumulative_text(engine: Engine) -> None:
    chunks = list(engine.generate("Once upon a time", GREEDY, stream=True))
    final = engine.generate("Once upon a time", GREEDY)
    assert chunks[-1]["text"] == final["text"]
    assert all(a["text"] == b["text"][: len(a["text"])] for a, b in zip(chunks, chunks[1:], strict=False))
    assert chunks[-1]["meta_info"]["finish_reason"] is not None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"input_ids": []}, "input_ids"),
        ({"input_ids": [1] * 600}, "input_ids"),
        ({"input_ids": [1, 99999]}, "input_ids"),
        ({"prompt": "hi", "sampling_params": {"temperature": -1}}, "temperature"),
        ({"prompt": "hi", "sampling_params": {"top_p": 0}}, "top_p"),
        ({"prompt": "hi", "sampling_params": {"top_k": -5}}, "top_k"),
        ({"prompt": "hi", "sampling_params": {"max_new_tokens": -1}}, "max_new_tokens"),
        ({"prompt": "hi", "sampling_params": {"max_new_tokens": 10_000}}, "max_new_tokens"),
        ({"prompt": "hi", "sampling_params": {"min_p": 2}}, "min_p"),
        ({"prompt": "hi", "sampling_params": {"frequency_penalty": 5}}, "frequency_penalty"),
        ({"prompt": "hi", "sampling_params": {"stop": [""]}}, "stop"),
        ({"prompt": "hi", "sampling_params": {"logit_bias": {"999999": 1}}}, "logit_bias"),
        ({"prompt": "hi", "sampling_params": {"bogus": 1}}, "bogus"),
        ({"prompt": "hi", "sampling_params": {"seed": "x"}}, "seed"),
        ({"prompt": ["ok", ""]}, "prompt"),
    ],
)
def test_bad_input_names_the_field_and_engine_keeps_working(engine: Engine, kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        engine.generate(**kwargs)
    assert not engine.scheduler.has_work()
    assert engine.generate("Once", {"max_new_tokens": 3})["meta_info"]["completion_tokens"] == 3
    engine.scheduler.check_integrity()


def test_missing_model_directory() -> None:
    with pytest.raises(ValueError, match="model_path"):
        Engine("/nonexistent/model")


def test_stop_token_ids_text_is_trimmed(engine: Engine) -> None:
    base = engine.generate(input_ids=[1], sampling_params={"temperature": 0, "max_new_tokens": 12, "ignore_eos": True})
    stop_tok = base["output_ids"][5]
    params = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True, "stop_token_ids": [stop_tok]}
    out = engine.generate(input_ids=[1], sampling_params=params)
    assert out["output_ids"] == base["output_ids"][:6]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_tok}
    assert out["text"] == engine.tokenizer.decode(base["output_ids"][:5])
    kept = engine.generate(input_ids=[1], sampling_params={**params, "no_stop_trim": True})
    assert kept["text"] == engine.tokenizer.decode(base["output_ids"][:6])


def test_one_tokenizer_and_threads_stopped_on_shutdown() -> None:
    from radixgen.runtime.constrained import hf_tokenizer

    with Engine(str(STORIES), max_total_tokens=2048) as eng:
        tok = eng.tokenizer
        assert eng.scheduler.stop_checker.tokenizer is tok and eng.detokenizer.tokenizer is tok
        assert hf_tokenizer(eng.scheduler.grammar._tokenizer, "unused") is tok  # the grammar backend's too
        out = eng.generate("Once upon", {"regex": "[a-z]{3}", "max_new_tokens": 8})
        assert out["meta_info"]["finish_reason"]["type"] == "stop"
        compile_threads = list(eng.scheduler.grammar.manager._executor._threads)  # this engine's pool only
        assert compile_threads and all(t.name.startswith("grammar-compile") for t in compile_threads)
    for t in compile_threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in compile_threads)
