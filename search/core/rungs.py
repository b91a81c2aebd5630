"""Successive halving over fine-tuning epochs: stop a hopeless candidate at a rung.

Latency-first stops candidates too slow for the budget before any fine-tuning; this
stops candidates fast enough but hopeless in accuracy after the first epochs of it
instead of all of them. At each rung (an epoch of the planned schedule; the learning
rate still follows the schedule planned for the full length, so a candidate that goes on
trains exactly as it would have without the rule) the candidate's validation accuracy of
the eager model, which the fine-tune computes for its curve anyway, is judged against
evidence from the same study, not against the accuracy floor:

* the bar is the lowest reading at that rung of any candidate that finished its fine-tune
  and met the accuracy floor, less ``margin``. Early readings say little about final ones
  in absolute terms (on digits, two epochs of ten read 0.18-0.89 for candidates that
  ended at 0.983-0.994), but a candidate reading below every one that went on to make the
  floor is the hopeless one. With no such candidate yet, nothing is stopped. As more
  candidates finish, the bar can only fall, so a stop is never made on thinner evidence
  than an earlier go-on;
* at or above the bar it goes on; below it, it still goes on if it is in the top
  ``keep_fraction`` of the study's candidates at that rung (ASHA's rule, Li et al. 2020:
  with ``n`` candidates at the rung, the best ``floor(n * keep_fraction)`` go on);
* otherwise it stops, and the trial completes with that rung accuracy, labelled as such.

Reference trials are never stopped, and they finish first, so a study normally has its
evidence before the sampler's first candidate reaches a rung. Optuna's own
``SuccessiveHalvingPruner`` is not available to multi-objective studies, and its pruned
trials leave the sampler nothing; a stopped trial here is a complete, infeasible trial the
sampler learns from. In ``shadow`` mode the rule only records where it would have
stopped: one search then measures the rule's false stops (would-stop candidates that
ended feasible).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from search.common.errors import ConfigError
from search.track.trials import DEPLOYED, REFERENCE_TAGS, RUNG_ATTR

# When and how far: measured (2026-12-05, Zen 5, 0.5x, 40-trial searches in shadow mode, so
# every candidate finished and a stop can be scored by how the candidate ended). Judged
# after epoch 2 of 10 with a margin of 0.05, 4 of the 40 would-stops of seeds 0-2 ended
# feasible (10%; one its search's most accurate), and 1 of 5 in seed 3: distilled and
# int8-QAT candidates read anywhere from chance (0.10) to 0.94 after two epochs and still
# ended at 0.99. Replayed on every epoch's readings (``benchmarks.early_stop.replay``): at
# epoch 2 or 3 every margin up to 0.2 stopped a candidate that ended feasible in one set of
# seeds or the other; at epoch 4 no margin from 0.02 to 0.2 did, in either (0.05: 32
# stops, 20% of the wall time saved, seeds 0-2; 27 stops, 18%, seeds 3-5, where seed 5 was
# searched after the choice, as a holdout: 11 stops, none false).
DEFAULT_EPOCHS = (4,)
DEFAULT_MARGIN = 0.05
# ASHA's 1/eta with eta = 3, Hyperband's default (Li et al. 2018; Optuna's
# SuccessiveHalvingPruner defaults to 4). It only matters below the bar, where the readings
# of candidates that went on to make the floor already say "hopeless".
DEFAULT_KEEP_FRACTION = 1 / 3


@dataclass(frozen=True)
class RungRule:
    """When and how candidates are judged during their fine-tune.

    Attributes:
        epochs: the rungs, as epochs of the schedule counted from 1, after which a
            candidate is judged; rungs at or past the schedule's last epoch are ignored.
        margin: how far, in the metric's units, a candidate may read below the lowest
            reading at the rung of a candidate that went on to meet the floor, and still
            go on: the allowance for one reading's noise.
        keep_fraction: ASHA's 1/eta: the share of candidates at a rung that go on by
            rank whatever their reading.
        shadow: judge and record, never stop.
    """

    epochs: tuple[int, ...] = DEFAULT_EPOCHS
    margin: float = DEFAULT_MARGIN
    keep_fraction: float = DEFAULT_KEEP_FRACTION
    shadow: bool = False

    def __post_init__(self) -> None:
        if not self.epochs or any(e < 1 for e in self.epochs):
            raise ConfigError(f"--rungs {self.epochs}: give epochs from 1 up, e.g. --rungs 2,5")
        if not 0 <= self.margin < 1:
            raise ConfigError(f"--rung-margin {self.margin:g} must be from 0 to below 1")
        if not 0 <= self.keep_fraction < 1:
            raise ConfigError(
                f"--rung-keep-fraction {self.keep_fraction:g} must be from 0 to below 1"
            )

    def judges(self, epoch: int, total_epochs: int) -> bool:
        """Whether the candidate is judged after ``epoch`` (from 1) of ``total_epochs``."""
        return epoch in self.epochs and epoch < total_epochs


def describe(rule: RungRule | None, total_epochs: int) -> str | None:
    """One line for the start of a search: where candidates are judged, or why none is.

    A rung at or past the schedule's last epoch judges nobody (``--rungs 4`` with
    ``--finetune-epochs 3``): said, rather than leaving the user to believe hopeless
    fine-tunes are being stopped. None when the rule is off or nothing is fine-tuned.
    """
    if rule is None or total_epochs < 1:
        return None
    judged = [e for e in rule.epochs if rule.judges(e, total_epochs)]
    if not judged and total_epochs == 1:
        return "successive halving judges no candidate: a one-epoch fine-tune has no rung"
    if not judged:
        given = ",".join(str(e) for e in rule.epochs)
        return (
            f"successive halving judges no candidate: --rungs {given} is not before the "
            f"last of {total_epochs} fine-tuning epochs (give --rungs below {total_epochs}, "
            "or --early-stop off)"
        )
    at = ", ".join(str(e) for e in judged)
    plural = "s" if len(judged) > 1 else ""
    if rule.shadow:
        return (
            f"successive halving in shadow: records where it would stop after epoch{plural} "
            f"{at} of {total_epochs}, stops nothing"
        )
    return (
        f"stops hopeless fine-tunes after epoch{plural} {at} of {total_epochs} "
        "(--early-stop off: finish every one)"
    )


@dataclass(frozen=True)
class Reading:
    """One candidate's accuracy at a rung."""

    trial: int
    accuracy: float


