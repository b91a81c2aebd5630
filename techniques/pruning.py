"""Structured channel pruning that physically removes channels (via torch-pruning).

The dependency graph finds what must be cut together (a conv's output channels, its batch
norm, the next layer's inputs, depthwise groups, residual sums); L2 magnitude decides what
to cut; the ratio is searched. Channel counts are rounded to multiples of 8 because odd
counts ran slower in ONNX Runtime than the unpruned model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from techniques.base import Context, TechniqueError

if TYPE_CHECKING:
    import optuna

MAX_RATIO = 0.7
ROUND_TO = 8


@dataclass(frozen=True)
class PruneParams:
    """``ratio``: share of channels removed from every prunable layer, in [0, 1)."""

    ratio: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise TechniqueError(f"prune.ratio={self.ratio} must be in [0, 1), e.g. 0.5")

    @property
    def label(self) -> str:
        return f"prune{self.ratio:.2f}"


REFERENCE: Mapping[str, Any] = {"prune.ratio": 0.5}


class StructuredPruning:
    name: ClassVar[str] = "prune"
    stage: ClassVar[Literal["model"]] = "model"
    changes_weights: ClassVar[bool] = True

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        return {"prune.ratio": 0.0}

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        return REFERENCE

    def applicability(self, ctx: Context) -> str | None:
        return None

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> PruneParams | None:
        ratio = trial.suggest_float("prune.ratio", 0.0, MAX_RATIO, step=0.05)
        return PruneParams(ratio) if ratio > 0 else None

    def apply(self, model: nn.Module, params: PruneParams, ctx: Context) -> nn.Module:
        return prune_channels(model, ctx.task.example_inputs(1), ratio=params.ratio)


def prune_channels(model: nn.Module, example_inputs: torch.Tensor, *, ratio: float) -> nn.Module:
    """A copy of ``model`` with ``ratio`` of each layer's channels removed by L2 magnitude.

    The output layer is never pruned: its width is the number of classes.
    """
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    # ignored_layers must name modules of the copy, not of the original.
    ignored = [output_layer(pruned)]
    pruner = tp.pruner.MetaPruner(
        pruned,
        example_inputs,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        round_to=ROUND_TO,
    )
    pruner.step()
    return pruned.eval()


def output_layer(model: nn.Module) -> nn.Module:
    """The last Linear or Conv layer in registration order: the one producing the logits."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if not layers:
        raise TechniqueError("the model has no Linear or Conv2d layer to prune around")
    return layers[-1]
