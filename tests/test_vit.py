"""The digits transformer: its attention kernels, head pruning and the attention lever."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from search.core.objective import count_macs_and_params
from search.measure.onnx_runtime import export_onnx
from search.measure.runtimes import evaluate
from search.tasks.loader import load_task
from search.tasks.vit import ViT, ViTConfig
from techniques.attention import (
    attention_modules,
    linear_attention,
    softmax_attention,
    swap_kernel,
)
from techniques.pruning import prune_channels

SMALL = ViTConfig(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_hidden=64)


def _heads(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows).reshape(1, 1, len(rows), len(rows[0]))  # (B=1, h=1, N, d)


def test_linear_attention_matches_the_hand_computed_output() -> None:
    # Non-negative q and k: phi(x) = elu(x) + 1 = x + 1.
    q = _heads([[0.0, 1.0], [1.0, 0.0]])  # phi: [1, 2], [2, 1]
    k = _heads([[1.0, 0.0], [0.0, 0.0]])  # phi: [2, 1], [1, 1]
    v = _heads([[1.0, 2.0], [3.0, 4.0]])
    # sum_j phi(k_j) v_j^T = [[5, 8], [4, 6]]; sum_j phi(k_j) = [3, 2]
    # row 0: [1, 2] @ kv = [13, 20], over [1, 2] . [3, 2] = 7
    # row 1: [2, 1] @ kv = [14, 22], over [2, 1] . [3, 2] = 8
    expected = _heads([[13 / 7, 20 / 7], [14 / 8, 22 / 8]])
    assert torch.allclose(linear_attention(q, k, v, eps=0.0), expected, atol=1e-6)


def test_linear_attention_uses_elu_below_zero() -> None:
    q, k, v = _heads([[-1.0]]), _heads([[-2.0], [0.0]]), _heads([[1.0], [5.0]])
    phi_q, phi_k = math.exp(-1.0), [math.exp(-2.0), 1.0]
    weights = [phi_q * phi for phi in phi_k]
    expected = (weights[0] * 1.0 + weights[1] * 5.0) / sum(weights)
    assert linear_attention(q, k, v, eps=0.0).item() == pytest.approx(expected, rel=1e-6)


def test_softmax_attention_is_scaled_dot_product_attention() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    reference = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(softmax_attention(q, k, v), reference, atol=1e-6)


def _linear_macs_per_block(config: ViTConfig, heads: int, hidden: int) -> int:
    """Multiply-accumulates of one block's Linear layers: qkv, proj, and the MLP's two."""
    tokens, width, inner = config.num_tokens, config.embed_dim, heads * config.embed_dim
    inner //= config.num_heads  # heads x head width
    return tokens * (width * 3 * inner + inner * width + 2 * width * hidden)


def test_head_pruning_removes_whole_heads_and_the_macs_predicted() -> None:
    torch.manual_seed(0)
    model = ViT(SMALL).eval()
    example = torch.randn(1, 1, 16, 16)
    before, _ = count_macs_and_params(model, example)

    pruned = prune_channels(model, example, ratio=0.5)

    for module in attention_modules(pruned):
        assert (module.num_heads, module.head_dim) == (2, 8)  # 4 heads of 8 -> 2 heads of 8
    assert all(block.mlp[0].out_features == 32 for block in pruned.blocks)
    assert pruned.patch_embed.out_channels == 32  # the residual stream's width is kept
    after, _ = count_macs_and_params(pruned, example)
    saved = SMALL.depth * (
        _linear_macs_per_block(SMALL, 4, 64) - _linear_macs_per_block(SMALL, 2, 32)
    )
    assert before - after == saved
    assert pruned(torch.randn(3, 1, 16, 16)).shape == (3, 10)


def test_pruned_transformer_exports_and_runs_as_in_pytorch(tmp_path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    example = torch.randn(4, 1, 16, 16)
    model = swap_kernel(prune_channels(ViT(SMALL).eval(), example[:1], ratio=0.5), "linear")
    artifact = export_onnx(model, example[:1], tmp_path / "vit.onnx")
    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    (outputs,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    np.testing.assert_allclose(outputs, model(example).detach().numpy(), atol=1e-5)


def test_kernel_swap_keeps_the_projections(tiny_vit_task, tmp_path) -> None:
    base = tiny_vit_task.build_model()
    linear = swap_kernel(base, "linear")
    for old, new in zip(attention_modules(base), attention_modules(linear), strict=True):
        assert new.kernel == "linear" and getattr(old, "kernel", "softmax") == "softmax"
        assert torch.equal(old.qkv.weight, new.qkv.weight)
        assert torch.equal(old.proj.weight, new.proj.weight)
    inputs = tiny_vit_task.example_inputs(4)
    assert not torch.allclose(base(inputs), linear(inputs))  # another function until tuned
    artifact = export_onnx(base, tiny_vit_task.example_inputs(1), tmp_path / "base.onnx")
    accuracy = evaluate(artifact, tiny_vit_task.data("val"), tiny_vit_task.metric)
    assert accuracy > 0.8  # the tiny transformer learned the digits


def test_digits_vit_is_a_builtin_task(tmp_path) -> None:
    task = load_task("digits-vit", cache_dir=tmp_path)
    assert task.name == "digits-vit"
    assert task.example_inputs(2).shape == (2, 1, 32, 32)


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Which rows of ``original`` survive in ``pruned`` (exact copies, in order)."""
    return [int((original == row).all(dim=1).nonzero()[0]) for row in pruned]


def test_head_pruning_computes_what_the_model_computes_without_those_heads() -> None:
    import copy

    torch.manual_seed(0)
    model = ViT(SMALL).eval()
    pruned = prune_channels(model, torch.randn(1, 1, 16, 16), ratio=0.5)
    masked = copy.deepcopy(model)
    width = SMALL.embed_dim
    for block, kept_block, reference in zip(
        model.blocks, pruned.blocks, masked.blocks, strict=True
    ):
        rows = _kept_rows(block.attn.qkv.weight, kept_block.attn.qkv.weight)
        kept_dims = {r for r in rows if r < width}  # the queries' rows, head by head
        with torch.no_grad():
            for dim in set(range(width)) - kept_dims:  # a dropped head adds nothing
                reference.attn.proj.weight[:, dim] = 0
            units = set(_kept_rows(block.mlp[0].weight, kept_block.mlp[0].weight))
            for unit in set(range(SMALL.mlp_hidden)) - units:
                reference.mlp[3].weight[:, unit] = 0
    inputs = torch.randn(5, 1, 16, 16)
    torch.testing.assert_close(pruned(inputs), masked(inputs), atol=1e-5, rtol=1e-4)
