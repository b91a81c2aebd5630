"""Where a trial's wall time goes: seconds per named phase, recorded with the trial.

The benchmark's overhead figure (``benchmarks.overhead``) is the share of a trial's wall
time outside the phases that are the work itself: fine-tuning, evaluation and latency
measurement. Everything else (applying the levers, export and conversion, counting MACs,
Optuna and MLflow bookkeeping) is what the tool adds around that work.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from search.common.interrupt import raise_if_interrupted

# The phases that are the measured work; the rest of a trial is overhead.
WORK_PHASES = ("fine_tune", "evaluate", "latency")


class PhaseClock:
    """Accumulates ``perf_counter`` seconds per phase name; a phase may run several times."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        raise_if_interrupted()  # a phase boundary is where a swallowed Ctrl-C resurfaces
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
