"""The DSL interpreter on a scripted in-process backend: ordering, futures, fork/join, errors, streaming, async,
tracing. (The same primitives against a real server are in test_frontend_dsl.py.)"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from pydantic import BaseModel

import radixgen as rg
from radixgen.backends.base import Backend, BackendRequestError, GenOutput, PromptView, SelectOutput
from radixgen.chat_template import get_chat_template
from radixgen.tracing import extract_prefix


class ScriptedBackend(Backend):
    """Deterministic replies: a regex/schema gets a canned valid value, anything else ``<len(prompt)>``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()

    def chat_template(self) -> Any:
        return get_chat_template("chatml")

    def _reply(self, prompt: PromptView, params: Any) -> str:
        if "FAIL" in prompt.text:
            raise BackendRequestError("regex: the server rejected it")
        if params.regex == rg.ir.DTYPE_REGEX[int]:
            return "42"
        if params.json_schema is not None:
            return '{"name": "Lily", "age": 3}'
        return f"<{len(prompt.text)}>"

    def generate(self, prompt: PromptView, params: Any, on_delta: Any = None) -> GenOutput:
        with self.lock:
            self.calls.append(("gen", prompt.text, params))
        text = self._reply(prompt, params)
        if on_delta is not None:
            for ch in text:
                on_delta(ch)
        return GenOutput(text, {"prompt_tokens": len(prompt.text), "completion_tokens": len(text), "cached_tokens": 1})

    async def agenerate(self, prompt: PromptView, params: Any, on_delta: Any = None) -> GenOutput:
        await asyncio.sleep(0)
        return self.generate(prompt, params, on_delta)

    def select(self, prompt: PromptView, choices: Any, method: Any, temperature: float = 0.0) -> SelectOutput:
        with self.lock:
            self.calls.append(("select", prompt.text, choices))
        scores = [float(len(c)) for c in choices]
        i = scores.index(max(scores))
        return SelectOutput(choices[i], i, scores, {"scores": scores})

    async def aselect(self, prompt: PromptView, choices: Any, method: Any, temperature: float = 0.0) -> SelectOutput:
        return self.select(prompt, choices, method, temperature)

    def cache_prefix(self, prompt: PromptView) -> dict[str, Any]:
        with self.lock:
            self.calls.append(("prefix", prompt.text, None))
        return {"prompt_tokens": len(prompt.text), "cached_tokens": 0}

    async def acache_prefix(self, prompt: PromptView) -> dict[str, Any]:
        return self.cache_prefix(prompt)


@pytest.fixture()
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@rg.function
def chain(s: Any, q: str) -> None:
    s += "Q: " + q + "\nA:"
    s += rg.gen("a", max_tokens=4)
    s += "\nMore:"
    s += rg.gen("b")


def test_chain_accumulates_prompt_and_variables(backend: ScriptedBackend) -> None:
    state = chain.run(q="hi", backend=backend, temperature=0.5)
    assert state["a"] == "<8>" and state.text() == "Q: hi\nA:<8>\nMore:<17>" and state["b"] == "<17>"
    gens = [c for c in backend.calls if c[0] == "gen"]
    assert [c[1] for c in gens] == ["Q: hi\nA:", "Q: hi\nA:<8>\nMore:"]
    assert gens[0][2].max_tokens == 4 and gens[0][2].temperature == 0.5  # run defaults fill unset fields
    assert state.get_meta_info("a")["prompt_tokens"] == 8
    assert state.usage()["calls"] == 2


def test_roles_render_with_template_and_messages(backend: ScriptedBackend) -> None:
    @rg.function
    def chat(s: Any) -> None:
        s += rg.system("Be brief.")
        with s.user():
            s += "Hello"
        s += rg.assistant(rg.gen("reply"))

    state = chat.run(backend=backend)
    tpl = get_chat_template("chatml")
    assert state.text().startswith(tpl.role_prefix("system", None, True) + "Be brief.")
    assert state.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": state["reply"]},
    ]
    gen_params = backend.calls[-1][2]
    assert "<|im_end|>" in gen_params.stop  # the template's turn-end stop string is added inside assistant turns


def test_python_control_flow_over_generated_values(backend: ScriptedBackend) -> None:
    @rg.function
    def loop(s: Any) -> None:
        total = 0
        for i in range(3):
            s += f"step {i}: "
            s += rg.gen("n", dtype=int)
            total += s["n"]
            if s["n"] > 40:
                s += " big\n"
        s += f"total={total}"

    state = loop.run(backend=backend)
    assert state["n"] == 42 and state.text().endswith("total=126") and state.text().count(" big") == 3


