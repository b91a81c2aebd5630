"""A small vision transformer written out, for the ``digits-vit`` task.

Patches of ``patch_size`` pixels become tokens (a strided convolution), a learned position
embedding is added, and ``depth`` pre-norm blocks follow: multi-head self-attention, then
an MLP (Linear -> GELU -> Linear), each in a residual. The tokens are averaged (no class
token) and a Linear layer gives the logits.

The attention module keeps the names the compression levers look for, as timm's does:
``qkv`` (one Linear producing queries, keys and values), ``proj`` (the output projection),
``num_heads`` and ``head_dim``. Head pruning changes the last two; the attention-variant
lever swaps the kernel (softmax or linear) and keeps both projections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

KERNELS = ("softmax", "linear")


@dataclass(frozen=True)
class ViTConfig:
    """Shape of the transformer; hashed to key the cached baseline."""

    in_channels: int = 1
    num_classes: int = 10
    image_size: int = 32
    patch_size: int = 4
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_hidden: int = 256
    dropout: float = 0.1

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


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


class Attention(nn.Module):
    """Multi-head self-attention over ``(B, N, C)`` tokens, with a softmax or linear kernel."""

    def __init__(self, dim: int, num_heads: int, *, kernel: str = "softmax") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel {kernel!r} is unknown: use one of {KERNELS}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kernel = kernel
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    @classmethod
    def from_projections(
        cls, qkv: nn.Linear, proj: nn.Linear, num_heads: int, *, kernel: str
    ) -> Attention:
        """An attention module around existing projections (their weights are shared)."""
        if qkv.out_features % (3 * num_heads):
            raise ValueError(f"qkv width {qkv.out_features} is not 3 x {num_heads} heads")
        attention = cls(num_heads, num_heads, kernel=kernel)  # placeholder projections
        attention.qkv, attention.proj = qkv, proj
        attention.head_dim = qkv.out_features // (3 * num_heads)
        return attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        attend = linear_attention if self.kernel == "linear" else softmax_attention
        out = attend(q, k, v).transpose(1, 2)  # (B, N, h, d)
        return self.proj(out.reshape(batch, tokens, self.num_heads * self.head_dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """``patch_embed`` -> ``blocks`` -> ``norm`` -> token mean -> ``head``."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.patch_embed = nn.Conv2d(
            config.in_channels, dim, config.patch_size, stride=config.patch_size
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, dim))
        self.blocks = nn.Sequential(
            *(
                Block(dim, config.num_heads, config.mlp_hidden, config.dropout)
                for _ in range(config.depth)
            )
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, config.num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        tokens = self.blocks(tokens + self.pos_embed)
        return self.head(self.norm(tokens).mean(dim=1))
