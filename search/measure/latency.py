"""Latency measurement of a deployed artifact, and the hardware it was measured on.

The protocol (threads, batch size, warm-up, repeats) is returned with every figure: a
latency without its protocol cannot be compared with another.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.common.file_lock import held
from search.measure.memory import peak_memory

if TYPE_CHECKING:
    from search.measure.artifact import Artifact, Predictor

MIN_WARMUP_RUNS = 20
MIN_WARMUP_S = 0.2
# Warm-up goes on, in windows of WARMUP_WINDOW calls, until a window's median is within
# STABLE_WITHIN of the previous one's (first calls allocate, tune kernels and fill caches),
# or MAX_WARMUP_S has passed; the first call (a compile, for torch-compile) is timed alone.
WARMUP_WINDOW = 10
STABLE_WITHIN = 0.03
MAX_WARMUP_S = 3.0
# Repeats: at least MIN_REPEATS calls and MIN_MEASURE_S seconds, then on until the median's
# 95% confidence interval (from order statistics) is within MEDIAN_PRECISION of it, or
# MAX_REPEATS calls or MAX_MEASURE_S seconds.
MIN_REPEATS = 100
MIN_MEASURE_S = 1.0
MEDIAN_PRECISION = 0.01
MAX_REPEATS = 5000
MAX_MEASURE_S = 5.0
# Latency-first screening: after this many timed calls, a median this far over the budget
# is not noise (repeat runs here differ by under 10%), so the rest of the protocol is spent
# only on candidates that might fit.
SCREEN_REPEATS = 30
SCREEN_MARGIN = 1.25
# Timing several files in turn (``interleaved_times``): each turn is this long, far
# shorter than the machine's phases of seconds, far longer than refilling the caches.
BLOCK_S = 0.02


@dataclass(frozen=True)
class LatencyStats:
    """Per-call wall time of one artifact in milliseconds, with how it was measured.

    ``p50_ci_ms`` is the half-width of the median's 95% confidence interval; ``first_ms``
    the first call alone (loading, allocation, compilation); ``peak_memory_mb`` what
    loading and running the model added at peak (``search.measure.memory``), None if unreadable.
    """

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
    p50_ci_ms: float | None = None
    first_ms: float | None = None
    peak_memory_mb: float | None = None
    # Anchored (``measure_anchored``): the figures above are scaled to the anchor's p50;
    # these are the candidate's own p50 as timed, and the anchor's p50 in the same turns.
    raw_p50_ms: float | None = None
    anchor_now_ms: float | None = None

    def as_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)


def measure_latency(
    artifact: Artifact,
    inputs: np.ndarray,
    *,
    runtime: str = "onnxruntime",
    device: str = "cpu",
    threads: int = 1,
    stop_above_ms: float | None = None,
) -> LatencyStats:
    """Time ``artifact`` in ``runtime`` on ``inputs``: warm up until stable, then repeat.

    See the constants above for when warm-up and measurement end. With ``stop_above_ms``,
    measurement stops after ``SCREEN_REPEATS`` calls whose median is over
    ``SCREEN_MARGIN`` times it: the figure says "too slow", and ``repeats`` says how few
    calls it rests on.
    """
    from search.measure.runtimes import open_predictor

    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    batch = int(inputs.shape[0])
    with (
        peak_memory(device, runtime) as memory,
        open_predictor(
            artifact, runtime=runtime, device=device, threads=threads, batch_size=batch
        ) as predictor,
    ):
        tick = time.perf_counter()
        predictor.run(inputs)
        first_ms = (time.perf_counter() - tick) * 1e3
        warmup_runs = 1 + _warm_up(predictor.run, inputs)
        times_ms = _timed_calls(predictor.run, inputs, stop_above_ms)
    return replace(
        _summary(times_ms),
        warmup_runs=warmup_runs, threads=threads, batch_size=batch, device=device,
        runtime=predictor.label, first_ms=first_ms, peak_memory_mb=memory.mb,
    )  # fmt: skip


def _summary(times_ms: np.ndarray) -> LatencyStats:
    """The statistics of per-call times; the protocol fields are the caller's to fill."""
    return LatencyStats(
        p50_ms=float(np.percentile(times_ms, 50)),
        p95_ms=float(np.percentile(times_ms, 95)),
        p99_ms=float(np.percentile(times_ms, 99)),
        mean_ms=float(times_ms.mean()),
        std_ms=float(times_ms.std()),
        repeats=len(times_ms),
        warmup_runs=0,
        threads=0,
        batch_size=0,
        device="",
        runtime="",
        p50_ci_ms=median_ci_half_width(times_ms),
    )


