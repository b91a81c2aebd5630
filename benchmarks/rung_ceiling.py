"""How soon any rung rule could have reached a search's front: the oracle's ceiling.

Successive halving's acceptance asks the rule-on arm to reach the rule-off arm's final
front in at most 60% of the wall time. Whether a better rule could get there is a question
about the rule-off arm alone, answered here without running anything again:

* the rule-off arm completes its last front-improving trial (the last one that raised the
  hypervolume, ``benchmarks.hypervolume``) at ``front_seconds``;
* a rule that judges accuracy at epoch ``e`` can only save the fine-tuning after ``e`` of
  the candidates it stops, and it should stop only candidates that end below the accuracy
  floor. The oracle stops every one of them that ended before the front, and nothing
  else; like the rule, it never stops the baseline, the references or their escalations.
  An arm with the oracle reaches that front at ``front_seconds`` less those savings (each
  epoch counted as the same share of its fine-tune), a share of the arm's wall time.
  Candidates that met the floor but ended over the budget (latency noise on the final
  file) are not stopped by it: an accuracy rule cannot see them coming.

The same is done with a real rule replayed on the arm (``benchmarks.early_stop.replay``,
on every epoch's reading from the MLflow curves: a rule-off search records none on its
trials) for comparison. Both assume the arm with stops samples the same candidates as the
one without, which held in most measured pairs: Optuna's TPE puts a stopped candidate and
the below-floor one it would have become in the same (infeasible) group; where the groups'
order changes, the arms part (in runs 32 and 33, 4 of 6 seed pairs sampled the same
candidates throughout; 2 parted at trial 17).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import optuna

from benchmarks.early_stop import Readings, fine_tuned_for, replay
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
    rule_share: float | None  # the replayed rule's share; None: no rule, or a false stop
    # trials the replayed rule stopped before the front that ended feasible: with them
    # stopped, the front reached is another one, so no share is given
    rule_false_stops: tuple[int, ...] = ()

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
    readings_of: Readings | None = None,
) -> Ceiling | None:
    """The oracle's share at each of ``rungs`` (and, given ``readings_of``, ``rule``'s) for
    one rule-off search whose fine-tunes are ``epochs`` long; None when nothing it found
    raised the hypervolume (nothing feasible inside the reference box)."""
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    started = [t.datetime_start for t in trials if t.datetime_start is not None]
    points = feasible_points(trials)
    if not points or not started:
        return None
    box = box_of(study)
    front_seconds, reached = 0.0, 0.0
    for index, (seconds, _) in enumerate(points):
        volume = hypervolume([p for _, p in points[: index + 1]], box)
        if volume > reached + 1e-12:  # a dominated point adds only rounding
            front_seconds, reached = seconds, volume
    if reached == 0:
        return None
    origin = min(started)  # feasible_points' origin too

    def before_front(trial: optuna.trial.FrozenTrial) -> bool:
        done = trial.datetime_complete
        return done is not None and (done - origin).total_seconds() <= front_seconds

    hopeless = [t for t in trials if before_front(t) and _ended_below_floor(t)]
    oracle = {
        rung: (front_seconds - sum(fine_tuned_for(t) * (epochs - rung) / epochs for t in hopeless))
        / arm_seconds
        for rung in rungs
    }
    rule_share, false_stops = None, ()
    if rule is not None and readings_of is not None:
        replayed = replay(study, rule, epochs, readings_of)
        stopped = [t for t in trials if t.number in replayed.stopped_at and before_front(t)]
        false_stops = tuple(t.number for t in stopped if t.number in replayed.false_stops)
        saved = sum(
            fine_tuned_for(t) * (epochs - replayed.stopped_at[t.number]) / epochs for t in stopped
        )
        rule_share = None if false_stops else (front_seconds - saved) / arm_seconds
    return Ceiling(study.study_name, front_seconds, arm_seconds, oracle, rule_share, false_stops)


def render(ceilings: Sequence[Ceiling]) -> list[str]:
    """One line per search and a median line: the shares of the wall time."""
    import numpy as np

    if not ceilings:
        return ["no search found anything feasible: no front to reach"]
    rungs = sorted(ceilings[0].oracle_share)

    def row(name: str, share: float, oracle: Sequence[float], rule: str) -> str:
        cells = ", ".join(f"epoch {r}: {s:.2f}" for r, s in zip(rungs, oracle, strict=True))
        return f"{name}: front complete at {share:.2f}; an oracle stopping at {cells}{rule}"

    def ruled(found: Ceiling) -> str:
        if found.rule_false_stops:
            numbers = ", ".join(map(str, found.rule_false_stops))
            return f"; the rule replayed stops trial(s) {numbers}, which ended feasible"
        return "" if found.rule_share is None else f"; the rule replayed: {found.rule_share:.2f}"

    lines = [row(c.study, c.share, [c.oracle_share[r] for r in rungs], ruled(c)) for c in ceilings]
    rules = [c.rule_share for c in ceilings if c.rule_share is not None]
    lines.append(
        row(
            "median",
            float(np.median([c.share for c in ceilings])),
            [float(np.median([c.oracle_share[r] for c in ceilings])) for r in rungs],
            f"; the rule replayed: {float(np.median(rules)):.2f}" if rules else "",
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
