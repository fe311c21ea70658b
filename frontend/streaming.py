"""Stream subscribers: how text deltas reach ``state.text_iter()`` (a thread) or ``text_async_iter()`` (a loop)."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

END = object()  # the end-of-stream marker pushed after the last delta


@dataclass
class Subscriber:
    """Receives the text deltas of the whole state (``name`` None) or of one variable."""

    name: str | None
    push: Callable[[Any], None]


def iterate_sync(subscribe: Callable[[Callable[[Any], None]], None]) -> Iterator[str]:
    """Subscribe with a thread-safe queue and yield non-empty pieces until END."""
    q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    subscribe(q.put)
    while (item := q.get()) is not END:
        if item:
            yield item


async def iterate_async(subscribe: Callable[[Callable[[Any], None]], None]) -> AsyncIterator[str]:
    """Subscribe from a coroutine: pieces are handed to this loop thread-safely, END stops the iteration."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[Any] = asyncio.Queue()

    def sink(item: Any) -> None:
        loop.call_soon_threadsafe(q.put_nowait, item)

    subscribe(sink)
    while (item := await q.get()) is not END:
        if item:
            yield item
