"""Loading a task from its spec, and checking the model it builds against its data.

    digits | digits-vit            a built-in task (this folder)
    pkg.module:factory             a factory importable from the Python path
    path/to/file.py:factory        a factory in a file

Every failure of the user's code is one ``TaskError`` line naming what failed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from search.common.errors import TaskError
from search.train.task import Task

if TYPE_CHECKING:
    from torch import nn

BUILTIN_TASKS = ("digits", "digits-vit")
_REQUIRED = ("name", "build_model", "example_inputs", "data", "metric", "loss")


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
            f"{', '.join(missing)}; see search.train.task.Task for what a task provides"
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


def build_model(task: Task, spec: str) -> nn.Module:
    """The task's trained model, checked against its data; the user's errors in one line."""
    try:
        model = task.build_model().eval()
    except Exception as error:
        raise TaskError(
            f"--task {spec}: build_model() raised {type(error).__name__}: {error}"
        ) from error
    check_model_fits_task(model, task, spec)
    return model


def check_model_fits_task(model: nn.Module, task: Task, spec: str) -> None:
    """One validation batch through the model, its loss and its metric, before any search.

    A model whose output does not match the labels (ten classes against seven logits)
    would otherwise fail every trial, or worse, score nonsense.
    """
    import torch

    inputs, targets = next(iter(task.data("val")))
    inputs, targets = inputs[:8], targets[:8]
    try:
        with torch.no_grad():
            outputs = model(inputs)
    except Exception as error:
        raise TaskError(
            f"--task {spec}: the model fails on a validation batch of shape "
            f"{tuple(inputs.shape)}: {type(error).__name__}: {_first_line(error)}"
        ) from error
    try:
        task.loss(outputs, targets)
        task.metric(outputs.numpy(), targets.numpy())
    except Exception as error:
        raise TaskError(
            f"--task {spec}: the model's output (shape {tuple(outputs.shape)}) does not fit "
            f"the task's labels (shape {tuple(targets.shape)}): {type(error).__name__}: "
            f"{_first_line(error)}"
        ) from error


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else ""
