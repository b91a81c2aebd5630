"""LoRA recovery fine-tuning: train low-rank adapters beside frozen weights, then merge.

Each ungrouped Conv2d and Linear layer ``W`` gets an adapter ``B @ A`` of rank r (A: a
convolution like W's into r channels, B: 1x1 from r channels, initialised to zero, so the
model starts unchanged). Only adapters and batch norms train. Before export the adapters
are merged into ``W`` (``W + B A``), so the deployed model has exactly the original layers
and inference pays nothing for them. ``lora.rank = 0`` is full fine-tuning (the lever off).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from search.train.loop import Recipe
from techniques.base import Context, TechniqueError
from techniques.surgery import replace_modules

if TYPE_CHECKING:
    import optuna

RANKS = (0, 2, 4, 8)


@dataclass(frozen=True)
class LoRAParams:
    rank: int

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise TechniqueError(f"lora.rank={self.rank} must be at least 1 (0 turns LoRA off)")

    @property
    def label(self) -> str:
        return f"lora{self.rank}"


class LoRA:
    name: ClassVar[str] = "lora"
    stage: ClassVar[Literal["training"]] = "training"
    options: ClassVar[Mapping[str, tuple[Any, ...]]] = {}

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        return {"lora.rank": 0}

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        return None

    def applicability(self, ctx: Context) -> str | None:
        if not any(_adaptable(m) for m in ctx.base_model.modules()):
            return "no ungrouped Conv2d or Linear layer"
        return None

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> LoRAParams | None:
        if self.applicability(ctx) is not None:
            return None
        rank = trial.suggest_categorical("lora.rank", RANKS)
        return LoRAParams(rank) if rank > 0 else None

    def configure(self, recipe: Recipe, params: LoRAParams, ctx: Context) -> Recipe:
        return replace(
            recipe,
            prepare=(*recipe.prepare, lambda model: add_adapters(model, params.rank)),
            finish=(merge_adapters, *recipe.finish),
        )


class LoRALayer(nn.Module):
    """A frozen layer plus a trainable rank-r update: ``base(x) + up(down(x))``."""

    def __init__(self, base: nn.Conv2d | nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        self.down: nn.Linear | nn.Conv2d
        self.up: nn.Linear | nn.Conv2d
        if isinstance(base, nn.Linear):
            self.down = nn.Linear(base.in_features, rank, bias=False)
            self.up = nn.Linear(rank, base.out_features, bias=False)
        else:
            self.down = nn.Conv2d(
                base.in_channels, rank, base.kernel_size, base.stride, base.padding,  # type: ignore[arg-type]
                dilation=base.dilation, bias=False,  # type: ignore[arg-type]
            )  # fmt: skip
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.up.weight)  # starts as the identity update

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base layer with ``up @ down`` added to its weight."""
        up = self.up.weight.flatten(1)  # (out, r)
        down = self.down.weight.flatten(1)  # (r, in * kh * kw)
        self.base.weight += (up @ down).reshape(self.base.weight.shape)
        for parameter in self.base.parameters():
            parameter.requires_grad_(True)
        return self.base


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def add_adapters(model: nn.Module, rank: int) -> nn.Module:
    """Wrap every adaptable layer in place; freeze everything but adapters and batch norms."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)

    def wrap(_name: str, module: nn.Module) -> nn.Module | None:
        if isinstance(module, LoRALayer):
            return module  # already adapted: keep, and leave its parts alone
        return LoRALayer(module, rank) if _adaptable(module) else None  # type: ignore[arg-type]

    replace_modules(model, wrap)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            for parameter in module.parameters():
                parameter.requires_grad_(True)
    return model


def merge_adapters(model: nn.Module) -> nn.Module:
    """Replace every LoRALayer by its merged base layer, in place; all weights trainable."""
    replace_modules(model, lambda _, m: m.merged() if isinstance(m, LoRALayer) else None)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
