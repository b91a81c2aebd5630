"""Low-rank factorisation of Linear and 1x1 convolution layers by truncated SVD.

A layer ``W`` of shape (out n, in m) becomes two: ``A`` (r, m) then ``B`` (n, r) with
``B @ A`` the best rank-r approximation of ``W`` (Eckart-Young), the singular values split
evenly between them. It costs ``r * (m + n)`` MACs per position instead of ``m * n``, so a
layer is factorised only where ``r < m * n / (m + n)``; elsewhere it would grow. The rank
is a share of ``min(m, n)``, searched.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from techniques.base import Context, TechniqueError
from techniques.surgery import working_copy

if TYPE_CHECKING:
    import optuna

RANK_RATIOS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


@dataclass(frozen=True)
class LowRankParams:
    """``rank_ratio``: kept rank as a share of min(in, out), in (0, 1]."""

    rank_ratio: float

    def __post_init__(self) -> None:
        if not 0.0 < self.rank_ratio <= 1.0:
            raise TechniqueError(f"lowrank.rank_ratio={self.rank_ratio} must be in (0, 1]")

    @property
    def label(self) -> str:
        return f"lr{self.rank_ratio:g}"


class LowRank:
    name: ClassVar[str] = "lowrank"
    stage: ClassVar[Literal["model"]] = "model"
    options: ClassVar[Mapping[str, tuple[Any, ...]]] = {}
    changes_weights: ClassVar[bool] = True

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        return {"lowrank.rank_ratio": 0.0}

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        return None

    def applicability(self, ctx: Context) -> str | None:
        if not any(True for _ in factorisable_layers(ctx.base_model)):
            return "no Linear or 1x1 convolution layer"
        return None

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> LowRankParams | None:
        if self.applicability(ctx) is not None:
            return None
        ratio = trial.suggest_categorical("lowrank.rank_ratio", RANK_RATIOS)
        return LowRankParams(ratio) if ratio > 0 else None

    def apply(self, model: nn.Module, params: LowRankParams, ctx: Context) -> nn.Module:
        return factorise(model, rank_ratio=params.rank_ratio, in_place=ctx.owns_model)


def factorisable_layers(model: nn.Module) -> Iterator[tuple[str, nn.Linear | nn.Conv2d]]:
    """(qualified name, layer) of every Linear and ungrouped 1x1 stride-1 Conv2d."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d)
            and module.kernel_size == (1, 1)
            and module.groups == 1
            and module.stride == (1, 1)
            and module.padding in ((0, 0), "valid")
        ):
            yield name, module


def rank_for(in_features: int, out_features: int, rank_ratio: float) -> int | None:
    """The kept rank, or None where factorising would not save MACs."""
    rank = max(1, round(rank_ratio * min(in_features, out_features)))
    saves = rank * (in_features + out_features) < in_features * out_features
    return rank if saves else None


def factorise(model: nn.Module, *, rank_ratio: float, in_place: bool = False) -> nn.Module:
    """A copy of ``model`` (``model`` itself with ``in_place``) with every layer that saves
    MACs replaced by its rank-r SVD pair."""
    factorised = working_copy(model, in_place=in_place).eval()
    for name, layer in list(factorisable_layers(factorised)):
        in_features, out_features = _features(layer)
        rank = rank_for(in_features, out_features, rank_ratio)
        if rank is not None:
            factorised.set_submodule(name, svd_pair(layer, rank))
    return factorised


def svd_pair(layer: nn.Linear | nn.Conv2d, rank: int) -> nn.Sequential:
    """Two layers whose product is the best rank-``rank`` approximation of ``layer``."""
    weight = layer.weight.detach().flatten(1)  # (out, in)
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:rank].sqrt()
    first_weight = root[:, None] * vh[:rank]  # (r, in)
    second_weight = u[:, :rank] * root[None, :]  # (out, r)
    has_bias = layer.bias is not None
    first: nn.Module
    second: nn.Module
    if isinstance(layer, nn.Linear):
        first = nn.Linear(weight.shape[1], rank, bias=False)
        second = nn.Linear(rank, weight.shape[0], bias=has_bias)
        first.weight.data.copy_(first_weight)
        second.weight.data.copy_(second_weight)
    else:
        first = nn.Conv2d(weight.shape[1], rank, 1, bias=False)
        second = nn.Conv2d(rank, weight.shape[0], 1, bias=has_bias)
        first.weight.data.copy_(first_weight[:, :, None, None])
        second.weight.data.copy_(second_weight[:, :, None, None])
    if has_bias:
        assert layer.bias is not None
        second.bias.data.copy_(layer.bias.detach())  # type: ignore[union-attr]
    return nn.Sequential(first, second)


def _features(layer: nn.Linear | nn.Conv2d) -> tuple[int, int]:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.in_channels, layer.out_channels
