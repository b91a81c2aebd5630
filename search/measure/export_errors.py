"""Why a model cannot be exported, in one line that names the culprit and the fix.

The exporter's own errors are long and name PyTorch's internals: a custom
``torch.autograd.Function`` (model libraries use them for memory-saving activations unless
built "exportable") ends ``torch.onnx.export`` with "Couldn't export Python operator
HardSwishJitAutoFn", after a C++ warning of a dozen lines. Here the failure becomes an
``ExportError`` naming the Function, the modules that call it and what to change.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from search.common.errors import ExportError

_PYTHON_OPERATOR = re.compile(r"Couldn't export Python operator (\w+)")
FIX = (
    "make the model exportable: replace the custom autograd Function by plain torch ops "
    "(or give it a symbolic() method), or build the model with its library's exportable "
    "flag, e.g. timm.create_model(..., exportable=True)"
)


def export_error(model: nn.Module, example_inputs: torch.Tensor, error: Exception) -> ExportError:
    """The one-line error for a failed ONNX export of ``model``."""
    text = str(error)
    match = _PYTHON_OPERATOR.search(text)
    if match is None:
        first = text.splitlines()[0][:300] if text else type(error).__name__
        return ExportError(
            f"cannot export the model to ONNX: {first}; make the model exportable (plain "
            "torch ops the ONNX exporter supports), or measure it in PyTorch with --runtime torch"
        )
    function = match.group(1)
    users = modules_calling(model, example_inputs, function)
    where = ""
    if users:
        more = f" and {len(users) - 1} more" if len(users) > 1 else ""
        where = f" in {users[0]}{more}"
    return ExportError(
        f"cannot export the model to ONNX: it calls the custom autograd Function {function}"
        f"{where}, which the exporter cannot trace; {FIX}"
    )


def modules_calling(model: nn.Module, example_inputs: torch.Tensor, function: str) -> list[str]:
    """The innermost modules whose forward applies the autograd Function named ``function``,
    as ``module 'name' (Class)``, in the order they run.

    Found by structure, not by class: one forward pass with gradients on leaves a
    ``<function>Backward`` node in the autograd graph for every call, and each module's
    own part of that graph lies between its output and its inputs. Hooks fire innermost
    first, so a call is credited to the first module that finishes with it in its part.
    A hint only: should the pass fail, no module is named and the export error stands.
    """
    target = f"{function}Backward"
    names = {module: name for name, module in model.named_modules()}
    entered: dict[nn.Module, list[Any]] = {}
    credited: dict[int, Any] = {}  # Function nodes already credited, by id (kept alive)
    found: list[str] = []

    def before(module: nn.Module, args: tuple[Any, ...]) -> None:
        entered[module] = [t.grad_fn for t in _tensors(args) if t.grad_fn is not None]

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        stops = entered.pop(module, [])
        for node in _own_nodes([t.grad_fn for t in _tensors(output)], stops):
            if node.name() == target and id(node) not in credited:
                credited[id(node)] = node
                label = f"module {names[module]!r} ({type(module).__name__})"
                if names[module] == "":
                    label = f"the model's own forward ({type(module).__name__})"
                if label not in found:
                    found.append(label)

    handles = [
        handle
        for module in names
        for handle in (
            module.register_forward_pre_hook(before),
            module.register_forward_hook(after),
        )
    ]
    try:
        with torch.enable_grad():
            model(example_inputs.detach().clone().requires_grad_(True))
    except Exception:  # the model's own failure; the export error is reported either way
        return found
    finally:
        for handle in handles:
            handle.remove()
    return found


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _own_nodes(starts: list[Any], stops: list[Any]) -> Iterator[Any]:
    """Autograd nodes reachable from ``starts`` without passing through ``stops``.

    Compared by ``id``: the graph, alive while the output is, keeps every node alive.
    """
    seen = {id(node) for node in stops}
    todo = [node for node in starts if node is not None]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        todo.extend(child for child, _ in node.next_functions if child is not None)


@contextmanager
def native_output_held() -> Iterator[None]:
    """Hold what is written to file descriptors 1 and 2 meanwhile, from C++ too: passed on
    when the block succeeds, dropped when it raises.

    Why: on its way to failing, the TorchScript-based ONNX exporter prints past Python's
    ``warnings`` and ``sys.stdout``: "Unable to inline PythonOp ..." from C++ to stderr,
    and the whole graph "at exception" to stdout (its log switch is always on in
    torch 2.13). The command line answers a failure in one line; ``--debug`` still shows
    the exporter's own error.
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    with _held(1), _held(2):
        yield


@contextmanager
def _held(fd: int) -> Iterator[None]:
    """``fd`` pointed at a temporary file for the block; its contents passed on after."""
    try:
        saved = os.dup(fd)
    except OSError:  # no such descriptor (a daemon's): nothing to hold
        yield
        return
    succeeded = False
    with tempfile.TemporaryFile() as file:
        os.dup2(file.fileno(), fd)
        try:
            yield
            succeeded = True
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            file.seek(0)
            said = file.read()
            if said and succeeded:
                with open(fd, "wb", closefd=False) as out:  # writes all, as os.write may not
                    out.write(said)
