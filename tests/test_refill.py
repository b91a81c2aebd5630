"""A final file refilled from its draft's graph is the fine-tuned model, or is refused.

The models are written here the way public libraries write them (other attribute names,
squeeze-excitation, hard-swish, a transformer block on token sequences), never the
project's own classes: the recipes are found by value, for any network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from search.measure.artifact import INPUT_NAME
from search.measure.onnx_runtime import compact_names, export_onnx, onnx_graph_signature
from search.measure.refill import disagreement, make_template, refill, topology_key


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // 4, 1)
        self.fc2 = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(scale))))


class LibraryNet(nn.Module):
    """Stem, a bottleneck with SE and a residual add, a head: as a model zoo writes it."""

    def __init__(self, hidden: int = 48, kernel: int = 3) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.Hardswish()
        self.block = nn.Sequential(
            nn.Conv2d(16, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish(),
            nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            SqueezeExcite(hidden),
            nn.Conv2d(hidden, 16, 1, bias=False), nn.BatchNorm2d(16),
        )  # fmt: skip
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))
        x = x + self.block(x)
        return self.classifier(x.mean((2, 3)))


class TokenNet(nn.Module):
    """Patches, one pre-norm attention block on the token sequence, a head."""

    def __init__(self, dim: int = 24, heads: int = 3) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, 4, stride=4)
        self.pos_embed = nn.Parameter(torch.randn(1, 4, dim) * 0.1)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.heads = heads
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(b, n, c))
        return self.head(x.mean(1))


def _trained(model: nn.Module, steps: int = 1) -> nn.Module:
    """Batch-norm statistics and weights moved off their initial values."""
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        loss = model(torch.randn(16, 1, 8, 8)).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _outputs(path: Path, inputs: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: inputs.numpy()})[0]


@pytest.mark.parametrize("network", [LibraryNet, TokenNet])
def test_a_refilled_file_is_the_fine_tuned_model_in_the_drafts_graph(
    network, tmp_path: Path
) -> None:
    example, check = torch.randn(1, 1, 8, 8), torch.randn(8, 1, 8, 8)
    model = _trained(network())
    draft = export_onnx(model, example, tmp_path / "draft.onnx")
    template, why = make_template(model, draft.path.read_bytes(), example)
    assert template is not None, why
    _trained(model, steps=3)  # "fine-tuning"
    assert disagreement(draft, model, check), "the draft's weights are stale: the check fails"
    refilled, why = refill(template, model, tmp_path / "final.onnx")
    assert refilled is not None, why
    assert disagreement(refilled, model, check) == ""
    exported = export_onnx(model, example, tmp_path / "exported.onnx")
    np.testing.assert_allclose(
        _outputs(refilled.path, check), _outputs(exported.path, check), rtol=1e-4, atol=1e-5
    )
    # the same graph as a fresh export, so the draft's latency is the final file's
    assert onnx_graph_signature(compact_names(refilled).path) == onnx_graph_signature(
        compact_names(exported).path
    )


class Doubled(nn.Module):
    """A weight the exporter computes from a parameter: no tensor of the model holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(10, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ (self.weight * 2).t()


def test_an_initializer_no_tensor_explains_refuses_a_template(tmp_path: Path) -> None:
    example = torch.randn(1, 1, 8, 8)
    model = Doubled().eval()
    draft = export_onnx(model, example, tmp_path / "draft.onnx")
    template, why = make_template(model, draft.path.read_bytes(), example)
    assert template is None
    assert "is no tensor of the model" in why


def test_values_that_coincided_in_the_draft_must_still_agree(tmp_path: Path) -> None:
    """Untrained batch norms share their zero biases, so the exporter wrote one shared
    initializer; once fine-tuning tells them apart the draft's graph cannot hold both."""
    example = torch.randn(1, 1, 8, 8)
    model = LibraryNet().eval()  # every norm at its initial values
    draft = export_onnx(model, example, tmp_path / "draft.onnx")
    template, why = make_template(model, draft.path.read_bytes(), example)
    assert template is not None, why
    assert any(len(recipes) > 1 for recipes in template.recipes.values())
    _trained(model, steps=3)
    refilled, why = refill(template, model, tmp_path / "final.onnx")
    assert refilled is None
    assert "now unequal" in why


def test_a_folded_bias_equal_to_the_norms_own_bias_is_read_as_folded(tmp_path: Path) -> None:
    """A norm whose running mean is zero folds into a bias equal to its own: the node that
    reads the initializer (the convolution) says which recipe it is."""
    example, check = torch.randn(1, 1, 8, 8), torch.randn(8, 1, 8, 8)
    model = _trained(LibraryNet())
    model.bn1.running_mean.zero_()
    draft = export_onnx(model, example, tmp_path / "draft.onnx")
    template, why = make_template(model, draft.path.read_bytes(), example)
    assert template is not None, why
    assert (("folded_bias", "conv_stem", "bn1"),) in template.recipes.values()
    _trained(model, steps=3)  # the mean moves off zero
    refilled, why = refill(template, model, tmp_path / "final.onnx")
    assert refilled is not None, why
    assert disagreement(refilled, model, check) == ""


def test_another_width_of_one_network_refills_its_graph(tmp_path: Path) -> None:
    """A network pruned to another width keeps its topology: the graph exported for one
    width, refilled with the other's weights (depthwise groups too), is the other's."""
    example, check = torch.randn(1, 1, 8, 8), torch.randn(8, 1, 8, 8)
    wide, narrow = _trained(LibraryNet(hidden=48)), _trained(LibraryNet(hidden=40))
    assert topology_key(wide) == topology_key(narrow)
    assert topology_key(LibraryNet(kernel=5)) != topology_key(wide)
    exported = export_onnx(wide, example, tmp_path / "wide.onnx")
    template, why = make_template(wide, exported.path.read_bytes(), example)
    assert template is not None, why
    refilled, why = refill(template, narrow, tmp_path / "narrow.onnx")
    assert refilled is not None, why
    assert disagreement(refilled, narrow, check) == ""
    fresh = export_onnx(narrow, example, tmp_path / "fresh.onnx")
    assert onnx_graph_signature(compact_names(refilled).path) == onnx_graph_signature(
        compact_names(fresh).path
    )


def test_a_graph_of_another_kernel_is_caught_by_the_check(tmp_path: Path) -> None:
    """Were a topology key ever wrong, the refilled file would not compute the model."""
    example, check = torch.randn(1, 1, 8, 8), torch.randn(8, 1, 8, 8)
    three, five = _trained(LibraryNet(kernel=3)), _trained(LibraryNet(kernel=5))
    exported = export_onnx(three, example, tmp_path / "three.onnx")
    template, why = make_template(three, exported.path.read_bytes(), example)
    assert template is not None, why
    refilled, why = refill(template, five, tmp_path / "five.onnx")
    assert refilled is not None, why  # same names, other shapes: written...
    assert disagreement(refilled, five, check)  # ...and refused
