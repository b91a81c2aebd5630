"""An ONNX file from a graph already exported: same graph, the model's weights, checked.

A trial exports its candidate twice: the draft (before fine-tuning, to time it) and the
final file (after). Fine-tuning changes weights, never the graph; and drafts of one
network at other widths (pruning, expand ratios) share a topology, differing only in
tensor shapes. A trace through the exporter (about 0.2 s here, the largest part of a
trial's own overhead) redoes work whose result is known. So each exported float file is
kept as a template, with a *recipe* for each of its initializers: which parameter or
buffer of the model it is, that tensor transposed (a ``Linear`` on a sequence becomes a
``MatMul``), or a convolution with the batch norm the exporter folded into it. Recipes
are found by value on the exported model, so any network works without knowing its
classes. A later file of the same topology (``topology_key``) is the template's graph
with the recipes evaluated on the new model, and depthwise groups set to its widths.

Nothing is taken on trust: the refilled file is run in ONNX Runtime against the
PyTorch model on real inputs and used only if the outputs agree; otherwise (or where a
recipe is missing, ambiguous, or an unexplained float initializer is large) the caller
exports as before, and is told why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from search.measure.artifact import INPUT_NAME, Artifact

# A recipe: ("tensor", name) | ("transposed", name) | ("folded_weight" | "folded_bias",
# conv_name, norm_name)
Recipe = tuple[str, ...]

# Matching the draft's initializers to the model's tensors: the exporter folds a batch
# norm in float32 in its own order of operations, so equal means equal to rounding.
MATCH_RTOL, MATCH_ATOL = 1e-5, 1e-7
# An unexplained float initializer this large is a weight the recipes do not cover (a
# constant the exporter computed from several parameters): the file cannot be refilled.
MAX_UNEXPLAINED_ELEMENTS = 16
# The refilled file must compute what the model computes, to this tolerance relative
# to the outputs' scale: float32 reordering differs by about 1e-6; a stale weight by far
# more after any fine-tuning.
AGREE_RTOL = 1e-4


@dataclass(frozen=True)
class Template:
    """An exported float ONNX file, serialised, and each initializer's recipes (several
    where values coincided in that file; a refill needs them to agree again)."""

    model_bytes: bytes
    recipes: dict[str, tuple[Recipe, ...]]  # initializer name -> recipes


def folded_pairs(model: nn.Module, example_inputs: torch.Tensor) -> list[tuple[str, str]]:
    """(convolution, batch norm) pairs where the norm reads the convolution's output, in
    one forward pass: the pairs an ONNX exporter may fold into one ``Conv``."""
    conv_outputs: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: list[tuple[str, str]] = []
    handles = []

    def on_conv(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            conv_outputs[id(output)] = (name, output)  # the tensor is kept alive to the end

        return hook

    def on_norm(name: str):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            found = conv_outputs.get(id(inputs[0])) if inputs else None
            if found is not None and found[1] is inputs[0]:
                pairs.append((found[0], name))

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
            handles.append(module.register_forward_hook(on_conv(name)))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(on_norm(name)))
    try:
        with torch.no_grad():
            model.eval()(example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return pairs


@torch.no_grad()
def folded_batch_norm(conv: nn.Module, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of ``conv`` with ``norm`` (its running statistics) folded in, as
    new tensors: what an ONNX exporter writes for the pair, and what cross-layer
    equalization folds in place (``techniques/equalization.py``)."""
    var = cast(torch.Tensor, norm.running_var)
    mean = cast(torch.Tensor, norm.running_mean)
    gamma = norm.weight if isinstance(norm.weight, torch.Tensor) else torch.ones_like(var)
    beta = norm.bias if isinstance(norm.bias, torch.Tensor) else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + cast(float, norm.eps))
    weight = cast(torch.Tensor, conv.weight)
    bias = conv.bias if isinstance(conv.bias, torch.Tensor) else torch.zeros_like(mean)
    folded = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return folded, (bias - mean) * scale + beta


