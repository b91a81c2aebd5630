"""PyTorch as the runtime: a ``torch.export`` program (``.pt2``), run eager or compiled.

``torch.export`` is PyTorch 2's deployment format: the graph and weights in one file that
loads without the model's source code, so what is measured is what ships, as with ONNX.
Export takes about 1.5 s here (against 0.2 s for the ONNX exporter); ``torch.compile``
takes 10-25 s on this 2-core CPU per model and input shape, which is why a compiled
predictor is built for one batch size and evaluation feeds it that size.

Half precision (fp16, bf16) is written as a program whose weights and arithmetic are in
that type while its input and output stay float32, like ONNX Runtime's ``keep_io_types``:
callers feed and compare the same tensors whatever the format.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from search.measure.artifact import Artifact, Predictor

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# A batch of two when exporting: torch.export specialises a dimension of size 1.
_EXPORT_BATCH = 2


class HalfPrecision(nn.Module):
    """``inner`` in ``dtype``, with float32 in and out."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner.to(dtype)
        self.dtype = dtype

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.inner(inputs.to(self.dtype)).float()


def export_program(model: nn.Module, example_inputs: torch.Tensor, path: Path) -> Artifact:
    """``model`` as a ``torch.export`` program with a dynamic batch dimension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = example_inputs[:1].expand(_EXPORT_BATCH, *example_inputs.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1, max=65536)
    for module in model.modules():  # eval mode; a loaded program refuses .eval() itself
        module.training = False
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(
            model, (example,), dynamic_shapes=({0: batch},), strict=False
        )
    torch.export.save(program, str(path))
    return Artifact(path=path, scheme="fp32")


def to_half(artifact: Artifact, scheme: str) -> Artifact:
    """``artifact``'s program re-exported in ``scheme`` (fp16 or bf16), float32 at the edges."""
    module = torch.export.load(str(artifact.path)).module()
    example = torch.zeros(_EXPORT_BATCH, *_input_shape(artifact.path))
    output = artifact.path.with_suffix(f".{scheme}.pt2")
    export_program(HalfPrecision(module, DTYPES[scheme]), example, output)
    return Artifact(path=output, scheme=scheme)


def program_signature(path: Path) -> str:
    """A hash of the program's graph and its weights' shapes and types, not their values."""
    program = torch.export.load(str(path))
    digest = hashlib.sha256(program.graph_module.code.encode())
    for name, tensor in sorted(program.state_dict.items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return digest.hexdigest()[:16]


@contextmanager
def torch_predictor(
    path: Path, *, device: str, threads: int, compiled: bool, batch_size: int
) -> Iterator[Predictor]:
    """The program in eager mode, or under ``torch.compile`` for ``batch_size`` inputs.

    PyTorch's intra-op thread count is process-wide: it is set for the predictor's life and
    restored after. On CUDA each call copies in, runs, and copies back, which waits for the
    device; there is no asynchronous work left when ``run`` returns.
    """
    module = on_device(torch.export.load(str(path)), device).module()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    if compiled:
        forward = torch.compile(module, dynamic=False)
        mode = "compile"
    else:
        forward = module
        mode = "eager"

    def run(inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            outputs = forward(torch.from_numpy(inputs).to(device))
            result = outputs.cpu().numpy()
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    try:
        yield Predictor(
            run=run,
            label=f"torch-{torch.__version__}/{mode}",
            fixed_batch=batch_size if compiled else None,
        )
    finally:
        torch.set_num_threads(previous_threads)
        if compiled:
            torch._dynamo.reset()  # drop the compiled graphs with the predictor


def on_device(program: torch.export.ExportedProgram, device: str) -> torch.export.ExportedProgram:
    """``program`` with its weights and the devices written in its graph moved to ``device``.

    Why not ``module().to(device)``: export writes the device it traced on into the graph
    (a ``.to(dtype)`` leaves an ``_assert_tensor_metadata(..., device=cpu)``), and moving
    the weights leaves those behind, so a half-precision program exported on the CPU
    refused CUDA inputs (seen on an H200, 2026-12-04). PyTorch's pass rewrites both.
    """
    if device == "cpu":
        return program
    from torch.export.passes import move_to_device_pass

    return move_to_device_pass(program, device)


def _input_shape(path: Path) -> tuple[int, ...]:
    program = torch.export.load(str(path))
    for spec in program.graph_signature.input_specs:
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT:
            node = next(n for n in program.graph.nodes if n.name == spec.arg.name)
            return tuple(int(d) for d in node.meta["val"].shape[1:])
    raise ValueError(f"{path}: the program has no input")