def test_typed_pydantic_output(backend: ScriptedBackend) -> None:
    class Person(BaseModel):
        name: str
        age: int

    @rg.function
    def extract(s: Any) -> None:
        s += "Person: "
        s += rg.gen("p", json_schema=Person)

    state = extract.run(backend=backend)
    assert state["p"] == Person(name="Lily", age=3) and '{"name": "Lily"' in state.text()


def test_fork_prefills_shared_prefix_and_join_gathers(backend: ScriptedBackend) -> None:
    @rg.function
    def tree(s: Any) -> None:
        s += "Root."
        forks = s.fork(3)
        for i, f in enumerate(forks):
            f += f" Branch {i}:"
        forks += rg.gen("idea")
        forks.join()
        s += " Summary:" + rg.gen("summary")

    state = tree.run(backend=backend)
    assert [c for c in backend.calls if c[0] == "prefix"] == [("prefix", "Root.", None)]
    assert state["idea"] == ["<15>", "<15>", "<15>"]
    assert state.text() == "Root. Summary:<14>" and state.usage()["calls"] == 5


def test_errors_raise_from_run_with_program_site(backend: ScriptedBackend) -> None:
    @rg.function
    def bad(s: Any) -> None:
        s += "FAIL"
        s += rg.gen("x")

    with pytest.raises(BackendRequestError) as info:
        bad.run(backend=backend)
    assert any("test_frontend_interpreter.py" in note for note in info.value.__notes__)

    @rg.function
    def user_error(s: Any) -> None:
        s += "ok"
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        user_error.run(backend=backend)


def test_run_batch_keeps_order_and_isolates_errors(backend: ScriptedBackend) -> None:
    @rg.function
    def few_shot(s: Any, q: str) -> None:
        s += "Examples: 1+1=2.\n"
        s += "Q: " + q + "\nA:"
        s += rg.gen("a")

    states = few_shot.run_batch([{"q": "x"}, {"q": "FAIL"}, {"q": "yyy"}], backend=backend, progress_bar=False)
    assert states[0]["a"] == "<24>" and states[2]["a"] == "<26>"
    assert isinstance(states[1].error(), BackendRequestError) and states[0].ok
    with pytest.raises(BackendRequestError):
        states[1]["a"]
    assert ("prefix", "Examples: 1+1=2.\nQ: ", None) in backend.calls


def test_tracing_stops_at_first_argument_use() -> None:
    def prog(s: Any, q: str, n: int) -> None:
        s += "const "
        s += "more " + q
        s += rg.gen("x")

    assert extract_prefix(prog, None) == "const more "

    def fstring(s: Any, q: str) -> None:
        s += f"Q: {q}"

    assert extract_prefix(fstring, None) == ""


def test_streaming_whole_text_and_one_variable(backend: ScriptedBackend) -> None:
    state = chain.run(q="hi", backend=backend, stream=True)
    pieces = list(state.text_iter())
    assert "".join(pieces) == state.text()
    state2 = chain.run(q="hi", backend=backend, stream=True)
    assert "".join(state2.text_iter("b")) == "<17>"


def test_select_and_gen_choices(backend: ScriptedBackend) -> None:
    @rg.function
    def pick(s: Any) -> None:
        s += "Pick: " + rg.select("c", choices=["a", "bbb", "cc"]) + " / " + rg.gen("d", choices=["x", "yy"])

    state = pick.run(backend=backend)
    assert state["c"] == "bbb" and state["d"] == "yy" and state.get_meta_info("c")["scores"] == [1.0, 3.0, 2.0]


def test_run_async_without_threads(backend: ScriptedBackend) -> None:
    @rg.function
    async def agent(s: Any, q: str) -> None:
        s += q
        s += rg.gen("n", dtype=int)
        if await s.aget("n") == 42:
            s += " yes"
        forks = s.fork(2)
        forks += rg.gen("f")
        forks.join()

    async def main() -> list[Any]:
        before = threading.active_count()
        states = await asyncio.gather(*(agent.run_async(q=f"q{i}", backend=backend) for i in range(4)))
        assert threading.active_count() == before
        return [await s.atext() for s in states]

    texts = asyncio.run(main())
    assert texts[0] == "q042 yes"

    @rg.function
    def blocking(s: Any) -> None:
        s += rg.gen("x")
        s["x"]

    with pytest.raises(RuntimeError, match="aget"):
        asyncio.run(blocking.run_async(backend=backend))


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(TypeError, match="max_new_tokens"):
        rg.gen("x", max_new_tokens=3)
    with pytest.raises(ValueError, match="temperature"):
        rg.gen("x", temperature=-1)
    with pytest.raises(ValueError, match="dtype"):
        rg.gen("x", dtype=list)
    with pytest.raises(ValueError, match="choices"):
        rg.select("x", choices=[])
    with pytest.raises(ValueError, match="backend"):
        chain.run(q="x")