def candidate_tensors(
    model: nn.Module, pairs: list[tuple[str, str]]
) -> Iterator[tuple[Recipe, np.ndarray]]:
    """Every tensor an exporter may write as an initializer, with its recipe."""
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            value = tensor.detach().cpu().float().numpy()
            yield ("tensor", name), value
            if value.ndim == 2:
                yield ("transposed", name), value.T
        modules = dict(model.named_modules())
        for conv_name, norm_name in pairs:
            weight, bias = folded_batch_norm(modules[conv_name], modules[norm_name])
            yield ("folded_weight", conv_name, norm_name), weight.cpu().float().numpy()
            yield ("folded_bias", conv_name, norm_name), bias.cpu().float().numpy()


def evaluate_recipe(
    model: nn.Module, recipe: Recipe, modules: dict[str, nn.Module]
) -> np.ndarray | None:
    """``recipe`` on ``model``; None where the model lacks what it names."""
    with torch.no_grad():
        kind = recipe[0]
        if kind in ("tensor", "transposed"):
            tensor: torch.Tensor
            try:
                tensor = model.get_parameter(recipe[1])
            except AttributeError:
                try:
                    tensor = model.get_buffer(recipe[1])
                except AttributeError:
                    return None
            value = tensor.detach().cpu().float().numpy()
            return value.T if kind == "transposed" else value
        conv, norm = modules.get(recipe[1]), modules.get(recipe[2])
        if conv is None or norm is None:
            return None
        weight, bias = folded_batch_norm(conv, norm)
        return (weight if kind == "folded_weight" else bias).cpu().float().numpy()


def _owner(recipe: Recipe) -> str:
    """The module a recipe's tensor belongs to (the convolution, for a folded pair)."""
    return recipe[1].rpartition(".")[0] if recipe[0] in ("tensor", "transposed") else recipe[1]


def _reading_modules(proto, modules: set[str]) -> dict[str, set[str]]:
    """Initializer name -> the modules whose exported nodes read it (by node scope)."""
    from search.measure.onnx_runtime import module_of_node

    readers: dict[str, set[str]] = {}
    for node in proto.graph.node:
        module = module_of_node(node.name, modules)
        for name in node.input:
            readers.setdefault(name, set()).add(module)
    return readers


