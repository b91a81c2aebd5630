"""The recovery fine-tune's peak learning rate as a lever: ``ft.lr``.

How hard a compressed model should be retrained depends on how much the compression took
away, and no one rate suits every candidate. Measured on the digits MobileNetV2 (ten
epochs, distilled T=4, alpha 0.9, three seeds, test accuracy of 360 images; baseline 0.9944):

===============  =============  =============  =============
pruned by        lr 0.01        lr 0.02        lr 0.05
===============  =============  =============  =============
0 (no change)    0.9944 (x3)    -              0.9861-0.9917
50%              0.9833-0.9917  0.9833-0.9917  0.9778-0.9861
70%              0.9583-0.9750  0.9750-0.9778  0.9806-0.9861
===============  =============  =============  =============

A light change keeps the baseline's generalisation with a gentle rate and loses it to a
hard one; a heavy one needs the hard rate to recover. Validation ranked the best rate
first in both pruned rows. So the rate is searched among the task's recovery rate
(``search.train.loop.RECOVERY_LR``: 0.05 for SGD, 2e-3 for AdamW) and two gentler ones
(``LR_SHARES`` of it), sampled only where the trial fine-tunes.

Off the search unless asked for (``--fix ft.searched=true``): off, every fine-tune uses
the task's recovery rate, as before this lever existed. Searched in the fifteenth benchmark
run (``benchmarks/results/2026-12-02-3.md``), TPE kept the task's rate for 31 of the 33
feasible candidates at half the baseline's latency and for every pick, and the picks' test
accuracy did not move (median -1.11 points, as without it), so it stays off by default.
With it on, ``--fix ft.lr=0.02`` sets one rate for every trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from search.train.loop import Recipe, recovery_lr
from techniques.base import Context, TechniqueError

if TYPE_CHECKING:
    import optuna

LR_SHARES = (0.2, 0.4, 1.0)  # of the task's recovery rate: 0.01, 0.02, 0.05 under SGD


@dataclass(frozen=True)
class FinetuneLRParams:
    """``lr``: the peak of the recovery fine-tune's cosine schedule, above 0."""

    lr: float

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise TechniqueError(f"ft.lr={self.lr} must be above 0, e.g. 0.02")

    @property
    def label(self) -> str:
        return f"lr{self.lr:g}"


class FinetuneLR:
    name: ClassVar[str] = "ft"
    stage: ClassVar[Literal["training"]] = "training"
    options: ClassVar[Mapping[str, tuple[Any, ...]]] = {"ft.searched": (False, True)}

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        return {"ft.lr": rates(ctx)[-1]} if _searched(ctx) else {}

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        return None  # the references fine-tune at the task's own rate (the lever off)

    def applicability(self, ctx: Context) -> str | None:
        return None

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> FinetuneLRParams | None:
        if not _searched(ctx):
            return None
        lr = float(trial.suggest_categorical("ft.lr", rates(ctx)))
        return None if lr == rates(ctx)[-1] else FinetuneLRParams(lr)  # the task's own: off

    def configure(self, recipe: Recipe, params: FinetuneLRParams, ctx: Context) -> Recipe:
        return replace(recipe, lr=params.lr)


def rates(ctx: Context) -> tuple[float, ...]:
    """The rates searched for this task: shares of its recovery rate, the full one last."""
    full = recovery_lr(str(getattr(ctx.task, "optimizer", "sgd")))
    return tuple(round(share * full, 9) for share in LR_SHARES)


def _searched(ctx: Context) -> bool:
    return bool(ctx.options.get("ft.searched", False))
