"""SGLang-language programs, written against SGLang's frontend API (``sglang.lang.api``), run unchanged with
``import radixgen as sgl`` against a real stories260K server (chatml template).

Every program is plain SGLang (``@sgl.function``, ``sgl.gen`` / ``gen_int`` / ``gen_string`` / ``select``, role
blocks and ``*_begin`` / ``*_end`` markers, ``fork`` with ``forks[i] +=``, ``n`` samples, ``return_logprob``,
``s[name] = value``, ``run_batch`` options, streaming, ``separate_reasoning``); the assertions check real outcomes
against independent native ``/generate`` calls. The ``stop_regex`` test (server side landing in parallel) is last:
``pytest tests/test_frontend_sglang_programs.py -k stop_regex``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from server_fixtures import STORIES, start_server
from test_frontend_dsl import generate, render_chatml, tokenize

import radixgen as sgl

STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside.\n"
IM_END = "<|im_end|>"


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """A client of the module's server (stories260K, chatml), for independent native calls."""
    handle = start_server(["--chat-template", "chatml"])
    try:
        with handle.client() as client:
            yield client
    finally:
        handle.stop()


@pytest.fixture()
def backend(http: httpx.Client) -> Iterator[Any]:
    """``sgl.RuntimeEndpoint`` set as the default backend, as SGLang programs do."""
    be = sgl.RuntimeEndpoint(str(http.base_url))
    sgl.set_default_backend(be)
    yield be
    sgl.set_default_backend(None)
    be.close()


# ------------------------------------------------------------------------------------------------ chat
@sgl.function
def multi_turn_markers(s, question_1, question_2):
    s += sgl.system("You tell short stories.")
    s += sgl.user_begin()
    s += question_1
    s += sgl.user_end()
    s += sgl.assistant_begin()
    s += sgl.gen("answer_1", max_tokens=12)
    s += sgl.assistant_end()
    s += sgl.user_begin() + question_2 + sgl.user_end()
    s += sgl.assistant_begin() + sgl.gen("answer_2", max_tokens=12) + sgl.assistant_end()


