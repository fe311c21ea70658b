"""The scheduler's torch profiler, driven by ``/start_profile`` and ``/stop_profile`` (SGLang's routes).

``start`` opens a ``torch.profiler.profile`` over the scheduler's steps (CPU activity, plus CUDA on a GPU); ``stop``
— or ``num_steps`` scheduler steps after the start — closes it and writes a Chrome trace
(``<output_dir>/<prefix><time>-scheduler.trace.json``, viewable in Perfetto or chrome://tracing).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from radixgen.runtime.io_struct import ProfileOut, ProfileReq

logger = logging.getLogger(__name__)

#: where traces go when the request names no directory (SGLang reads the same variable)
PROFILER_DIR_ENV = "SGLANG_TORCH_PROFILER_DIR"
_ACTIVITIES = {"CPU": torch.profiler.ProfilerActivity.CPU, "GPU": torch.profiler.ProfilerActivity.CUDA}


class SchedulerProfiler:
    """At most one profile at a time around the scheduler loop.

    Attributes:
        last_trace: the path of the last trace written, if any.
    """

    def __init__(self) -> None:
        self._prof: Any = None
        self._path = ""
        self._steps_left: int | None = None
        self.last_trace: str | None = None

    def handle(self, req: ProfileReq) -> ProfileOut:
        """Start or stop; a start while profiling, a stop while not, or a bad option is refused (success False)."""
        if req.action == "stop":
            if self._prof is None:
                return ProfileOut(False, "no profile is running")
            return ProfileOut(True, f"trace written to {self._stop()}")
        if self._prof is not None:
            return ProfileOut(False, "a profile is already running")
        names = req.activities or ["CPU", "GPU"]
        unknown = [a for a in names if a not in _ACTIVITIES]
        if unknown:
            return ProfileOut(False, f"activities: unsupported {unknown} (supported: CPU, GPU)")
        activities = [_ACTIVITIES[a] for a in names if a == "CPU" or torch.cuda.is_available()]
        out_dir = req.output_dir or os.environ.get(PROFILER_DIR_ENV) or "/tmp"
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            return ProfileOut(False, f"output_dir: {e}")
        self._path = os.path.join(out_dir, f"{req.profile_prefix or ''}{time.time():.0f}-scheduler.trace.json")
        self._prof = torch.profiler.profile(
            activities=activities, with_stack=bool(req.with_stack), record_shapes=bool(req.record_shapes)
        )
        self._prof.start()
        self._steps_left = req.num_steps
        logger.info("profiling started (%s)", self._path)
        return ProfileOut(True, f"profiling; the trace goes to {self._path}")

    def step(self) -> None:
        """After each scheduler step: count it, and stop when ``num_steps`` were recorded."""
        if self._prof is None:
            return
        self._prof.step()
        if self._steps_left is not None:
            self._steps_left -= 1
            if self._steps_left <= 0:
                self._stop()

    def _stop(self) -> str:
        self._prof.stop()
        self._prof.export_chrome_trace(self._path)
        self._prof, self._steps_left, self.last_trace = None, None, self._path
        logger.info("profiling stopped; trace written to %s", self._path)
        return self._path
