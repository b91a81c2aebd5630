"""Elastic depth (Once-for-All, Cai et al. 2020): drop the last residual blocks of each stage.

A residual block computes ``x + f(x)``: replaced by the identity, it passes ``x`` on and
costs nothing, and the network around it still fits together. Per stage (a chain of such
blocks, each feeding the next, at one shape) the first blocks are kept with their trained
weights and the last ones dropped, as OFA shrinks depth; the recovery fine-tune (distilled
from the uncompressed model) then closes the gap.

The blocks are found by what they compute, never by class: a module called once, on one
tensor, whose output has its input's shape and is that input plus one or more branches,
read off the autograd graph of one forward pass. A trailing activation after the sum is
allowed (a ResNet basic block ends ``relu(x + f(x))``; its input already passed a ReLU,
so the identity is the block with ``f = 0``), and so is a chain of sums (a pre-norm
transformer block, ``x + attn(x) + mlp(...)``). The residual inverted residual blocks of
``techniques.blocks`` are such modules; so are a ResNet's basic and bottleneck blocks
without a downsampling shortcut, and a transformer's blocks. Where a larger module holds
several of them (a ResNet ``layer``, a ``blocks`` Sequential), the innermost ones count.

One parameter, ``depth.keep``: the share of each stage's residual blocks kept, in steps of
a quarter (0 keeps none, 1 keeps all: the lever off). A stage of ``n`` blocks keeps
``floor(keep * n + 1/2)`` of them (half rounds up), so every stage shrinks alike and the
space stays one dimension; the blocks that change the shape (the first of a MobileNet or
ResNet stage) are never dropped.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from techniques.base import Context, TechniqueError
from techniques.surgery import working_copy

if TYPE_CHECKING:
    import optuna

KEEP_STEP = 0.25
REFERENCE: Mapping[str, Any] = {"depth.keep": 0.5}
# single-input, weight-free operations allowed after the residual sum (activations)
_AFTER_SUM = ("Relu", "Hardtanh", "Hardswish", "Gelu", "Silu", "Elu", "LeakyRelu", "Mish")


@dataclass(frozen=True)
class ResidualBlock:
    """A module whose output is its input plus branches; by name, so it holds in a copy."""

    name: str
    shape: tuple[int, ...]  # of its input and output, without the batch: (C, H, W) or (N, D)


@dataclass(frozen=True)
class DepthParams:
    """``kept[i]`` of stage ``i``'s ``totals[i]`` residual blocks are kept (the first ones)."""

    keep: float
    kept: tuple[int, ...]
    totals: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 0.0 <= self.keep <= 1.0:
            raise TechniqueError(f"depth.keep={self.keep} must be in [0, 1], e.g. 0.5")
        if len(self.kept) != len(self.totals) or any(
            not 0 <= k <= n for k, n in zip(self.kept, self.totals, strict=False)
        ):
            raise TechniqueError(f"depth: kept blocks {self.kept} do not fit stages {self.totals}")

    @property
    def label(self) -> str:
        return f"depth{sum(self.kept)}/{sum(self.totals)}"


class ElasticDepth:
    name: ClassVar[str] = "depth"
    stage: ClassVar[Literal["model"]] = "model"
    options: ClassVar[Mapping[str, tuple[Any, ...]]] = {}
    changes_weights: ClassVar[bool] = True

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        return {"depth.keep": 1.0}

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        return REFERENCE if self.applicability(ctx) is None else None

    def applicability(self, ctx: Context) -> str | None:
        if not residual_stages(ctx.base_model, ctx.task.example_inputs(1)):
            return "no residual blocks (a module whose output is its input plus a branch)"
        return None

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> DepthParams | None:
        stages = residual_stages(ctx.base_model, ctx.task.example_inputs(1))
        if not stages:
            return None
        keep = round(trial.suggest_float("depth.keep", 0.0, 1.0, step=KEEP_STEP), 6)
        totals = tuple(len(stage) for stage in stages)
        kept = tuple(kept_blocks(keep, n) for n in totals)
        if kept == totals:
            return None  # nothing dropped: the lever is off
        return DepthParams(keep, kept, totals)

    def apply(self, model: nn.Module, params: DepthParams, ctx: Context) -> nn.Module:
        stages = residual_stages(ctx.base_model, ctx.task.example_inputs(1))
        return drop_blocks(model, stages, params.kept, in_place=ctx.owns_model)


def kept_blocks(keep: float, total: int) -> int:
    """How many of a stage's ``total`` blocks ``keep`` keeps: ``keep * total``, half up."""
    return min(total, math.floor(keep * total + 0.5 + 1e-9))


