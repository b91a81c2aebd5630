"""The hypervolume of a study's feasible front, normalised, and how it grows over time.

Each feasible trial is a point (accuracy, p50 latency, size). Mapped to losses on a unit
box, each axis from the ideal (0) to the reference point (1):

    accuracy: (1 - accuracy) / (1 - floor)      floor = baseline accuracy - max drop
    latency:  p50 / budget
    size:     size / baseline size

so the reference point is (accuracy floor, latency budget, baseline size) and a point
that met all three with a perfect, instant, empty model would dominate the whole box
(hypervolume 1). The volume itself is Optuna's (``optuna._hypervolume``, the code behind
its own hypervolume plots): exact in three dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume

from search.track.trials import is_feasible


@dataclass(frozen=True)
class Box:
    """The reference point; the ideal is (accuracy 1, 0 ms, 0 bytes)."""

    accuracy_floor: float
    budget_ms: float
    baseline_size_mb: float

    def losses(self, accuracy: float, p50_ms: float, size_mb: float) -> np.ndarray:
        return np.array(
            [
                (1.0 - accuracy) / (1.0 - self.accuracy_floor),
                p50_ms / self.budget_ms,
                size_mb / self.baseline_size_mb,
            ]
        )


def box_of(study: optuna.Study) -> Box:
    """The reference point a study was judged by: its floor, budget and baseline size."""
    from search.track.trials import baseline_trial

    base = baseline_trial(study)
    if base is None or base.values is None:
        raise ValueError(f"study {study.study_name!r} has no completed baseline trial")
    floor = base.values[0] - float(study.user_attrs.get("max_accuracy_drop", 0.01))
    return Box(floor, float(study.user_attrs["latency_budget_ms"]), base.values[2])


def hypervolume(points: Sequence[tuple[float, float, float]], box: Box) -> float:
    """Share of the unit box dominated by ``points`` (accuracy, p50 ms, size MB)."""
    losses = [box.losses(*p) for p in points]
    inside = [loss for loss in losses if np.all(loss < 1.0)]
    if not inside:
        return 0.0
    return float(compute_hypervolume(np.array(inside), np.ones(3)))


def feasible_points(
    trials: Sequence[optuna.trial.FrozenTrial],
) -> list[tuple[float, tuple[float, float, float]]]:
    """(completion time in s from the first trial's start, values) of feasible trials."""
    started = [t.datetime_start for t in trials if t.datetime_start is not None]
    if not started:
        return []
    origin = min(started)
    points = []
    for trial in trials:
        if not is_feasible(trial) or trial.datetime_complete is None:
            continue
        seconds = (trial.datetime_complete - origin).total_seconds()
        accuracy, p50_ms, size_mb = trial.values
        points.append((seconds, (accuracy, p50_ms, size_mb)))
    return sorted(points)


def curve(
    points: Sequence[tuple[float, tuple[float, float, float]]], box: Box, times: Sequence[float]
) -> list[float]:
    """The hypervolume reached by each of ``times`` (seconds since the first trial)."""
    return [hypervolume([p for t, p in points if t <= limit], box) for limit in times]


def share_to_reach(
    ours: Sequence[Sequence[float]],
    other: Sequence[Sequence[float]],
    times: Sequence[float],
) -> tuple[float | None, list[float | None]]:
    """How soon ``ours`` reaches where ``other`` ended, as a share of the wall time.

    The second half of a speed claim (the same front in less time): the first time the
    median of ``ours``'s curves reaches the median of ``other``'s final hypervolumes, and
    per seed, the first time our run reaches the same seed's run of ``other`` at its end.
    None: never within the time. Curves are hypervolumes at ``times`` (``curve``), one
    per seed, in the same seed order for both arms.
    """
    end = float(times[-1])

    def first(values: Sequence[float], target: float) -> float | None:
        for time, value in zip(times, values, strict=True):
            if value >= target:
                return float(time) / end
        return None

    median = np.median(np.asarray(ours, dtype=float), axis=0)
    target = float(np.median([run[-1] for run in other]))
    per_seed = [first(mine, theirs[-1]) for mine, theirs in zip(ours, other, strict=True)]
    return first(list(median), target), per_seed
