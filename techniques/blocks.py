"""Inverted residual blocks, found by what the graph computes rather than by class.

A MobileNet block (Sandler et al. 2018; Howard et al. 2019 for the V3 form) is

    1x1 expansion conv -> (norm, activation) -> depthwise conv (groups = channels)
        -> (norm, activation, optional squeeze-excitation gate) -> 1x1 projection conv
        [-> + the block's input, when the shapes match]

Users write it many ways (``block.expand``, ``block.conv[0]``, ``block.block[0][0]``,
hard-swish or ReLU6, SE or none), so the blocks are read off torch-pruning's dependency
graph, which traces the model's autograd graph: the same tool that later cuts their
channels. Everything here is by module name, so a block found on the base model names
the same layers in a deep copy of it.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_POOLING = ("Mean", "Pool")  # a squeeze-excitation branch starts by pooling the map


@dataclass(frozen=True)
class InvertedResidualBlock:
    """One block, by the names of its layers in the model.

    ``module`` is the largest submodule that holds this block's layers and no other
    block's (the block's own ``nn.Module`` where the model has one), whose output is the
    block's output; ``""`` where the model keeps blocks flat in one container.
    """

    expand: str
    depthwise: str
    project: str
    residual: bool
    module: str

    def expand_conv(self, model: nn.Module) -> nn.Conv2d:
        conv = model.get_submodule(self.expand)
        assert isinstance(conv, nn.Conv2d)
        return conv

    def expand_ratio(self, model: nn.Module) -> float:
        """Hidden channels over input channels, as the layers of ``model`` now have them."""
        conv = self.expand_conv(model)
        return conv.out_channels / conv.in_channels

    def max_ratio(self, model: nn.Module) -> int:
        """The whole-number ratio that keeps every hidden channel (6 for 16 -> 96; 4 for
        24 -> 88, where 3 would already narrow the block)."""
        return math.ceil(self.expand_ratio(model) - 1e-9)


_FOUND: weakref.WeakKeyDictionary[nn.Module, tuple[InvertedResidualBlock, ...]] = (
    weakref.WeakKeyDictionary()
)


def inverted_residual_blocks(
    model: nn.Module, example_inputs: torch.Tensor
) -> tuple[InvertedResidualBlock, ...]:
    """The model's inverted residual blocks with an expansion layer, in module order.

    Cached per model object: the levers ask for every trial (and the space explorer a few
    hundred times), the answer needs a trace, and a run's base model does not change.
    """
    if model not in _FOUND:
        _FOUND[model] = find_blocks(model, example_inputs)
    return _FOUND[model]


def find_blocks(
    model: nn.Module, example_inputs: torch.Tensor
) -> tuple[InvertedResidualBlock, ...]:
    """Trace ``model`` once and read its blocks off the dependency graph (uncached)."""
    import torch_pruning as tp

    if not any(_is_depthwise(m) for m in model.modules()):
        return ()  # no block without a depthwise layer: skip the trace

    was_training = model.training
    model.eval()
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs)
    finally:
        model.train(was_training)
    names = {module: name for name, module in model.named_modules()}
    blocks = []
    for module in model.modules():
        if not _is_depthwise(module) or module not in graph.module2node:
            continue
        block = _block_around(graph.module2node[module], names)
        if block is not None:
            blocks.append(block)
    owners = _owners(model, blocks)
    return tuple(
        InvertedResidualBlock(b.expand, b.depthwise, b.project, b.residual, owner)
        for b, owner in zip(blocks, owners, strict=True)
    )


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.in_channels > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _is_pointwise(module: Any, channels: int, *, side: str) -> bool:
    """A plain 1x1 convolution whose ``side`` ("in" or "out") has ``channels`` channels."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and tuple(module.kernel_size) == (1, 1)
        and (module.in_channels if side == "in" else module.out_channels) == channels
    )


def _grad_fn_name(node: Any) -> str:
    return type(getattr(node, "grad_fn", None)).__name__ + str(getattr(node, "name", ""))


def _passes_through(node: Any) -> bool:
    """A norm or a one-input elementwise op (an activation): the channels pass unchanged."""
    module = node.module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
        return False
    return len(node.inputs) == 1 and not any(p in _grad_fn_name(node) for p in _POOLING)


