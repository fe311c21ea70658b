"""``@rg.function``: a program, and how it runs — once, in a batch, streamed, or on an asyncio loop."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any

from radixgen.backends.base import Backend, PromptView
from radixgen.executor import Executor
from radixgen.instructions import End
from radixgen.sampling import SamplingParams
from radixgen.state import ProgramState
from radixgen.tracing import extract_prefix


class DefaultBackend:
    """Holds the backend programs use when ``run`` gets none (set with ``rg.set_default_backend``)."""

    backend: Backend | None = None


def set_default_backend(backend: Backend | None) -> None:
    """Make ``backend`` the one ``program.run`` / ``run_batch`` / ``run_async`` use when given none."""
    if backend is not None and not isinstance(backend, Backend):
        raise TypeError("set_default_backend: expected a radixgen backend (RuntimeEndpoint, Runtime, OpenAI)")
    DefaultBackend.backend = backend


def _resolve_backend(backend: Backend | None) -> Backend:
    chosen = backend if backend is not None else DefaultBackend.backend
    if chosen is None:
        raise ValueError("backend: none given and no default set; call rg.set_default_backend(...) or pass backend=")
    return chosen


class Program:
    """A function ``def program(s, *args, **kwargs)`` made runnable; see ``function``."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.name = func.__name__
        self.is_async = inspect.iscoroutinefunction(func)
        functools.update_wrapper(self, func)
        params = list(inspect.signature(func).parameters.values())
        if not params:
            raise TypeError(f"@function {self.name}: the first parameter must be the program state `s`")

    def _executor(self, backend: Backend | None, defaults: dict[str, Any], mode: str, stream: bool) -> Executor:
        params = SamplingParams.from_kwargs(defaults) if defaults else None
        return Executor(_resolve_backend(backend), params, self.name, mode, stream)  # type: ignore[arg-type]

    def run(self, *args: Any, backend: Backend | None = None, stream: bool = False, **kwargs: Any) -> ProgramState:
        """Run the program and return its finished state (``stream=True``: return at once and run it on a
        thread; read it with ``state.text_iter()``).

        Keyword arguments that name SamplingParams fields (max_tokens, temperature, ...) are defaults for every
        gen; the rest go to the program. Raises the program's error (with a note naming the program line) —
        a backend error, an invalid constraint, or an exception in the program's own code.
        """
        if self.is_async:
            raise TypeError(f"{self.name} is an async program: use `await {self.name}.run_async(...)`")
        defaults, prog_kwargs = self._split(kwargs)
        ex = self._executor(backend, defaults, "thread", stream)
        state = ProgramState(ex)
        if stream:
            threading.Thread(target=self._body, args=(ex, state, args, prog_kwargs), daemon=True).start()
            return state
        self._body(ex, state, args, prog_kwargs, reraise=True)
        ex.done.result()
        if ex.error is not None:
            raise ex.error
        return state

    __call__ = run

    def _body(
        self, ex: Executor, state: ProgramState, args: Sequence[Any], kwargs: dict[str, Any], reraise: bool = False
    ) -> None:
        with _ending(ex, reraise):
            self.func(state, *args, **kwargs)

    def run_batch(
        self,
        batch_kwargs: Sequence[dict[str, Any]],
        *,
        backend: Backend | None = None,
        num_threads: int | str = "auto",
        progress_bar: bool = True,
        **defaults: Any,
    ) -> list[ProgramState]:
        """Run the program once per kwargs dict, concurrently; return the states in input order.

        The programs' common constant prefix (found by tracing) is prefilled once before fanning out. A failing
        program fails alone: its state's ``error`` holds the exception (reading its variables raises it), the
        others complete. ``num_threads="auto"``: min(len(batch), 64). ``defaults``: SamplingParams fields.
        """
        if isinstance(batch_kwargs, dict) or not all(isinstance(k, dict) for k in batch_kwargs):
            raise TypeError("run_batch: batch_kwargs must be a list of dicts of program arguments")
        if self.is_async:
            raise TypeError(f"{self.name} is an async program: use run_async")
        chosen = _resolve_backend(backend)
        params = SamplingParams.from_kwargs(defaults) if defaults else None
        if not batch_kwargs:
            return []
        if num_threads == "auto":
            workers = min(len(batch_kwargs), 64)
        elif isinstance(num_threads, int) and not isinstance(num_threads, bool) and num_threads >= 1:
            workers = num_threads
        else:
            raise ValueError("num_threads: must be 'auto' or an integer >= 1")
        if len(batch_kwargs) > 1:
            self.cache_prefix(chosen)
        states: list[ProgramState | None] = [None] * len(batch_kwargs)

        def one(i: int) -> None:
            ex = Executor(chosen, params, self.name, "thread")
            state = ProgramState(ex)
            states[i] = state
            self._body(ex, state, (), batch_kwargs[i])
            ex.done.result()

        bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(batch_kwargs), desc=self.name)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"radixgen-batch-{self.name}") as pool:
            for fut in as_completed([pool.submit(one, i) for i in range(len(batch_kwargs))]):
                fut.result()
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return [s for s in states if s is not None]

    def cache_prefix(self, backend: Backend | None = None) -> str:
        """Trace the program's constant prefix and prefill it on ``backend``; returns the prefix ("" = none)."""
        chosen = _resolve_backend(backend)
        if self.is_async:
            return ""
        prefix = extract_prefix(self.func, chosen.chat_template())
        if prefix:
            chosen.cache_prefix(PromptView(prefix))
        return prefix

    async def run_async(self, *args: Any, backend: Backend | None = None, **kwargs: Any) -> ProgramState:
        """Run on the current asyncio loop — one task per state, no thread per program — and return the finished
        state. ``async def`` programs read variables with ``await s.aget(name)``; plain programs may only add to
        ``s``. Raises like ``run``."""
        defaults, prog_kwargs = self._split(kwargs)
        ex = self._executor(backend, defaults, "async", False)
        state = ProgramState(ex)
        with _ending(ex):
            result = self.func(state, *args, **prog_kwargs)
            if inspect.isawaitable(result):
                await result
        await asyncio.wrap_future(ex.done)
        if ex.error is not None:
            raise ex.error
        return state

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(sampling defaults, program kwargs): SamplingParams names the function does not itself take."""
        sampling_names = set(SamplingParams.__dataclass_fields__)
        params = inspect.signature(self.func).parameters
        defaults = {k: v for k, v in kwargs.items() if k in sampling_names and k not in params}
        return defaults, {k: v for k, v in kwargs.items() if k not in defaults}

    def __repr__(self) -> str:
        return f"<radixgen program {self.name}>"


@contextmanager
def _ending(ex: Executor, reraise: bool = True) -> Iterator[None]:
    """Around a program's own code: an exception it raises fails the program (and is re-raised when ``reraise``);
    then the state ends."""
    try:
        yield
    except BaseException as e:
        ex.fail_from_user(e)
        if reraise:
            raise
    finally:
        if not ex.closed:
            ex.submit(End())


def function(func: Callable[..., Any]) -> Program:
    """Decorator: ``@rg.function`` makes ``def program(s, ...)`` (or ``async def``) a ``Program`` with run /
    run_batch / run_async. Raises TypeError when the function takes no state parameter."""
    return Program(func)

