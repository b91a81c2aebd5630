"""MobileNet expand ratios: narrow each inverted residual block's hidden layer.

An inverted residual block expands its input ``t`` times with a 1x1 convolution, filters
it depthwise, and projects it back. A smaller ``t`` keeps fewer hidden channels: the ones
whose expansion filters have the largest L2 norm. torch-pruning's dependency graph cuts
them consistently (expansion conv -> BN -> depthwise conv and its groups -> BN ->
projection input), so the weights are inherited from the trained model, not retrained
from scratch. One ratio per stage (a block that changes width or resolution and the residual
blocks after it: ``width.expand.s<i>``) by default, or one per block (``width.expand.b<j>``)
with the option ``width.per = "block"``: finer, at the price of a larger space.

The blocks are found by structure (``techniques.blocks``): 1x1 expansion, depthwise,
1x1 projection, however the model names them, with or without squeeze-excitation, so the
lever works on the built-in MobileNetV2 and on a MobileNetV2 or V3 written as a model
library writes it. For a model with no such block it says so once and stays off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from techniques.base import Context, TechniqueError
from techniques.blocks import InvertedResidualBlock, inverted_residual_blocks
from techniques.surgery import working_copy

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class WidthParams:
    """``expand_ratios[i]``: the expand ratio of stage ``i`` (a stage with t=1 is absent)."""

    expand_ratios: tuple[tuple[int, int], ...]  # (group index, ratio)
    per: str = "stage"  # what a group is: a stage or a single block

    def __post_init__(self) -> None:
        for group, ratio in self.expand_ratios:
            if ratio < 1:
                raise TechniqueError(f"{param_name(self.per, group)}={ratio} must be at least 1")

    @property
    def label(self) -> str:
        return "t" + "".join(str(ratio) for _, ratio in self.expand_ratios)


def expandable_stages(
    model: nn.Module, example_inputs: torch.Tensor
) -> list[list[InvertedResidualBlock]]:
    """Inverted residual blocks with an expansion layer, grouped into stages.

    A stage starts at a block without a residual connection (it changes the width or the
    resolution) or with another expand ratio, and runs over the residual blocks after it
    (after rounding, a narrow model's first two stages can share a width). Blocks without
    an expansion layer (expand ratio 1) are not found at all.
    """
    stages: list[list[InvertedResidualBlock]] = []
    for block in inverted_residual_blocks(model, example_inputs):
        ratio = block.expand_ratio(model)
        if (
            not stages
            or not block.residual
            or abs(ratio - stages[-1][0].expand_ratio(model)) > 1e-6
        ):
            stages.append([])
        stages[-1].append(block)
    return stages


GRANULARITIES = ("stage", "block")


def expandable_groups(
    model: nn.Module, example_inputs: torch.Tensor, per: str
) -> list[list[InvertedResidualBlock]]:
    """The blocks that share one expand ratio: whole stages, or each block alone."""
    stages = expandable_stages(model, example_inputs)
    if per == "block":
        return [[block] for stage in stages for block in stage]
    return stages


REFERENCE_FRACTION = 2 / 3  # of the trained expand ratio: Once-for-All's 4 of 6


def reference_ratio(max_ratio: int) -> int:
    """The reference's expand ratio for a group trained at ``max_ratio``: 6 -> 4, 4 -> 3,
    3 -> 2, 2 -> 1; always below ``max_ratio``, so the reference narrows every group."""
    return max(1, min(max_ratio - 1, round(max_ratio * REFERENCE_FRACTION)))


def param_name(per: str, index: int) -> str:
    return f"width.expand.{per[0]}{index}"


class ExpandRatio:
    name: ClassVar[str] = "width"
    stage: ClassVar[Literal["model"]] = "model"
    options: ClassVar[Mapping[str, tuple[Any, ...]]] = {"width.per": GRANULARITIES}
    changes_weights: ClassVar[bool] = True

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        """Every group at the expand ratio the model was trained with."""
        per = _per(ctx)
        model = ctx.base_model
        groups = expandable_groups(model, ctx.task.example_inputs(1), per)
        return {param_name(per, i): group[0].max_ratio(model) for i, group in enumerate(groups)}

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        """Every group at two thirds of its trained ratio, rounded: Once-for-All's middle
        expand ratio (6 -> 4). Without a reference of its own the lever only ever reached a
        model through the sampler, which a 10-trial search on a library-style MobileNet never
        got to: the other levers' references and their escalations took every trial."""
        if self.applicability(ctx) is not None:
            return None
        per = _per(ctx)
        model = ctx.base_model
        groups = expandable_groups(model, ctx.task.example_inputs(1), per)
        return {
            param_name(per, i): reference_ratio(group[0].max_ratio(model))
            for i, group in enumerate(groups)
        }

    def applicability(self, ctx: Context) -> str | None:
        """Why the lever cannot apply to this model, or None when it can."""
        if not expandable_stages(ctx.base_model, ctx.task.example_inputs(1)):
            return "no inverted residual blocks with an expansion layer"
        return None

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> WidthParams | None:
        per = _per(ctx)
        model = ctx.base_model
        groups = expandable_groups(model, ctx.task.example_inputs(1), per)
        ratios = tuple(
            (index, trial.suggest_int(param_name(per, index), 1, group[0].max_ratio(model)))
            for index, group in enumerate(groups)
        )
        if all(ratio >= groups[index][0].max_ratio(model) for index, ratio in ratios):
            return None  # no group narrowed: the lever is off
        return WidthParams(ratios, per)

    def apply(self, model: nn.Module, params: WidthParams, ctx: Context) -> nn.Module:
        # the group indices are the base model's: the depth lever may have dropped blocks
        return narrow_expansions(
            model,
            ctx.task.example_inputs(1),
            dict(params.expand_ratios),
            per=params.per,
            reference=ctx.base_model,
            in_place=ctx.owns_model,
        )


def _per(ctx: Context) -> str:
    per = ctx.options.get("width.per", GRANULARITIES[0])
    if per not in GRANULARITIES:
        raise TechniqueError(f"width.per={per!r} is unknown: use one of {GRANULARITIES}")
    return str(per)


def narrow_expansions(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ratios: Mapping[int, int],
    *,
    per: str = "stage",
    reference: nn.Module | None = None,
    in_place: bool = False,
) -> nn.Module:
    """A copy of ``model`` (``model`` itself with ``in_place``) whose group ``i`` blocks keep
    ``ratios[i] x input`` hidden channels.

    ``reference``: the model the group indices count in (default ``model``), when
    ``model`` is that model with some blocks already replaced by the identity (elastic
    depth, ``techniques.depth``); a block no longer in ``model`` is skipped.
    """
    import torch_pruning as tp

    reference = model if reference is None else reference
    groups = expandable_groups(reference, example_inputs, per)  # by name: they hold in copies
    narrowed = working_copy(model, in_place=in_place).eval()
    present = {name for name, module in narrowed.named_modules() if isinstance(module, nn.Conv2d)}
    graph = tp.DependencyGraph().build_dependency(narrowed, example_inputs)
    for index, group in enumerate(groups):
        ratio = ratios.get(index)
        if ratio is None or ratio >= group[0].max_ratio(reference):
            continue
        for block in group:
            if block.expand not in present:
                continue  # dropped by the depth lever
            expand_conv = block.expand_conv(narrowed)
            keep = expand_conv.in_channels * ratio
            if keep >= expand_conv.out_channels:
                continue
            drop = _weakest_channels(expand_conv, expand_conv.out_channels - keep)
            graph.get_pruning_group(expand_conv, tp.prune_conv_out_channels, idxs=drop).prune()
    return narrowed.eval()


def _weakest_channels(conv: nn.Conv2d, count: int) -> Sequence[int]:
    """Indices of the ``count`` output channels with the smallest L2 filter norm."""
    norms = conv.weight.detach().flatten(1).norm(dim=1)
    return sorted(torch.argsort(norms)[:count].tolist())