def _block_around(depthwise: Any, names: dict[nn.Module, str]) -> InvertedResidualBlock | None:
    """The block whose depthwise layer is ``depthwise``, or None if it is not in one."""
    conv = depthwise.module
    expand = _producer(depthwise)
    if expand is None or not _is_pointwise(expand.module, conv.in_channels, side="out"):
        return None
    if expand.module.out_channels <= expand.module.in_channels:
        return None  # no expansion to narrow
    project = _consumer(depthwise, conv.out_channels)
    if project is None:
        return None
    return InvertedResidualBlock(
        expand=names[expand.module],
        depthwise=names[conv],
        project=names[project.module],
        residual=_adds_input(project, expand),
        module="",
    )


def _producer(node: Any) -> Any:
    """The layer with weights that feeds ``node``, through norms and activations."""
    current = node
    while True:
        if len(current.inputs) != 1:
            return None
        current = current.inputs[0]
        if isinstance(current.module, nn.Conv2d | nn.Linear):
            return current
        if not _passes_through(current):
            return None


def _consumer(depthwise: Any, channels: int) -> Any:
    """The 1x1 projection fed by ``depthwise`` along the main path.

    The walk passes norms, activations and a squeeze-excitation gate: a branch that pools
    the map, runs it through its own small layers and multiplies the result back in. Any
    other layer with weights on the main path, or a merge of paths before the projection,
    means this depthwise layer is not inside an inverted residual block.
    """
    frontier: list[tuple[Any, bool]] = [(depthwise, False)]  # (node, inside the gate)
    seen: set[tuple[int, bool]] = set()
    found = None
    while frontier:
        node, gated = frontier.pop()
        for nxt in node.outputs:
            name = _grad_fn_name(nxt)
            if isinstance(nxt.module, nn.Conv2d | nn.Linear):
                if gated:
                    step = (nxt, True)  # one of the gate's own layers
                elif _is_pointwise(nxt.module, channels, side="in") and found in (None, nxt):
                    found = nxt
                    continue  # the block ends here
                else:
                    return None
            elif "Mul" in name:
                step = (nxt, False)  # the gate multiplies back into the map
            elif gated or any(p in name for p in _POOLING):
                step = (nxt, True)
            elif _passes_through(nxt):
                step = (nxt, False)
            else:
                return None
            if (id(step[0]), step[1]) not in seen:
                seen.add((id(step[0]), step[1]))
                frontier.append(step)
    return found


def _adds_input(project: Any, expand: Any) -> bool:
    """Whether the projection's output (after its norm) is added to the block's input."""
    inputs = {id(n) for n in expand.inputs}
    current = project
    for _ in range(4):  # projection -> norm -> add: a short walk
        if len(current.outputs) != 1:
            return False
        current = current.outputs[0]
        if "Add" in _grad_fn_name(current) and len(current.inputs) == 2:
            return any(id(n) in inputs for n in current.inputs)
        if not _passes_through(current):
            return False
    return False


def _owners(model: nn.Module, blocks: list[InvertedResidualBlock]) -> list[str]:
    """Each block's own submodule: the highest one holding its layers and no other's."""
    layer_of: dict[str, int] = {}
    for index, block in enumerate(blocks):
        for name in (block.expand, block.depthwise, block.project):
            layer_of[name] = index
    owners = []
    for index, block in enumerate(blocks):
        owner = ""
        for prefix in _ancestors(block.expand):
            if not all(prefix_holds(prefix, name) for name in (block.depthwise, block.project)):
                continue
            others = [
                n
                for n, m in model.get_submodule(prefix).named_modules(prefix=prefix)
                if layer_of.get(n, index) != index
                or (isinstance(m, nn.Conv2d) and _is_depthwise(m) and n != block.depthwise)
            ]
            if others:
                break
            owner = prefix
        owners.append(owner)
    return owners


def _ancestors(name: str) -> Iterator[str]:
    """``a.b.c`` -> ``a.b``, ``a``: the enclosing module names, innermost first."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        yield ".".join(parts[:end])


def prefix_holds(prefix: str, name: str) -> bool:
    return name.startswith(prefix + ".")
