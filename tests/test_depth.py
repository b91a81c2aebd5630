"""Elastic depth: residual blocks found by what they compute, dropped as predicted."""

from __future__ import annotations

import copy

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from search.core.objective import count_macs_and_params
from techniques import Context
from techniques.blocks import inverted_residual_blocks
from techniques.depth import ElasticDepth, drop_blocks, find_residual_stages, kept_blocks
from tests.fixtures.library_models import (
    TimmViT,
    library_mobilenet_v2,
    library_mobilenet_v3_small,
)

X16 = torch.randn(1, 1, 16, 16)


class BasicBlock(nn.Module):
    """A ResNet basic block, as torchvision writes it: relu(bn(conv(relu(bn(conv x)))) + x)."""

    def __init__(self, inp: int, out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


def names(stages) -> list[list[str]]:
    return [[block.name for block in stage] for stage in stages]


def test_the_built_in_mobilenet_has_its_residual_blocks_found(tiny_task) -> None:
    model = tiny_task.build_model()
    x = tiny_task.example_inputs(1)
    stages = find_residual_stages(model, x)
    assert names(stages) == [
        ["features.3"],
        ["features.5", "features.6"],
        ["features.8", "features.9", "features.10"],
    ]
    built_in = [n for n, m in model.named_modules() if getattr(m, "use_residual", False)]
    assert [block.name for stage in stages for block in stage] == built_in
    # the residual inverted residual blocks that techniques/blocks.py finds are these
    residual = [b.module for b in inverted_residual_blocks(model, x) if b.residual]
    assert residual == built_in


def test_library_mobilenets_have_their_residual_blocks_found() -> None:
    v2, v3 = library_mobilenet_v2(), library_mobilenet_v3_small()
    # V2: the t=1 block (8 -> 8, no expansion layer) is residual too
    assert names(find_residual_stages(v2, X16)) == [
        ["features.1"],
        ["features.3"],
        ["features.5", "features.6"],
    ]
    # V3 with squeeze-excitation and hard-swish; 24 -> 88 -> 24 is residual, alone in its stage
    assert names(find_residual_stages(v3, X16)) == [["features.3"], ["features.5", "features.6"]]
    for model in (v2, v3):
        residual = {b.module for b in inverted_residual_blocks(model, X16) if b.residual}
        found = {block.name for stage in find_residual_stages(model, X16) for block in stage}
        assert residual <= found


def test_resnet_basic_blocks_and_transformer_blocks_qualify() -> None:
    # relu after the sum is allowed; the downsampling block changes the shape: not one
    assert names(find_residual_stages(TinyResNet().eval(), X16)) == [
        ["layer1.0", "layer1.1", "layer1.2"],
        ["layer2.1"],
    ]
    # x + attn(norm x) + mlp(norm ...): the blocks, not the Sequential holding them
    assert names(find_residual_stages(TimmViT().eval(), X16)) == [["blocks.0", "blocks.1"]]


def test_a_model_without_residual_blocks_is_not_applicable(tmp_path, tiny_task) -> None:
    plain = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip
    ctx = Context(tiny_task, "cpu", tmp_path, plain.eval())
    lever = ElasticDepth()
    assert "no residual blocks" in str(lever.applicability(ctx))
    assert lever.reference_params(ctx) is None
    assert lever.space(optuna.create_study().ask(), ctx) is None


@pytest.mark.parametrize("keep, total, kept", [(0.5, 1, 1), (0.25, 1, 0), (0.25, 2, 1),
                                               (0.5, 3, 2), (0.75, 3, 2), (0.0, 4, 0),
                                               (1.0, 3, 3)])  # fmt: skip
def test_kept_blocks_round_half_up(keep, total, kept) -> None:
    assert kept_blocks(keep, total) == kept


@pytest.mark.parametrize("build", [TinyResNet, library_mobilenet_v3_small, library_mobilenet_v2])
def test_dropping_blocks_saves_exactly_their_macs(build) -> None:
    """Predicted: each dropped block's own MACs (thop, on the input it sees) come off."""
    torch.manual_seed(0)
    model = build().eval()
    stages = find_residual_stages(model, X16)
    kept = [kept_blocks(0.5, len(stage)) for stage in stages]
    dropped = [block.name for stage, k in zip(stages, kept, strict=True) for block in stage[k:]]
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda _m, args, name=name: seen.__setitem__(name, args[0].detach().clone())
        )
        for name in dropped
    ]
    model(X16)
    for hook in hooks:
        hook.remove()
    predicted = sum(
        count_macs_and_params(model.get_submodule(name), seen[name])[0] for name in dropped
    )
    shallow = drop_blocks(model, stages, kept)
    assert predicted > 0
    before, after = count_macs_and_params(model, X16)[0], count_macs_and_params(shallow, X16)[0]
    assert before - after == predicted
    assert shallow(X16).shape == model(X16).shape
    assert all(isinstance(shallow.get_submodule(name), nn.Identity) for name in dropped)
    assert not any(isinstance(model.get_submodule(name), nn.Identity) for name in dropped)


