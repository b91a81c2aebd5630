"""Peak memory of loading and running one model, on the CPU or the GPU.

CPU: the growth of this process's peak resident set (``VmHWM``) from just before the model
is loaded; Linux lets a process reset that peak (``/proc/self/clear_refs``, value 5), so
one process can measure several models in turn. CUDA: PyTorch's peak allocated memory for
the PyTorch runtimes; ONNX Runtime allocates outside PyTorch, so for it the drop in the
device's free memory is taken instead. Where neither can be read, the figure is None,
never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class PeakMemory:
    """Filled in when the ``peak_memory`` block ends: bytes, or None if unreadable."""

    bytes: int | None = None

    @property
    def mb(self) -> float | None:
        return None if self.bytes is None else self.bytes / 1e6


@contextmanager
def peak_memory(device: str, runtime: str) -> Iterator[PeakMemory]:
    """Measure the peak memory the block adds on ``device`` (see the module docstring)."""
    result = PeakMemory()
    if device == "cuda":
        with _cuda_peak(runtime, result):
            yield result
        return
    before = _cpu_reset_peak()
    try:
        yield result
    finally:
        peak = _status_kib("VmHWM")
        if before is not None and peak is not None:
            result.bytes = max(0, peak - before) * 1024


def _cpu_reset_peak() -> int | None:
    """Reset the peak resident set to the current one; the current one in KiB, or None."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return None
    return _status_kib("VmRSS")


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


@contextmanager
def _cuda_peak(runtime: str, result: PeakMemory) -> Iterator[None]:
    import gc

    import torch

    # Models measured before this one sit in reference cycles (fx graph modules) until the
    # collector runs; were it to run inside the block, their freed memory would hide this
    # model's and the peak would read 0 (seen on an H200, 2026-12-04).
    gc.collect()
    torch.cuda.synchronize()
    if runtime.startswith("torch"):
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        try:
            yield
        finally:
            torch.cuda.synchronize()
            result.bytes = max(0, torch.cuda.max_memory_allocated() - start)
        return
    free_before, _ = torch.cuda.mem_get_info()
    try:
        yield
    finally:
        torch.cuda.synchronize()
        free_after, _ = torch.cuda.mem_get_info()
        result.bytes = max(0, free_before - free_after)
