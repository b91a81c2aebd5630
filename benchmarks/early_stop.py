"""What successive halving did in one search: stops, and in shadow mode its false stops.

In shadow mode (``--early-stop shadow``) the rule judges every fine-tune at its rungs and
records where it would have stopped, but every candidate finishes: a would-stop candidate
that ends feasible is a false stop, and the fine-tuning after its rung is the time the
rule would have saved. With the rule on, the stopped trials are counted and the time
their fine-tunes did not spend is estimated the same way (the schedule's remaining share).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from search.core.rungs import Reading, RungRule, judge, met_the_floor, never_stopped
from search.track.trials import RUNG_ATTR, STOPPED_ATTR, WOULD_STOP_ATTR, is_feasible

# the per-epoch curve the fine-tune logs to MLflow (search.core.objective)
EAGER_CURVE = "finetune_val_accuracy_eager"


def rung_counts(study: optuna.Study, epochs: int) -> dict[str, Any]:
    """Counts for one search whose fine-tunes are ``epochs`` long."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    judged = [t for t in done if t.user_attrs.get(RUNG_ATTR)]
    stopped = [t for t in done if STOPPED_ATTR in t.user_attrs]
    would = [t for t in done if WOULD_STOP_ATTR in t.user_attrs]
    false_stops = [t.number for t in would if is_feasible(t)]
    return {
        "judged": len(judged),
        "stopped": len(stopped),
        "would_stop": len(would),
        "false_stops": false_stops,
        # fine-tuning a stopped candidate did not spend, and a would-stop one would not have
        "seconds_saved": sum(_saved(t, STOPPED_ATTR, epochs) for t in stopped)
        + sum(_saved(t, WOULD_STOP_ATTR, epochs) for t in would),
        "fine_tune_seconds": sum(fine_tuned_for(t) for t in done),
    }


def _saved(trial: optuna.trial.FrozenTrial, key: str, epochs: int) -> float:
    """The fine-tune seconds after the rung: for a stopped trial, what the epochs it ran
    took, scaled to the rest; for a would-stop one, the remaining share of what it took."""
    rung = int(trial.user_attrs[key])
    spent = fine_tuned_for(trial)
    if key == STOPPED_ATTR:
        return spent * (epochs - rung) / rung
    return spent * (epochs - rung) / epochs


