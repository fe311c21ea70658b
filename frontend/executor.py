"""The interpreter: one executor per program state runs its queued instructions in order.

The instruction semantics (``_execute``) are written once, sans-IO: a generator that yields the backend calls it
needs (``calls.py``) and receives their results. Two drivers run it with one loop (``sansio.drive``) — a worker
thread per state calling the backend's sync methods (``program.run``, ``run_batch``), or an asyncio task calling the
async methods (``program.run_async``: no thread per program). Variables are ``concurrent.futures.Future`` objects
created when their producer is submitted, so a reader waits for exactly the latest producer of a name, from a
thread or (via ``asyncio.wrap_future``) from a coroutine. Design after SGLang's ``StreamExecutor``.
"""

from __future__ import annotations

import asyncio
import copy
import queue
import threading
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Future
from typing import Any, Literal

from radixgen.backends.base import USAGE_KEYS, Backend, PromptView, add_usage
from radixgen.calls import Call, GenCall, PrefixCall, SelectCall, TemplateCall, WaitCall, perform_async, perform_sync
from radixgen.instructions import (
    AddText,
    Barrier,
    End,
    ForkPoint,
    Inherit,
    Instr,
    JoinPoint,
    RoleBegin,
    RoleEnd,
    RunGen,
    RunSelect,
    ScopeBegin,
    ScopeEnd,
    SetVar,
    SplitReasoning,
    reasoning_name,
)
from radixgen.reasoning import reasoning_format, separate_outputs
from radixgen.sampling import SamplingParams
from radixgen.sansio import drive, run_blocking
from radixgen.streaming import END, Subscriber
from radixgen.typed import gen_value

Mode = Literal["thread", "async"]
_FORKED = "messages outside open_role role_start prev_role first_turn length values meta scopes".split()  # + the text


