"""SGLang's frontend API surface on radixgen (``import radixgen as sgl``) without a server: names and signatures,
argument checks, and the interpreter's semantics for fork groups, role markers, ``s[name] = value``, ``n`` samples
and ``separate_reasoning`` on the scripted backend of test_frontend_interpreter.py. (Real-server programs are in
test_frontend_sglang_programs.py.)"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from test_frontend_interpreter import ScriptedBackend

import radixgen as sgl
from radixgen.backends.base import GenOutput, PromptView
from radixgen.reasoning import REASONING_FORMATS, split_reasoning
from radixgen.sampling import SamplingParams

# the public names of sglang/__init__.py (0.5.23) that belong to the frontend language
SGLANG_NAMES = (
    "Runtime RuntimeEndpoint OpenAI assistant assistant_begin assistant_end flush_cache function gen gen_int "
    "gen_string get_server_info image select separate_reasoning set_default_backend system system_begin system_end "
    "user user_begin user_end video greedy_token_selection token_length_normalized unconditional_likelihood_normalized"
).split()


class ThinkingBackend(ScriptedBackend):
    """Replies with a think block; ``n`` > 1 gives one numbered reply per sample."""

    def _reply(self, prompt: PromptView, params: Any) -> str:
        return "<think>plan it</think> done"

    def generate(self, prompt: PromptView, params: Any, on_delta: Any = None) -> GenOutput:
        out = super().generate(prompt, params, on_delta)
        if params.samples == 1:
            return out
        return GenOutput.gathered([GenOutput(f"{out.text} #{i}", dict(out.meta)) for i in range(params.samples)])


@pytest.fixture()
def backend() -> ThinkingBackend:
    return ThinkingBackend()


def test_every_sglang_name_exists_with_its_signature() -> None:
    assert all(hasattr(sgl, name) for name in SGLANG_NAMES)
    order = list(inspect.signature(sgl.gen).parameters)
    assert order[:19] == [
        "name", "max_tokens", "min_tokens", "n", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p",
        "top_k", "min_p", "frequency_penalty", "presence_penalty", "ignore_eos", "return_logprob",
        "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs", "dtype",
    ]
    assert order[19:23] == ["choices", "choices_method", "regex", "json_schema"]
    assert list(inspect.signature(sgl.gen_int).parameters) == [p for p in order[:18] if p != "min_tokens"]
    run_batch = inspect.signature(sgl.Program.run_batch).parameters
    assert {"num_threads", "progress_bar", "generator_style", "backend"} <= set(run_batch)
    assert {"verify", "chat_template_name"} <= set(inspect.signature(sgl.RuntimeEndpoint).parameters)
    assert callable(sgl.Runtime.shutdown) and isinstance(sgl.Runtime.endpoint, property)

    @sgl.function()
    def called(s):
        s += "x"

    assert isinstance(called, sgl.Program) and sgl.get_server_info() is None and sgl.flush_cache() is False


def test_gen_arguments_by_position_and_validation() -> None:
    g = sgl.gen("x", 16, 2, 3, ["\n"], None, [r"\d+"])
    assert isinstance(g, sgl.ir.Gen)
    assert (g.params.max_tokens, g.params.min_tokens, g.params.n, g.params.stop, g.params.stop_regex) == (
        16, 2, 3, ("\n",), (r"\d+",),
    )
    assert sgl.gen("x", dtype="int").dtype is int and sgl.gen_string("s").dtype is str
    assert sgl.gen_int("i", 4).params.max_tokens == 4
    native = g.params.to_native()
    assert native["n"] == 3 and native["stop_regex"] == [r"\d+"] and native["min_new_tokens"] == 2
    fields = SamplingParams(return_logprob=True, logprob_start_len=0, return_text_in_logprobs=False)
    assert fields.native_request_fields() == {
        "return_logprob": True, "top_logprobs_num": 0, "return_text_in_logprobs": False, "logprob_start_len": 0,
    }
    with pytest.raises(ValueError, match="stop_regex: '\\(' is not a valid regular expression"):
        sgl.gen("x", stop_regex="(")
    with pytest.raises(ValueError, match="n: must be an integer >= 1"):
        sgl.gen("x", n=0)
    with pytest.raises(ValueError, match="logprob_start_len"):
        sgl.gen("x", logprob_start_len=-2)
    with pytest.raises(ValueError, match="max_new_tokens: give max_tokens or max_new_tokens"):
        SamplingParams.from_kwargs({"max_tokens": 1, "max_new_tokens": 2})
    with pytest.raises(ValueError, match="chat_template_name"):
        sgl.RuntimeEndpoint("http://127.0.0.1:9", chat_template="chatml", chat_template_name="chatml")


def test_fork_group_indexed_list_and_lambda_adds(backend: ThinkingBackend) -> None:
    @sgl.function
    def tree(s):
        forks = s.fork(3)
        forks += ["a", "b", "c"]
        forks += lambda i: str(i)
        forks[1] += "!"
        forks.join("concate_and_append")

    assert tree.run(backend=backend).text() == "a0b1!c2"

    @sgl.function
    def bad(s, what):
        forks = s.fork(2)
        if what == "replace":
            forks[0] = forks[1]
        else:
            forks += ["only one"]

    with pytest.raises(TypeError, match="cannot be replaced"):
        bad.run("replace", backend=backend)
    with pytest.raises(ValueError, match="one expression per branch \\(2\\), got 1"):
        bad.run("short", backend=backend)


def test_role_markers_must_balance(backend: ThinkingBackend) -> None:
    @sgl.function
    def nested(s):
        s += sgl.user_begin() + sgl.assistant_begin()

    with pytest.raises(ValueError, match="cannot nest"):
        nested.run(backend=backend)


def test_set_var_is_ordered_and_inherited_by_forks(backend: ThinkingBackend) -> None:
    @sgl.function
    def prog(s):
        s += sgl.gen("x", max_tokens=4)
        s["x"] = "mine"
        s.set_var("y", 1)
        forks = s.fork(2)
        forks[0]["y"] = 2
        forks.join()
        with s.copy() as c:
            c["z"] = "copied"

    state = prog.run(backend=backend)
    assert state["x"] == "mine" and state.get_var("y") == [2, 1] and state["z"] == ["copied"]


def test_n_samples_list_and_first_sample_in_the_text(backend: ThinkingBackend) -> None:
    @sgl.function
    def prog(s):
        s += sgl.gen("x", n=2)

    state = prog.run(backend=backend)
    assert state["x"] == ["<think>plan it</think> done #0", "<think>plan it</think> done #1"]
    assert state.text() == state["x"][0] and state.get_meta_info("x")["n"] == 2


def test_separate_reasoning_rewrites_the_text(backend: ThinkingBackend) -> None:
    @sgl.function
    def prog(s):
        s += "Q: "
        s += sgl.separate_reasoning("A: " + sgl.gen("a") + "." + sgl.gen("b"), model_type="qwen3")
        s += sgl.assistant(sgl.separate_reasoning(sgl.gen("c"), model_type="deepseek-r1"))

    state = prog.run(backend=backend)
    assert (state["a"], state["a_reasoning_content"], state["b"]) == ("done", "plan it", "done")
    assert state.messages() == [{"role": "assistant", "content": "done"}]
    assert state.text().startswith("Q: A: done.done<|im_start|>assistant\ndone")
    assert state.get_meta_info("a")["text"] == "done"


def test_separate_reasoning_arguments_and_formats() -> None:
    with pytest.raises(ValueError, match="model_type: required"):
        sgl.separate_reasoning(sgl.gen("a"))
    with pytest.raises(ValueError, match="unsupported reasoning format 'gpt-9'"):
        sgl.separate_reasoning(sgl.gen("a"), model_type="gpt-9")
    with pytest.raises(ValueError, match="named gens"):
        sgl.separate_reasoning(sgl.gen(), model_type="qwen3")
    with pytest.raises(ValueError, match="wrap the gen"):
        sgl.separate_reasoning(sgl.assistant(sgl.gen("a")), model_type="qwen3")
    r1, qwen = REASONING_FORMATS["deepseek-r1"], REASONING_FORMATS["qwen3"]
    assert split_reasoning("thinking</think>\n\nanswer", r1) == ("thinking", "answer")
    assert split_reasoning("cut off while thinking", r1) == ("cut off while thinking", "")
    assert split_reasoning("plain answer", qwen) == ("", "plain answer")
    assert split_reasoning("<think> unfinished", qwen) == ("unfinished", "")