def render(searches: dict[str, Sequence[dict[str, Any]]], mode: str) -> list[str]:
    """The report's section: one row per budget and seed."""
    lines = [
        "## Successive halving",
        "",
        f"`--early-stop {mode}`"
        + (
            ": every candidate finished; the rule recorded where it would have stopped, and "
            "a would-stop candidate that ended feasible is a false stop."
            if mode == "shadow"
            else ": candidates hopeless at a rung stopped there (seconds saved estimated "
            "from the epochs they ran). What a stopped candidate would have ended at is not "
            "known with the rule on, so its false stops are not either (–): `--early-stop "
            "shadow` measures them."
        ),
        "",
        "| budget | seed | judged at a rung | stopped | would stop | false stops | fine-tune s "
        "| saved s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for budget, runs in searches.items():
        for run in runs:
            counts = run.get("rungs")
            if counts is None:
                continue
            false = counts["false_stops"]
            shadowed = (
                f"{counts['would_stop']} | {len(false)}"
                + (f" (trials {', '.join(map(str, false))})" if false else "")
                if mode == "shadow"
                else "– | –"
            )
            lines.append(
                f"| {budget} | {run['seed']} | {counts['judged']} | {counts['stopped']} "
                f"| {shadowed} | {counts['fine_tune_seconds']:.0f} "
                f"| {counts['seconds_saved']:.0f} |"
            )
    would = sum(r["rungs"]["would_stop"] for rs in searches.values() for r in rs if "rungs" in r)
    false = sum(
        len(r["rungs"]["false_stops"]) for rs in searches.values() for r in rs if "rungs" in r
    )
    if mode == "shadow" and would:
        lines += ["", f"False-stop rate: {false} of {would} ({100 * false / would:.0f}%)."]
    return [*lines, ""]


@dataclass(frozen=True)
class Replay:
    """What ``rule`` would have done to one search whose candidates all finished (a shadow
    search, or a rule-off one read with its MLflow curves)."""

    stops: int
    false_stops: list[int]  # trials it would have stopped that ended feasible
    seconds_saved: float  # their fine-tuning after the rung
    fine_tune_seconds: float
    trial_seconds: float  # the search's summed trial wall time
    stopped_at: dict[int, int]  # trial number -> the rung it would have stopped at


Readings = Callable[[optuna.trial.FrozenTrial], dict[str, float]]


def recorded_readings(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """A trial's rung readings as the study keeps them: epoch (from 1) -> accuracy."""
    return {str(k): float(v) for k, v in (trial.user_attrs.get(RUNG_ATTR) or {}).items()}


def curve_readings(tracking_uri: str) -> Readings:
    """Every epoch's eager reading from the trial's MLflow curve (the metric
    ``finetune_val_accuracy_eager``, step = epoch - 1): for shadow searches that recorded
    their rung epochs only."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)

    def readings(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if not run_id:
            return recorded_readings(trial)
        history = client.get_metric_history(str(run_id), EAGER_CURVE)
        return {str(m.step + 1): float(m.value) for m in history} or recorded_readings(trial)

    return readings


def replay(
    study: optuna.Study, rule: RungRule, epochs: int, readings_of: Readings = recorded_readings
) -> Replay:
    """Judge every candidate of a shadow search again, in trial order, with ``rule``
    (fine-tunes ``epochs`` long).

    Why: a shadow search fine-tunes every candidate to the end and records its readings at
    the rungs, so any margin or keep fraction can be tried on it after the fact, with the
    truth to score it by. The evidence is rebuilt as the rule would have had it: a
    candidate is judged against the readings of the trials before it (one process runs a
    search's trials in turn); one the replay stops is no longer evidence of a finished
    candidate, though its reading still ranks among its peers. The verdict is
    ``search.core.rungs.judge``'s, so what is replayed is the rule itself. A shadow search
    records every epoch's reading, so the rule can be replayed at any epoch; for one from
    before 2026-12-05, which recorded its rung epochs only, ``readings_of`` may read them
    from the MLflow curves (``curve_readings``).
    """
    done = sorted(
        study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
        key=lambda t: t.number,
    )
    held: dict[str, list[Reading]] = {}
    peers: dict[str, list[float]] = {}
    stops, false_stops, saved = 0, [], 0.0
    stopped: dict[int, int] = {}
    for trial in done:
        readings = readings_of(trial)
        stopped_at = None
        if not never_stopped(trial.user_attrs):
            for epoch in sorted(readings, key=int):
                if not rule.judges(int(epoch), epochs):
                    continue
                verdict = judge(
                    rule,
                    accuracy=readings[epoch],
                    held=held.get(epoch, []),
                    peers=peers.get(epoch, []),
                )
                if verdict.stop:
                    stopped_at = int(epoch)
                    break
        for epoch, accuracy in readings.items():
            if stopped_at is None or int(epoch) <= stopped_at:
                peers.setdefault(epoch, []).append(accuracy)
        if stopped_at is not None:
            stops += 1
            stopped[trial.number] = stopped_at
            if is_feasible(trial):
                false_stops.append(trial.number)
            saved += fine_tuned_for(trial) * (epochs - stopped_at) / epochs
        elif met_the_floor(trial):
            for epoch, accuracy in readings.items():
                held.setdefault(epoch, []).append(Reading(trial.number, accuracy))
    return Replay(
        stops=stops,
        stopped_at=stopped,
        false_stops=false_stops,
        seconds_saved=saved,
        fine_tune_seconds=sum(fine_tuned_for(t) for t in done),
        trial_seconds=sum(
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in done
            if t.datetime_start is not None and t.datetime_complete is not None
        ),
    )


def fine_tuned_for(trial: optuna.trial.FrozenTrial) -> float:
    """The seconds a trial spent fine-tuning (0 when it did not)."""
    return float((trial.user_attrs.get("phase_seconds") or {}).get("fine_tune", 0.0))
