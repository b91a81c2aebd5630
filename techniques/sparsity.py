"""Unstructured magnitude pruning: individual weights set to zero (torch.nn.utils.prune).

``sparse.ratio`` of the weights of every Conv2d and Linear layer except the output layer
are zeroed, the smallest by magnitude, within each layer (``sparse.scope=layer``) or
ranked across all of them (``global``). A global ranking compares each weight's magnitude
with its layer's mean magnitude: layers are followed by batch norm, so their raw scales are
arbitrary, and ranking raw magnitudes emptied every late depthwise convolution of the
digits model (100% zeros; 0.10 accuracy after fine-tuning). The masks stay in place
through the recovery fine-tune (PyTorch's pruning reparametrisation multiplies the weights
by them in every forward), so pruned weights stay zero.

Honest about what it buys: a dense runtime multiplies the zeros like any other number, so
the file is the same size and runs no faster; the zeros only pay where the file is
compressed (``search.core.oneshot`` reports the compressed size and the sparsity) or a sparse
kernel runs it. For that reason the search leaves the lever out unless the option
``sparse.searched`` is true; ``search prune --unstructured`` sets it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from techniques.base import Context, TechniqueError
from techniques.pruning import output_layer
from techniques.surgery import working_copy

if TYPE_CHECKING:
    import optuna

SCOPES = ("layer", "global")
MAX_RATIO = 0.95


@dataclass(frozen=True)
class SparseParams:
    """``ratio`` of the weights zeroed, smallest magnitude first, within ``scope``."""

    ratio: float
    scope: str = "layer"

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise TechniqueError(f"sparse.ratio={self.ratio} must be in [0, 1), e.g. 0.8")
        if self.scope not in SCOPES:
            raise TechniqueError(f"sparse.scope={self.scope!r} is unknown: use one of {SCOPES}")

    @property
    def label(self) -> str:
        return f"sparse{self.ratio:.2f}" + ("-g" if self.scope == "global" else "")


REFERENCE: Mapping[str, Any] = {"sparse.ratio": 0.8, "sparse.scope": "global"}


class UnstructuredPruning:
    name: ClassVar[str] = "sparse"
    stage: ClassVar[Literal["model"]] = "model"
    # Off the search unless asked: zeros in a dense file change neither its size nor speed.
    options: ClassVar[Mapping[str, tuple[Any, ...]]] = {"sparse.searched": (False, True)}
    changes_weights: ClassVar[bool] = True

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        return {"sparse.ratio": 0.0} if _searched(ctx) else {}

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        return REFERENCE if _searched(ctx) else None

    def applicability(self, ctx: Context) -> str | None:
        return None

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> SparseParams | None:
        if not _searched(ctx):
            return None
        ratio = trial.suggest_float("sparse.ratio", 0.0, MAX_RATIO, step=0.05)
        if ratio == 0:
            return None
        return SparseParams(round(ratio, 6), trial.suggest_categorical("sparse.scope", SCOPES))

    def apply(self, model: nn.Module, params: SparseParams, ctx: Context) -> nn.Module:
        return zero_weights(model, ratio=params.ratio, scope=params.scope, in_place=ctx.owns_model)


def _searched(ctx: Context) -> bool:
    return bool(ctx.options.get("sparse.searched", False))


def zero_weights(
    model: nn.Module, *, ratio: float, scope: str = "layer", in_place: bool = False
) -> nn.Module:
    """A copy of ``model`` (``model`` itself with ``in_place``) with ``ratio`` of its
    prunable weights set to zero, kept at zero.

    PyTorch's pruning utilities choose the weights (L1, per layer or global); the masks are
    then made permanent, so the exported file holds plain weights (a reparametrised
    ``weight_orig * mask`` would stop the exporter folding batch norm into the
    convolution), and a gradient hook per weight keeps the zeros through fine-tuning
    (SGD's momentum and weight decay leave a zero weight with zero gradient at zero). Hooks
    do not survive ``copy.deepcopy``: the trial fine-tunes this very object, and the levers
    after this one change it in place (``Context.owns_model``).
    """
    from torch.nn.utils import prune

    masked = working_copy(model, in_place=in_place).eval()
    output = output_layer(masked)
    layers = [
        (module, "weight")
        for module in masked.modules()
        if isinstance(module, nn.Conv2d | nn.Linear) and module is not output
    ]
    if not layers:
        raise TechniqueError("the model has no Conv2d or Linear layer besides its output")
    if scope == "global":
        prune.global_unstructured(
            layers,
            pruning_method=prune.L1Unstructured,
            importance_scores=_scale_free_magnitudes(layers),
            amount=ratio,
        )
    else:
        for module, name in layers:
            prune.l1_unstructured(module, name, amount=ratio)
    for module, name in layers:
        mask = getattr(module, f"{name}_mask").detach().clone()
        prune.remove(module, name)
        weight: torch.Tensor = getattr(module, name)
        weight.register_hook(_KeepZeros(mask))
    return masked


def _scale_free_magnitudes(
    layers: Sequence[tuple[nn.Module, str]],
) -> dict[tuple[nn.Module, str], torch.Tensor]:
    """Each weight's magnitude over its layer's mean magnitude: comparable across layers."""
    scores = {}
    for module, name in layers:
        magnitude = getattr(module, name).detach().abs()
        scores[(module, name)] = magnitude / magnitude.mean().clamp_min(1e-12)
    return scores


class _KeepZeros:
    """A gradient hook: no gradient where the mask is zero, so those weights stay zero."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def __call__(self, gradient: torch.Tensor) -> torch.Tensor:
        return gradient * self.mask.to(gradient.device)  # the model may train on CUDA


def sparsity(model: nn.Module) -> float:
    """The share of zero weights over the prunable layers (the output layer left out)."""
    output = output_layer(model)
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear) and module is not output:
            weight = module.weight
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total if total else 0.0
