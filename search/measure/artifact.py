"""What every runtime deploys and runs: the model file and the loaded predictor.

Kept apart from the runtimes themselves so the ONNX Runtime and PyTorch back ends, the
measurement code and the techniques share these types without importing one another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INPUT_NAME = "input"
OUTPUT_NAME = "output"


@dataclass(frozen=True)
class Artifact:
    """An exported model file and the number format it was written in."""

    path: Path
    scheme: str

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    @property
    def format(self) -> str:
        """``onnx`` for an ONNX file, ``torch`` for a ``torch.export`` program (``.pt2``)."""
        return "torch" if self.path.suffix == ".pt2" else "onnx"


@dataclass(frozen=True)
class Predictor:
    """A loaded model: ``run`` maps an input batch to outputs, both numpy on the host.

    ``fixed_batch`` is set when the runtime specialises on the input shape (a compiled
    graph recompiles, tens of seconds here, for every new batch size): evaluation then
    feeds it batches of exactly that size. ``label`` names runtime, version and mode.
    """

    run: Callable[[np.ndarray], np.ndarray]
    label: str
    fixed_batch: int | None = None
