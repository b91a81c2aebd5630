"""The baseline's deployed file on the validation split, example by example: measured once
per study and kept, so that each trial's paired figures against it cost only the trial's
own evaluation.

The record is a small file beside the study storage (``studies/records/<study>/``): which
examples the baseline gets right, bit-packed (50,000 examples are 6 KB), and its metric,
which is also the accuracy floor's base on every later run of the study, so a resumed run
does not evaluate the baseline again. It is keyed by a digest of the baseline's weights
and the runtime and device that ran it: a retrained baseline, or a record copied from
elsewhere, is measured afresh rather than trusted. Workers on other machines keep their
own copy (it is this machine's evaluation, as the latencies are).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from search.track.tracker import experiment_folder

RECORD_NAME = "baseline-val.npz"


@dataclass(frozen=True)
class BaselineRecord:
    """The baseline file's validation metric and, where the metric is top-1 accuracy,
    which examples it gets right (``(N,)`` bool; None for another metric)."""

    metric: float
    correct: np.ndarray | None
    digest: str


def record_path(studies_dir: Path, study_name: str) -> Path:
    """Where the study's record lives; any study name stays under ``studies/records``."""
    return experiment_folder(studies_dir / "records", study_name) / RECORD_NAME


def baseline_digest(model: nn.Module, *, runtime: str, device: str) -> str:
    """A hash of the baseline's weights and of what runs it: what its record depends on."""
    digest = hashlib.sha256(f"{runtime}/{device}".encode())
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            value = value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        digest.update(value if isinstance(value, bytes) else repr(value).encode())
    return digest.hexdigest()[:16]


def load_record(path: Path, digest: str) -> BaselineRecord | None:
    """The record at ``path`` if it was made for this baseline (``digest``), else None."""
    try:
        with np.load(path) as stored:
            if str(stored["digest"]) != digest:
                return None
            count = int(stored["count"])
            correct = np.unpackbits(stored["correct"], count=count).astype(bool) if count else None
            return BaselineRecord(float(stored["metric"]), correct, digest)
    except (OSError, KeyError, ValueError):  # none yet, or unreadable: measure again
        return None


def save_record(path: Path, record: BaselineRecord) -> Path:
    """Write ``record`` to ``path`` in one step (a partial file is renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    correct = record.correct
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npz")
    np.savez(
        partial,
        digest=np.array(record.digest),
        metric=np.array(record.metric),
        count=np.array(0 if correct is None else correct.size),
        correct=np.packbits(np.zeros(0, bool) if correct is None else correct),
    )
    os.replace(partial, path)
    return path


def baseline_on_validation(
    path: Path, digest: str, measure: Callable[[], tuple[float, np.ndarray | None]]
) -> BaselineRecord:
    """The study's record at ``path``; measured by ``measure`` and kept when there is none
    for this baseline yet."""
    record = load_record(path, digest)
    if record is None:
        metric, correct = measure()
        record = BaselineRecord(metric, correct, digest)
        save_record(path, record)
    return record
