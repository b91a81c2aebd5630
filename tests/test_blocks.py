"""Levers that find what they act on by structure: on models written as libraries write them.

The MobileNets and the vision transformer here come from tests/fixtures/library_models.py:
other attribute names, squeeze-excitation, hard-swish, fused attention; none of the
project's classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import pytest
import torch
from torch import nn

from techniques import Context
from techniques.attention import AttentionKernel, swap_kernel, swappable
from techniques.blocks import find_blocks
from techniques.distillation import stage_ends
from techniques.width import ExpandRatio, expandable_stages, narrow_expansions
from tests.fixtures.library_models import (
    TimmViT,
    library_mobilenet_v2,
    library_mobilenet_v3_small,
)

X = torch.randn(2, 1, 16, 16)


@dataclass
class Shapes:
    """The one part of a task the structural levers read: its example inputs."""

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, 1, 16, 16)


def context(model: nn.Module, tmp_path, **options) -> Context:
    return Context(Shapes(), "cpu", tmp_path, model, options=options)  # type: ignore[arg-type]


def test_a_torchvision_style_v2_has_its_blocks_found_by_structure() -> None:
    model = library_mobilenet_v2()
    blocks = find_blocks(model, X[:1])
    # six blocks; the first (t=1) has no expansion layer to narrow
    assert [b.module for b in blocks] == [f"features.{i}" for i in range(2, 7)]
    assert [b.residual for b in blocks] == [False, True, False, True, True]
    assert all(b.expand_ratio(model) == 6 for b in blocks)
    assert blocks[0] == blocks[0].__class__(
        "features.2.conv.0.0", "features.2.conv.1.0", "features.2.conv.2", False, "features.2"
    )


def test_a_v3_with_squeeze_excitation_and_hard_swish_has_its_blocks_found() -> None:
    model = library_mobilenet_v3_small()
    blocks = find_blocks(model, X[:1])
    # 16->16 has no expansion layer; the SE convolutions are inside blocks, not blocks
    assert [b.module for b in blocks] == [f"features.{i}" for i in range(2, 7)]
    assert [round(b.expand_ratio(model), 2) for b in blocks] == [4.5, 3.67, 4.0, 6.0, 6.0]
    assert [b.residual for b in blocks] == [False, True, False, True, True]
    assert blocks[3].project == "features.5.block.3.0"  # past the SE gate, not its fc1
    stages = expandable_stages(model, X[:1])
    assert [len(s) for s in stages] == [1, 1, 1, 2]  # residual blocks join their stage


@pytest.mark.parametrize("build", [library_mobilenet_v2, library_mobilenet_v3_small])
def test_the_width_lever_narrows_a_library_mobilenet(build, tmp_path) -> None:
    model = build()
    lever = ExpandRatio()
    ctx = context(model, tmp_path)
    assert lever.applicability(ctx) is None
    off = lever.off_params(ctx)
    assert off and all(value >= 4 for value in off.values())
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask(
        {name: optuna.distributions.IntDistribution(1, value) for name, value in off.items()}
    )
    params = lever.space(trial, ctx)
    assert params is not None
    narrowed = lever.apply(model, params, ctx)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in narrowed.parameters())
    assert after < before
    assert narrowed(X).shape == model(X).shape == (2, 10)
    hidden = {b.expand: b.expand_conv(narrowed).out_channels for b in find_blocks(model, X[:1])}
    for group_index, ratio in params.expand_ratios:
        for block in expandable_stages(model, X[:1])[group_index]:
            inputs = block.expand_conv(model).in_channels
            assert hidden[block.expand] == min(
                inputs * ratio, block.expand_conv(model).out_channels
            )


def test_narrowing_a_v3_keeps_its_gate_consistent(tmp_path) -> None:
    model = library_mobilenet_v3_small()
    narrowed = narrow_expansions(model, X[:1], {3: 2})  # the 40->240 stage to 80 channels
    se = narrowed.features[5].block[2]
    assert se.fc1.in_channels == se.fc2.out_channels == 80
    assert narrowed.features[5].block[1][0].groups == 80
    assert narrowed(X).shape == (2, 10)


def test_without_such_blocks_the_lever_says_why(tmp_path) -> None:
    plain = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 10))
    reason = ExpandRatio().applicability(context(plain, tmp_path))
    assert reason == "no inverted residual blocks with an expansion layer"


def test_feature_distillation_compares_a_library_mobilenets_block_outputs() -> None:
    model = library_mobilenet_v2()
    ends = stage_ends(model, X[:1])
    assert ends == ("features.3", "features.6")  # last block at 8x8 and at 4x4
    assert all(isinstance(model.get_submodule(name), nn.Module) for name in ends)


def test_a_timm_style_vit_has_its_kernel_swapped_with_the_same_softmax_output(tmp_path) -> None:
    torch.manual_seed(0)
    model = TimmViT().eval()
    ctx = context(model, tmp_path)
    assert AttentionKernel().applicability(ctx) is None
    assert AttentionKernel().off_params(ctx) == {"attn.kernel": "softmax"}
    same = swap_kernel(model, "softmax")
    torch.testing.assert_close(same(X), model(X), atol=1e-5, rtol=1e-4)
    linear = swap_kernel(model, "linear")
    assert not torch.allclose(linear(X), model(X), atol=1e-3)
    assert linear.blocks[0].attn.qkv is not model.blocks[0].attn.qkv  # a copy, weights kept
    torch.testing.assert_close(linear.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)


def test_attention_with_query_key_norms_is_not_swapped_and_the_lever_says_why(tmp_path) -> None:
    torch.manual_seed(0)
    model = TimmViT(qk_norm=True).eval()
    assert not swappable(model)
    reason = AttentionKernel().applicability(context(model, tmp_path))
    assert reason is not None and "query/key norms" in reason


@pytest.mark.parametrize("factory", ["make_v2_task", "make_v3_task"])
def test_search_space_of_a_library_mobilenet_lists_width_depth_and_resolution(
    factory, task_cache, home
) -> None:
    """What ``search space --task tests/fixtures/library_tasks.py:make_v2_task`` prints."""
    import library_tasks

    from search.core.config import SearchConfig
    from search.core.levers import LeverSettings
    from search.core.runner import search_space

    task = getattr(library_tasks, factory)(epochs=0)  # the structure, not the weights, matters
    task.cache_dir = task_cache
    config = SearchConfig(task=factory, levers=LeverSettings(), home=home)
    rows, not_applicable = search_space(config, task)
    listed = {row.name: row for row in rows}
    assert "width" not in not_applicable and "depth" not in not_applicable
    assert "resolution" not in not_applicable
    assert any(name.startswith("width.expand.s") for name in listed)
    assert listed["depth.keep"].domain == "0 to 1 step 0.25"
    assert listed["resolution.scale"].domain == "0.5 to 1 step 0.125"
    assert all(listed[n].status == "searched" for n in ("depth.keep", "resolution.scale"))
    # the application order: depth before width, resolution last of the model stage
    model_stage = [row.lever for row in rows if row.stage == "model"]
    assert model_stage.index("depth") < model_stage.index("width")
    assert model_stage[-1] == "resolution"


@pytest.mark.parametrize("make", [library_mobilenet_v2, library_mobilenet_v3_small])
def test_the_width_reference_narrows_every_group_of_a_library_mobilenet(make, tmp_path) -> None:
    lever, ctx = ExpandRatio(), context(make().eval(), tmp_path)
    trained, reference = lever.off_params(ctx), lever.reference_params(ctx)
    assert reference is not None and reference.keys() == trained.keys()
    assert all(1 <= reference[name] < trained[name] for name in trained)
    assert lever.space(optuna.trial.FixedTrial(dict(reference)), ctx) is not None
