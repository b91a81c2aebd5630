"""How a trial is recorded in the study, for every part that writes or reads one.

The objectives and their directions, the constraint keys a trial sets, what makes a trial
feasible and which trial is the baseline: the trial objective writes these, the front,
the status tables, promotion and the benchmarks read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import optuna

DIRECTIONS: tuple[Literal["maximize", "minimize"], ...] = ("maximize", "minimize", "minimize")
OBJECTIVE_NAMES = ("accuracy", "latency_p50_ms", "size_mb")
CONSTRAINT_KEY = "latency_p50_over_budget_ms"
ACCURACY_CONSTRAINT_KEY = "accuracy_below_floor"
# How the accuracy constraint reads a candidate (``--accuracy-rule``, kept by the study):
# ``point``, its validation accuracy; ``confident``, the baseline's plus the lower end of
# the paired 95% interval of its delta (``search.measure.intervals.paired_delta``).
ACCURACY_RULES = ("point", "confident")
# The per-trial interval figures (``search.measure.intervals.AccuracyFigures``): user attrs
# and MLflow metrics under these names.
INTERVAL_KEYS = (
    "accuracy_ci_low", "accuracy_ci_high", "delta_points", "delta_ci_low_points",
    "delta_ci_high_points", "examples_lost", "examples_gained", "mcnemar_p",
)  # fmt: skip

# What a trial's accuracy is of (user attr ``accuracy_kind``): its deployed file's; its
# draft's, when the draft was over the budget before any fine-tuning (not held against it);
# or the eager model's at the rung where successive halving stopped its fine-tune.
DEPLOYED = "deployed"
BEFORE_FINE_TUNING = "before fine-tuning"
STOPPED_PREFIX = "stopped at epoch "
RUNG_ATTR = "rung_accuracy"  # {"2": 0.91}: the eager validation reading after epoch 2
STOPPED_ATTR = "stopped_at_epoch"  # the rung a trial's fine-tune stopped at
WOULD_STOP_ATTR = "would_stop_at_epoch"  # shadow mode: the rung it would have stopped at
REFERENCE_TAGS = ("reference", "escalated_from")  # user attrs of enqueued trials, as tags


def stopped_kind(epoch: int) -> str:
    """The ``accuracy_kind`` of a trial stopped after ``epoch`` (counted from 1)."""
    return f"{STOPPED_PREFIX}{epoch}"


def is_stopped(kind: str) -> bool:
    """Whether an ``accuracy_kind`` says successive halving stopped the trial's fine-tune."""
    return kind.startswith(STOPPED_PREFIX)


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Completed, and every constraint at or below zero."""
    return (
        trial.state == optuna.trial.TrialState.COMPLETE
        and bool(trial.constraints)
        and all(value <= 0 for value in trial.constraints.values())
    )


def accuracy_below_floor(
    rule: str,
    *,
    accuracy: float,
    floor: float,
    baseline_accuracy: float,
    delta_low_points: float | None,
) -> float:
    """How far a candidate's accuracy, as ``rule`` reads it, is below ``floor`` (> 0: short).

    ``confident`` needs the paired interval; without one (a metric that is not per-example
    right or wrong) it is refused where the rule is chosen, so here it reads the point.
    """
    if rule == "confident" and delta_low_points is not None:
        return floor - (baseline_accuracy + delta_low_points / 100)
    return floor - accuracy


def study_rule(study: optuna.Study) -> str:
    """The study's ``--accuracy-rule``; ``point`` for a study from before it was kept."""
    return str(study.user_attrs.get("accuracy_rule", "point"))


def feasible_under(
    trial: optuna.trial.FrozenTrial, rule: str, *, baseline_accuracy: float, max_drop: float
) -> bool:
    """Whether ``trial`` meets the budget and, read by ``rule``, the accuracy floor: the
    trial's own constraints re-judged from what it recorded, so one search's trials can
    be picked under either rule (``search promote --accuracy-rule``, the benchmark)."""
    if trial.state != optuna.trial.TrialState.COMPLETE or not trial.constraints:
        return False
    if trial.constraints.get(CONSTRAINT_KEY, 0.0) > 0:
        return False
    attrs: Mapping[str, Any] = trial.user_attrs
    if attrs.get("accuracy_kind", "deployed") != "deployed":
        return False
    low = attrs.get("delta_ci_low_points")
    if rule == "confident" and low is None:
        return False  # nothing to be confident with
    below = accuracy_below_floor(
        rule,
        accuracy=trial.values[0],
        floor=baseline_accuracy - max_drop,
        baseline_accuracy=baseline_accuracy,
        delta_low_points=None if low is None else float(low),
    )
    return below <= 0


def feasible_by(study: optuna.Study, rule: str | None = None) -> list[optuna.trial.FrozenTrial]:
    """The study's feasible trials under ``rule`` (None: the study's own, its constraints);
    under the other rule, re-judged from what each trial recorded (``feasible_under``)."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    base = baseline_trial(study)
    if rule is None or rule == study_rule(study) or base is None:
        return [t for t in done if is_feasible(t)]
    drop = float(study.user_attrs.get("max_accuracy_drop", 0.01))
    judged = {"baseline_accuracy": base.values[0], "max_drop": drop}
    return [t for t in done if feasible_under(t, rule, **judged)]


def baseline_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed uncompressed reference trial, if the study has one."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if trial.user_attrs.get("baseline"):
            return trial
    return None
