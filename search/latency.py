"""Latency measurement of a deployed artifact, and the hardware it was measured on.

The protocol (threads, batch size, warm-up, repeats) is returned with every figure: a
latency without its protocol cannot be compared with another.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from search.runtime import INPUT_NAME, Artifact, open_session

MIN_WARMUP_RUNS = 20
MIN_WARMUP_S = 0.2
MIN_REPEATS = 100
MIN_MEASURE_S = 1.0
MAX_REPEATS = 5000
# Latency-first screening: after this many timed calls, a median this far over the budget
# is not noise (repeat runs here differ by under 10%), so the rest of the protocol is spent
# only on candidates that might fit.
SCREEN_REPEATS = 30
SCREEN_MARGIN = 1.25


@dataclass(frozen=True)
class LatencyStats:
    """Per-call wall time of one artifact in milliseconds, with how it was measured."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    repeats: int
    warmup_runs: int
    threads: int
    batch_size: int
    device: str
    runtime: str

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def measure_latency(
    artifact: Artifact,
    inputs: np.ndarray,
    *,
    device: str = "cpu",
    threads: int = 1,
    stop_above_ms: float | None = None,
) -> LatencyStats:
    """Time ``artifact`` on ``inputs`` after a warm-up, for enough repeats to trust a median.

    Warm-up runs until both ``MIN_WARMUP_RUNS`` calls and ``MIN_WARMUP_S`` seconds have
    passed (first calls allocate and tune kernels); measurement until both ``MIN_REPEATS``
    calls and ``MIN_MEASURE_S`` seconds, capped at ``MAX_REPEATS``. With ``stop_above_ms``,
    measurement stops after ``SCREEN_REPEATS`` calls whose median is over
    ``SCREEN_MARGIN`` times it: the figure says "too slow", and ``repeats`` says how few
    calls it rests on.
    """
    import onnxruntime

    session = open_session(artifact.path, device=device, threads=threads)
    feed = {INPUT_NAME: inputs}
    warmup_runs = _run_until(session, feed, MIN_WARMUP_RUNS, MIN_WARMUP_S, MAX_REPEATS)
    times_s: list[float] = []
    started = time.perf_counter()
    while len(times_s) < MAX_REPEATS and (
        len(times_s) < MIN_REPEATS or time.perf_counter() - started < MIN_MEASURE_S
    ):
        tick = time.perf_counter()
        session.run(None, feed)
        times_s.append(time.perf_counter() - tick)
        if (
            stop_above_ms is not None
            and len(times_s) == SCREEN_REPEATS
            and np.median(times_s) * 1e3 > SCREEN_MARGIN * stop_above_ms
        ):
            break
    times_ms = np.asarray(times_s) * 1e3
    return LatencyStats(
        p50_ms=float(np.percentile(times_ms, 50)),
        p95_ms=float(np.percentile(times_ms, 95)),
        p99_ms=float(np.percentile(times_ms, 99)),
        mean_ms=float(times_ms.mean()),
        std_ms=float(times_ms.std()),
        repeats=len(times_ms),
        warmup_runs=warmup_runs,
        threads=threads,
        batch_size=int(inputs.shape[0]),
        device=device,
        runtime=f"onnxruntime-{onnxruntime.__version__}",
    )


def _run_until(session: object, feed: dict, min_runs: int, min_s: float, max_runs: int) -> int:
    runs, started = 0, time.perf_counter()
    while runs < max_runs and (runs < min_runs or time.perf_counter() - started < min_s):
        session.run(None, feed)  # type: ignore[attr-defined]
        runs += 1
    return runs


# The fingerprint fields a latency depends on; a study refuses to mix figures across them.
COMPARABLE_FIELDS = ("cpu_model", "cpu_count", "machine", "onnxruntime", "gpu")


@contextlib.contextmanager
def measurement_lock(folder: Path, device: str) -> Iterator[None]:
    """Hold this machine's lock for ``device`` while timing, across processes.

    Parallel workers on one machine would otherwise time each other's contention: each
    waits for the other's measurement to end (fine-tuning and everything else still run
    side by side). An advisory ``flock`` on ``<folder>/latency-<device>.lock``; the kernel
    releases it if the holder dies.
    """
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"latency-{device}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def hardware_fingerprint() -> dict[str, str]:
    """What a latency figure depends on besides the model: CPU, cores, library versions."""
    import onnxruntime
    import torch

    return {
        "cpu_model": _cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