def topology_key(model: nn.Module) -> str:
    """What an exported graph's nodes depend on, without the channel counts: two models
    with one key (a network pruned to two widths) export one graph with other weights.

    Each module's class and its settings: a convolution's kernel, stride, padding,
    dilation, bias and whether it is depthwise; a norm's eps; any other module's
    ``extra_repr`` (which may name sizes: then the key is only stricter). A forward that
    branches on something else is caught by the check after the refill.
    """
    parts = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            depthwise = module.groups == module.in_channels and module.groups > 1
            groups = (
                ("depthwise", module.out_channels // module.groups) if depthwise else module.groups
            )
            settings = repr((
                module.kernel_size, module.stride, module.padding, module.dilation,
                module.padding_mode, module.transposed, module.output_padding, groups,
                module.bias is None,
            ))  # fmt: skip
        elif isinstance(module, nn.Linear):
            settings = repr(module.bias is None)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            settings = repr((module.eps, module.affine, module.track_running_stats))
        else:
            settings = module.extra_repr()
        parts.append(f"{name}:{type(module).__module__}.{type(module).__qualname__}:{settings}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def make_template(
    model: nn.Module, onnx_bytes: bytes, example_inputs: torch.Tensor
) -> tuple[Template | None, str]:
    """The template of ``onnx_bytes``, a float ONNX file exported from ``model`` in its
    present state, or None and why."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(onnx_bytes)
    by_shape: dict[tuple[int, ...], list[tuple[Recipe, np.ndarray, float]]] = {}
    for recipe, value in candidate_tensors(model, folded_pairs(model, example_inputs)):
        head = float(value.flat[0]) if value.size else 0.0
        by_shape.setdefault(value.shape, []).append((recipe, value, head))
    readers = _reading_modules(proto, {name for name, _ in model.named_modules()})
    recipes: dict[str, tuple[Recipe, ...]] = {}
    for initializer in proto.graph.initializer:
        value = numpy_helper.to_array(initializer)
        if not np.issubdtype(value.dtype, np.floating):
            continue  # shapes and indices: the graph's, not the weights'
        first = float(value.flat[0]) if value.size else 0.0
        found = tuple(
            recipe
            for recipe, candidate, head in by_shape.get(value.shape, [])
            # the first element decides for all but one candidate of a shape (a MobileNet
            # has dozens of 1x1 convolutions of one shape): compared alone first, it made
            # an export's template 26 -> 9 ms here; np.allclose then decides as before
            if abs(first - head) <= MATCH_ATOL + MATCH_RTOL * abs(head)
            and np.allclose(value, candidate, rtol=MATCH_RTOL, atol=MATCH_ATOL)
        )
        # values can coincide (a folded bias where the norm's mean is all but zero is the
        # norm's own bias): the module whose node reads the initializer decides
        own = tuple(r for r in found if _owner(r) in readers.get(initializer.name, ()))
        found = own or found
        if found:
            recipes[initializer.name] = found
        elif value.size > MAX_UNEXPLAINED_ELEMENTS:
            return None, f"initializer {initializer.name} {value.shape} is no tensor of the model"
    return Template(onnx_bytes, recipes), ""


def refill(template: Template, model: nn.Module, path: Path) -> tuple[Artifact | None, str]:
    """The template's graph with ``model``'s weights, written to ``path``; None and why
    where a recipe does not apply to ``model``."""
    import onnx
    from onnx import numpy_helper

    from search.measure.onnx_runtime import module_of_node

    proto = onnx.load_from_string(template.model_bytes)
    modules = dict(model.named_modules())
    reshaped = False
    for initializer in proto.graph.initializer:
        recipes = template.recipes.get(initializer.name)
        if not recipes:
            continue
        found = [evaluate_recipe(model, recipe, modules) for recipe in recipes]
        values = [v for v in found if v is not None]
        if len(values) < len(found) or len({v.shape for v in values}) > 1:
            return None, f"{recipes[0]} does not apply to the model"
        first = values[0]
        if any(not np.allclose(v, first, rtol=MATCH_RTOL, atol=MATCH_ATOL) for v in values[1:]):
            return None, f"initializer {initializer.name} matched several tensors, now unequal"
        reshaped |= first.shape != tuple(initializer.dims)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(initializer.data_type)
        initializer.CopyFrom(numpy_helper.from_array(first.astype(dtype), initializer.name))
    if reshaped:  # another width of the same network: the shapes the exporter noted are stale
        del proto.graph.value_info[:]
    for node in proto.graph.node:  # a pruned depthwise convolution has fewer groups
        conv = modules.get(module_of_node(node.name, modules.keys()))
        if node.op_type == "Conv" and isinstance(conv, nn.modules.conv._ConvNd):
            for attribute in node.attribute:
                if attribute.name == "group":
                    attribute.i = conv.groups
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return Artifact(path=path, scheme="fp32"), ""


def disagreement(artifact: Artifact, model: nn.Module, inputs: torch.Tensor) -> str:
    """Empty where ``artifact`` computes ``model``'s outputs on ``inputs``, else how not."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            str(artifact.path), options, providers=["CPUExecutionProvider"]
        )
        got = session.run(None, {INPUT_NAME: inputs.numpy()})[0]
    except Exception as error:  # a graph the refill left inconsistent: ORT says how
        return f"ONNX Runtime cannot run it: {str(error).splitlines()[0][:200]}"
    with torch.no_grad():
        expected = model.eval()(inputs)
    if not isinstance(expected, torch.Tensor):
        return "the model's output is not one tensor"
    want = expected.detach().cpu().float().numpy()
    if got.shape != want.shape:
        return f"output shape {got.shape}, the model's {want.shape}"
    scale = max(1.0, float(np.abs(want).max()))
    worst = float(np.abs(got - want).max())
    return (
        "" if worst <= AGREE_RTOL * scale else f"outputs differ by {worst:.2e} (scale {scale:.2e})"
    )
