"""Attention variant: softmax or linear attention, with the projections inherited.

Every attention module (one with ``qkv`` and ``proj`` Linear layers and ``num_heads``,
the names timm and the built-in ``digits-vit`` use) is replaced by the built-in
``Attention`` with the chosen kernel and the same two projection layers, so the trained
weights carry over; recovery fine-tuning then adapts them to the new kernel. Linear
attention (elu + 1 feature map) costs O(N d^2) per head instead of O(N^2 d): whether that
pays on the target is measured, not assumed; ONNX Runtime runs both as plain MatMuls.

The lever applies to models with attention modules; for any other model it says so once
and stays off.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, cast

from torch import nn

from search.tasks.vit import KERNELS, Attention
from techniques.base import Context, TechniqueError
from techniques.surgery import replace_modules

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class AttentionParams:
    """``kernel``: ``softmax`` or ``linear``, for every attention module."""

    kernel: str

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise TechniqueError(f"attn.kernel={self.kernel!r} is unknown: use one of {KERNELS}")

    @property
    def label(self) -> str:
        return f"attn-{self.kernel}"


class AttentionLike(Protocol):
    """What the levers read and change in an attention module."""

    qkv: nn.Linear
    proj: nn.Linear
    num_heads: int
    head_dim: int


def is_attention(module: nn.Module) -> bool:
    """A multi-head attention module by the names it keeps (timm's and ours).

    Head pruning works on any of them; the kernel swap only on the built-in ``Attention``
    (``swappable``): others may normalise queries and keys or take masks, which a swap
    would silently drop.
    """
    return (
        isinstance(getattr(module, "qkv", None), nn.Linear)
        and isinstance(getattr(module, "proj", None), nn.Linear)
        and isinstance(getattr(module, "num_heads", None), int)
    )


def attention_modules(model: nn.Module) -> list[AttentionLike]:
    """The model's attention modules, in registration order."""
    return [cast(AttentionLike, m) for m in model.modules() if is_attention(m)]


def swappable(model: nn.Module) -> bool:
    """Every attention module is the built-in one, whose kernel the lever can change."""
    modules = [m for m in model.modules() if is_attention(m)]
    return bool(modules) and all(isinstance(m, Attention) for m in modules)


def kernel_of(module: AttentionLike) -> str:
    return str(getattr(module, "kernel", "softmax"))


class AttentionKernel:
    name: ClassVar[str] = "attn"
    stage: ClassVar[Literal["model"]] = "model"
    options: ClassVar[Mapping[str, tuple[Any, ...]]] = {}
    changes_weights: ClassVar[bool] = True

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        modules = attention_modules(ctx.base_model)
        return {"attn.kernel": kernel_of(modules[0])} if swappable(ctx.base_model) else {}

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        return {"attn.kernel": "linear"} if swappable(ctx.base_model) else None

    def applicability(self, ctx: Context) -> str | None:
        if not attention_modules(ctx.base_model):
            return "no attention modules (qkv and proj Linear layers, num_heads)"
        if not swappable(ctx.base_model):
            return "its attention modules are not search.tasks.vit.Attention"
        return None

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> AttentionParams | None:
        modules = attention_modules(ctx.base_model)
        if not swappable(ctx.base_model):
            return None  # nothing to swap: no parameter either
        kernel = trial.suggest_categorical("attn.kernel", KERNELS)
        if all(kernel_of(m) == kernel for m in modules):
            return None  # the model's own kernel: the lever is off
        return AttentionParams(str(kernel))

    def apply(self, model: nn.Module, params: AttentionParams, ctx: Context) -> nn.Module:
        return swap_kernel(model, params.kernel)


def swap_kernel(model: nn.Module, kernel: str) -> nn.Module:
    """A copy of ``model`` whose attention modules use ``kernel``, projections kept."""
    swapped = copy.deepcopy(model)

    def rule(_name: str, module: nn.Module) -> nn.Module | None:
        if not is_attention(module):
            return None
        found = cast(AttentionLike, module)
        return Attention.from_projections(found.qkv, found.proj, found.num_heads, kernel=kernel)

    return replace_modules(swapped, rule).eval()
