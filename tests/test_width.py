"""The expand-ratio lever on a real MobileNetV2: widths, MACs and outputs as predicted."""

import pytest
import torch
from torch import nn

from search.tasks.mobilenetv2 import MobileNetV2, MobileNetV2Config
from techniques.width import expandable_stages, narrow_expansions


def conv_and_linear_macs(model: nn.Module, inputs: torch.Tensor) -> int:
    """Multiply-accumulates of every Conv2d and Linear, counted from the shapes they see."""
    total = 0

    def count(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_output = module.in_channels // module.groups * kh * kw
            total += per_output * output.numel() // output.shape[0]
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model(inputs)
    for hook in hooks:
        hook.remove()
    return total


@pytest.fixture
def net() -> nn.Module:
    torch.manual_seed(0)
    return MobileNetV2(MobileNetV2Config(width_mult=0.5, last_channels=128)).eval()


X1 = torch.zeros(1, 1, 32, 32)


def test_stages_are_found_with_their_ratios(net) -> None:
    stages = expandable_stages(net, X1)
    assert [len(stage) for stage in stages] == [2, 3, 4, 3, 3, 1]  # t=1 stage excluded
    assert {block.expand_ratio(net) for stage in stages for block in stage} == {6}
    built_in = [n for n, m in net.named_modules() if getattr(m, "expand_ratio", 1) > 1]
    assert [block.module for stage in stages for block in stage] == built_in


def test_narrowing_gives_predicted_widths_macs_and_same_output_shape(net) -> None:
    x = torch.randn(2, 1, 32, 32)
    stage_index, new_ratio = 2, 3
    stage = [net.get_submodule(b.module) for b in expandable_stages(net, X1)[stage_index]]
    # Hidden width h enters three convs linearly: expand (c*h per pixel of the input map),
    # depthwise (9*h per output pixel) and project (h*o per output pixel).
    predicted_saving = 0
    spatial = {}

    def remember(name):
        return lambda m, i, o: spatial.__setitem__(name, (i[0].shape[-2:], o.shape[-2:]))

    hooks = [b.depthwise.register_forward_hook(remember(id(b))) for b in stage]
    net(x)
    for hook in hooks:
        hook.remove()
    for block in stage:
        c = block.expand[0].in_channels
        o = block.project[0].out_channels
        removed = block.expand[0].out_channels - c * new_ratio
        (h_in, w_in), (h_out, w_out) = spatial[id(block)]
        predicted_saving += removed * (c * h_in * w_in + 9 * h_out * w_out + o * h_out * w_out)

    before = conv_and_linear_macs(net, x[:1])
    narrowed = narrow_expansions(net, x[:1], {stage_index: new_ratio})
    after = conv_and_linear_macs(narrowed, x[:1])

    for found in expandable_stages(narrowed, X1)[stage_index]:
        block = narrowed.get_submodule(found.module)
        assert block.expand[0].out_channels == block.expand[0].in_channels * new_ratio
        assert block.depthwise[0].groups == block.depthwise[0].out_channels
        assert block.project[0].in_channels == block.expand[0].out_channels
    assert before - after == predicted_saving
    assert narrowed(x).shape == net(x).shape == (2, 10)


def test_narrowing_keeps_the_strongest_channels_and_leaves_the_original(net) -> None:
    x = torch.randn(1, 1, 32, 32)
    block = net.get_submodule(expandable_stages(net, X1)[0][0].module)
    norms = block.expand[0].weight.detach().flatten(1).norm(dim=1)
    kept_norms = norms.sort(descending=True).values[: block.expand[0].in_channels * 2]
    narrowed = narrow_expansions(net, x, {0: 2})
    new_block = narrowed.get_submodule(expandable_stages(narrowed, X1)[0][0].module)
    new_norms = new_block.expand[0].weight.detach().flatten(1).norm(dim=1)
    torch.testing.assert_close(new_norms.sort(descending=True).values, kept_norms)
    assert block.expand[0].out_channels == block.expand[0].in_channels * 6  # original intact


def test_a_model_without_inverted_residuals_has_no_stages() -> None:
    plain = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    assert expandable_stages(plain, torch.zeros(1, 1, 8, 8)) == []


def test_per_block_narrows_one_block_and_leaves_its_stage_mates(net) -> None:
    from techniques.width import expandable_groups

    x = torch.randn(1, 1, 32, 32)
    blocks = expandable_groups(net, x, "block")
    assert len(blocks) == sum(len(stage) for stage in expandable_stages(net, x))
    narrowed = narrow_expansions(net, x, {3: 2}, per="block")
    hidden = [g[0].expand_conv(narrowed).out_channels for g in blocks]
    expected = [g[0].expand_conv(net).out_channels for g in blocks]
    expected[3] = blocks[3][0].expand_conv(net).in_channels * 2
    assert hidden == expected
    assert narrowed(x).shape == (1, 10)


def test_the_space_names_one_parameter_per_block_when_asked(net, tiny_task, tmp_path) -> None:
    import optuna

    from techniques import Context
    from techniques.width import ExpandRatio

    lever = ExpandRatio()
    per_stage = Context(tiny_task, "cpu", tmp_path, net)
    per_block = Context(tiny_task, "cpu", tmp_path, net, options={"width.per": "block"})
    stage_trial, block_trial = optuna.create_study().ask(), optuna.create_study().ask()
    lever.space(stage_trial, per_stage)
    lever.space(block_trial, per_block)
    assert sorted(stage_trial.params) == [f"width.expand.s{i}" for i in range(6)]
    assert len(block_trial.params) == 16
    assert all(name.startswith("width.expand.b") for name in block_trial.params)


def test_the_reference_narrows_every_group_to_two_thirds(net, tiny_task, tmp_path) -> None:
    """Once-for-All's middle ratio (6 -> 4): a reference trial of its own, and in the
    combined one."""
    from search.core.space import reference_trials
    from techniques import Context
    from techniques.width import ExpandRatio, reference_ratio

    assert [reference_ratio(t) for t in (6, 4, 3, 2)] == [4, 3, 2, 1]
    ctx = Context(tiny_task, "cpu", tmp_path, net)
    reference = ExpandRatio().reference_params(ctx)
    assert reference == {f"width.expand.s{i}": 4 for i in range(6)}
    names = [attrs["reference"] for _, attrs in reference_trials(ctx)]
    combined = max(names, key=lambda name: name.count("+"))
    assert "width" in names and "width" in combined.split("+")