@dataclass(frozen=True)
class RungVerdict:
    stop: bool
    reason: str  # why it goes on or stops, for the trial's record


def judge(
    rule: RungRule, *, accuracy: float, held: Sequence[Reading], peers: Sequence[float]
) -> RungVerdict:
    """Whether a candidate reading ``accuracy`` at a rung stops.

    Args:
        held: the readings at the same rung of candidates that finished and met the floor.
        peers: every other candidate's reading at the same rung (this one's excluded).
    """
    if not held:
        return RungVerdict(False, "no finished candidate that met the floor to compare with")
    lowest = min(held, key=lambda reading: reading.accuracy)
    bar = lowest.accuracy - rule.margin
    if accuracy >= bar:
        return RungVerdict(
            False,
            f"{accuracy:.4f} at or above {bar:.4f} (trial {lowest.trial}, which met the floor, "
            f"read {lowest.accuracy:.4f})",
        )
    ranked = sorted([*peers, accuracy], reverse=True)
    kept = math.floor(len(ranked) * rule.keep_fraction)
    if kept > 0 and accuracy >= ranked[kept - 1]:
        return RungVerdict(False, f"{accuracy:.4f} in the top {kept} of {len(ranked)} at the rung")
    return RungVerdict(
        True,
        f"{accuracy:.4f} is more than {rule.margin:g} below {lowest.accuracy:.4f}, the lowest "
        f"reading at the rung of a candidate that met the floor (trial {lowest.trial} of "
        f"{len(held)}), and not in the top {kept} of {len(ranked)} at the rung",
    )


def peer_readings(trials: Iterable[Any], epoch: int, *, exclude: int | None = None) -> list[float]:
    """The readings at rung ``epoch`` of ``trials`` (Optuna trials, any state)."""
    return [r.accuracy for r in _readings(trials, epoch) if r.trial != exclude]


def held_readings(trials: Iterable[Any], epoch: int) -> list[Reading]:
    """The readings at rung ``epoch`` of the trials that finished their fine-tune and met
    the accuracy floor: complete, deployed (not stopped), not below the floor."""
    finished = [
        t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and met_the_floor(t)
    ]
    return _readings(finished, epoch)


def met_the_floor(trial: Any) -> bool:
    """A candidate that finished its fine-tune (its deployed file was read) within the
    accuracy floor: the evidence a rung's bar is built from."""
    return (
        trial.user_attrs.get("accuracy_kind") == DEPLOYED
        and float(trial.user_attrs.get("below_accuracy_floor", 1.0)) <= 0
    )


def never_stopped(user_attrs: Mapping[str, Any]) -> bool:
    """The baseline and the reference trials finish whatever they read: they are the
    first evidence, and the user asked for them."""
    return any(key in user_attrs for key in ("baseline", *REFERENCE_TAGS))


def _readings(trials: Iterable[Any], epoch: int) -> list[Reading]:
    found = []
    for trial in trials:
        rungs: Mapping[str, float] = trial.user_attrs.get(RUNG_ATTR) or {}
        if str(epoch) in rungs:
            found.append(Reading(trial.number, float(rungs[str(epoch)])))
    return found


def parse_rungs(text: str) -> tuple[int, ...]:
    """``"2,5"`` -> ``(2, 5)``; a clear error for anything else."""
    try:
        epochs = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError(f"--rungs {text!r}: give epochs as integers, e.g. --rungs 2,5") from None
    if not epochs or epochs[0] < 1:
        raise ConfigError(f"--rungs {text!r}: give epochs from 1 up, e.g. --rungs 2,5")
    return epochs
