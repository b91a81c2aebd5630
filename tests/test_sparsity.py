"""Unstructured magnitude pruning: how many weights, which, and that they stay zero."""

from __future__ import annotations

import torch
from torch import nn

from techniques.sparsity import sparsity, zero_weights


def _model_with_a_small_layer() -> nn.Sequential:
    """Three convs with batch norm; the middle one's weights 100x smaller than the others'."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 3),
    )
    with torch.no_grad():
        model[3].weight.mul_(0.01)
    return model.eval()


def test_global_scope_ranks_within_each_layers_scale() -> None:
    model = _model_with_a_small_layer()
    raw_ranking = torch.cat(
        [m.weight.detach().abs().flatten() for m in (model[0], model[3], model[6])]
    )
    # A raw global ranking at 0.6 would take every weight of the small layer:
    assert int((raw_ranking <= raw_ranking.quantile(0.6)).sum()) > model[3].weight.numel()

    sparse = zero_weights(model, ratio=0.6, scope="global")

    per_layer = [float((m.weight == 0).float().mean()) for m in (sparse[0], sparse[3], sparse[6])]
    assert max(per_layer) < 0.9, per_layer
    assert abs(sparsity(sparse) - 0.6) < 0.02
    assert bool((sparse[8].weight != 0).all())  # the output layer is left out
    assert bool((model[3].weight != 0).all())  # the input model is untouched


def test_zeros_stay_zero_through_training() -> None:
    sparse = zero_weights(_model_with_a_small_layer(), ratio=0.5, scope="layer")
    zeros = sparse[3].weight == 0
    optimizer = torch.optim.SGD(sparse.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sparse.train()
    for _ in range(3):
        optimizer.zero_grad()
        sparse(torch.randn(4, 1, 4, 4)).square().mean().backward()
        optimizer.step()
    assert bool((sparse[3].weight[zeros] == 0).all())
    assert abs(float(zeros.float().mean()) - 0.5) < 0.02


def test_zeros_stay_zero_when_a_later_lever_reshapes_the_model(tiny_task, tmp_path) -> None:
    """Elastic resolution runs after sparsity in a trial. It must change the sparse model
    itself: a copy would drop the gradient hooks that hold the zeros, and the fine-tune
    would fill them in again."""
    import optuna

    from search.core.space import apply_model_levers
    from techniques import TECHNIQUES, Context

    ctx = Context(
        task=tiny_task, device="cpu", workdir=tmp_path, base_model=tiny_task.build_model(),
        options={"sparse.searched": True},
    )  # fmt: skip
    fixed = optuna.trial.FixedTrial(
        {"sparse.ratio": 0.5, "sparse.scope": "layer", "resolution.scale": 0.5}
    )
    plan = {name: None for name in TECHNIQUES}
    plan["sparse"] = TECHNIQUES["sparse"].space(fixed, ctx)
    plan["resolution"] = TECHNIQUES["resolution"].space(fixed, ctx)
    assert plan["sparse"] is not None and plan["resolution"] is not None

    model = apply_model_levers(ctx.base_model, plan, ctx)

    before = sparsity(model)
    assert abs(before - 0.5) < 0.05
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for inputs, targets in tiny_task.data("train"):
        optimizer.zero_grad()
        tiny_task.loss(model(inputs), targets).backward()
        optimizer.step()
    assert sparsity(model) == before
