"""Training loops shared by the baseline and by recovery fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EpochCallback = Callable[[int, float], None]


def fit(
    model: nn.Module,
    loader: DataLoader,
    *,
    epochs: int,
    lr: float,
    loss_fn: LossFn,
    on_epoch: EpochCallback | None = None,
) -> nn.Module:
    """Train ``model`` in place with SGD + Nesterov momentum and a cosine schedule.

    Args:
        epochs: full passes over ``loader``; 0 leaves the model unchanged.
        lr: peak learning rate.
        on_epoch: called with ``(epoch, mean_loss)`` after each epoch, for curves.

    Raises:
        FloatingPointError: the loss became NaN or infinite (the trial should fail).
    """
    if epochs == 0:
        return model.eval()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=4e-5
    )
    steps = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    model.train()
    for epoch in range(epochs):
        total, count = 0.0, 0
        for inputs, targets in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} in epoch {epoch}")
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(targets)
            count += len(targets)
        if on_epoch is not None:
            on_epoch(epoch, total / max(count, 1))
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager outputs and targets over a loader; for references, not for reported numbers."""
    model.eval()
    outputs, targets = [], []
    for inputs, batch_targets in loader:
        outputs.append(model(inputs))
        targets.append(batch_targets)
    return torch.cat(outputs), torch.cat(targets)
