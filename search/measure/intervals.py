"""How far an accuracy, and a change of accuracy, can be trusted: 95% intervals.

A validation split of 359 images makes one image 0.28 points: a candidate "within one
point" of the baseline may be three lucky images away from failing. So every accuracy of a
deployed file carries its Wilson interval (a proportion's interval that stays inside
[0, 1] and is honest at small counts), and every change against the baseline carries the
**paired** interval: two models judged on the same examples differ only on the examples
one gets right and the other wrong (lost and gained), so their delta is far tighter than
two independent intervals would say. The paired interval is the bootstrap's (resampling
examples, both models counted on the same draw), which for a 0/±1 difference per example
is a draw from one multinomial over (lost, same, gained): exact resampling, no loop over
examples, seeded so the same counts always give the same interval. McNemar's exact test
asks the same question as a p-value: are lost and gained more unequal than chance?

Pure numpy and the standard library; every layer above may use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

LEVEL = 0.95
DRAWS = 20_000  # bootstrap draws: the interval's ends move by < 0.03 points between seeds


def wilson_interval(successes: int, total: int, *, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / total``, in [0, 1]."""
    if total <= 0 or not 0 <= successes <= total:
        raise ValueError(f"wilson_interval: {successes} of {total} is not a proportion")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    share = successes / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
    half /= 1 + z * z / total
    return max(0.0, centre - half), min(1.0, centre + half)


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

    @property
    def mcnemar_p(self) -> float:
        return mcnemar_exact_p(self.lost, self.gained)


def paired_delta(
    baseline_correct: np.ndarray, correct: np.ndarray, *, draws: int = DRAWS, seed: int = 0
) -> PairedDelta:
    """Examples lost and gained against the baseline, and the delta's bootstrap interval."""
    base = np.asarray(baseline_correct, dtype=bool)
    model = np.asarray(correct, dtype=bool)
    if base.shape != model.shape or base.ndim != 1 or base.size == 0:
        raise ValueError(
            f"paired_delta: two equal, non-empty 1-D arrays of right/wrong, not shapes "
            f"{base.shape} and {model.shape}"
        )
    total = int(base.size)
    lost = int(np.sum(base & ~model))
    gained = int(np.sum(~base & model))
    shares = np.array([lost, total - lost - gained, gained]) / total
    counts = np.random.default_rng(seed).multinomial(total, shares, size=draws)
    deltas = 100 * (counts[:, 2] - counts[:, 0]) / total
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(deltas, [tail, 100 - tail])
    return PairedDelta(lost, gained, total, float(low), float(high))


def mcnemar_exact_p(lost: int, gained: int) -> float:
    """McNemar's exact two-sided p-value: the chance of a split of the ``lost + gained``
    disagreements at least this uneven if either model were as likely to win each."""
    n = lost + gained
    if n == 0:
        return 1.0
    # log-space terms: 2**-n underflows past n = 1074, and exact integers grow slow
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
        for k in range(min(lost, gained) + 1)
    ]
    top = max(log_terms)
    tail = math.exp(top) * math.fsum(math.exp(t - top) for t in log_terms)
    return min(1.0, 2 * tail)


def per_example_correct(
    outputs: np.ndarray, targets: np.ndarray, metric: float
) -> np.ndarray | None:
    """Per example, whether the top-1 class is the label; None unless the task's metric is
    top-1 accuracy, recognised by its value being their mean (a task's metric is its own
    method, so it cannot be told by identity)."""
    if outputs.ndim != 2 or targets.ndim != 1 or len(outputs) != len(targets) or not len(targets):
        return None
    correct = outputs.argmax(axis=1) == targets
    return correct if math.isclose(float(correct.mean()), metric, abs_tol=1e-9) else None


@dataclass(frozen=True)
class AccuracyFigures:
    """A deployed file's accuracy with its interval, and its change against the baseline
    on the same examples; the names are those of the trial's record and MLflow metrics."""

    accuracy_ci_low: float
    accuracy_ci_high: float
    delta_points: float | None = None
    delta_ci_low_points: float | None = None
    delta_ci_high_points: float | None = None
    examples_lost: int | None = None
    examples_gained: int | None = None
    mcnemar_p: float | None = None

    def as_dict(self) -> dict[str, float | int]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def accuracy_figures(correct: np.ndarray, baseline_correct: np.ndarray | None) -> AccuracyFigures:
    """Wilson interval of ``correct``'s accuracy and, given the baseline's right/wrong on
    the same examples, the paired delta with its interval."""
    correct = np.asarray(correct, dtype=bool)
    low, high = wilson_interval(int(correct.sum()), int(correct.size))
    if baseline_correct is None:
        return AccuracyFigures(low, high)
    paired = paired_delta(baseline_correct, correct)
    return AccuracyFigures(
        accuracy_ci_low=low,
        accuracy_ci_high=high,
        delta_points=paired.delta_points,
        delta_ci_low_points=paired.low_points,
        delta_ci_high_points=paired.high_points,
        examples_lost=paired.lost,
        examples_gained=paired.gained,
        mcnemar_p=paired.mcnemar_p,
    )


def show_delta(
    delta_points: float | None,
    low_points: float | None = None,
    high_points: float | None = None,
    *,
    decimals: int = 1,
) -> str:
    """A delta in points with its interval, compactly: ``-0.6 (-1.4, +0.3)``."""
    if delta_points is None:
        return "-"
    form = f"{{:+.{decimals}f}}"
    shown = form.format(delta_points + 0.0)  # + 0.0: no "-0.0"
    if low_points is None or high_points is None:
        return shown
    return f"{shown} ({form.format(low_points + 0.0)}, {form.format(high_points + 0.0)})"


def show_interval(low: float | None, high: float | None) -> str:
    """An accuracy interval as ``0.972-0.991``; ``-`` when not known."""
    return "-" if low is None or high is None else f"{low:.3f}-{high:.3f}"
