"""``s`` in ``def program(s, ...)``: the program state users add to and read from, and fork groups.

``s += expr`` only queues instructions (it never blocks), so a program runs ahead of its generations; reading
(``s["x"]``, ``s.text()``) waits for what it needs. Inside ``program.run_async`` use the ``a``-prefixed readers
(``await s.aget("x")``) — a blocking read on the event loop raises instead of deadlocking.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from radixgen.executor import Executor
from radixgen.instructions import (
    End,
    ForkPoint,
    Inherit,
    JoinPoint,
    RoleBegin,
    RoleEnd,
    ScopeBegin,
    ScopeEnd,
    SetVar,
    flatten,
)
from radixgen.ir import Role, check_expr, role_call
from radixgen.streaming import iterate_async, iterate_sync


def _site(depth: int = 2) -> str:
    frame = sys._getframe(depth)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


class ProgramState:
    """A running (or finished) program: its text, chat messages, variables and their meta info; ``ret_value``:
    what the program function returned (SGLang's attribute; None until it returns)."""

    def __init__(self, executor: Executor) -> None:
        self._ex = executor
        self.ret_value: Any = None

    # ---- writing -------------------------------------------------------------------------------------------------
    def __iadd__(self, expr: Any) -> ProgramState:
        self._submit(expr, _site())
        return self

    def _submit(self, expr: Any, site: str) -> None:
        for instr in flatten(check_expr(expr), self._ex.new_future):
            instr.site = site
            self._ex.submit(instr)

    @contextmanager
    def _role(self, role: Role, content: Any, site: str) -> Iterator[None]:
        self._ex.submit(RoleBegin(role, site=site))
        if content is not None:
            self._submit(content, site)
        yield
        self._ex.submit(RoleEnd(role, site=site))

    def system(self, content: Any = None) -> Any:
        """``with s.system(): s += "..."`` — or ``s.system("...")`` to add a whole system turn at once."""
        return role_call(self._role("system", content, _site()), content)

    def user(self, content: Any = None) -> Any:
        """``with s.user(): s += "..."`` — or ``s.user("...")`` to add a whole user turn."""
        return role_call(self._role("user", content, _site()), content)

    def assistant(self, content: Any = None) -> Any:
        """``with s.assistant(): s += rg.gen("reply")`` — or ``s.assistant(rg.gen("reply"))``."""
        return role_call(self._role("assistant", content, _site()), content)

    @contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        """Capture everything added inside the block (text and generations) as variable ``name``."""
        site = _site(3)
        self._ex.submit(ScopeBegin(name, site=site))
        yield
        self._ex.submit(ScopeEnd(name, self._ex.new_future(name), site=site))

    def fork(self, size: int = 1) -> ProgramStateGroup:
        """``size`` branches that continue from the current state, running concurrently (SGLang's ``s.fork``).

        The shared prefix is prefilled once (a max_new_tokens=0 request, under the run's default LoRA adapter, the
        one branches inherit) before the branches start, so every branch's first call hits the radix cache for it.
        Raises ValueError for size < 1.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError("fork: size must be an integer >= 1")
        snapshot: Future[Any] = Future()
        self._ex.submit(ForkPoint(size, snapshot, site=_site()))
        branches = []
        for i in range(size):
            parent = self._ex
            name = f"{parent.name}[{i}]"
            ex = Executor(parent.backend, parent.defaults, name, parent.mode, parent.stream, parent.lora)
            with parent.lock:
                ex.futures = dict(parent.futures)
            parent.children.append(ex)
            ex.submit(Inherit(snapshot))
            branches.append(ProgramState(ex))
        return ProgramStateGroup(self, branches)

    @contextmanager
    def copy(self) -> Iterator[ProgramState]:
        """``with s.copy() as c: c += ...``: one fork branch, joined (``gather_variable``) when the block ends."""
        group = self.fork(1)
        try:
            yield group[0]
        finally:
            group.join()

    # ---- reading -------------------------------------------------------------------------------------------------
    def _wait(self, fut: Future[Any]) -> Any:
        if self._ex.mode == "async" and not fut.done() and _on_loop():
            raise RuntimeError(
                "this read would block the event loop: inside run_async use `await s.aget(name)` / `await s.atext()`"
            )
        return fut.result()

    def _future(self, name: str) -> Future[Any]:
        with self._ex.lock:
            fut = self._ex.futures.get(name)
        if fut is None:
            raise KeyError(f"variable {name!r} is never produced by this program")
        return fut

    def __getitem__(self, name: str) -> Any:
        """The value of variable ``name``, waiting until it is produced. Raises the program's error if it failed."""
        return self._wait(self._future(name))

    def get_var(self, name: str) -> Any:
        """Same as ``s[name]``."""
        return self[name]

    def __setitem__(self, name: str, value: Any) -> None:
        """``s[name] = value``: set variable ``name`` (as SGLang's state allows), in order with what was added
        before — a later ``s[name]`` sees it, fork branches made after it inherit it. Raises ValueError for an
        empty or non-string name."""
        self._set_var(name, value, _site())

    def set_var(self, name: str, value: Any) -> None:
        """Same as ``s[name] = value``."""
        self._set_var(name, value, _site())

    def _set_var(self, name: str, value: Any, site: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("name: must be a non-empty string")
        self._ex.submit(SetVar(name, value, self._ex.new_future(name), site=site))

    async def aget(self, name: str) -> Any:
        """``s[name]`` for coroutines."""
        return await asyncio.wrap_future(self._future(name))

    def __contains__(self, name: str) -> bool:
        return name in self._ex.futures

    def sync(self) -> None:
        """Wait until everything added so far has run."""
        self._wait(self._ex.barrier())

    async def async_sync(self) -> None:
        """``sync`` for coroutines."""
        await asyncio.wrap_future(self._ex.barrier())

    def text(self) -> str:
        """The whole text so far (roles rendered with the chat template), after waiting for pending work."""
        self.sync()
        return self._ex.text()

    async def atext(self) -> str:
        """``text`` for coroutines."""
        await self.async_sync()
        return self._ex.text()

    def messages(self) -> list[dict[str, str]]:
        """The finished role turns as OpenAI-style ``{"role", "content"}`` messages."""
        self.sync()
        return [dict(m) for m in self._ex.messages]

    def get_meta_info(self, name: str) -> dict[str, Any]:
        """Meta info of variable ``name``: prompt_tokens, completion_tokens, cached_tokens, finish_reason, logprobs
        (gen); scores and per-choice logprobs (select); ``branches`` (a joined fork variable)."""
        self[name]
        return dict(self._ex.meta[name])

    def variables(self) -> dict[str, Any]:
        """All variables produced so far, after waiting for pending work."""
        self.sync()
        return dict(self._ex.values)

    def usage(self) -> dict[str, int]:
        """Token counts summed over this state's backend calls (and joined branches): prompt_tokens,
        completion_tokens, cached_tokens, calls."""
        self.sync()
        return dict(self._ex.usage)

    def error(self) -> BaseException | None:
        """The exception that stopped the program, or None (waits for the program to end). A method, as SGLang's
        ``ProgramState.error()``."""
        if self._ex.closed:
            self._wait(self._ex.done)
        return self._ex.error

    @property
    def ok(self) -> bool:
        return self.error() is None

    # ---- streaming -----------------------------------------------------------------------------------------------
    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Yield the text as it is produced (from the start), or only variable ``var_name``'s, until it ends."""
        return iterate_sync(lambda sink: self._ex.subscribe(var_name, sink))

    def text_async_iter(self, var_name: str | None = None) -> AsyncIterator[str]:
        """``text_iter`` for ``async for``."""
        return iterate_async(lambda sink: self._ex.subscribe(var_name, sink))

    def __repr__(self) -> str:
        status = "failed" if self._ex.error else ("done" if self._ex.done.done() else "running")
        return f"<ProgramState {self._ex.name} {status} vars={sorted(self._ex.values)}>"


class ProgramStateGroup:
    """The branches of ``s.fork(n)`` (SGLang's fork group): ``forks[i]`` is one branch (``forks[i] += expr`` adds
    to it); ``forks += expr`` adds to every branch, ``forks += [e0, e1, ...]`` one expression per branch,
    ``forks += lambda i: expr`` the expression built for each branch index."""

    def __init__(self, parent: ProgramState, branches: list[ProgramState]) -> None:
        self.parent, self.branches = parent, branches

    def __iadd__(self, expr: Any) -> ProgramStateGroup:
        """Raises ValueError when a list/tuple does not have one expression per branch."""
        site = _site()
        if isinstance(expr, list | tuple) and len(expr) != len(self.branches):
            raise ValueError(f"forks += list: needs one expression per branch ({len(self.branches)}), got {len(expr)}")
        for i, branch in enumerate(self.branches):
            branch._submit(expr(i) if callable(expr) else expr[i] if isinstance(expr, list | tuple) else expr, site)
        return self

    def __getitem__(self, i: int) -> ProgramState:
        return self.branches[i]

    def __setitem__(self, i: int, value: ProgramState) -> None:
        """What ``forks[i] += expr`` ends with: the branch was updated in place. Raises TypeError for anything
        but that branch (branches cannot be replaced)."""
        if value is not self.branches[i]:
            raise TypeError("forks[i] = ...: a fork branch cannot be replaced; add to it with forks[i] += ...")

    def __len__(self) -> int:
        return len(self.branches)

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.branches)

    def join(self, mode: str = "gather_variable") -> None:
        """End the branches and merge them into the parent once they finish (non-blocking).

        ``gather_variable`` (default): each variable first produced in the branches becomes, in the parent, the
        list of the branches' values. ``concate_and_append``: also append each branch's new text to the parent.
        Raises ValueError for another mode; a failed branch fails the parent.
        """
        if mode not in ("gather_variable", "concate_and_append"):
            raise ValueError("mode: must be 'gather_variable' or 'concate_and_append'")
        names: list[str] = []
        for branch in self.branches:
            for name in branch._ex.own_names:
                if name not in names:
                    names.append(name)
            branch._ex.submit(End())
        futures = {name: self.parent._ex.new_future(name) for name in names}
        executors = [b._ex for b in self.branches]
        self.parent._ex.submit(JoinPoint(executors, mode, futures, site=_site()))


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
