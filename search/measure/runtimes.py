"""The runtimes a candidate can be deployed to, and what each can run.

A runtime is a named choice (``--runtime``), recorded with every latency: the same model
runs 5-30x apart in PyTorch eager and ONNX Runtime at batch 1 on a CPU, so a figure means
nothing without it. Each runtime writes its own artifact (``.onnx`` for ONNX Runtime, a
``torch.export`` program ``.pt2`` for PyTorch) and offers only the number formats it has
kernels for on the device: int8 goes through ONNX Runtime's quantizer, half precision is
offered to PyTorch only on CUDA (on this CPU fp16 and bf16 convolutions ran 4-5x slower
than fp32, emulated rather than native).

Every predictor takes a float32 numpy batch and returns numpy: host in, host out, as a
served request sees it. On CUDA that includes the copies, and the copy back is the device
synchronisation that makes the wall time honest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from search.common.errors import ConfigError
from search.measure.artifact import Artifact, Predictor
from search.measure.onnx_runtime import export_onnx, onnx_graph_signature, onnxruntime_predictor

ONNXRUNTIME = "onnxruntime"
TORCH = "torch"
TORCH_COMPILE = "torch-compile"
RUNTIMES = (ONNXRUNTIME, TORCH, TORCH_COMPILE)


def formats(runtime: str, device: str) -> tuple[str, ...]:
    """The number formats ``runtime`` can run on ``device`` (``quant.scheme`` values)."""
    if runtime == ONNXRUNTIME:
        if device == "cuda":  # no CUDA kernel for int8-dynamic's ConvInteger
            return ("fp32", "fp16", "fp16-weights", "int8-static", "int8-qat")
        return ("fp32", "fp16", "fp16-weights", "int8-dynamic", "int8-static", "int8-qat")
    return ("fp32", "fp16", "bf16") if device == "cuda" else ("fp32",)


def check_target(runtime: str, device: str) -> None:
    """Refuse a runtime or device this machine cannot measure on, with the fix."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime!r} is unknown: use one of {', '.join(RUNTIMES)}")
    if device == "cpu":
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: no CUDA GPU is visible to PyTorch on this machine; use --device cpu"
        )
    if runtime == ONNXRUNTIME:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                "--device cuda --runtime onnxruntime: this ONNX Runtime has no "
                "CUDAExecutionProvider; install onnxruntime-gpu in place of onnxruntime, "
                "or use --runtime torch"
            )


def export(runtime: str, model: nn.Module, example_inputs: torch.Tensor, path: Path) -> Artifact:
    """``model`` written as ``runtime`` loads it: ``<path>.onnx`` or ``<path>.pt2``."""
    if runtime == ONNXRUNTIME:
        return export_onnx(model, example_inputs, path.with_suffix(".onnx"))
    from search.measure.torch_runtime import export_program

    return export_program(model, example_inputs, path.with_suffix(".pt2"))


@contextmanager
def open_predictor(
    artifact: Artifact,
    *,
    runtime: str = ONNXRUNTIME,
    device: str = "cpu",
    threads: int = 1,
    batch_size: int = 1,
) -> Iterator[Predictor]:
    """Load ``artifact`` into ``runtime`` on ``device`` with ``threads`` intra-op threads.

    ``batch_size`` is the shape a shape-specialising runtime (torch-compile) is compiled
    for. The predictor is released on exit (PyTorch's thread count restored, compiled
    graphs dropped).
    """
    if artifact.format == "onnx":
        if runtime != ONNXRUNTIME:
            raise ConfigError(f"{artifact.path.name}: an ONNX file runs in --runtime onnxruntime")
        yield onnxruntime_predictor(artifact.path, device=device, threads=threads)
        return
    if runtime == ONNXRUNTIME:
        raise ConfigError(f"{artifact.path.name}: a PyTorch program runs in --runtime torch")
    from search.measure.torch_runtime import torch_predictor

    with torch_predictor(
        artifact.path,
        device=device,
        threads=threads,
        compiled=runtime == TORCH_COMPILE,
        batch_size=batch_size,
    ) as predictor:
        yield predictor


def evaluate(
    artifact: Artifact,
    loader: DataLoader,
    metric: Callable[[np.ndarray, np.ndarray], float],
    *,
    runtime: str = ONNXRUNTIME,
    device: str = "cpu",
    threads: int = 1,
    batch_size: int = 1,
) -> float:
    """The task metric of the deployed file, run in its runtime, over one data split."""
    outputs, targets = predict(
        artifact, loader, runtime=runtime, device=device, threads=threads, batch_size=batch_size
    )
    return metric(outputs, targets)


def predict(
    artifact: Artifact,
    loader: DataLoader,
    *,
    runtime: str = ONNXRUNTIME,
    device: str = "cpu",
    threads: int = 1,
    batch_size: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The deployed file's outputs over one data split, beside the split's targets."""
    with open_predictor(
        artifact, runtime=runtime, device=device, threads=threads, batch_size=batch_size
    ) as predictor:
        outputs, targets = [], []
        for inputs, batch_targets in loader:
            outputs.append(_predict_in_batches(predictor, inputs.numpy()))
            targets.append(batch_targets.numpy())
    return np.concatenate(outputs), np.concatenate(targets)


def _predict_in_batches(predictor: Predictor, inputs: np.ndarray) -> np.ndarray:
    """``inputs`` through ``predictor``, in its fixed batch size if it has one (last padded)."""
    size = predictor.fixed_batch
    if size is None:
        return predictor.run(np.ascontiguousarray(inputs, dtype=np.float32))
    outputs = []
    for start in range(0, len(inputs), size):
        chunk = inputs[start : start + size]
        padding = size - len(chunk)
        if padding:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], padding, axis=0)])
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        outputs.append(predictor.run(chunk)[: size - padding])
    return np.concatenate(outputs)


def graph_signature(artifact: Artifact) -> str:
    """A hash of what the latency depends on: the graph, shapes and number formats.

    Weight values are left out, so a candidate's draft (before fine-tuning) and its final
    file share a signature, and two trials that reach one architecture and scheme share
    one latency measurement. Names are left in: ``compact_names`` made them canonical.
    """
    if artifact.format == "torch":
        from search.measure.torch_runtime import program_signature

        return program_signature(artifact.path)
    return onnx_graph_signature(artifact.path)
