"""MACs counted with thop leave the counted model as it was, even when counting fails."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from search.core.objective import THOP_BUFFERS, count_macs_and_params


class Gate(nn.Module):
    """A module thop has no rule for, holding one it has: thop leaves its buffers."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x.mean((2, 3), keepdim=True)))


class Refuses(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("not this input")


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish(), Gate(8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip


def _left_behind(model: nn.Module) -> list[str]:
    return [
        f"{name or 'model'}: {what}"
        for name, module in model.named_modules()
        for what in [*(b for b in THOP_BUFFERS if b in module._buffers)]
        + (["forward hook"] if module._forward_hooks else [])
    ]


def test_the_count_leaves_the_model_as_it_was() -> None:
    model = _model().train()
    keys = list(model.state_dict())
    example = torch.randn(1, 1, 8, 8)

    macs, params = count_macs_and_params(model, example)

    assert (macs, params) == count_macs_and_params(copy.deepcopy(model), example)
    assert macs > 8 * 9 * 64 and params == sum(p.numel() for p in model.parameters())
    assert _left_behind(model) == []
    assert list(model.state_dict()) == keys
    assert model.training


def test_a_failing_count_leaves_no_hooks_behind() -> None:
    model = nn.Sequential(_model(), Refuses())

    with pytest.raises(ValueError, match="not this input"):
        count_macs_and_params(model, torch.randn(1, 1, 8, 8))

    assert _left_behind(model) == []
    assert model[0](torch.randn(2, 1, 8, 8)).shape == (2, 3)
