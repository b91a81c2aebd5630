"""Ratios against the baseline, measured side by side in one process.

Absolute times on a shared machine drift between runs; ratios measured in the same
process, same runtime and same threads, in interleaved rounds, mostly do not. Each round
times every model once with the search's protocol (in a rotated order), and each model's
ratio is taken within its round; the spread is the smallest and largest over rounds.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Any

from search.latency import measure_latency
from search.profile import Target
from search.runtimes import evaluate
from search.task import Task


@dataclass(frozen=True)
class Compared:
    """One model against the baseline; ``faster`` is (median, min, max) over rounds."""

    name: str
    test_accuracy: float
    accuracy_delta_points: float  # test accuracy minus the baseline's, in points
    p50_ms: float  # median over rounds
    p50_ms_range: tuple[float, float]
    faster: tuple[float, float, float]
    size_bytes: int
    smaller: float
    macs: int | None
    fewer_macs: float | None
    scheme: str

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def compare(
    baseline: Target,
    models: list[Target],
    task: Task,
    *,
    runtime: str,
    device: str,
    threads: int,
    rounds: int,
) -> list[Compared]:
    """The baseline first, then ``models``, each with its ratios against the baseline."""
    everyone = [baseline, *models]
    accuracy = [
        evaluate(
            t.artifact,
            task.data("test"),
            task.metric,
            runtime=runtime,
            device=device,
            threads=os.cpu_count() or 1,
        )
        for t in everyone
    ]
    inputs = task.example_inputs(1).numpy()
    p50: list[list[float]] = [[] for _ in everyone]
    for round_index in range(rounds):
        shift = round_index % len(everyone)
        order = list(range(len(everyone)))[shift:] + list(range(len(everyone)))[:shift]
        for index in order:
            stats = measure_latency(
                everyone[index].artifact, inputs, runtime=runtime, device=device, threads=threads
            )
            p50[index].append(stats.p50_ms)
    rows = []
    for index, target in enumerate(everyone):
        ratios = [b / m for b, m in zip(p50[0], p50[index], strict=True)]
        base_macs = baseline.macs
        rows.append(
            Compared(
                name=target.name,
                test_accuracy=accuracy[index],
                accuracy_delta_points=100 * (accuracy[index] - accuracy[0]),
                p50_ms=statistics.median(p50[index]),
                p50_ms_range=(min(p50[index]), max(p50[index])),
                faster=(statistics.median(ratios), min(ratios), max(ratios)),
                size_bytes=target.artifact.size_bytes,
                smaller=baseline.artifact.size_bytes / target.artifact.size_bytes,
                macs=target.macs,
                fewer_macs=base_macs / target.macs if base_macs and target.macs else None,
                scheme=target.artifact.scheme,
            )
        )
    return rows
