"""ThreadGovernor: intra-op threads follow the cores other processes leave free (scripted load samples)."""

from __future__ import annotations

import torch

from radixgen.runtime.cpu_threads import ThreadGovernor, available_cores


class ScriptedGovernor(ThreadGovernor):
    """Samples come from a script of (outside cores busy, own cores busy) per 1-second interval."""

    def __init__(self, max_threads: int, script: list[tuple[float, float]]) -> None:
        self.script = script
        self.clock = [0.0, 0.0, 0.0]
        self.step = -1
        super().__init__(max_threads, interval_s=1e-9)

    def _sample(self) -> tuple[float, float, float]:
        if self.step >= 0:
            outside, own = self.script[self.step]
            self.clock = [self.clock[0] + 1.0, self.clock[1] + outside + own, self.clock[2] + own]
        self.step += 1
        return (self.clock[0], self.clock[1], self.clock[2])


def test_threads_drop_under_outside_load_and_come_back() -> None:
    before = torch.get_num_threads()
    try:
        script = [(0.0, 2.0), (1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (0.1, 2.0), (0.05, 2.0), (1.0, 1.0), (0.0, 2.0)]
        gov = ScriptedGovernor(2, script)
        seen = [gov.maybe_adjust() for _ in script]
        # one loaded sample is not enough; the second confirms; one quiet sample does not restore; two do;
        # a single loaded sample between quiet ones changes nothing
        assert seen == [2, 2, 1, 1, 1, 2, 2, 2]
        assert gov.changes == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_target_threads_bounds() -> None:
    before = torch.get_num_threads()
    try:
        gov = ThreadGovernor(4)
        assert gov.target_threads(0.0) == 4
        assert gov.target_threads(0.25) == 4  # daemons' noise stays under the margin
        assert gov.target_threads(1.0) == 3
        assert gov.target_threads(2.6) == 1
        assert gov.target_threads(9.0) == 1  # never below one thread
        assert available_cores() >= 1
    finally:
        torch.set_num_threads(before)