@sgl.function
def multi_turn_blocks(s, question_1, question_2):
    s += sgl.system("You tell short stories.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=12))
    with s.user():
        s += question_2
    with s.assistant():
        s += sgl.gen("answer_2", max_tokens=12)


def test_multi_turn_role_markers_render_the_chat_template(backend: Any, http: httpx.Client) -> None:
    args = {"question_1": "Tell me about Lily.", "question_2": "And her dog?"}
    state = multi_turn_markers.run(**args, temperature=0)
    messages = [
        {"role": "system", "content": "You tell short stories."},
        {"role": "user", "content": args["question_1"]},
    ]
    ref_1 = generate(http, render_chatml(http, messages, add_generation_prompt=True), max_new_tokens=12, stop=[IM_END])
    assert state["answer_1"] == ref_1["text"]
    messages += [{"role": "assistant", "content": ref_1["text"]}, {"role": "user", "content": args["question_2"]}]
    ref_2 = generate(http, render_chatml(http, messages, add_generation_prompt=True), max_new_tokens=12, stop=[IM_END])
    assert state["answer_2"] == ref_2["text"]
    assert state.messages() == [*messages, {"role": "assistant", "content": ref_2["text"]}]
    assert state.text() == render_chatml(http, state.messages())
    blocks = multi_turn_blocks.run(**args, temperature=0)  # markers and blocks are the same turns
    assert blocks.text() == state.text() and blocks.messages() == state.messages()


def test_a_role_end_without_its_begin_fails_the_program(backend: Any) -> None:
    @sgl.function
    def unbalanced(s):
        s += sgl.user_begin() + "Hi"
        s += sgl.assistant_end()

    with pytest.raises(ValueError, match="assistant_end: no assistant turn is open"):
        unbalanced.run()


# ------------------------------------------------------------------------------------------------ gen
def test_gen_stop_strings_are_trimmed(backend: Any, http: httpx.Client) -> None:
    @sgl.function
    def story(s):
        s += "Once upon a time"
        s += sgl.gen("head", max_tokens=24, stop=["girl", "dog"])
        s += "girl"
        s += sgl.gen("tail", max_tokens=24, stop=".")

    state = story.run(temperature=0)
    free = generate(http, "Once upon a time", max_new_tokens=24)["text"]
    assert "girl" in free and state["head"] == free[: free.index("girl")]  # cut before the stop string
    ref = generate(http, "Once upon a time" + state["head"] + "girl", max_new_tokens=24, stop=["."])
    assert state["tail"] == ref["text"] and "." not in state["tail"]
    assert state.get_meta_info("tail")["finish_reason"] == {"type": "stop", "matched": "."}
    assert state.text() == "Once upon a time" + state["head"] + "girl" + state["tail"]


def test_select_regex_json_and_typed_gens(backend: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "pet": {"enum": ["cat", "dog"]}},
        "required": ["name", "pet"],
        "additionalProperties": False,  # JSON Schema's default allows other keys (issue 17)
    }

    @sgl.function
    def constrained(s):
        s += STORY + "Lily felt"
        s += sgl.select("mood", choices=[" happy", " sad"])
        s += ". Her phone number was "
        s += sgl.gen("phone", max_tokens=16, regex=r"[0-9]{3}-[0-9]{4}")
        s += ". Lily as JSON: "
        s += sgl.gen("json", max_tokens=48, json_schema=json.dumps(schema))
        s += "\nLily was this many years old: "
        s += sgl.gen_int("age", max_tokens=4)
        s += "\nHer friend was called "
        s += sgl.gen_string("friend", max_tokens=24)
        s += "\nWas she happy? " + sgl.gen("happy", choices=["yes", "no"], choices_method=sgl.greedy_token_selection)

    state = constrained.run(temperature=0)
    assert state["mood"] in (" happy", " sad") and len(state.get_meta_info("mood")["scores"]) == 2
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", state["phone"])
    person = json.loads(state["json"])
    assert set(person) == {"name", "pet"} and person["pet"] in ("cat", "dog") and len(person["name"]) <= 8
    assert isinstance(state["age"], int) and str(state["age"]) == state.get_meta_info("age")["text"]
    raw = state.get_meta_info("friend")["text"]  # gen_string: a quoted literal; the variable is the string
    assert raw == json.dumps(state["friend"]) and isinstance(state["friend"], str)
    assert state["happy"] in ("yes", "no")
    assert state.get_meta_info("happy")["choices_method"] == "greedy_token_selection"


def test_n_samples_store_the_list_and_continue_with_the_first(backend: Any, http: httpx.Client) -> None:
    @sgl.function
    def sampled(s, temperature):
        s += "Once upon a time"
        s += sgl.gen("ends", n=3, max_tokens=6, temperature=temperature)
        s += "."

    state = sampled.run(temperature=0)
    greedy = generate(http, "Once upon a time", max_new_tokens=6)["text"]
    assert state["ends"] == [greedy] * 3 and state.text() == "Once upon a time" + greedy + "."
    hot = sampled.run(temperature=1.0)
    meta = hot.get_meta_info("ends")
    assert len(hot["ends"]) == 3 and meta["n"] == 3 and len(meta["samples"]) == 3
    assert [m["text"] for m in meta["samples"]] == hot["ends"]
    assert all(m["completion_tokens"] <= 6 for m in meta["samples"])
    assert meta["completion_tokens"] == sum(m["completion_tokens"] for m in meta["samples"])
    assert hot.text() == "Once upon a time" + hot["ends"][0] + "."


def test_return_logprob_meta_has_one_entry_per_token(backend: Any, http: httpx.Client) -> None:
    @sgl.function
    def scored(s):
        s += "Once upon a time"
        s += sgl.gen("a", max_tokens=6, min_tokens=6, return_logprob=True, top_logprobs_num=2, logprob_start_len=0)
        s += sgl.gen("b", max_tokens=3, return_logprob=True, return_text_in_logprobs=False)

    state = scored.run(temperature=0)
    meta = state.get_meta_info("a")
    ref = generate(http, "Once upon a time", max_new_tokens=6)
    assert meta["completion_tokens"] == 6 and len(meta["output_token_logprobs"]) == 6
    assert [e[1] for e in meta["output_token_logprobs"]] == ref["output_ids"]
    assert all(e[0] <= 0 and isinstance(e[2], str) for e in meta["output_token_logprobs"])
    assert len(meta["output_top_logprobs"]) == 6 and all(len(t) == 2 for t in meta["output_top_logprobs"])
    assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"] == len(tokenize(http, "Once upon a time"))
    meta_b = state.get_meta_info("b")
    assert len(meta_b["output_token_logprobs"]) == meta_b["completion_tokens"]
    assert all(e[2] is None for e in meta_b["output_token_logprobs"])


