"""Ratios against the baseline, measured side by side, in rounds spread over the run.

Absolute times on a shared machine drift between runs; ratios of files timed together
mostly do not, but not entirely. Two runs of the benchmark (2026-11-24) measured the same
files' ×faster 2.8% apart while five back-to-back rounds in one process spread by only 1%:
what varies is the process (allocator state, thread placement) and the machine's state
over tens of minutes, neither of which back-to-back rounds see. So each round here runs in
a fresh process and takes each model's ratio within the round; the suite runs half the
rounds before its long search-efficiency part and half after, so the reported spread
(min-max over rounds) covers both kinds of variation. Within a round the models are timed
in turn, 20 ms of back-to-back calls each (``search.measure.latency.interleaved_times``): on a
machine whose speed changed in phases of seconds (2026-11-25), six rounds timing each
model once, one after another, gave pruning alone 1.98x to 3.47x faster; timed in turn,
2.02x to 2.23x, every model seeing the same phases.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from search.core.profile import Target
from search.measure.artifact import Artifact
from search.measure.intervals import paired_delta, per_example_correct
from search.measure.latency import interleaved_times, measure_latency
from search.measure.runtimes import predict
from search.train.task import Task


@dataclass(frozen=True)
class Round:
    """One round: every model's p50 (in the models' order), taken ``at_s`` into the run."""

    at_s: float
    p50_ms: list[float]


@dataclass(frozen=True)
class Compared:
    """One model against the baseline; ``faster`` is (median, min, max) over rounds."""

    name: str
    test_accuracy: float
    accuracy_delta_points: float  # test accuracy minus the baseline's, in points
    # examples lost and gained against the baseline, and the delta's 95% interval in points
    # (paired bootstrap, search.measure.intervals); None where right/wrong is not defined
    test_lost: int | None
    test_gained: int | None
    delta_interval_points: tuple[float, float] | None
    p50_ms: float  # median over rounds
    p50_ms_range: tuple[float, float]
    faster: tuple[float, float, float]
    size_bytes: int
    smaller: float
    macs: int | None
    fewer_macs: float | None
    scheme: str
    path: str  # the model file, in the run's work folder

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass(frozen=True)
class ScoreOnTest:
    """A deployed file on the test split: its metric, and which examples it got right
    (None where the task's metric is not accuracy, so right/wrong is not defined)."""

    metric: float
    correct: np.ndarray | None


def test_scores(
    models: list[Target], task: Task, *, runtime: str, device: str
) -> list[ScoreOnTest]:
    """Each deployed file's metric on the test split, in its runtime."""
    scores = []
    for target in models:
        outputs, targets = predict(
            target.artifact,
            task.data("test"),
            runtime=runtime,
            device=device,
            threads=os.cpu_count() or 1,
        )
        metric = task.metric(outputs, targets)
        scores.append(ScoreOnTest(metric, per_example_correct(outputs, targets, metric)))
    return scores


def time_rounds(
    models: list[Target],
    inputs: np.ndarray,
    *,
    count: int,
    first: int,
    started: float,
    runtime: str,
    device: str,
    threads: int,
    interleaved: bool = True,
) -> list[Round]:
    """``count`` rounds, each in a fresh process; round ``first + i`` starts the rotation
    at model ``(first + i) % len(models)`` so no model is always timed first or last.
    ``interleaved=False`` is the protocol of results files from before 2026-11-25: each
    model timed once, one after another, with ``measure_latency``."""
    artifacts = [m.artifact for m in models]
    rounds = []
    for index in range(first, first + count):
        shift = index % len(models)
        order = list(range(len(models)))[shift:] + list(range(len(models)))[:shift]
        at_s = time.perf_counter() - started
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            p50 = child.submit(
                _timed_round, artifacts, order, inputs, runtime, device, threads, interleaved
            ).result()
        rounds.append(Round(at_s=at_s, p50_ms=p50))
    return rounds


def _timed_round(
    artifacts: list[Artifact],
    order: list[int],
    inputs: np.ndarray,
    runtime: str,
    device: str,
    threads: int,
    interleaved: bool,
) -> list[float]:
    """In the child process: each artifact's p50 in ``order``, listed in place."""
    ordered = [artifacts[i] for i in order]
    if interleaved:
        times = interleaved_times(ordered, inputs, runtime=runtime, device=device, threads=threads)
        medians = [float(np.median(t)) for t in times]
    else:
        medians = [
            measure_latency(a, inputs, runtime=runtime, device=device, threads=threads).p50_ms
            for a in ordered
        ]
    p50 = [0.0] * len(artifacts)
    for index, median in zip(order, medians, strict=True):
        p50[index] = median
    return p50


def compare(
    models: list[Target], scores: list[ScoreOnTest], rounds: list[Round]
) -> list[Compared]:
    """Every model (the baseline first) with its ratios against the baseline."""
    baseline = models[0]
    rows = []
    for index, target in enumerate(models):
        p50 = [r.p50_ms[index] for r in rounds]
        ratios = [r.p50_ms[0] / r.p50_ms[index] for r in rounds]
        base_macs = baseline.macs
        base_correct, correct = scores[0].correct, scores[index].correct
        paired = (
            paired_delta(base_correct, correct)
            if base_correct is not None and correct is not None
            else None
        )
        rows.append(
            Compared(
                name=target.name,
                test_accuracy=scores[index].metric,
                accuracy_delta_points=100 * (scores[index].metric - scores[0].metric),
                test_lost=paired.lost if paired else None,
                test_gained=paired.gained if paired else None,
                delta_interval_points=(paired.low_points, paired.high_points) if paired else None,
                p50_ms=statistics.median(p50),
                p50_ms_range=(min(p50), max(p50)),
                faster=(statistics.median(ratios), min(ratios), max(ratios)),
                size_bytes=target.artifact.size_bytes,
                smaller=baseline.artifact.size_bytes / target.artifact.size_bytes,
                macs=target.macs,
                fewer_macs=base_macs / target.macs if base_macs and target.macs else None,
                scheme=target.artifact.scheme,
                path=str(target.artifact.path),
            )
        )
    return rows
