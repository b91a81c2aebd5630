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