@dataclass(frozen=True)
class Anchor:
    """The file every candidate of a study is timed in turn with, and its p50 of record.

    The baseline's deployed file; ``p50_ms`` is its p50 as measured once for the study
    (stored with it, so every worker and every resume scales to the same figure).
    """

    artifact: Artifact
    p50_ms: float


def measure_candidate(
    artifact: Artifact,
    inputs: np.ndarray,
    anchor: Anchor | None,
    *,
    runtime: str = "onnxruntime",
    device: str = "cpu",
    threads: int = 1,
    stop_above_ms: float | None = None,
) -> LatencyStats:
    """A candidate's latency as a study takes it: in turn with ``anchor``'s file and scaled
    to its p50 (``measure_anchored``), or alone without one (``--no-latency-anchor``)."""
    if anchor is not None:
        return measure_anchored(
            artifact, inputs, anchor, runtime=runtime, device=device, threads=threads,
            stop_above_ms=stop_above_ms,
        )  # fmt: skip
    return measure_latency(
        artifact, inputs, runtime=runtime, device=device, threads=threads,
        stop_above_ms=stop_above_ms,
    )  # fmt: skip


def measure_anchored(
    artifact: Artifact,
    inputs: np.ndarray,
    anchor: Anchor,
    *,
    runtime: str = "onnxruntime",
    device: str = "cpu",
    threads: int = 1,
    stop_above_ms: float | None = None,
) -> LatencyStats:
    """Time ``artifact`` in turn with ``anchor``'s file; figures scaled to the anchor's p50.

    Why: a shared machine's speed changes in phases of seconds (measured here: the same
    file at 0.64 then 1.0 ms, phases of 1 to 7 s). A candidate timed alone in a slow
    phase reads up to 2x slow, and a search stopped or dropped good candidates for it. In
    turn (``interleaved_times``), candidate and anchor see the same phases, so their
    ratio does not move with them; the candidate's figures are its times times
    ``anchor.p50_ms`` over the anchor's median in these turns. A ratio against the
    baseline, as a relative budget is, is then the measured ratio. The candidate's own
    median (``raw_p50_ms``) and the anchor's (``anchor_now_ms``) are kept beside it.

    Warm-up, repeats, precision and screening (``stop_above_ms``, judged on the scaled
    median after the first turns) follow ``measure_latency``; ``first_ms`` and the peak
    memory are the candidate's own (the anchor is loaded and warm before they are taken).
    """
    from search.measure.runtimes import open_predictor

    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    batch = int(inputs.shape[0])

    def too_slow(times_s: list[np.ndarray]) -> bool:
        assert stop_above_ms is not None
        scale = anchor.p50_ms / (float(np.median(times_s[1])) * 1e3)
        return float(np.median(times_s[0])) * 1e3 * scale > SCREEN_MARGIN * stop_above_ms

    def opened(file: Artifact) -> contextlib.AbstractContextManager[Predictor]:
        return open_predictor(
            file, runtime=runtime, device=device, threads=threads, batch_size=batch
        )

    with opened(anchor.artifact) as anchoring:
        anchor_block, _ = _block_calls(anchoring.run, inputs)
        with (
            peak_memory(device, runtime) as memory,
            opened(artifact) as predictor,
        ):
            tick = time.perf_counter()
            predictor.run(inputs)
            first_ms = (time.perf_counter() - tick) * 1e3
            block, warmup_runs = _block_calls(predictor.run, inputs)
            own_ms, anchor_ms = _in_turn(
                [predictor.run, anchoring.run],
                [block, anchor_block],
                inputs,
                screen=too_slow if stop_above_ms is not None else None,
            )
    anchor_now_ms = float(np.median(anchor_ms))
    return replace(
        _summary(own_ms * (anchor.p50_ms / anchor_now_ms)),
        warmup_runs=1 + warmup_runs, threads=threads, batch_size=batch, device=device,
        runtime=predictor.label, first_ms=first_ms, peak_memory_mb=memory.mb,
        raw_p50_ms=float(np.median(own_ms)), anchor_now_ms=anchor_now_ms,
    )  # fmt: skip


def _warm_up(run: Callable[[np.ndarray], object], inputs: np.ndarray) -> int:
    """Call ``run`` until a window's median settles (see ``STABLE_WITHIN``); the count."""
    runs, started, previous = 0, time.perf_counter(), None
    while True:
        window = []
        for _ in range(WARMUP_WINDOW):
            tick = time.perf_counter()
            run(inputs)
            window.append(time.perf_counter() - tick)
        runs += WARMUP_WINDOW
        median = float(np.median(window))
        elapsed = time.perf_counter() - started
        settled = previous is not None and abs(median - previous) <= STABLE_WITHIN * previous
        if elapsed >= MAX_WARMUP_S or (
            settled and runs >= MIN_WARMUP_RUNS and elapsed >= MIN_WARMUP_S
        ):
            return runs
        previous = median


