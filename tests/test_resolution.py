"""Elastic resolution: the input shrunk at the model's front, sizes and MACs as predicted."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from search.core.objective import count_macs_and_params
from techniques import Context
from techniques.resolution import (
    InputResolution,
    ResizedInput,
    accepted_scales,
    refusal,
    resize_input,
    scaled_size,
)
from tests.fixtures.library_models import TimmViT, library_mobilenet_v3_small


class Shapes:
    """The one part of a task the lever reads: its example inputs."""

    def __init__(self, *shape: int, dtype: torch.dtype = torch.float32) -> None:
        self.shape, self.dtype = shape, dtype

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, *self.shape, dtype=self.dtype)


def context(model: nn.Module, task, tmp_path) -> Context:
    return Context(task, "cpu", tmp_path, model)  # type: ignore[arg-type]


def conv_and_linear_macs(model: nn.Module, inputs: torch.Tensor) -> tuple[int, int]:
    """Multiply-accumulates of the Conv2d layers and of the Linear layers, from their shapes."""
    convs = linears = 0

    def count(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal convs, linears
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            convs += module.in_channels // module.groups * kh * kw * output[0].numel()
        elif isinstance(module, nn.Linear):
            linears += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model(inputs)
    for hook in hooks:
        hook.remove()
    return convs, linears


SIZES = [(8, 0.875, 7), (8, 0.625, 5), (8, 0.5, 4), (7, 0.5, 4), (32, 0.875, 28), (1, 0.5, 1)]


@pytest.mark.parametrize("side, scale, size", SIZES)
def test_sizes_round_half_up_and_stay_at_least_one_pixel(side, scale, size) -> None:
    assert scaled_size(side, scale) == size


def test_the_built_in_model_runs_at_every_scale_and_says_how(tiny_task, tmp_path) -> None:
    model = tiny_task.build_model()
    ctx = context(model, tiny_task, tmp_path)
    lever = InputResolution()
    assert lever.applicability(ctx) is None
    assert accepted_scales(model, tiny_task.example_inputs(1)) == (1.0, 0.875, 0.75, 0.625, 0.5)
    params = lever.space(optuna.trial.FixedTrial({"resolution.scale": 0.875}), ctx)
    assert params is not None and params.size == (14, 14) and params.label == "res14x14"
    assert lever.reference_params(ctx) == {"resolution.scale": 0.75}


def test_eight_by_eight_inputs_at_seven_eighths_run_at_seven_pixels(tmp_path) -> None:
    plain = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()  # fmt: skip
    ctx = context(plain, Shapes(1, 8, 8), tmp_path)
    lever = InputResolution()
    params = lever.space(optuna.trial.FixedTrial({"resolution.scale": 0.875}), ctx)
    assert params is not None and params.size == (7, 7)
    resized = lever.apply(plain, params, ctx)
    seen = []
    resized[0].register_forward_hook(lambda _m, i, _o: seen.append(tuple(i[0].shape)))
    assert resized(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert seen == [(2, 1, 7, 7)]  # a Sequential model: the resize runs first, once


def test_a_model_that_flattens_a_fixed_map_is_not_applicable(tmp_path) -> None:
    fixed = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    ctx = context(fixed.eval(), Shapes(1, 16, 16), tmp_path)
    lever = InputResolution()
    why = lever.applicability(ctx)
    assert why is not None and why.startswith("it fails on a 14x14 input (RuntimeError")
    assert lever.reference_params(ctx) is None
    assert lever.space(optuna.create_study().ask(), ctx) is None
    # a transformer with one position embedding per patch: refused the same way
    assert "fails on a 14x14 input" in str(refusal(TimmViT().eval(), torch.zeros(1, 1, 16, 16)))
    # and a model whose input is not an image at all
    tokens = Shapes(12, dtype=torch.long)
    assert "not a batch of images" in str(refusal(nn.Embedding(20, 4), tokens.example_inputs()))


def test_a_model_that_takes_down_to_three_quarters_is_searched_down_to_there(tmp_path) -> None:
    """An AdaptiveAvgPool2d(12) head takes 12x12 maps and more: 16 -> 14 -> 12, not 10."""

    class PoolTo12(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 12 * 12, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if min(x.shape[-2:]) < 12:
                raise ValueError("the map is smaller than the head's window")
            x = nn.functional.adaptive_avg_pool2d(self.conv(x), 12)
            return self.fc(x.flatten(1))

    model = PoolTo12().eval()
    assert accepted_scales(model, torch.zeros(1, 1, 16, 16)) == (1.0, 0.875, 0.75)
    ctx = context(model, Shapes(1, 16, 16), tmp_path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        InputResolution().space(trial, ctx)
        assert trial.params["resolution.scale"] >= 0.75
        study.tell(trial, 0.0)


@pytest.mark.parametrize("scale", [0.5, 0.75])
def test_macs_fall_as_predicted_and_the_file_keeps_the_input_shape(
    scale, tiny_task, tmp_path
) -> None:
    import onnxruntime as ort

    from search.measure.onnx_runtime import export_onnx

    model = tiny_task.build_model()
    x = tiny_task.example_inputs(4)
    side = x.shape[-1]
    new = scaled_size(side, scale)
    resized = resize_input(model, (side, side), (new, new))
    assert isinstance(resized, ResizedInput) and isinstance(resized, type(model))
    assert list(resized.state_dict()) == list(model.state_dict())  # the user's names
    assert f"input resized to ({new}, {new})" in repr(resized)
    smaller = nn.functional.interpolate(x[:1], size=(new, new), mode="bilinear")
    # thop on the built model: what the base model costs on the smaller input
    assert count_macs_and_params(resized, x[:1])[0] == count_macs_and_params(model, smaller)[0]
    convs, linears = conv_and_linear_macs(model, x[:1])
    new_convs, new_linears = conv_and_linear_macs(resized, x[:1])
    assert new_linears == linears
    if scale == 0.5:  # every stride divides 8: each map exactly half a side, a quarter the area
        assert new_convs * 4 == convs
    else:
        assert new_convs < 0.6 * convs  # 12x12 of 16x16 is 0.56 of the area, maps round up
    artifact = export_onnx(resized, x[:1], tmp_path / "resized.onnx")
    session = ort.InferenceSession(str(artifact.path))
    assert session.get_inputs()[0].shape[1:] == list(x.shape[1:])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, resized(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_off_reproduces_the_baseline_exactly(tiny_task, tmp_path) -> None:
    model = tiny_task.build_model()
    ctx = context(model, tiny_task, tmp_path)
    lever = InputResolution()
    assert lever.space(optuna.trial.FixedTrial(dict(lever.off_params(ctx))), ctx) is None
    x = tiny_task.example_inputs(8)
    side = x.shape[-1]
    same = resize_input(model, (side, side), (side, side))  # kernel 1: the identity
    assert torch.equal(same(x), model(x))


def test_feature_distillation_compares_a_smaller_student_with_the_teacher() -> None:
    from search.train.loop import FeatureMatch
    from techniques.distillation import stage_ends

    teacher = library_mobilenet_v3_small()
    x = torch.randn(2, 1, 16, 16)
    student = resize_input(teacher, (16, 16), (12, 12))
    layers = stage_ends(teacher, x[:1])
    assert layers
    match = FeatureMatch(student, teacher, layers, x)
    student(x)
    teacher(x)
    assert torch.isfinite(match.loss())
    match.remove()
