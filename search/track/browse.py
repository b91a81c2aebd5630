"""``search status`` and ``search pareto``: a study's progress and front, read from storage.

The same figures as the end of ``search run`` and the MLflow UI, without either running:
counts by state, feasibility, the baseline, the budget and the front with its ratios.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

import optuna

from search.track.pareto import FrontRow, pareto_front, to_rows
from search.track.trials import (
    BEFORE_FINE_TUNING,
    INTERVAL_KEYS,
    STOPPED_ATTR,
    baseline_trial,
    is_feasible,
    study_rule,
)


def status(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, feasible and stopped-early trials, the budget and the best so far."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    feasible = [t for t in complete if is_feasible(t)]
    best = max(feasible, key=lambda t: (t.values[0], -t.values[1]), default=None)
    base = baseline_trial(study)
    return {
        "study": study.study_name,
        "task": study.user_attrs.get("task"),
        "device": study.user_attrs.get("device"),
        "runtime": study.user_attrs.get("runtime", "onnxruntime"),
        "latency_budget_ms": study.user_attrs.get("latency_budget_ms"),
        # a relative budget: the factor, and the baseline's p50 it was taken of
        "latency_budget_factor": study.user_attrs.get("latency_budget_factor"),
        "anchor_p50_ms": study.user_attrs.get("anchor_p50_ms"),
        "max_accuracy_drop": study.user_attrs.get("max_accuracy_drop"),
        # how feasibility read accuracy: the point estimate, or the paired interval's low end
        "accuracy_rule": study_rule(study),
        "trials": len(trials),
        "states": dict(sorted(states.items())),
        "feasible": len(feasible),
        "stopped_before_fine_tuning": sum(
            t.user_attrs.get("accuracy_kind") == BEFORE_FINE_TUNING for t in complete
        ),
        # successive halving: fine-tunes stopped at a rung as hopeless (search.core.rungs)
        "stopped_early": sum(STOPPED_ATTR in t.user_attrs for t in complete),
        "front_size": len(pareto_front(study)),
        "baseline": None if base is None else _figures(base),
        "best_feasible": None if best is None else _figures(best),
        "hosts": sorted({str(t.user_attrs["host"]) for t in trials if "host" in t.user_attrs}),
    }


def front(study: optuna.Study) -> list[FrontRow]:
    return to_rows(study, pareto_front(study))


def front_as_dicts(rows: list[FrontRow]) -> list[dict[str, Any]]:
    return [asdict(row) for row in rows]


def _figures(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    accuracy, p50, size = trial.values
    return {
        "trial": trial.number,
        "name": trial.user_attrs.get("run_name"),
        "accuracy": accuracy,
        "latency_p50_ms": p50,
        "size_mb": size,
        # the 95% intervals (search.measure.intervals), where the trial recorded them
        **{k: trial.user_attrs[k] for k in INTERVAL_KEYS if k in trial.user_attrs},
    }