def _timed_calls(
    run: Callable[[np.ndarray], object], inputs: np.ndarray, stop_above_ms: float | None
) -> np.ndarray:
    """Per-call times in ms, until the median is precise enough (or screened out)."""
    times_s: list[float] = []
    started = time.perf_counter()
    while len(times_s) < MAX_REPEATS:
        tick = time.perf_counter()
        run(inputs)
        times_s.append(time.perf_counter() - tick)
        count, elapsed = len(times_s), time.perf_counter() - started
        if (
            stop_above_ms is not None
            and count == SCREEN_REPEATS
            and np.median(times_s) * 1e3 > SCREEN_MARGIN * stop_above_ms
        ):
            break
        if count < MIN_REPEATS or elapsed < MIN_MEASURE_S:
            continue
        if elapsed >= MAX_MEASURE_S:
            break
        if count % 50 == 0 and _precise(np.asarray(times_s)):
            break
    return np.asarray(times_s) * 1e3


def interleaved_times(
    artifacts: list[Artifact],
    inputs: np.ndarray,
    *,
    runtime: str = "onnxruntime",
    device: str = "cpu",
    threads: int = 1,
) -> list[np.ndarray]:
    """Per-call times in ms of each of ``artifacts``, timed in turn, a short block each.

    Why not one after another: on a shared machine the speed changes in phases of seconds.
    Measured here on 2026-11-25, the same file's half-second medians went 0.63, 1.03, 0.64
    ms, in phases of 1 to 7 s; timed one after another, two files can fall in different
    phases, and their ratio moves by up to that factor (six benchmark rounds gave pruning
    alone 1.34x to 3.24x faster). Timed in turn, every file sees the same phases, so a
    slowdown that scales them all cancels in their ratio.

    Why blocks, not single calls: a file called right after another starts with the other's
    weights in the caches: single-call turns read pruning alone as 1.95x faster where
    back-to-back calls read 2.23x (a quiet run: 2.18x). So each turn is ``BLOCK_S`` of
    back-to-back calls, the first of which, refilling the caches, is not kept: what is
    timed is the search's protocol (``measure_latency``), in slices. Each file is warmed
    up as there; the turns go on until every median is as precise as there, with the time
    limits scaled by the number of files.
    """
    from search.measure.runtimes import open_predictor

    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    with contextlib.ExitStack() as stack:
        runs = [
            stack.enter_context(
                open_predictor(
                    artifact,
                    runtime=runtime,
                    device=device,
                    threads=threads,
                    batch_size=int(inputs.shape[0]),
                )
            ).run
            for artifact in artifacts
        ]
        blocks = [_block_calls(run, inputs)[0] for run in runs]
        return _in_turn(runs, blocks, inputs)


def _in_turn(
    runs: Sequence[Callable[[np.ndarray], object]],
    blocks: Sequence[int],
    inputs: np.ndarray,
    *,
    screen: Callable[[list[np.ndarray]], bool] | None = None,
) -> list[np.ndarray]:
    """Per-call times in ms of each of ``runs``, in turns of ``blocks`` calls each.

    The turns stop as ``interleaved_times`` says; with ``screen``, also once every run has
    ``SCREEN_REPEATS`` calls, if ``screen`` (given the times so far, in seconds) says so;
    the first turns are then at most that long, so a screened figure rests on as few
    calls as ``measure_latency``'s.
    """
    times_s: list[list[float]] = [[] for _ in runs]
    started, screened = time.perf_counter(), screen is None
    while True:
        for run, block, kept in zip(runs, blocks, times_s, strict=True):
            calls = block if screened else max(0, min(block, SCREEN_REPEATS - len(kept)))
            run(inputs)  # refills the caches after the other files' turns
            for _ in range(calls):
                tick = time.perf_counter()
                run(inputs)
                kept.append(time.perf_counter() - tick)
        fewest, elapsed = min(len(kept) for kept in times_s), time.perf_counter() - started
        if not screened and fewest >= SCREEN_REPEATS:
            screened = True
            assert screen is not None
            if screen([np.asarray(kept) for kept in times_s]):
                break
        if elapsed >= MAX_MEASURE_S * len(runs):
            break
        if fewest < MIN_REPEATS or elapsed < MIN_MEASURE_S * len(runs):
            continue
        if fewest >= MAX_REPEATS or all(_precise(np.asarray(kept)) for kept in times_s):
            break
    return [np.asarray(kept) * 1e3 for kept in times_s]


