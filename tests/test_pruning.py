import pytest
import torch
from torch import nn

from search.core.objective import count_macs_and_params
from search.measure.onnx_runtime import export_onnx, open_session
from search.tasks.mobilenetv2 import MobileNetV2, MobileNetV2Config
from techniques.base import TechniqueError
from techniques.pruning import PruneParams, output_layer, prune_channels


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return MobileNetV2(MobileNetV2Config(width_mult=0.5, last_channels=128)).eval()


def channels(model: nn.Module) -> int:
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_pruning_shrinks_the_network_and_macs_fall_as_expected(ratio: float) -> None:
    model, x = small_net(), torch.randn(1, 1, 32, 32)
    pruned = prune_channels(model, x, ratio=ratio)
    macs, params = count_macs_and_params(model, x)
    pruned_macs, pruned_params = count_macs_and_params(pruned, x)
    assert channels(pruned) < channels(model)
    assert pruned_params < params
    # Removing a share r of both the input and output channels of a conv leaves about
    # (1 - r)^2 of its MACs; depthwise layers keep (1 - r) and rounding to 8 keeps a bit more.
    share = pruned_macs / macs
    assert (1 - ratio) ** 2 * 0.8 <= share <= (1 - ratio) * 1.05, share


def test_pruned_network_still_runs_and_keeps_its_outputs(tmp_path) -> None:
    model, x = small_net(), torch.randn(4, 1, 32, 32)
    pruned = prune_channels(model, x[:1], ratio=0.5)
    assert pruned(x).shape == (4, 10)
    assert output_layer(pruned).out_features == 10
    artifact = export_onnx(pruned, x[:1], tmp_path / "pruned.onnx")
    (out,) = open_session(artifact.path).run(None, {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), pruned(x), atol=1e-4, rtol=1e-4)


def test_original_model_is_untouched() -> None:
    model, x = small_net(), torch.randn(1, 1, 32, 32)
    before = channels(model)
    prune_channels(model, x, ratio=0.5)
    assert channels(model) == before


def test_channel_counts_are_multiples_of_8() -> None:
    pruned = prune_channels(small_net(), torch.randn(1, 1, 32, 32), ratio=0.35)
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1]
    assert all(m.out_channels % 8 == 0 for m in convs)


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_bad_ratio_is_refused(ratio: float) -> None:
    with pytest.raises(TechniqueError, match=r"prune\.ratio"):
        PruneParams(ratio)


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "bn-scale"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_every_importance_and_scope_prunes_to_a_runnable_model(
    importance: str, scope: str, tiny_task
) -> None:
    model, x = tiny_task.build_model(), tiny_task.example_inputs(1)
    pruned = prune_channels(
        model, x, ratio=0.5, importance=importance, scope=scope, task=tiny_task
    )
    assert pruned(tiny_task.example_inputs(3)).shape == (3, 10)
    share = count_macs_and_params(pruned, x)[0] / count_macs_and_params(model, x)[0]
    assert share < 0.8, share
    assert all(p.grad is None for p in pruned.parameters())


def test_global_scope_prunes_layers_unevenly(tiny_task) -> None:
    """Per-layer keeps every layer's share alike; global ranking lets the shares differ."""
    model, x = tiny_task.build_model(), tiny_task.example_inputs(1)

    def kept_shares(pruned: nn.Module) -> set[float]:
        before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        return {
            round(m.out_channels / before[n], 2)
            for n, m in pruned.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups == 1 and before[n] >= 32
        }

    per_layer = prune_channels(model, x, ratio=0.5, scope="layer")
    global_ = prune_channels(model, x, ratio=0.5, scope="global")
    assert len(kept_shares(global_)) > len(kept_shares(per_layer))


def test_taylor_ranks_by_gradient_so_it_differs_from_magnitude(tiny_task) -> None:
    model, x = tiny_task.build_model(), tiny_task.example_inputs(1)
    by_magnitude = prune_channels(model, x, ratio=0.5, importance="magnitude")
    by_taylor = prune_channels(model, x, ratio=0.5, importance="taylor", task=tiny_task)
    kept = [
        not torch.equal(a.weight, b.weight)
        for a, b in zip(by_magnitude.modules(), by_taylor.modules(), strict=True)
        if isinstance(a, nn.Conv2d) and a.weight.shape == b.weight.shape and a.groups == 1
    ]
    assert any(kept)


def test_taylor_without_data_is_refused() -> None:
    with pytest.raises(TechniqueError, match="taylor"):
        prune_channels(small_net(), torch.randn(1, 1, 32, 32), ratio=0.5, importance="taylor")