def test_the_lever_keeps_the_first_blocks_their_weights_and_the_input_shape(
    tiny_task, tmp_path
) -> None:
    import onnxruntime as ort

    from search.measure.onnx_runtime import export_onnx

    model = tiny_task.build_model()
    ctx = Context(tiny_task, "cpu", tmp_path, model)
    lever = ElasticDepth()
    assert lever.applicability(ctx) is None
    params = lever.space(optuna.trial.FixedTrial({"depth.keep": 0.5}), ctx)
    assert params is not None and params.kept == (1, 1, 2) and params.totals == (1, 2, 3)
    assert params.label == "depth4/6"
    shallow = lever.apply(model, params, ctx)
    assert isinstance(shallow.get_submodule("features.6"), nn.Identity)
    assert isinstance(shallow.get_submodule("features.10"), nn.Identity)
    torch.testing.assert_close(
        shallow.get_submodule("features.9").state_dict(),
        model.get_submodule("features.9").state_dict(),
    )
    x = tiny_task.example_inputs(4)
    artifact = export_onnx(shallow, x[:1], tmp_path / "shallow.onnx")
    session = ort.InferenceSession(str(artifact.path))
    assert session.get_inputs()[0].shape[1:] == list(x.shape[1:])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, shallow(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_off_reproduces_the_baseline_exactly(tiny_task, tmp_path) -> None:
    model = tiny_task.build_model()
    ctx = Context(tiny_task, "cpu", tmp_path, model)
    lever = ElasticDepth()
    assert lever.space(optuna.trial.FixedTrial(dict(lever.off_params(ctx))), ctx) is None
    stages = find_residual_stages(model, tiny_task.example_inputs(1))
    same = drop_blocks(model, stages, [len(stage) for stage in stages])
    x = tiny_task.example_inputs(8)
    assert torch.equal(same(x), model(x))


def test_width_per_block_after_depth_narrows_the_blocks_it_named(tiny_task, tmp_path) -> None:
    """Per-block expand ratios count blocks in the base model, whatever depth dropped."""
    from techniques.width import ExpandRatio, expandable_groups

    model = tiny_task.build_model()
    x = tiny_task.example_inputs(1)
    ctx = Context(tiny_task, "cpu", tmp_path, model, options={"width.per": "block"})
    groups = expandable_groups(model, x, "block")
    last = len(groups) - 1  # features.10: dropped below
    shallow = ElasticDepth().apply(
        model, ElasticDepth().space(optuna.trial.FixedTrial({"depth.keep": 0.5}), ctx), ctx
    )
    width = ExpandRatio()
    fixed = {f"width.expand.b{i}": 6 for i in range(len(groups))}
    fixed.update({"width.expand.b3": 2, f"width.expand.b{last}": 2})
    narrowed = width.apply(shallow, width.space(optuna.trial.FixedTrial(fixed), ctx), ctx)
    hidden = {g[0].module: g[0].expand_conv(model).out_channels for g in groups}
    block3 = groups[3][0]
    assert block3.expand_conv(narrowed).out_channels == block3.expand_conv(model).in_channels * 2
    others = [g[0] for i, g in enumerate(groups) if i not in (3, last)]
    for block in others:
        if not isinstance(narrowed.get_submodule(block.module), nn.Identity):
            assert block.expand_conv(narrowed).out_channels == hidden[block.module]
    assert narrowed(x).shape == model(x).shape
    assert copy.deepcopy(narrowed)(x).shape == (1, 10)
