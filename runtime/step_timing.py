"""Per-phase wall-clock accounting of scheduler steps (where a step's time goes: host work vs the model forward).

A :class:`StepTimer` is a lap clock: ``begin()`` marks the start of a step, every ``lap(phase)`` charges the time
since the previous mark to ``phase``, and ``end(mode, batch_size)`` adds the step to the totals of its forward
mode (``"decode"`` or ``"extend"``). Phases nest without double counting: code inside a phase charges its own
slice first (e.g. the grammar mask inside sampling calls ``lap("sample")`` then ``lap("grammar")``), so the
phases of a step always add up to its wall time. The cost is one ``time.perf_counter()`` call (~0.1 us) per lap,
about ten per step.

Phases (``PHASES``):
    schedule: admission / policy decisions (waiting-queue order, prefix matching, retraction), grammar-queue poll.
    prepare: batch preparation: KV slot allocation, ``req_to_token`` writes, the ScheduleBatch and ForwardBatch
        tensors, attention metadata.
    forward: the model forward and the LM head, up to the logits being ready (a device sync on CUDA).
    sample: logits processing and sampling (``SamplingBatchInfo``, penalties, top-k/p, argmax).
    grammar: grammar masks and token acceptance (zero without constrained requests).
    output: output processing: appending tokens, stop checks, logprobs, caching finished requests, outputs.

Host overhead = the share of a step's time outside ``forward``.
"""

from __future__ import annotations

import time
from typing import Any

PHASES: tuple[str, ...] = ("schedule", "prepare", "forward", "sample", "grammar", "output")
_INDEX = {name: i for i, name in enumerate(PHASES)}


class _ModeTotals:
    """Accumulated seconds per phase over the steps of one forward mode."""

    __slots__ = ("steps", "batch_sum", "seconds")

    def __init__(self) -> None:
        self.steps = 0
        self.batch_sum = 0  # requests summed over steps (mean batch size = batch_sum / steps)
        self.seconds = [0.0] * len(PHASES)

    def summary(self) -> dict[str, Any]:
        total = sum(self.seconds)
        steps = max(self.steps, 1)
        forward = self.seconds[_INDEX["forward"]]
        return {
            "steps": self.steps,
            "mean_batch_size": self.batch_sum / steps,
            "ms_per_step": {p: 1e3 * s / steps for p, s in zip(PHASES, self.seconds, strict=True)},
            "share": {p: (s / total if total else 0.0) for p, s in zip(PHASES, self.seconds, strict=True)},
            "total_ms_per_step": 1e3 * total / steps,
            "host_overhead_share": (total - forward) / total if total else 0.0,
        }


class StepTimer:
    """Lap clock over scheduler steps, with totals per forward mode; see the module docstring.

    Usage per step: ``begin()``, then ``lap(phase)`` at the end of each phase, then ``end(mode, batch_size)``
    (or ``discard()`` for a step that ran no forward). ``summary()`` reports milliseconds per step and shares;
    ``reset()`` clears the totals.
    """

    def __init__(self) -> None:
        self._mark = time.perf_counter()
        self._current = [0.0] * len(PHASES)
        self._totals: dict[str, _ModeTotals] = {}

    def begin(self) -> None:
        """Start a step: the clock is re-marked and the step's phase times are zeroed."""
        self._current = [0.0] * len(PHASES)
        self._mark = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the seconds since the previous mark to ``phase`` (one of ``PHASES``) and re-mark."""
        now = time.perf_counter()
        self._current[_INDEX[phase]] += now - self._mark
        self._mark = now

    def end(self, mode: str, batch_size: int) -> None:
        """Add the current step to the totals of ``mode`` (e.g. "decode", "extend"); ``batch_size`` requests."""
        totals = self._totals.get(mode)
        if totals is None:
            totals = self._totals[mode] = _ModeTotals()
        totals.steps += 1
        totals.batch_sum += batch_size
        for i, s in enumerate(self._current):
            totals.seconds[i] += s

    def reset(self) -> None:
        """Forget all totals (the next step starts fresh)."""
        self._totals = {}

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per mode: ``steps``, ``mean_batch_size``, ``ms_per_step`` and ``share`` per phase,
        ``total_ms_per_step`` and ``host_overhead_share`` (the share of step time outside ``forward``)."""
        return {mode: totals.summary() for mode, totals in self._totals.items()}
