"""How far a test-accuracy delta can be trusted: images lost and gained, and an interval.

The digits test split has 360 images, so one image is 0.28 points and "within 1 point"
means at most three more mistakes than the baseline. Two models judged on the same images
are paired: what varies between them is only the images one gets right and the other
wrong. The delta's 95% interval is the paired bootstrap's (resampling images, each time
counting both models on the same draw), which for a 0/±1 difference per image is a draw
from one multinomial over (lost, same, gained): exact resampling, no loop over images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DRAWS = 20_000
LEVEL = 0.95


@dataclass(frozen=True)
class PairedDelta:
    """A model against the baseline on the same examples; the interval in points."""

    lost: int  # right in the baseline, wrong in the model
    gained: int  # wrong in the baseline, right in the model
    total: int
    low_points: float
    high_points: float

    @property
    def delta_points(self) -> float:
        return 100 * (self.gained - self.lost) / self.total


def paired_delta(
    baseline_correct: np.ndarray, correct: np.ndarray, *, draws: int = DRAWS, seed: int = 0
) -> PairedDelta:
    """Images lost and gained against the baseline, and the delta's bootstrap interval."""
    base = np.asarray(baseline_correct, dtype=bool)
    model = np.asarray(correct, dtype=bool)
    if base.shape != model.shape or base.ndim != 1 or base.size == 0:
        raise ValueError("paired_delta: two equal, non-empty 1-D arrays of right/wrong")
    total = int(base.size)
    lost = int(np.sum(base & ~model))
    gained = int(np.sum(~base & model))
    shares = np.array([lost, total - lost - gained, gained]) / total
    counts = np.random.default_rng(seed).multinomial(total, shares, size=draws)
    deltas = 100 * (counts[:, 2] - counts[:, 0]) / total
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(deltas, [tail, 100 - tail])
    return PairedDelta(lost, gained, total, float(low), float(high))
