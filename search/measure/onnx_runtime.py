"""ONNX Runtime: export to ONNX and run it.

Every reported number (accuracy, latency, size) comes from the file that would be shipped,
run by the runtime that would run it, never from the PyTorch stand-in. The other runtimes
(PyTorch eager and compiled) are in ``search.measure.torch_runtime``;
``search.measure.runtimes`` chooses.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from search.measure.artifact import INPUT_NAME, OUTPUT_NAME, Artifact, Predictor
from search.measure.export_errors import export_error, native_output_held

OPSET = 17
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def export_onnx(model: nn.Module, example_inputs: torch.Tensor, path: Path) -> Artifact:
    """Export ``model`` with a dynamic batch dimension to a single self-contained file.

    The TorchScript-based exporter (``dynamo=False``) takes about 0.2 s here against about
    5 s for the dynamo exporter; candidates are exported once per trial, so the fast one is
    used. Its deprecation warning is expected and silenced.

    Raises:
        ExportError: one line naming what cannot be exported (a custom autograd Function
            and the modules that call it) and how to make the model exportable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    try:
        with native_output_held(), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example_inputs,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
            )
    except RuntimeError as error:  # the exporter's errors (OnnxExporterError is one)
        raise export_error(model, example_inputs, error) from error
    return Artifact(path=path, scheme="fp32")


def module_of_node(node_name: str, modules: Collection[str]) -> str:
    """The module a TorchScript-exported node came from, or the node's name.

    Its scopes name each level either by attribute (``conv1``) or, inside containers, by
    the parent's name extended (``layer1.0``, ``conv.0.0``): ``/layer1/layer1.0/conv1/Conv``
    is ``layer1.0.conv1``, ``/features/features.3/conv/conv.0/conv.0.0/Conv`` is
    ``features.3.conv.0.0``.
    """
    segments: list[str] = []
    for part in [p for p in node_name.split("/") if p][:-1]:
        if segments and part.startswith(segments[-1] + "."):
            segments[-1] = part
        else:
            segments.append(part)
    name = ".".join(segments)
    return name if name in modules else node_name


def compact_names(artifact: Artifact) -> Artifact:
    """Rename internal nodes and tensors to short ids, in place; the graph is unchanged.

    The exporters name every tensor after its module path, and quantization adds a
    QuantizeLinear/DequantizeLinear pair per tensor: in an int8 file these strings were a
    fifth of the bytes. Every candidate, the baseline included, goes through this, so size
    ratios compare like with like. Graph inputs and outputs keep their names. A PyTorch
    program is returned as it is.
    """
    import onnx

    if artifact.format != "onnx":
        return artifact

    model = onnx.load(str(artifact.path))
    graph = model.graph
    keep = {value.name for value in [*graph.input, *graph.output]} | {""}
    renamed: dict[str, str] = {}

    def short(name: str) -> str:
        if name in keep:
            return name
        return renamed.setdefault(name, f"t{len(renamed):x}")

    for initializer in graph.initializer:
        initializer.name = short(initializer.name)
    for index, node in enumerate(graph.node):
        node.name = f"n{index:x}"
        node.input[:] = [short(name) for name in node.input]
        node.output[:] = [short(name) for name in node.output]
    for value in graph.value_info:
        value.name = short(value.name)
    del graph.value_info[:]  # shape hints only; the runtime infers them again
    model.doc_string = ""
    onnx.save(model, str(artifact.path))
    return artifact


def onnx_graph_signature(path: Path) -> str:
    """A hash of what the latency depends on: the graph, shapes and number formats.

    Weight values are left out, so a candidate's draft (before fine-tuning) and its final
    file share a signature, and two trials that reach one architecture and scheme share
    one latency measurement. Names are left in: ``compact_names`` made them canonical.
    """
    import hashlib

    import onnx

    model = onnx.load(str(path))
    for initializer in model.graph.initializer:
        initializer.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data"):
            initializer.ClearField(field)
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                attribute.t.ClearField("raw_data")
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:16]


