"""One loop driving a sans-IO step generator (it yields requests and receives their results), for sync and async
callers alike: ``drive`` is awaited on an event loop, or run by ``run_blocking`` with performers that block."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

R = TypeVar("R")
T = TypeVar("T")


async def drive(
    steps: Generator[R, Any, T], perform: Callable[[R], Awaitable[Any]], throw: tuple[type[BaseException], ...] = ()
) -> T:
    """Send ``steps`` the result of ``perform`` for each request it yields; its return value. An exception of a
    ``throw`` type from ``perform`` is thrown into ``steps``; any other propagates, leaving ``steps`` suspended."""
    try:
        request = next(steps)
        while True:
            try:
                result = await perform(request)
            except throw as e:
                request = steps.throw(e)
            else:
                request = steps.send(result)
    except StopIteration as stop:
        return stop.value


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end without an event loop: nothing it awaits may suspend (RuntimeError if it does)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("run_blocking: the coroutine suspended; it needs an event loop")
