"""How soon any rung rule could have reached a search's front: the oracle's ceiling.

Successive halving's acceptance asks the rule-on arm to reach the rule-off arm's final
front in at most 60% of the wall time. Whether a better rule could get there is a question
about the rule-off arm alone, answered here without running anything again:

* the rule-off arm completes its last front-improving trial (the last one that raised the
  hypervolume, ``benchmarks.hypervolume``) at ``front_seconds``;
* a rule that judges at epoch ``e`` can only save the fine-tuning after ``e`` of the
  candidates it stops, and it should stop only candidates that end below the accuracy
  floor. The oracle stops every one of them, and nothing else, so nothing judging at ``e``
  saves more before the front is complete: an arm with the oracle reaches that front at
  ``front_seconds`` less those savings, a share of the arm's wall time.

The same is done with a real rule replayed on the arm (``benchmarks.early_stop.replay``)
for comparison. Both assume the arm with stops samples the same candidates as the one
without, which held in most measured pairs: Optuna's TPE puts a stopped candidate and the
below-floor one it would have become in the same (infeasible) group; where the groups'
order changes, the arms part (in runs 32 and 33, 4 of 6 seed pairs sampled the same
candidates throughout; 2 parted at trial 17).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import optuna

from benchmarks.early_stop import Readings, fine_tuned_for, recorded_readings, replay
from benchmarks.hypervolume import box_of, feasible_points, hypervolume
from search.core.rungs import RungRule, never_stopped
from search.track.trials import DEPLOYED


@dataclass(frozen=True)
class Ceiling:
    """One rule-off search: when its front was complete, and how much sooner stops get there."""

    study: str
    front_seconds: float  # completion of the last trial that raised the hypervolume
    arm_seconds: float
    oracle_share: dict[int, float]  # rung epoch -> share of arm_seconds the oracle needs
    rule_share: float | None  # the replayed rule's share; None when no rule was given

    @property
    def share(self) -> float:
        """The share of the arm's wall time the search itself took to its front."""
        return self.front_seconds / self.arm_seconds


def ceiling(
    study: optuna.Study,
    *,
    epochs: int,
    rungs: Sequence[int],
    arm_seconds: float,
    rule: RungRule | None = None,
    readings_of: Readings = recorded_readings,
) -> Ceiling | None:
    """The oracle's share at each of ``rungs`` (and ``rule``'s) for one rule-off search
    whose fine-tunes are ``epochs`` long; None when it found nothing feasible."""
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    started = [t.datetime_start for t in trials if t.datetime_start is not None]
    points = feasible_points(trials)
    if not points or not started:
        return None
    box = box_of(study)
    front_seconds, reached = 0.0, 0.0
    for index, (seconds, _) in enumerate(points):
        volume = hypervolume([p for _, p in points[: index + 1]], box)
        if volume > reached:
            front_seconds, reached = seconds, volume
    origin = min(started)

    def before_front(trial: optuna.trial.FrozenTrial) -> bool:
        done = trial.datetime_complete
        return done is not None and (done - origin).total_seconds() <= front_seconds

    hopeless = [t for t in trials if before_front(t) and _ended_below_floor(t)]
    oracle = {
        rung: (front_seconds - sum(fine_tuned_for(t) * (epochs - rung) / epochs for t in hopeless))
        / arm_seconds
        for rung in rungs
        if 0 < rung < epochs
    }
    rule_share = None
    if rule is not None:
        stops = replay(study, rule, epochs, readings_of).stopped_at
        saved = sum(
            fine_tuned_for(t) * (epochs - stops[t.number]) / epochs
            for t in trials
            if t.number in stops and before_front(t)
        )
        rule_share = (front_seconds - saved) / arm_seconds
    return Ceiling(study.study_name, front_seconds, arm_seconds, oracle, rule_share)


def render(ceilings: Sequence[Ceiling]) -> list[str]:
    """One line per search and a median line: the shares, against the 0.60 goal."""
    import numpy as np

    if not ceilings:
        return ["no search found anything feasible: no front to reach"]
    rungs = sorted(ceilings[0].oracle_share)

    def row(name: str, share: float, oracle: Sequence[float], rule: float | None) -> str:
        cells = ", ".join(f"epoch {r}: {s:.2f}" for r, s in zip(rungs, oracle, strict=True))
        ruled = "" if rule is None else f"; the rule replayed: {rule:.2f}"
        return f"{name}: front complete at {share:.2f}; an oracle stopping at {cells}{ruled}"

    lines = [
        row(c.study, c.share, [c.oracle_share[r] for r in rungs], c.rule_share) for c in ceilings
    ]
    rules = [c.rule_share for c in ceilings if c.rule_share is not None]
    lines.append(
        row(
            "median",
            float(np.median([c.share for c in ceilings])),
            [float(np.median([c.oracle_share[r] for c in ceilings])) for r in rungs],
            float(np.median(rules)) if rules else None,
        )
    )
    return lines


def _ended_below_floor(trial: optuna.trial.FrozenTrial) -> bool:
    """Fine-tuned to the end and below the accuracy floor: the candidates an oracle stops."""
    return (
        trial.user_attrs.get("accuracy_kind") == DEPLOYED
        and float(trial.user_attrs.get("below_accuracy_floor", 0.0)) > 0
        and not never_stopped(trial.user_attrs)
    )
