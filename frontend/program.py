"""``@rg.function``: a program, and how it runs — once, in a batch, streamed, or on an asyncio loop; the default
backend (``set_default_backend``, ``flush_cache``, ``get_server_info``: SGLang's module-level functions)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, overload

from radixgen.backends.base import Backend, PromptView
from radixgen.executor import Executor
from radixgen.instructions import End
from radixgen.ir import check_lora
from radixgen.sampling import RUN_ONLY_NAMES, SamplingParams
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


def flush_cache(backend: Backend | None = None) -> Any:
    """Empty the prefix cache of ``backend`` (default: the default backend); SGLang's ``sgl.flush_cache``.

    Returns the backend's answer (``RuntimeEndpoint``: the server's JSON), or False when there is no backend.
    Raises BackendRequestError when the server refuses (requests are running).
    """
    chosen = backend if backend is not None else DefaultBackend.backend
    return False if chosen is None else chosen.flush_cache()


def get_server_info(backend: Backend | None = None) -> dict[str, Any] | None:
    """The server settings and statistics of ``backend`` (default: the default backend); SGLang's
    ``sgl.get_server_info``. None when there is no backend or it cannot tell (OpenAI). Raises BackendError when
    the server cannot be reached."""
    chosen = backend if backend is not None else DefaultBackend.backend
    return None if chosen is None else chosen.get_server_info()


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
        chosen = _resolve_backend(backend)
        params, lora = _run_options(defaults, chosen)
        return Executor(chosen, params, self.name, mode, stream, lora)  # type: ignore[arg-type]

    def run(
        self, *args: Any, backend: Backend | None = None, stream: bool = False, use_thread: bool = True, **kwargs: Any
    ) -> ProgramState:
        """Run the program and return its finished state (``stream=True``: return at once and run it on a
        thread; read it with ``state.text_iter()``). SGLang's ``program.run``.

        Keyword arguments that name SamplingParams fields (max_tokens — or SGLang's max_new_tokens —, n, stop,
        temperature, return_logprob, ...) are defaults for every gen, ``lora="name"`` the default LoRA adapter of
        every gen / select / fork warm-up (a call's own ``lora=`` overrides it); the rest go to the program (unless
        the program itself takes a parameter of that name). ``use_thread`` is accepted for SGLang programs and
        changes nothing (every state has its own worker). Raises the program's error (with a note naming the program
        line) — a backend error (an unknown adapter: BackendRequestError naming it), an invalid constraint, or an
        exception in the program's own code; before running, ValueError for a bad default and BackendRequestError
        for a ``lora`` on a backend that cannot send it.
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
            state.ret_value = self.func(state, *args, **kwargs)

    def run_batch(
        self,
        batch_kwargs: Sequence[dict[str, Any] | Sequence[Any]],
        *,
        backend: Backend | None = None,
        num_threads: int | str = "auto",
        progress_bar: bool = False,
        generator_style: bool = False,
        **defaults: Any,
    ) -> list[ProgramState] | Iterator[ProgramState]:
        """Run the program once per item, concurrently; the states in input order (SGLang's ``run_batch``).

        Args:
            batch_kwargs: one dict of program arguments per run, or (as SGLang allows) a list/tuple of positional
                arguments.
            backend: default: the default backend. num_threads: "auto" (min(len(batch), 64)) or an int >= 1.
            progress_bar: a tqdm bar. generator_style: return an iterator yielding each state, in order, as soon as
                it (and those before it) finished, instead of the list.
            defaults: SamplingParams fields (or SGLang's ``max_new_tokens``), defaults for every gen; ``lora``: the
                default LoRA adapter of every program (as in ``run``).

        The programs' common constant prefix (found by tracing) is prefilled once, under ``lora``, before fanning
        out. A failing
        program fails alone: its state's ``error`` holds the exception (reading its variables raises it), the
        others complete.

        Raises:
            TypeError: batch_kwargs is not a list of dicts / argument lists, an argument list does not fit the
                program's parameters, an async program, an unknown sampling name. ValueError: a bad num_threads,
                sampling value or ``lora``, no backend. BackendRequestError: ``lora`` on a backend that cannot send
                it.
        """
        if self.is_async:
            raise TypeError(f"{self.name} is an async program: use run_async")
        batch = self._batch_arguments(batch_kwargs)
        chosen = _resolve_backend(backend)
        params, lora = _run_options(defaults, chosen)
        if num_threads == "auto":
            workers = max(1, min(len(batch), 64))
        elif isinstance(num_threads, int) and not isinstance(num_threads, bool) and num_threads >= 1:
            workers = num_threads
        else:
            raise ValueError("num_threads: must be 'auto' or an integer >= 1")
        if len(batch) > 1:
            self.cache_prefix(chosen, lora=lora)
        states = self._iter_batch(chosen, params, lora, batch, workers, progress_bar)
        return states if generator_style else list(states)

    def _batch_arguments(self, batch_kwargs: Any) -> list[dict[str, Any]]:
        """Each run's program keyword arguments (positional argument lists named by the function's parameters)."""
        if not isinstance(batch_kwargs, list | tuple):
            raise TypeError("run_batch: batch_kwargs must be a list of dicts (or of argument lists)")
        sig = inspect.signature(self.func)
        names = list(sig.parameters)[1:]
        out = []
        for item in batch_kwargs:
            if isinstance(item, dict):
                out.append(item)
                continue
            if not isinstance(item, list | tuple):
                raise TypeError("run_batch: batch_kwargs must be a list of dicts (or of argument lists)")
            try:
                sig.bind(None, *item)
            except TypeError as e:
                raise TypeError(f"run_batch: arguments {item!r} do not fit {self.name}{sig}: {e}") from e
            out.append(dict(zip(names, item, strict=False)))
        return out

    def _iter_batch(
        self,
        backend: Backend,
        params: SamplingParams | None,
        lora: str | None,
        batch: list[dict[str, Any]],
        workers: int,
        bar: bool,
    ) -> Iterator[ProgramState]:
        """Start every run on a pool of ``workers`` threads; yield the states in order as they finish."""
        progress = None
        if bar:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(batch), desc=self.name)

        def one(kwargs: dict[str, Any]) -> ProgramState:
            ex = Executor(backend, params, self.name, "thread", lora=lora)
            state = ProgramState(ex)
            self._body(ex, state, (), kwargs)
            ex.done.result()
            return state

        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"radixgen-batch-{self.name}") as pool:
                futures = [pool.submit(one, kwargs) for kwargs in batch]
                if progress is not None:
                    for fut in futures:
                        fut.add_done_callback(lambda _: progress.update(1))
                for fut in futures:
                    yield fut.result()
        finally:
            if progress is not None:
                progress.close()

    def cache_prefix(self, backend: Backend | None = None, lora: str | None = None) -> str:
        """Trace the program's constant prefix and prefill it on ``backend`` under LoRA adapter ``lora`` (None: the
        base model; the server caches KV per adapter, so warm the one the programs will run under); returns the
        prefix ("" = none). Raises ValueError for a ``lora`` that is not a name, BackendRequestError for an adapter
        on a backend that cannot send it."""
        chosen = _resolve_backend(backend)
        check_lora(lora)
        chosen.check_lora(lora)
        if self.is_async:
            return ""
        prefix = extract_prefix(self.func, chosen.chat_template())
        if prefix:
            chosen.cache_prefix(PromptView(prefix, lora=lora))
        return prefix

    async def run_async(self, *args: Any, backend: Backend | None = None, **kwargs: Any) -> ProgramState:
        """Run on the current asyncio loop — one task per state, no thread per program — and return the finished
        state. ``async def`` programs read variables with ``await s.aget(name)``; plain programs may only add to
        ``s``. Raises like ``run``."""
        defaults, prog_kwargs = self._split(kwargs)
        ex = self._executor(backend, defaults, "async", False)
        state = ProgramState(ex)
        with _ending(ex):
            state.ret_value = self.func(state, *args, **prog_kwargs)
            if inspect.isawaitable(state.ret_value):
                state.ret_value = await state.ret_value
        await asyncio.wrap_future(ex.done)
        if ex.error is not None:
            raise ex.error
        return state

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(run defaults, program kwargs): SamplingParams names (and SGLang's max_new_tokens, and ``lora``) the
        function does not itself take."""
        sampling_names = {*SamplingParams.__dataclass_fields__, *RUN_ONLY_NAMES, "lora"}
        params = inspect.signature(self.func).parameters
        defaults = {k: v for k, v in kwargs.items() if k in sampling_names and k not in params}
        return defaults, {k: v for k, v in kwargs.items() if k not in defaults}

    def __repr__(self) -> str:
        return f"<radixgen program {self.name}>"


def _run_options(defaults: dict[str, Any], backend: Backend) -> tuple[SamplingParams | None, str | None]:
    """A run's defaults as (sampling defaults, default LoRA adapter) — ``lora`` is not a sampling parameter but
    travels the same way. Raises TypeError / ValueError like ``SamplingParams.from_kwargs``, ValueError for a bad
    ``lora``, BackendRequestError for an adapter on a backend that cannot send it (before anything runs)."""
    sampling = {k: v for k, v in defaults.items() if k != "lora"}
    lora = defaults.get("lora")
    check_lora(lora)
    backend.check_lora(lora)
    return (SamplingParams.from_kwargs(sampling) if sampling else None), lora


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


@overload
def function(func: Callable[..., Any], num_api_spec_tokens: None = None) -> Program: ...


@overload
def function(func: None = None, num_api_spec_tokens: int | None = None) -> Callable[[Callable[..., Any]], Program]: ...


def function(
    func: Callable[..., Any] | None = None, num_api_spec_tokens: int | None = None
) -> Program | Callable[[Callable[..., Any]], Program]:
    """Decorator: ``@rg.function`` (or SGLang's ``@sgl.function()``) makes ``def program(s, ...)`` (or
    ``async def``) a ``Program`` with run / run_batch / run_async.

    Raises:
        TypeError: the function takes no state parameter.
        NotImplementedError: ``num_api_spec_tokens`` (SGLang's API speculative execution) is given.
    """
    if num_api_spec_tokens is not None:
        raise NotImplementedError("num_api_spec_tokens: API speculative execution is not supported by radixgen")
    return Program(func) if func is not None else Program

