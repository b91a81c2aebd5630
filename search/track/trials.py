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
