"""Intra-op threads that follow the CPU actually available: fewer when other processes compete for the cores.

A forward on the CPU splits each GEMM across torch's intra-op (OpenMP) threads, which meet at a barrier after
every op. When another process takes one of the cores, one thread is descheduled and every barrier waits for
it: measured on this project's 2-core machine, a 300 s concurrency-16 soak went from p50 0.42 s to 2.65 s under
outside load with 2 threads, while 1 thread held (issue 13). llama.cpp has the same failure mode with ``-t``
above the free cores.

``ThreadGovernor`` samples, every ``interval_s``, the CPU time the whole machine spent busy and the time this
process spent, and sets ``torch.set_num_threads`` to the cores the rest of the machine leaves free (at least 1,
at most the configured count). Two consecutive samples must agree before the count changes, so one burst does
not flap it. The sampling costs two ``/proc`` reads per interval, not per step.
"""

from __future__ import annotations

import logging
import os
import time

import psutil
import torch

logger = logging.getLogger(__name__)


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class ThreadGovernor:
    """Adapts torch's intra-op thread count to the outside CPU load.

    Args:
        max_threads: the most threads to use (the configured or detected core count), >= 1.
        interval_s: seconds between load samples.
        margin: outside load (in cores) below which a core still counts as free; absorbs the few percent that
            daemons and this server's own light processes use.

    Raises:
        ValueError: ``max_threads < 1`` or ``interval_s <= 0``.
    """

    def __init__(self, max_threads: int, interval_s: float = 1.0, margin: float = 0.3) -> None:
        if max_threads < 1 or interval_s <= 0:
            raise ValueError(f"ThreadGovernor: max_threads ({max_threads}) >= 1 and interval_s > 0 required")
        self.max_threads = max_threads
        self.interval_s = interval_s
        self.margin = margin
        self.threads = max_threads
        self.changes = 0
        self._proc = psutil.Process()
        try:
            self._cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:
            self._cpus = list(range(psutil.cpu_count() or 1))
        self._last = self._sample()
        self._pending: int | None = None
        torch.set_num_threads(max_threads)

    def _sample(self) -> tuple[float, float, float]:
        """(wall time, busy CPU seconds of the CPUs this process may use, this process's CPU seconds)."""
        per_cpu = psutil.cpu_times(percpu=True)
        busy = 0.0
        for i in self._cpus:
            if i < len(per_cpu):
                c = per_cpu[i]
                busy += c.user + c.system + sum(getattr(c, f, 0.0) for f in ("nice", "irq", "softirq"))
        own = self._proc.cpu_times()
        return time.monotonic(), busy, own.user + own.system

    def outside_load(self, now: tuple[float, float, float]) -> float:
        """Cores kept busy by other processes since the last sample."""
        wall, busy, own = now
        last_wall, last_busy, last_own = self._last
        elapsed = wall - last_wall
        if elapsed <= 0:
            return 0.0
        return max(0.0, (busy - last_busy) - (own - last_own)) / elapsed

    def target_threads(self, outside: float) -> int:
        """Threads for an outside load of ``outside`` cores."""
        free = self.max_threads - int(max(0.0, outside - self.margin) + 0.999)
        return max(1, min(self.max_threads, free))

    def maybe_adjust(self) -> int:
        """Call once per forward: resamples when ``interval_s`` has passed and applies a confirmed change.

        Returns the thread count in use.
        """
        if self.max_threads == 1 or time.monotonic() - self._last[0] < self.interval_s:
            return self.threads
        now = self._sample()
        target = self.target_threads(self.outside_load(now))
        self._last = now
        if target == self.threads:
            self._pending = None
        elif self._pending == target:
            logger.info("intra-op threads %d -> %d (outside CPU load changed)", self.threads, target)
            self.threads = target
            self.changes += 1
            self._pending = None
            torch.set_num_threads(target)
        else:
            self._pending = target
        return self.threads