def test_setting_variables(backend: Any, http: httpx.Client) -> None:
    @sgl.function
    def with_vars(s, topic):
        s["topic"] = topic
        s += "Once upon a time, there was a " + s["topic"]
        s += sgl.gen("x", max_tokens=4)
        s["x_raw"] = s["x"]
        s["x"] = s["x"].upper()

    state = with_vars.run(topic="cat", temperature=0)
    assert state["topic"] == "cat" and "topic" in state
    assert state["x_raw"] == generate(http, "Once upon a time, there was a cat", max_new_tokens=4)["text"]
    assert state["x"] == state["x_raw"].upper() and state.get_meta_info("x") == {}
    assert state.text() == "Once upon a time, there was a cat" + state["x_raw"]


# ------------------------------------------------------------------------------------------------ fork
def test_fork_branches_with_indexed_add_have_their_own_variables(backend: Any, http: httpx.Client) -> None:
    starts = ["She saw a", "He had a", "They found a"]

    @sgl.function
    def tree(s):
        s += STORY
        forks = s.fork(3)
        for i in range(3):
            forks[i] += starts[i]
            forks[i] += sgl.gen("idea", max_tokens=5, stop="\n")
            forks[i]["branch"] = i
        forks += lambda i: " (" + str(i) + ")"
        forks.join()
        s += "The end."
        return forks

    state = tree.run(temperature=0)
    refs = [generate(http, STORY + st, max_new_tokens=5, stop=["\n"])["text"] for st in starts]
    assert state["idea"] == refs and state["branch"] == [0, 1, 2]
    forks = state.ret_value
    for i, st in enumerate(starts):
        assert forks[i]["idea"] == refs[i] and forks[i]["branch"] == i
        assert forks[i].text() == STORY + st + refs[i] + f" ({i})"  # each branch sees only its own additions
    assert state.text() == STORY + "The end."


# ------------------------------------------------------------------------------------------------ reasoning
def test_separate_reasoning_splits_think_blocks(backend: Any, http: httpx.Client) -> None:
    think = r"<think>[a-z ]{1,12}</think>[A-Za-z ]{1,12}"

    @sgl.function
    def reason(s, model_type):
        s += sgl.user("Think, then answer.")
        s += sgl.assistant(sgl.separate_reasoning(sgl.gen("answer", max_tokens=64, regex=think), model_type))

    state = reason.run(model_type="qwen3", temperature=0)
    prompt = render_chatml(http, [{"role": "user", "content": "Think, then answer."}], add_generation_prompt=True)
    raw = generate(http, prompt, max_new_tokens=64, regex=think, stop=[IM_END])["text"]
    reasoning, content = re.fullmatch(r"<think>(.*)</think>(.*)", raw).groups()  # type: ignore[union-attr]
    assert state["answer_reasoning_content"] == reasoning.strip() and state["answer"] == content.strip()
    assert state.messages()[-1] == {"role": "assistant", "content": content.strip()}
    assert state.text() == render_chatml(http, state.messages())

    # DeepSeek-R1 starts inside the reasoning: a plain story is all reasoning, no content
    @sgl.function
    def r1(s):
        s += sgl.assistant(sgl.separate_reasoning(sgl.gen("answer", max_tokens=8), model_type="deepseek-r1"))

    plain = r1.run(temperature=0)
    assert plain["answer"] == "" and plain["answer_reasoning_content"] and plain.messages()[-1]["content"] == ""


# ------------------------------------------------------------------------------------------------ batch
@sgl.function
def continue_story(s, start, end="."):
    s += "Once upon a time, " + start
    s += sgl.gen("x")
    s += end


