"""A per-epoch curve sent to MLflow in batches, not one request per point.

A request costs about 7-10 ms against MLflow's SQLite store. A cheap epoch (digits: about
2 s) would pay that every epoch, which is bookkeeping, not work. An expensive one (an hour)
would not notice it, and its owner wants each point in the UI as soon as it exists. So
points are held until ``every_s`` seconds have passed since the last request. An hour-long
epoch is then sent at once, and ten 2-second epochs go in two requests. Each point keeps
its own step and timestamp.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from mlflow.entities import Metric

from search.track.tracker import Tracker

FLUSH_EVERY_S = 10.0


class BufferedCurve:
    """Collects ``add``-ed points for one run. Call ``flush`` when the curve ends, and also
    when it ends in an error: what is held is not yet written."""

    def __init__(self, tracker: Tracker, run_id: str, every_s: float = FLUSH_EVERY_S) -> None:
        self._tracker = tracker
        self._run_id = run_id
        self._every_s = every_s
        self._held: list[Metric] = []
        self._sent_at = time.monotonic()

    def add(self, metrics: Mapping[str, float], step: int) -> None:
        now_ms = int(time.time() * 1000)
        self._held += [Metric(k, float(v), now_ms, step) for k, v in metrics.items()]
        if time.monotonic() - self._sent_at >= self._every_s:
            self.flush()

    def flush(self) -> None:
        if self._held:
            self._tracker.log_points(self._run_id, self._held)
            self._held = []
        self._sent_at = time.monotonic()
