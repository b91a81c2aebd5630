"""How a trial is recorded in the study, for every part that writes or reads one.

The objectives and their directions, the constraint keys a trial sets, what makes a trial
feasible and which trial is the baseline: the trial objective writes these, the front,
the status tables, promotion and the benchmarks read them.
"""

from __future__ import annotations

from typing import Literal

import optuna

DIRECTIONS: tuple[Literal["maximize", "minimize"], ...] = ("maximize", "minimize", "minimize")
OBJECTIVE_NAMES = ("accuracy", "latency_p50_ms", "size_mb")
CONSTRAINT_KEY = "latency_p50_over_budget_ms"
ACCURACY_CONSTRAINT_KEY = "accuracy_below_floor"

# What a trial's accuracy is of (user attr ``accuracy_kind``): its deployed file's; its
# draft's, when the draft was over the budget before any fine-tuning (not held against it);
# or the eager model's at the rung where successive halving stopped its fine-tune.
DEPLOYED = "deployed"
BEFORE_FINE_TUNING = "before fine-tuning"
STOPPED_PREFIX = "stopped at epoch "
RUNG_ATTR = "rung_accuracy"  # {"2": 0.91}: the eager validation reading after epoch 2
STOPPED_ATTR = "stopped_at_epoch"  # the rung a trial's fine-tune stopped at
WOULD_STOP_ATTR = "would_stop_at_epoch"  # shadow mode: the rung it would have stopped at


def stopped_kind(epoch: int) -> str:
    """The ``accuracy_kind`` of a trial stopped after ``epoch`` (counted from 1)."""
    return f"{STOPPED_PREFIX}{epoch}"


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Completed, and every constraint at or below zero."""
    return (
        trial.state == optuna.trial.TrialState.COMPLETE
        and bool(trial.constraints)
        and all(value <= 0 for value in trial.constraints.values())
    )


def baseline_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed uncompressed reference trial, if the study has one."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if trial.user_attrs.get("baseline"):
            return trial
    return None
