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
    """Accumulates ``perf_counter`` seconds per phase name; a phase may run several times.

    Phases nest, and each second is counted once, in the innermost phase open: the
    bookkeeping a trial does between fine-tuning epochs (``tracking`` inside
    ``fine_tune``) is overhead, not the work around it, and the phases still sum to at
    most the trial's wall time.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []  # per open phase: seconds its nested phases took

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        raise_if_interrupted()  # a phase boundary is where a swallowed Ctrl-C resurfaces
        started = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            nested = self._inner.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - nested
            if self._inner:
                self._inner[-1] += elapsed