class Executor:
    """Runs one program state's instructions; owns its text, messages, variables and their meta info.

    Only the driver (thread or task) mutates the state; readers first wait on a Barrier (``sync``) or a
    variable's future. ``lock`` orders text appends against stream subscriptions. ``defaults`` (sampling) and
    ``lora`` (the default LoRA adapter, None = the base model) are the run's; fork branches get their parent's.
    """

    def __init__(
        self, backend: Backend, defaults: SamplingParams | None, name: str, mode: Mode, stream: bool = False,
        lora: str | None = None,
    ) -> None:
        self.backend, self.defaults, self.name, self.mode, self.stream = backend, defaults, name, mode, stream
        self.lora = lora
        self.lock = threading.Lock()
        self.parts: list[str] = []
        self.messages: list[dict[str, str]] = []
        self.outside: list[str] = []
        self.open_role: str | None = None
        self.role_start = 0  # text length where the open role's content starts
        self.prev_role: str | None = None
        self.first_turn = True
        self.length = 0  # characters of text
        self.fork_length = 0  # text length at the fork this branch starts from
        self.values: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.scopes: dict[str, int] = {}
        self.spans: dict[str, tuple[int, int]] = {}  # text span of each variable's latest gen/select output
        self.futures: dict[str, Future[Any]] = {}  # latest submitted producer per variable name
        self.own_names: list[str] = []  # names whose producers were submitted here (not inherited)
        self.usage = dict.fromkeys(USAGE_KEYS, 0) | {"calls": 0}
        self.error: BaseException | None = None
        self.done: Future[None] = Future()
        self.closed = False
        self.subscribers: list[Subscriber] = []
        self.children: list[Executor] = []  # fork branches, ended with this state if never joined
        self.current_gen: str | None = None  # variable being streamed now
        self.current_partial: list[str] = []
        self._template: Any = None
        self._thread_queue: queue.SimpleQueue[Instr] | None = None
        self._async_queue: asyncio.Queue[Instr] | None = None
        if mode == "thread":
            self._thread_queue = queue.SimpleQueue()
            threading.Thread(target=self._thread_main, name=f"radixgen-{name}", daemon=True).start()
        else:
            self._async_queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._async_main())

    # ---- submission side (the user's thread / coroutine) -------------------------------------------------------
    def submit(self, instr: Instr) -> None:
        """Queue ``instr``. Raises RuntimeError when the state has ended (program returned, or branch joined)."""
        if self.closed:
            raise RuntimeError(f"program {self.name!r}: this state has finished (or its fork was joined)")
        if isinstance(instr, End):
            self.closed = True
        if self._thread_queue is not None:
            self._thread_queue.put(instr)
        else:
            assert self._async_queue is not None
            self._async_queue.put_nowait(instr)

    def new_future(self, name: str) -> Future[Any]:
        """Register the future of a newly submitted producer of ``name``."""
        fut: Future[Any] = Future()
        with self.lock:
            if name not in self.own_names:
                self.own_names.append(name)
            self.futures[name] = fut
        return fut

    def barrier(self) -> Future[Any]:
        """A future that resolves when everything submitted so far has run (at once if the state has ended)."""
        if self.closed:
            return self.done
        fut: Future[Any] = Future()
        self.submit(Barrier(fut))
        return fut

    # ---- drivers -------------------------------------------------------------------------------------------------
    def _thread_main(self) -> None:
        """The worker thread: ``_run`` with blocking calls, which never suspend, so it needs no event loop."""
        assert self._thread_queue is not None

        async def perform(call: Call) -> Any:
            return perform_sync(call, self.backend)

        while True:
            instr = self._thread_queue.get()
            if run_blocking(self._run(instr, perform)):
                return

    async def _async_main(self) -> None:
        assert self._async_queue is not None
        while True:
            instr = await self._async_queue.get()
            if await self._run(instr, lambda call: perform_async(call, self.backend)):
                return

    async def _run(self, instr: Instr, perform: Callable[[Call], Awaitable[Any]]) -> bool:
        """Run ``instr``, performing the calls it yields; after an error (its own or an earlier one) fail its
        futures instead. True once it was the End."""
        try:
            if self.error is None:
                await drive(self._execute(instr), perform)
        except BaseException as e:  # noqa: BLE001 - every failure is the program's error
            self._fail(e, instr)
        if self.error is not None:
            self._skip(instr)
        if isinstance(instr, End):
            self._finish()
            return True
        return False

    def _fail(self, e: BaseException, instr: Instr) -> None:
        if self.error is None:
            if instr.site and isinstance(e, Exception):
                e.add_note(f"in radixgen program {self.name!r}, at {instr.site}")
            self.error = e

    def fail_from_user(self, e: BaseException) -> None:
        """The program's own code raised: record it so queued instructions are skipped."""
        if self.error is None:
            self.error = e

    def _skip(self, instr: Instr) -> None:
        """After an error: fail the futures of a skipped instruction (barriers still resolve)."""
        err = self.error
        assert err is not None
        if isinstance(instr, Barrier):
            if not instr.future.done():
                instr.future.set_result(None)
            return
        if isinstance(instr, JoinPoint):
            for branch in instr.branches:
                if not branch.closed:
                    branch.submit(End())
        for fut in instr.outputs():
            if not fut.done():
                fut.set_exception(err)

    def _finish(self) -> None:
        for child in self.children:
            if not child.closed:
                child.submit(End())
        with self.lock:
            subs, self.subscribers = self.subscribers, []
        for sub in subs:
            sub.push(END)
        self.done.set_result(None)

    # ---- state ---------------------------------------------------------------------------------------------------
    def text(self) -> str:
        return "".join(self.parts)

    def view(self, lora: str | None = None) -> PromptView:
        """The prompt a backend call sees now, under the call's adapter ``lora`` (None: the run's default). Raises
        BackendRequestError for an adapter the backend cannot send (``Backend.check_lora``)."""
        adapter = lora if lora is not None else self.lora
        self.backend.check_lora(adapter)
        text = self.text()
        content = text[self.role_start :] if self.open_role is not None else ""
        messages, outside = tuple(dict(m) for m in self.messages), "".join(self.outside)
        return PromptView(text, messages, self.open_role, content, outside, adapter)

    def _append(self, text: str, streamed: bool = False) -> None:
        if not text:
            return
        with self.lock:
            self.parts.append(text)
            self.length += len(text)
            if self.open_role is None:
                self.outside.append(text)
            if not streamed:
                for sub in self.subscribers:
                    if sub.name is None:
                        sub.push(text)

    def _emit(self, name: str | None, text: str, streamed: bool = False) -> None:
        """Append a gen/select output, remembering where variable ``name``'s text lies (see ``_split_reasoning``)."""
        start = self.length
        self._append(text, streamed)
        if name is not None:
            self.spans[name] = (start, self.length)

    def _rewrite_tail(self, start: int, tail: str) -> None:
        """Replace the text from offset ``start`` on (inside the open role, or outside any) with ``tail``."""
        with self.lock:
            text = self.text()
            if self.open_role is None:
                outside = "".join(self.outside)
                self.outside = [outside[: len(outside) - (len(text) - start)] + tail]
            self.parts = [text[:start] + tail]
            self.length = len(self.parts[0])

    def _on_delta(self, delta: str) -> None:
        with self.lock:
            self.current_partial.append(delta)
            for sub in self.subscribers:
                if sub.name is None or sub.name == self.current_gen:
                    sub.push(delta)

    def subscribe(self, name: str | None, sink: Callable[[Any], None]) -> None:
        """Start streaming to ``sink``: the text so far (or the variable's value / partial text), then deltas."""
        with self.lock:
            sub = Subscriber(name, sink)
            if name is None:
                sink("".join(self.parts) + "".join(self.current_partial))
            elif name == self.current_gen:
                sink("".join(self.current_partial))
            elif name in self.futures and self.futures[name].done() and name in self.meta:
                sink(self.meta[name].get("text", str(self.values.get(name, ""))))
                sink(END)
                return
            if self.done.done():
                sink(END)
                return
            self.subscribers.append(sub)

    def snapshot(self) -> dict[str, Any]:
        """A copy of the state for a fork branch (taken now: the parent goes on; each branch copies it again)."""
        return {"parts": [self.text()], **{k: copy.copy(getattr(self, k)) for k in _FORKED}}

    def _load(self, snap: dict[str, Any]) -> None:
        with self.lock:
            for key, value in snap.items():
                setattr(self, key, copy.copy(value))  # a list or dict copied, shallowly
            self.messages = [dict(m) for m in self.messages]
            self.fork_length = self.length

    # ---- instruction semantics (sans-IO) ------------------------------------------------------------------------
    def _chat_template(self) -> Generator[Call, Any, Any]:
        if self._template is None:
            self._template = yield TemplateCall()
            if self._template is None:
                raise ValueError(
                    "roles: the backend has no chat template; start the server with --chat-template NAME or pass "
                    "chat_template=... to the backend"
                )
        return self._template

    def _execute(self, instr: Instr) -> Generator[Call, Any, None]:
        if isinstance(instr, AddText):
            self._append(instr.text)
        elif isinstance(instr, RoleBegin):
            if self.open_role is not None:
                raise ValueError(f"{instr.role}: role blocks cannot nest ({self.open_role} is open)")
            template = yield from self._chat_template()
            prefix = template.role_prefix(instr.role, self.prev_role, self.first_turn)
            self.open_role = instr.role  # set first: the template's markup is not text outside roles
            self._append(prefix)
            self.role_start = self.length
        elif isinstance(instr, RoleEnd):
            if self.open_role != instr.role:
                raise ValueError(f"{instr.role}_end: no {instr.role} turn is open (open: {self.open_role})")
            template = yield from self._chat_template()
            content = self.text()[self.role_start :]
            self._append(template.role_suffix(instr.role))
            self.messages.append({"role": instr.role, "content": content})
            self.open_role, self.prev_role, self.first_turn = None, instr.role, False
        elif isinstance(instr, RunGen):
            yield from self._run_gen(instr)
        elif isinstance(instr, RunSelect):
            sel = instr.select
            out = yield SelectCall(self.view(sel.lora), sel.choices, sel.choices_method, sel.temperature)
            self._emit(sel.name, out.choice)
            add_usage(self.usage, out.meta, calls=len(sel.choices))
            self._set(sel.name, out.choice, {**out.meta, "text": out.choice}, instr.future)
        elif isinstance(instr, SetVar):
            self._set(instr.name, instr.value, {}, instr.future)
        elif isinstance(instr, SplitReasoning):
            self._split_reasoning(instr)
        elif isinstance(instr, ScopeBegin):
            self.scopes[instr.name] = self.length
        elif isinstance(instr, ScopeEnd):
            start = self.scopes.pop(instr.name, None)
            if start is None:
                raise ValueError(f"var_scope: {instr.name!r} was not opened")
            value = self.text()[start:]
            self._set(instr.name, value, {"text": value}, instr.future)
        elif isinstance(instr, ForkPoint):
            if self.length:  # warmed under the run's adapter: the KV the branches' calls continue from by default
                meta = yield PrefixCall(self.view())
                add_usage(self.usage, meta)
            instr.future.set_result(self.snapshot())
        elif isinstance(instr, Inherit):
            self._load((yield WaitCall(instr.future)))
        elif isinstance(instr, JoinPoint):
            yield from self._join(instr)
        elif isinstance(instr, Barrier):
            instr.future.set_result(None)

    def _run_gen(self, instr: RunGen) -> Generator[Call, Any, None]:
        gen = instr.gen
        params = gen.params.merged_over(self.defaults)
        if self.open_role == "assistant":
            template = yield from self._chat_template()
            if template.stop:
                params = params.with_updates(stop=tuple(dict.fromkeys((*(params.stop_list() or ()), *template.stop))))
        with self.lock:
            self.current_gen, self.current_partial = gen.name, []
        streaming = (self.stream or bool(self.subscribers)) and params.samples == 1  # n > 1: added when done
        try:
            out = yield GenCall(self.view(gen.lora), params, self._on_delta if streaming else None)
        finally:
            with self.lock:
                streamed, self.current_gen, self.current_partial = bool(self.current_partial), None, []
        self._emit(gen.name, out.text, streamed=streamed)
        add_usage(self.usage, out.meta)
        self._set(gen.name, gen_value(gen, out), {**out.meta, "text": out.text}, instr.future)

    def _split_reasoning(self, instr: SplitReasoning) -> None:
        """Replace each variable's output, in the text and the variable, by its content; store the reasoning."""
        spans = {name: self.spans[name] for name in instr.names}
        start, tail, parts = separate_outputs(self.text(), spans, self.values, reasoning_format(instr.model_type))
        self._rewrite_tail(start, tail)
        for name, (reasoning, content) in parts.items():
            self._set(name, content, {**self.meta[name], "text": content}, instr.futures[name])
            self._set(reasoning_name(name), reasoning, {}, instr.futures[reasoning_name(name)])

    def _set(self, name: str | None, value: Any, meta: dict[str, Any], future: Future[Any] | None) -> None:
        if name is not None:
            self.values[name], self.meta[name] = value, meta
            with self.lock:
                subs = [s for s in self.subscribers if s.name == name]
                self.subscribers = [s for s in self.subscribers if s.name != name]
            for sub in subs:
                sub.push(END)
        if future is not None:
            future.set_result(value)

    def _join(self, instr: JoinPoint) -> Generator[Call, Any, None]:
        for branch in instr.branches:
            yield WaitCall(branch.done)
        failed = next((b.error for b in instr.branches if b.error is not None), None)
        if failed is not None:
            raise failed
        for branch in instr.branches:
            add_usage(self.usage, branch.usage, calls=branch.usage["calls"])
        if instr.mode == "concate_and_append":
            for branch in instr.branches:
                self._append(branch.text()[branch.fork_length :])
        for name, fut in instr.futures.items():
            values = [b.values.get(name) for b in instr.branches]
            self.values[name], self.meta[name] = values, {"branches": [b.meta.get(name) for b in instr.branches]}
            fut.set_result(values)
