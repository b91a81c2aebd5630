"""What the search compresses: the Task protocol and how a task is loaded from a spec.

A task is the user's trained model plus the data to fine-tune, validate and test it. The
search never looks inside the model beyond what the techniques need, so any ``nn.Module``
classifier that exports to ONNX works.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, cast, runtime_checkable

from search.errors import TaskError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

Split = Literal["train", "val", "test"]
BUILTIN_TASKS = ("digits", "digits-vit")
_REQUIRED = ("name", "build_model", "example_inputs", "data", "metric", "loss")


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


def load_task(spec: str, *, cache_dir: Path) -> Task:
    """Load a task from ``digits``, ``pkg.module:factory`` or ``path/to/file.py:factory``.

    Raises:
        TaskError: with one line naming what failed (bad spec, import error, missing
            factory, factory error, or a result that is not a Task).
    """
    if spec in BUILTIN_TASKS:
        from search.tasks.digits import VIT_CONFIG, DigitsTask

        return DigitsTask(VIT_CONFIG if spec == "digits-vit" else None, cache_dir=cache_dir)
    factory = _resolve_factory(spec)
    try:
        task = factory()
    except Exception as error:  # the user's code: any failure is reported, not raised on
        raise TaskError(
            f"--task {spec}: the factory raised {type(error).__name__}: {error}"
        ) from error
    missing = [attr for attr in _REQUIRED if not hasattr(task, attr)]
    if missing:
        raise TaskError(
            f"--task {spec}: the factory returned {type(task).__name__}, which lacks "
            f"{', '.join(missing)}; see search.task.Task for what a task provides"
        )
    return cast(Task, task)


def _resolve_factory(spec: str) -> Callable[[], object]:
    location, sep, attribute = spec.rpartition(":")
    if not sep or not location or not attribute:
        raise TaskError(
            f"--task {spec!r} is not a task: use one of {', '.join(BUILTIN_TASKS)}, "
            "pkg.module:factory or path/to/file.py:factory"
        )
    module = (
        _import_file(location, spec)
        if location.endswith(".py")
        else _import_module(location, spec)
    )
    factory = getattr(module, attribute, None)
    if factory is None or not callable(factory):
        raise TaskError(f"--task {spec}: {location} has no callable named {attribute!r}")
    return cast(Callable[[], object], factory)


def _import_module(name: str, spec: str) -> object:
    try:
        return importlib.import_module(name)
    except Exception as error:
        raise TaskError(
            f"--task {spec}: cannot import {name}: {type(error).__name__}: {error}"
        ) from error


def _import_file(path_text: str, spec: str) -> object:
    path = Path(path_text)
    if not path.is_file():
        raise TaskError(f"--task {spec}: no such file {path_text}")
    module_name = f"_search_task_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise TaskError(f"--task {spec}: {path_text} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise TaskError(
            f"--task {spec}: {path_text} failed to import: {type(error).__name__}: {error}"
        ) from error
    return module
