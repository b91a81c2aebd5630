"""A small vision transformer written out, for the ``digits-vit`` task.

Patches of ``patch_size`` pixels become tokens (a strided convolution), a learned position
embedding is added, and ``depth`` pre-norm blocks follow: multi-head self-attention, then
an MLP (Linear -> GELU -> Linear), each in a residual. The tokens are averaged (no class
token) and a Linear layer gives the logits.

The attention module is written as timm writes its own: ``qkv`` (one Linear producing
queries, keys and values), ``proj`` (the output projection), ``num_heads`` and
``head_dim``. The levers recognise that shape, not this class: head pruning changes the
last two; the attention-variant lever swaps the kernel and keeps both projections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


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


class Attention(nn.Module):
    """Multi-head softmax self-attention over ``(B, N, C)`` tokens, as timm writes it."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, h, N, N)
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2)  # (B, N, h, d)
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
