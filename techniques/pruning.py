"""Structured channel pruning that physically removes channels (via torch-pruning).

The dependency graph finds what must be cut together (a conv's output channels, its batch
norm, the next layer's inputs, depthwise groups, residual sums). Three things are searched:

* ``prune.ratio``: the share of channels removed;
* ``prune.importance``: what ranks channels: ``magnitude`` (L2 norm of the group's
  weights), ``taylor`` (|weight x gradient| on a few training batches: the first-order
  loss change of removing the channel) or ``bn-scale`` (|gamma| of the batch norm after
  the layer, as in Network Slimming);
* ``prune.scope``: ``layer`` removes the ratio from every layer alike; ``global`` ranks
  all channels against each other (importances normalised per group) so sensitive layers
  keep more and redundant ones lose more, each layer keeping at least a fifth.

Channel counts are rounded to multiples of 8 because odd counts ran slower in ONNX Runtime
than the unpruned model.

In a transformer (a model with attention modules, ``techniques.attention``) the ratio
removes whole attention heads (ranked by the importance of their query, key and value
rows) and MLP hidden units; the residual stream's width, which every block shares, is
kept. Each attention module's ``num_heads`` and ``head_dim`` are updated to match.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from techniques.attention import attention_modules
from techniques.base import Context, TechniqueError
from techniques.surgery import working_copy

if TYPE_CHECKING:
    import optuna

    from search.train.task import Task

MAX_RATIO = 0.7
ROUND_TO = 8
IMPORTANCES = ("magnitude", "taylor", "bn-scale")
SCOPES = ("layer", "global")
# Global pruning may empty a layer that ranks low everywhere; keep at least a fifth.
MAX_LAYER_RATIO = 0.8
# Taylor importance's gradients: the first training batches (64 images each on digits). 2
# rather than 4 halved the pruning's cost (1.60 -> 0.87 s a model on a 2-core Zen 4), and on
# five ratio/scope settings the accuracy after the search's recovery fine-tune moved no more
# than taking 4 batches of other images did (worst test change -0.28 points against -0.83);
# 1 batch lost 1.67 test points at ratio 0.5, global
# (benchmarks/results/taylor-batches-2026-12-06.md).
TAYLOR_BATCHES = 2


@dataclass(frozen=True)
class PruneParams:
    """``ratio`` of channels removed, in [0, 1), ranked by ``importance`` within ``scope``."""

    ratio: float
    importance: str = "magnitude"
    scope: str = "layer"

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise TechniqueError(f"prune.ratio={self.ratio} must be in [0, 1), e.g. 0.5")
        if self.importance not in IMPORTANCES:
            raise TechniqueError(
                f"prune.importance={self.importance!r} is unknown: use one of {IMPORTANCES}"
            )
        if self.scope not in SCOPES:
            raise TechniqueError(f"prune.scope={self.scope!r} is unknown: use one of {SCOPES}")

    @property
    def label(self) -> str:
        importance = {"magnitude": "", "taylor": "-tay", "bn-scale": "-bn"}[self.importance]
        scope = "-g" if self.scope == "global" else ""
        return f"prune{self.ratio:.2f}{importance}{scope}"


REFERENCE: Mapping[str, Any] = {
    "prune.ratio": 0.5,
    "prune.importance": "magnitude",
    "prune.scope": "layer",
}


class StructuredPruning:
    name: ClassVar[str] = "prune"
    stage: ClassVar[Literal["model"]] = "model"
    options: ClassVar[Mapping[str, tuple[Any, ...]]] = {}
    changes_weights: ClassVar[bool] = True

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        return {"prune.ratio": 0.0}

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        return REFERENCE

    def applicability(self, ctx: Context) -> str | None:
        return None

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> PruneParams | None:
        ratio = trial.suggest_float("prune.ratio", 0.0, MAX_RATIO, step=0.05)
        if ratio == 0:
            return None
        return PruneParams(
            round(ratio, 6),
            importance=trial.suggest_categorical("prune.importance", IMPORTANCES),
            scope=trial.suggest_categorical("prune.scope", SCOPES),
        )

    def apply(self, model: nn.Module, params: PruneParams, ctx: Context) -> nn.Module:
        # sensitive layers (--use-sensitivity) stop at their cap; those another lever
        # removed (elastic depth drops whole blocks) have nothing left to cap
        present = {name for name, _ in model.named_modules()}
        capped = {
            name: cap
            for name, cap in ctx.layer_caps.items()
            if cap < params.ratio and name in present
        }
        return prune_channels(
            model,
            ctx.task.example_inputs(1),
            ratio=params.ratio,
            importance=params.importance,
            scope=params.scope,
            task=ctx.task,
            layer_ratios=capped or None,
            in_place=ctx.owns_model,
        )


def prune_channels(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    ratio: float,
    importance: str = "magnitude",
    scope: str = "layer",
    task: Task | None = None,
    layer_ratios: Mapping[str, float] | None = None,
    in_place: bool = False,
) -> nn.Module:
    """A copy of ``model`` (``model`` itself with ``in_place``) with ``ratio`` of its
    channels removed.

    The output layer is never pruned: its width is the number of classes. ``taylor`` needs
    ``task`` for a few training batches to take gradients on. ``layer_ratios`` overrides
    ``ratio`` for the dependency groups of the named layers (``prunable_layers``): with
    ``ratio=0`` it prunes those layers alone, as sensitivity analysis does.
    """
    import torch_pruning as tp

    pruned = working_copy(model, in_place=in_place).eval()
    # ignored_layers and the per-layer ratios must name modules of the pruned model.
    ignored = [output_layer(pruned)]
    modules = dict(pruned.named_modules())
    unknown = sorted(set(layer_ratios or {}) - set(modules))
    if unknown:
        raise TechniqueError(f"no layer named {unknown[0]!r} in the model to prune")
    per_layer = {modules[name]: r for name, r in (layer_ratios or {}).items()}
    attention = attention_modules(pruned)
    heads: dict[str, Any] = {}
    if attention:
        qkv_heads = {m.qkv: m.num_heads for m in attention}
        fewest = min(qkv_heads.values())
        heads = dict(
            num_heads=qkv_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            # torch-pruning removes ceil(ratio x heads) per layer: keep at least one
            head_pruning_ratio=min(ratio, (fewest - 1) / fewest),
            head_pruning_ratio_dict={
                m.qkv: per_layer[m.qkv] for m in attention if m.qkv in per_layer
            }
            or None,
        )
        ignored.append(first_layer(pruned))  # its group is the residual stream: kept
    criteria = {
        "magnitude": lambda: tp.importance.MagnitudeImportance(p=2),
        "taylor": lambda: tp.importance.TaylorImportance(),
        "bn-scale": lambda: tp.importance.BNScaleImportance(),
    }
    with warnings.catch_warnings():
        # a transformer's position embedding is a bare parameter: torch-pruning says it
        # would prune its last dimension, the residual width, whose group is kept anyway
        warnings.filterwarnings("ignore", "Unwrapped parameters detected", UserWarning)
        pruner = tp.pruner.MetaPruner(
            pruned,
            example_inputs,
            importance=criteria[importance](),
            pruning_ratio=ratio,
            pruning_ratio_dict=per_layer or None,
            global_pruning=scope == "global",
            max_pruning_ratio=MAX_LAYER_RATIO,
            ignored_layers=ignored,
            round_to=ROUND_TO,
            **heads,
        )
    if importance == "taylor":
        if task is None:
            raise TechniqueError("prune.importance='taylor' needs training data for gradients")
        _accumulate_gradients(pruned, task)
    pruner.step()
    for module in attention:  # the heads left, and their width, as torch-pruning counts
        if pruner.num_heads[module.qkv] < 1:  # global ranking may empty a block
            raise TechniqueError(
                f"prune.ratio={ratio:g} ({scope}) removes every attention head of a block; "
                "use a smaller ratio or prune.scope=layer"
            )
        module.num_heads = pruner.num_heads[module.qkv]
        module.head_dim = module.qkv.out_features // (3 * module.num_heads)
    pruned.zero_grad(set_to_none=True)
    return pruned.eval()


def _accumulate_gradients(model: nn.Module, task: Task) -> None:
    """Sum the task loss's gradients over a few training batches (eval mode: BN frozen)."""
    model.zero_grad(set_to_none=True)
    for inputs, targets in itertools.islice(task.data("train"), TAYLOR_BATCHES):
        task.loss(model(inputs), targets).backward()


def first_layer(model: nn.Module) -> nn.Module:
    """The first Linear or Conv layer in registration order: the one reading the input."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if not layers:
        raise TechniqueError("the model has no Linear or Conv2d layer to prune around")
    return layers[0]


def output_layer(model: nn.Module) -> nn.Module:
    """The last Linear or Conv layer in registration order: the one producing the logits."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if not layers:
        raise TechniqueError("the model has no Linear or Conv2d layer to prune around")
    return layers[-1]


def prunable_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """The layers whose output channels can be pruned, one per dependency group.

    Each name is the group's root, the first layer of the group in the model's order: what
    ``prune_channels(layer_ratios=...)`` takes. Layers coupled to it (the batch norm, a
    depthwise convolution, the other side of a residual sum) are pruned with it and not
    listed again. The output layer is left out.
    """
    import torch_pruning as tp

    probe = copy.deepcopy(model).eval()  # tracing the graph must not touch the model
    graph = tp.DependencyGraph().build_dependency(probe, example_inputs)
    names = {module: name for name, module in probe.named_modules()}
    groups = graph.get_all_groups(
        ignored_layers=[output_layer(probe)], root_module_types=[nn.Conv2d, nn.Linear]
    )
    return [names[group[0].dep.target.module] for group in groups]
