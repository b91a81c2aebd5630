"""How to bring your own model: a factory that returns a Task.

Run it with:

    search run --task examples/my_task.py:make_task --latency-budget 0.5x --trials 6

A task needs six things (see ``search.train.task.Task``): a ``name``, ``build_model()`` returning
your trained model in eval mode, ``example_inputs(batch_size)``, ``data(split)`` returning
a DataLoader of (inputs, targets) for "train", "val" and "test", ``metric(outputs,
targets)`` (higher is better) and ``loss(outputs, targets)`` for recovery fine-tuning.

Here the "trained model" is a plain CNN on the raw 8x8 digits. A real project would load
its own checkpoint in ``build_model``; this example trains one on first use so that it
runs anywhere, and keeps it in ``examples/weights/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

WEIGHTS = Path(__file__).parent / "weights" / "plain_cnn.pt"


class PlainCNN(nn.Module):
    """Conv-BN-ReLU twice, then a linear head: no MobileNet blocks at all."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(64 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class PlainDigitsTask:
    name = "plain-digits"

    def __init__(self) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target)
        index = np.arange(len(labels))
        train, rest = train_test_split(index, test_size=0.4, stratify=labels, random_state=0)
        val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=0)
        self.splits = {
            name: TensorDataset(images[idx], labels[idx])
            for name, idx in (("train", train), ("val", val), ("test", test))
        }

    def build_model(self) -> nn.Module:
        model = PlainCNN()
        if not WEIGHTS.exists():
            self._train(model)
        model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
        return model.eval()

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        return self.splits["train"].tensors[0][:batch_size].clone()

    def data(self, split: str) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=64, shuffle=split == "train")

    def metric(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        return float((outputs.argmax(axis=1) == targets).mean())

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def _train(self, model: nn.Module) -> None:
        torch.manual_seed(0)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(15):
            for inputs, targets in self.data("train"):
                optimizer.zero_grad()
                self.loss(model(inputs), targets).backward()
                optimizer.step()
        WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), WEIGHTS)


def make_task() -> PlainDigitsTask:
    return PlainDigitsTask()
