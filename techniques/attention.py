"""Attention variant: softmax or linear attention, with the projections inherited.

Every attention module (one with ``qkv`` and ``proj`` Linear layers and ``num_heads``,
the shape timm's vision transformers and the built-in ``digits-vit`` share) is replaced by
``KernelAttention`` with the chosen kernel and the same two projection layers, so the
trained weights carry over; recovery fine-tuning then adapts them to the new kernel.
Linear attention (elu + 1 feature map) costs O(N d^2) per head instead of O(N^2 d):
whether that pays on the target is measured, not assumed; ONNX Runtime runs both as plain
MatMuls.

A module is swapped only where it computes plain multi-head softmax attention from those
two projections: checked by running it beside its replacement on random tokens, so one
that normalises queries and keys, or adds a bias or a mask, is left alone rather than
silently changed. The lever applies to models with such modules; for any other model it
says so once and stays off.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from techniques.base import Context, TechniqueError
from techniques.surgery import replace_modules, working_copy

if TYPE_CHECKING:
    import optuna


KERNELS = ("softmax", "linear")


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for ``(B, heads, N, d)`` tensors: O(N^2 d) per head."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, h, N, N)
    return scores.softmax(dim=-1) @ v


def linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Kernelised attention (Katharopoulos et al., 2020) with the feature map elu(x) + 1.

    out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j)): the keys and
    values are summed once into a ``(d, d)`` matrix per head, so the cost is O(N d^2)
    instead of O(N^2 d); it pays only when the tokens outnumber the head width.
    """
    q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
    kv = k.transpose(-2, -1) @ v  # (B, h, d, d)
    normaliser = q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, h, N, 1)
    return (q @ kv) / (normaliser + eps)


class KernelAttention(nn.Module):
    """Multi-head self-attention over ``(B, N, C)`` tokens around existing projections."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, num_heads: int, *, kernel: str) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise TechniqueError(f"attn.kernel={kernel!r} is unknown: use one of {KERNELS}")
        if qkv.out_features % (3 * num_heads):
            raise TechniqueError(f"qkv width {qkv.out_features} is not 3 x {num_heads} heads")
        self.qkv, self.proj = qkv, proj  # shared with the module replaced: weights carry over
        self.num_heads = num_heads
        self.head_dim = qkv.out_features // (3 * num_heads)
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        attend = linear_attention if self.kernel == "linear" else softmax_attention
        out = attend(q, k, v).transpose(1, 2)  # (B, N, h, d)
        return self.proj(out.reshape(batch, tokens, self.num_heads * self.head_dim))


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

    Head pruning works on any of them; the kernel swap only where ``computes_plain_attention``
    (others may normalise queries and keys or take masks, which a swap would drop).
    """
    return (
        isinstance(getattr(module, "qkv", None), nn.Linear)
        and isinstance(getattr(module, "proj", None), nn.Linear)
        and isinstance(getattr(module, "num_heads", None), int)
    )


def attention_modules(model: nn.Module) -> list[AttentionLike]:
    """The model's attention modules, in registration order."""
    return [cast(AttentionLike, m) for m in model.modules() if is_attention(m)]


_SWAPPABLE: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def swappable(model: nn.Module) -> bool:
    """Every attention module computes plain attention, so its kernel can be changed.

    Cached per model object: ``space`` asks for every trial and the base model does not
    change during a run.
    """
    if model not in _SWAPPABLE:
        modules = [m for m in model.modules() if is_attention(m)]
        _SWAPPABLE[model] = bool(modules) and all(computes_plain_attention(m) for m in modules)
    return _SWAPPABLE[model]


def computes_plain_attention(module: nn.Module, *, tokens: int = 5) -> bool:
    """Whether ``module`` gives what ``KernelAttention`` gives from its own projections.

    Run in eval mode on random tokens (no dropout), with its own kernel: what the module
    computes is the test, not its class or the names of its other parts.
    """
    found = cast(AttentionLike, module)
    try:
        replacement = KernelAttention(
            found.qkv, found.proj, found.num_heads, kernel=kernel_of(found)
        )
    except TechniqueError:
        return False
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, tokens, found.qkv.in_features, generator=generator)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return bool(torch.allclose(module(x), replacement(x), atol=1e-5, rtol=1e-4))
    except Exception:  # a module that needs other arguments is not plain attention either
        return False
    finally:
        module.train(was_training)


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
            return (
                "its attention modules compute more than softmax attention from qkv and proj "
                "(query/key norms, a bias or a mask), which a kernel swap would drop"
            )
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
        return swap_kernel(model, params.kernel, in_place=ctx.owns_model)


def swap_kernel(model: nn.Module, kernel: str, *, in_place: bool = False) -> nn.Module:
    """A copy of ``model`` (``model`` itself with ``in_place``) whose attention modules use
    ``kernel``, projections kept."""
    swapped = working_copy(model, in_place=in_place)

    def rule(_name: str, module: nn.Module) -> nn.Module | None:
        if not is_attention(module):
            return None
        found = cast(AttentionLike, module)
        return KernelAttention(found.qkv, found.proj, found.num_heads, kernel=kernel)

    return replace_modules(swapped, rule).eval()
