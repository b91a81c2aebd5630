"""Cross-layer equalization: same float outputs, matched ranges, found by structure."""

import itertools

import pytest
import torch
from library_models import library_mobilenet_v2, library_mobilenet_v3_small
from torch import nn

from techniques.bias_correction import round_weights
from techniques.equalization import Pair, equalize, find_pairs, fold_batch_norms


def _calibration(task, batches=2):
    return [inputs for inputs, _ in itertools.islice(task.data("train"), batches)]


def _held_out(task):
    return next(iter(task.data("val")))[0]


@torch.no_grad()
def test_built_in_model_computes_the_same_outputs(tiny_task) -> None:
    model = tiny_task.build_model()
    equalized, pairs = equalize(model, _calibration(tiny_task))
    inputs = _held_out(tiny_task)
    assert pairs, "the inverted residual blocks' conv pairs were found"
    assert torch.allclose(equalized(inputs), model(inputs), atol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in equalized.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "input left alone"


@torch.no_grad()
def test_library_mobilenet_v2_computes_the_same_outputs(tiny_task) -> None:
    torch.manual_seed(0)
    model = _with_spread(library_mobilenet_v2())
    equalized, pairs = equalize(model, _calibration(tiny_task))
    inputs = _held_out(tiny_task)
    # expand -> depthwise and depthwise -> projection of every block, behind ReLU6
    assert {(p.first, p.second) for p in pairs} >= {
        ("features.2.conv.0.0", "features.2.conv.1.0"),
        ("features.2.conv.1.0", "features.2.conv.2"),
        ("features.1.conv.0.0", "features.1.conv.1"),
    }
    assert all(p.clip == 6.0 for p in pairs)
    assert torch.allclose(equalized(inputs), model(inputs), atol=1e-4)


def _with_spread(model: nn.Module) -> nn.Module:
    """Batch norms as training leaves depthwise ones: channel scales over three orders of
    magnitude, which folding moves into the depthwise weights."""
    generator = torch.Generator().manual_seed(0)
    modules = list(model.modules())
    for conv, norm in itertools.pairwise(modules):
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            count = norm.num_features
            norm.running_var.data = torch.rand(count, generator=generator) + 0.5
            norm.running_mean.data = torch.randn(count, generator=generator) * 0.1
            if conv.groups > 1:
                norm.weight.data = 10 ** (torch.rand(count, generator=generator) * 3 - 2.5)
    return model.eval()


@torch.no_grad()
def test_pairs_without_clip_get_the_papers_equal_ranges() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1)
    ).eval()
    model[0].weight.mul_(torch.logspace(-2, 1, 8).reshape(8, 1, 1, 1))
    equalized, pairs = equalize(model, sweeps=50)
    assert pairs == [Pair("0", "2", None), Pair("2", "3", None)]
    inputs = torch.randn(4, 3, 6, 6)
    assert torch.allclose(equalized(inputs), model(inputs), atol=1e-5)
    # the last pair's ranges match channel by channel (the fixed point of the sweeps)
    r1 = equalized[2].weight.flatten(1).abs().amax(dim=1)
    r2 = equalized[3].weight.abs().amax(dim=(0, 2, 3))
    assert torch.allclose(r1, r2, rtol=1e-3)
    spread = lambda w: float(w.flatten(1).abs().amax(1).max() / w.flatten(1).abs().amax(1).min())  # noqa: E731
    assert spread(equalized[0].weight) < spread(model[0].weight) / 5


@torch.no_grad()
def test_equalization_lowers_per_tensor_int8_error_of_a_wide_spread_model(tiny_task) -> None:
    """What it is for: every weight rounded to one grid per tensor after a depthwise spread.

    Over four initialisations (one alone may gain little: clipped channels keep theirs).
    """
    inputs = _held_out(tiny_task)
    plain, equalized_error = 0.0, 0.0
    for seed in range(4):
        torch.manual_seed(seed)
        model = _with_spread(library_mobilenet_v2())
        equalized, _ = equalize(model, _calibration(tiny_task))
        reference = model(inputs)

        def error(candidate: nn.Module, reference: torch.Tensor = reference) -> float:
            rounded = round_weights(candidate, per_channel=False, reduce_range=True)
            return float((rounded(inputs) - reference).abs().mean())

        plain += error(model)
        equalized_error += error(equalized)
    assert equalized_error < 0.9 * plain


@torch.no_grad()
def test_clipped_channels_keep_their_scale_and_the_clip_stays_exact() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU6(), nn.Conv2d(4, 2, 1)).eval()
    model[0].weight.data = torch.tensor([[[[5.0]], [[0.0]]], [[[0.01]], [[0.0]]],
                                         [[[0.0]], [[2.0]]], [[[0.0]], [[0.02]]]])  # fmt: skip
    model[0].bias.data.zero_()
    calibration = [torch.rand(8, 2, 3, 3) * 2]  # channel 0 reaches 10 (> 6): clipped
    equalized, pairs = equalize(model, calibration)
    assert pairs == [Pair("0", "2", 6.0)]
    assert equalized[0].weight[0, 0].item() == pytest.approx(5.0)  # clipped: left alone
    assert equalized[0].weight[1, 0].item() != pytest.approx(0.01)  # below the clip: scaled
    inputs = torch.rand(16, 2, 3, 3) * 2
    assert torch.allclose(equalized(inputs), model(inputs), atol=1e-5)


@torch.no_grad()
def test_without_calibration_data_clipped_pairs_are_left_alone(tiny_task) -> None:
    model = tiny_task.build_model()
    equalized, pairs = equalize(model)
    # behind a ReLU6 (every pair inside a block): none; a projection feeding the next
    # block's expansion directly: still equalized
    assert all(pair.clip is None for pair in pairs)
    inputs = _held_out(tiny_task)
    assert torch.allclose(equalized(inputs), model(inputs), atol=1e-4)


@torch.no_grad()
def test_activations_that_do_not_commute_with_scaling_end_a_pair(tiny_task) -> None:
    """MobileNetV3: hard-swish is not positively homogeneous, so no pair crosses one; the
    squeeze-excitation's fc1 -> ReLU -> fc2 and a projection feeding an expansion remain."""
    model = library_mobilenet_v3_small()
    folded = fold_batch_norms(model)
    pairs = find_pairs(folded)
    assert ("features.1.block.1.fc1", "features.1.block.1.fc2") in {
        (p.first, p.second) for p in pairs
    }
    for pair in pairs:
        parent, _, _ = pair.first.rpartition(".")
        after = dict(folded.named_modules()).get(f"{parent}.2")
        assert not isinstance(after, nn.Hardswish), pair
    equalized, _ = equalize(model, _calibration(tiny_task))
    inputs = _held_out(tiny_task)
    assert torch.allclose(equalized(inputs), model(inputs), atol=1e-4)


def test_an_untraceable_model_is_returned_unchanged() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.b(torch.relu(self.a(x)))
            return self.b(self.a(x))

    model = Branchy().eval()
    equalized, pairs = equalize(model, [torch.rand(2, 1, 4, 4)])
    assert pairs == []
    assert torch.equal(equalized.a.weight, model.a.weight)