def _block_calls(run: Callable[[np.ndarray], object], inputs: np.ndarray) -> tuple[int, int]:
    """Warm ``run`` up as ``measure_latency`` does: how many calls fill one ``BLOCK_S``,
    and how many warm-up calls it took."""
    run(inputs)
    warmup_runs = _warm_up(run, inputs)
    window = []
    for _ in range(WARMUP_WINDOW):
        tick = time.perf_counter()
        run(inputs)
        window.append(time.perf_counter() - tick)
    calls = min(MAX_REPEATS // 10, max(2, int(BLOCK_S / float(np.median(window)))))
    return calls, 1 + warmup_runs + WARMUP_WINDOW


def _precise(times: np.ndarray) -> bool:
    return median_ci_half_width(times) <= MEDIAN_PRECISION * float(np.median(times))


def median_ci_half_width(times: np.ndarray) -> float:
    """Half the width of the median's distribution-free 95% confidence interval.

    The interval runs between the order statistics n/2 -/+ 0.98 sqrt(n) (binomial normal
    approximation), so it needs no assumption about the shape of the latency distribution.
    """
    ordered = np.sort(times)
    n = len(ordered)
    spread = 0.98 * np.sqrt(n)
    low = ordered[max(0, int(np.floor(n / 2 - spread)))]
    high = ordered[min(n - 1, int(np.ceil(n / 2 + spread)))]
    return float(high - low) / 2


# The fingerprint fields a latency depends on; a study refuses to mix figures across them.
# A hypervisor may call two CPU generations by one name ("AMD EPYC" for Zen 3 and Zen 4), so
# the family/model numbers and the vector extensions the kernels dispatch on count too: on
# the Zen 4 one, with AVX-512 VNNI, ONNX Runtime's int8 product ran at 202 G MAC/s against
# 78-93 G on the Zen 3 one, and int8 alone was 1.33x faster than fp32 instead of 1.08x.
COMPARABLE_FIELDS = (
    "cpu_model", "cpu_id", "cpu_features", "cpu_count", "machine", "onnxruntime", "torch", "gpu",
)  # fmt: skip
# The /proc/cpuinfo flags (x86) or Features (Arm) that select different math kernels.
KERNEL_FEATURES = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2",
)  # fmt: skip


@contextlib.contextmanager
def measurement_lock(folder: Path, device: str) -> Iterator[None]:
    """Hold this machine's lock for ``device`` while timing, across processes.

    Parallel workers on one machine would otherwise time each other's contention: each
    waits for the other's measurement to end (fine-tuning and everything else still run
    side by side). The lock is ``<folder>/latency-<device>.lock`` (``search.common.file_lock``).
    """
    with held(folder / f"latency-{device}.lock"):
        yield


def hardware_fingerprint() -> dict[str, str]:
    """What a latency figure depends on besides the model: CPU, cores, GPU, versions."""
    import onnxruntime
    import torch

    cpuinfo = _cpuinfo()
    return {
        "cpu_model": cpu_model(cpuinfo),
        "cpu_id": cpu_id(cpuinfo),
        "cpu_features": cpu_features(cpuinfo),
        "cpu_count": str(os.cpu_count()),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "gpu_driver": _gpu_driver() if torch.cuda.is_available() else "none",
        "cuda": str(torch.version.cuda or "none"),
    }


def _gpu_driver() -> str:
    """The NVIDIA driver version, from nvidia-smi where it is installed."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return "unknown"
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return found.stdout.strip().splitlines()[0] if found.stdout.strip() else "unknown"


def _cpuinfo() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text() if cpuinfo.exists() else ""


def cpu_features(cpuinfo: str) -> str:
    """The kernel-selecting vector extensions the first CPU lists, space-separated."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present = set(value.split())
            return " ".join(f for f in KERNEL_FEATURES if f in present) or "none"
    return "unknown"


def cpu_id(cpuinfo: str) -> str:
    """The first CPU's family and model numbers (x86) or part number (Arm): its generation."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "cpu family" in fields:
        return f"family {fields['cpu family']} model {fields.get('model', '?')}"
    if "CPU part" in fields:
        return f"implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    return "unknown"


def cpu_model(cpuinfo: str) -> str:
    """The first CPU's marketing name (x86 ``model name``), else what Python reports."""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
