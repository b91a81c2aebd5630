import pytest
import torch
from torch import nn

from search.core.objective import count_macs_and_params
from search.tasks.mobilenetv2 import MobileNetV2, MobileNetV2Config
from techniques.lowrank import factorise, rank_for, svd_pair


@pytest.mark.parametrize(
    "layer", [nn.Linear(24, 16), nn.Conv2d(24, 16, 1)], ids=["linear", "conv1x1"]
)
def test_full_rank_reproduces_the_layer(layer) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 24) if isinstance(layer, nn.Linear) else torch.randn(4, 24, 5, 5)
    pair = svd_pair(layer, rank=16)
    torch.testing.assert_close(pair(x), layer(x), atol=1e-4, rtol=1e-4)


def test_truncation_is_the_best_low_rank_approximation() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(32, 32, bias=False)
    pair = svd_pair(layer, rank=8)
    approximation = pair[1].weight @ pair[0].weight
    singular = torch.linalg.svdvals(layer.weight.detach())
    error = torch.linalg.matrix_norm(layer.weight.detach() - approximation)
    torch.testing.assert_close(error, singular[8:].square().sum().sqrt(), atol=1e-4, rtol=1e-4)


def test_rank_is_kept_only_where_it_saves_macs() -> None:
    assert rank_for(64, 64, 0.25) == 16  # 16 * 128 < 4096
    assert rank_for(64, 64, 0.5) is None  # 32 * 128 == 4096: no saving
    assert rank_for(8, 48, 0.75) == 6  # 6 * 56 = 336 < 384
    assert rank_for(8, 48, 1.0) is None  # 8 * 56 = 448 > 384: it would grow


def test_lower_rank_lowers_macs_and_keeps_outputs_shaped() -> None:
    torch.manual_seed(0)
    model = MobileNetV2(MobileNetV2Config(width_mult=0.5, last_channels=128)).eval()
    x = torch.randn(2, 1, 32, 32)
    macs, _ = count_macs_and_params(model, x[:1])
    low, _ = count_macs_and_params(factorise(model, rank_ratio=0.25), x[:1])
    assert low < 0.85 * macs
    assert factorise(model, rank_ratio=0.25)(x).shape == (2, 10)
    again, _ = count_macs_and_params(model, x[:1])
    assert again == macs  # the original is untouched