# How a deployed file asks to be run, in its metadata (written by the ``ort`` lever): the
# graph-optimisation level it was optimised to offline (loaded as it is, not re-optimised)
# and the intra-op thread count it was measured with.
OPTIMIZED_KEY = "search.graph_optimization"
THREADS_KEY = "search.threads"
PROVIDER_KEY = "search.provider"  # tensorrt or tensorrt-fp16 on CUDA: TensorRT runs it
TENSORRT = "TensorrtExecutionProvider"
TENSORRT_PROVIDERS = ("tensorrt", "tensorrt-fp16")
OPTIMIZATION_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_settings(path: Path) -> dict[str, str]:
    """The settings a deployed file carries (``OPTIMIZED_KEY``, ``THREADS_KEY``), if any."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    keys = (OPTIMIZED_KEY, THREADS_KEY, PROVIDER_KEY)
    return {entry.key: entry.value for entry in model.metadata_props if entry.key in keys}


def open_session(path: Path, *, device: str = "cpu", threads: int = 1) -> ort.InferenceSession:
    """An inference session pinned to ``threads`` intra-op threads and sequential execution.

    A file optimised offline is loaded without optimising it again, and a file that names
    its thread count runs with it: what was measured is what is deployed.
    """
    settings = session_settings(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(settings.get(THREADS_KEY, threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if OPTIMIZED_KEY in settings
        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    options.log_severity_level = 3
    providers = _providers(device, settings.get(PROVIDER_KEY))
    return ort.InferenceSession(str(path), options, providers=providers)


def tensorrt_available() -> str | None:
    """Why ONNX Runtime's TensorRT provider cannot run here, or None when it can."""
    if TENSORRT not in ort.get_available_providers():
        return "this ONNX Runtime has no TensorrtExecutionProvider (onnxruntime-gpu with TensorRT)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def _providers(device: str, provider: str | None) -> list[str | tuple[str, dict[str, str]]]:
    """ONNX Runtime's providers for ``device``; TensorRT first (CUDA for what it leaves)."""
    if provider not in TENSORRT_PROVIDERS or device != "cuda":
        return [_PROVIDERS[device]]
    fp16 = "True" if provider == "tensorrt-fp16" else "False"
    return [(TENSORRT, {"trt_fp16_enable": fp16}), _PROVIDERS["cuda"]]


def with_session_settings(
    artifact: Artifact,
    output: Path,
    *,
    level: str | None,
    threads: int | None = None,
    provider: str | None = None,
    device: str = "cpu",
) -> Artifact:
    """Write ``artifact`` to ``output`` with its session settings recorded in the file.

    With a ``level``, the file is ONNX Runtime's graph optimised offline to that level
    (loaded later as it is); ``threads`` fixes the session's intra-op threads, and
    ``provider`` (``tensorrt``, ``tensorrt-fp16``) has TensorRT run it on CUDA. An
    ``all``-level file may hold layouts specific to this CPU's kernels: it is an artifact
    for this target, as ONNX Runtime's documentation warns.
    """
    import onnx

    source = artifact.path
    if level is not None:
        options = ort.SessionOptions()
        options.graph_optimization_level = OPTIMIZATION_LEVELS[level]
        options.optimized_model_filepath = str(output)
        options.log_severity_level = 3
        ort.InferenceSession(str(artifact.path), options, providers=[_PROVIDERS[device]])
        source = output
    model = onnx.load(str(source))
    settings = (
        ({OPTIMIZED_KEY: level} if level else {})
        | ({THREADS_KEY: str(threads)} if threads else {})
        | ({PROVIDER_KEY: provider} if provider else {})
    )
    kept = [entry for entry in model.metadata_props if entry.key not in settings]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in settings.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(output))
    return Artifact(path=output, scheme=artifact.scheme)


def onnxruntime_predictor(path: Path, *, device: str = "cpu", threads: int = 1) -> Predictor:
    """``path`` in an ONNX Runtime session; on CUDA, ``run`` returns after the copy back."""
    session = open_session(path, device=device, threads=threads)

    def run(inputs: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]

    provider = session.get_providers()[0]
    if provider not in (_PROVIDERS[device], TENSORRT):  # ORT falls back to the CPU on failure
        raise RuntimeError(f"{path.name}: ONNX Runtime could not run it on {device} ({provider})")
    return Predictor(run=run, label=f"onnxruntime-{ort.__version__}/{provider}")