def drop_blocks(
    model: nn.Module,
    stages: Sequence[Sequence[ResidualBlock]],
    kept: Sequence[int],
    *,
    in_place: bool = False,
) -> nn.Module:
    """A copy of ``model`` (``model`` itself with ``in_place``) with all but the first
    ``kept[i]`` blocks of stage ``i`` replaced by the identity (same name, so hooks and
    names of the other levers still find them)."""
    if len(kept) != len(stages):
        raise TechniqueError(f"depth: {len(kept)} stage counts for {len(stages)} stages")
    shallow = working_copy(model, in_place=in_place)
    for stage, keep in zip(stages, kept, strict=True):
        for block in stage[keep:]:
            shallow.set_submodule(block.name, nn.Identity())
    return shallow.eval()


_FOUND: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[ResidualBlock, ...], ...]] = (
    weakref.WeakKeyDictionary()
)


def residual_stages(
    model: nn.Module, example_inputs: torch.Tensor
) -> tuple[tuple[ResidualBlock, ...], ...]:
    """The model's residual blocks, in the order they run, grouped into stages (cached per
    model object: the space asks every trial, and the answer needs a forward pass)."""
    if model not in _FOUND:
        _FOUND[model] = find_residual_stages(model, example_inputs)
    return _FOUND[model]


def find_residual_stages(
    model: nn.Module, example_inputs: torch.Tensor
) -> tuple[tuple[ResidualBlock, ...], ...]:
    """Run ``model`` once and read its residual blocks off the autograd graph (uncached).

    A stage is a chain of residual blocks in which each block's input is the previous
    block's output: MobileNet's and ResNet's blocks after a stage's first, a transformer's
    blocks. Any other computation between two blocks starts a new stage.
    """
    inputs = example_inputs.detach().clone()
    if inputs.is_floating_point():
        inputs.requires_grad_(True)
    names = {module: name for name, module in model.named_modules() if name}
    calls: dict[str, int] = {}
    started: dict[str, int] = {}  # name -> when it first ran
    seen_in: dict[str, Any] = {}  # name -> grad_fn of its input, taken before it runs
    found: list[tuple[ResidualBlock, Any, Any]] = []  # (block, input node, output node)

    def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        started.setdefault(name, len(started))
        single = len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
        seen_in[name] = args[0].grad_fn if single else None

    def after(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        name = names[module]
        source = seen_in.get(name)
        if (
            source is None
            or not isinstance(output, torch.Tensor)
            or output.shape != args[0].shape
            or output.grad_fn is None
        ):
            return
        if _adds_to(output.grad_fn, source):
            shape = tuple(output.shape[1:])
            found.append((ResidualBlock(name, shape), source, output.grad_fn))

    hooks = []
    for module in names:
        hooks.append(module.register_forward_pre_hook(before, with_kwargs=True))
        hooks.append(module.register_forward_hook(after, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            model(inputs)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    # forward hooks fire innermost first: keep the innermost blocks, each run once, in
    # the order they started
    blocks = [
        (block, source, out)
        for block, source, out in found
        if calls[block.name] == 1
        and not any(other.name.startswith(block.name + ".") for other, _, _ in found)
    ]
    blocks.sort(key=lambda item: started[item[0].name])
    stages: list[list[ResidualBlock]] = []
    previous_out = None
    for block, source, out in blocks:
        if not stages or source is not previous_out or block.shape != stages[-1][-1].shape:
            stages.append([])
        stages[-1].append(block)
        previous_out = out
    return tuple(tuple(stage) for stage in stages)


def _adds_to(node: Any, source: Any) -> bool:
    """Whether autograd node ``node`` is ``source`` plus branches (then an activation)."""
    for _ in range(3):  # past an activation after the sum (and an in-place one's twin)
        if not any(op in type(node).__name__ for op in _AFTER_SUM):
            break
        inputs = [n for n, _ in node.next_functions if n is not None]
        if len(inputs) != 1:
            return False
        node = inputs[0]
    return _sum_reaches(node, source, depth=0)


def _sum_reaches(node: Any, source: Any, *, depth: int) -> bool:
    """``node`` is a sum with ``source`` as a term, directly or through further sums."""
    if type(node).__name__ != "AddBackward0" or depth > 8:
        return False
    terms = [n for n, _ in node.next_functions if n is not None]
    return any(t is source or _sum_reaches(t, source, depth=depth + 1) for t in terms)
