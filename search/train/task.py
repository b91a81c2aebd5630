"""What the search compresses: the Task protocol.

A task is the user's trained model plus the data to fine-tune, validate and test it. The
search never looks inside the model beyond what the techniques need, so any ``nn.Module``
classifier that exports to ONNX works. Loading one from a spec is ``search.tasks.loader``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

Split = Literal["train", "val", "test"]


@runtime_checkable
class Task(Protocol):
    """A trained model and its data.

    ``val`` is used during the search, ``test`` only when a model is promoted, ``train`` for
    fine-tuning and quantization calibration. ``metric`` is higher-is-better. An optional
    ``optimizer`` attribute (``sgd``, the default, or ``adamw``) says how the model trains,
    and so how recovery fine-tuning runs (transformers: AdamW).
    """

    name: str

    def build_model(self) -> nn.Module:
        """The trained model to compress, in eval mode (a fresh copy on every call)."""
        ...

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        """A representative input batch; its shape fixes the exported model's input."""
        ...

    def data(self, split: Split) -> DataLoader:
        """Batches of ``(inputs, targets)`` for one split."""
        ...

    def metric(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        """Score model outputs against targets; higher is better (e.g. accuracy in [0, 1])."""
        ...

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss used for recovery fine-tuning."""
        ...


def accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy of logits ``(N, C)`` against integer labels ``(N,)``."""
    return float((outputs.argmax(axis=1) == targets).mean())