def test_run_batch_options(backend: Any, http: httpx.Client) -> None:
    starts = ["there was", "a cat", "Lily", "Tom"]
    refs = [generate(http, "Once upon a time, " + st, max_new_tokens=5)["text"] for st in starts]
    states = continue_story.run_batch(
        [{"start": st} for st in starts], max_new_tokens=5, temperature=0, num_threads=2, progress_bar=True
    )
    assert [st["x"] for st in states] == refs
    assert all(st.get_meta_info("x")["completion_tokens"] <= 5 for st in states)
    positional = continue_story.run_batch([(st, "!") for st in starts], max_new_tokens=5, temperature=0)
    texts = ["Once upon a time, " + start + ref + "!" for start, ref in zip(starts, refs, strict=True)]
    assert [st.text() for st in positional] == texts
    it = continue_story.run_batch(
        [{"start": st} for st in starts], max_new_tokens=5, temperature=0, generator_style=True, num_threads=1
    )
    assert not isinstance(it, list) and [st["x"] for st in it] == refs
    with pytest.raises(TypeError, match="run_batch"):
        continue_story.run_batch([("a", "b", "c")])


def test_run_defaults_default_backend_and_server_calls(backend: Any) -> None:
    state = continue_story.run("Lily", max_new_tokens=3, temperature=0, use_thread=False)  # SGLang's run() names
    assert state.get_meta_info("x")["completion_tokens"] == 3
    info = sgl.get_server_info()
    assert info is not None and info["context_len"] == backend.get_server_info()["context_len"] > 0
    assert sgl.flush_cache()["success"] is True
    with pytest.raises(NotImplementedError, match="image: radixgen serves text-only models"):
        sgl.image("cat.png")
    with pytest.raises(NotImplementedError, match="video"):
        sgl.video("cat.mp4", num_frames=4)


# ------------------------------------------------------------------------------------------------ streaming
def test_streaming_text_and_one_variable(backend: Any) -> None:
    full = continue_story.run("Lily", max_new_tokens=12, temperature=0)
    state = continue_story.run("Lily", max_new_tokens=12, temperature=0, stream=True)
    pieces = list(state.text_iter())
    assert "".join(pieces) == state.text() == full.text() and len(pieces) > 2
    again = continue_story.run("Lily", max_new_tokens=12, temperature=0, stream=True)
    assert "".join(again.text_iter(var_name="x")) == again["x"] == full["x"]


# ------------------------------------------------------------------------------------------------ OpenAI backend
def test_openai_backend_n_samples_and_its_refusal_of_regex_stops(http: httpx.Client) -> None:
    @sgl.function
    def sampled(s, stop_regex):
        s += "Once upon a time"
        s += sgl.gen("x", n=2, max_tokens=6, stop_regex=stop_regex)

    with sgl.OpenAI(str(STORIES), base_url=str(http.base_url).rstrip("/") + "/v1", is_chat_model=False) as oai:
        state = sampled.run(None, backend=oai, temperature=0)
        greedy = generate(http, "Once upon a time", max_new_tokens=6)["text"]
        assert state["x"] == [greedy, greedy] and state.text() == "Once upon a time" + greedy
        meta = state.get_meta_info("x")  # the response's usage covers both samples
        assert meta["completion_tokens"] == 12
        assert [m["finish_reason"]["type"] for m in meta["samples"]] == ["length", "length"]
        with pytest.raises(sgl.BackendRequestError, match="stop_regex: the OpenAI backend cannot stop on a regular"):
            sampled.run("a+", backend=oai)


# ------------------------------------------------------------------------------------------------ stop_regex
# Server side landing in parallel: check with `pytest tests/test_frontend_sglang_programs.py -k stop_regex`.
def test_stop_regex_ends_the_gen_where_the_pattern_matches(backend: Any, http: httpx.Client) -> None:
    @sgl.function
    def story(s):
        s += "Once upon a time"
        s += sgl.gen("a", max_tokens=32, stop_regex=r"gir[a-z]")
        s += "|"
        s += sgl.gen("b", max_tokens=32, stop_regex=["nam[a-z]+", "xyz+"])

    state = story.run(temperature=0)
    free = generate(http, "Once upon a time", max_new_tokens=32)["text"]
    cut = re.search(r"gir[a-z]", free)
    assert cut is not None and state["a"] == free[: cut.start()]
    assert state.get_meta_info("a")["finish_reason"]["type"] == "stop"
    ref = generate(http, "Once upon a time" + state["a"] + "|", max_new_tokens=32, stop_regex=["nam[a-z]+", "xyz+"])
    assert state["b"] == ref["text"] and not re.search("nam[a-z]+", state["b"])

