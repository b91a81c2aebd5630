"""The share of a search's wall time spent outside the work itself.

The work is fine-tuning, evaluation and latency measurement (``search.core.phases``). Every
trial records its phases; its wall time is Optuna's start-to-complete. Two shares:

* per trial: 1 - work / (complete - start), over completed trials, time-weighted;
* per run: 1 - work / (last completion - first start) of a single-process study, which
  also counts the gaps between trials (the sampler's proposal, storage writes, callbacks).

What the rest is spent on is broken down by the recorded phases: applying the levers,
export and conversion, counting MACs, and the remainder (Optuna, MLflow, the file upload);
and by what became of the trial. A candidate screened out by latency first pays the same
levers, export and conversion as one that fine-tunes, but its work is only a brief timing:
the more a search screens, the shorter its wall time and the larger this share (run 29:
35% of a screened trial's 1.4 s, 6% of a fine-tuned one's 13 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from search.core.phases import WORK_PHASES
from search.track.trials import BEFORE_FINE_TUNING, is_stopped

# What became of a trial, for the split of the overhead by kind.
SCREENED, STOPPED, FINISHED = "screened before fine-tuning", "stopped at a rung", "fine-tuned"


@dataclass(frozen=True)
class Overhead:
    trials: int
    trial_seconds: float  # summed start-to-complete
    run_seconds: float  # summed first-start-to-last-complete per study
    work_seconds: float
    phases: dict[str, float]  # every recorded phase, summed
    trial_share: float  # 1 - work / trial_seconds
    run_share: float  # 1 - work / run_seconds
    # kind -> trials, trial_seconds, work_seconds, share (1 - work / trial_seconds)
    by_kind: dict[str, dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def overhead(studies: Sequence[optuna.Study]) -> Overhead:
    """Pooled over ``studies`` (each run by one process, so its trials do not overlap)."""
    trial_seconds = run_seconds = work = 0.0
    phases: dict[str, float] = {}
    by_kind: dict[str, dict[str, float]] = {}
    count = 0
    for study in studies:
        done = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE and "phase_seconds" in t.user_attrs
        ]
        if not done:
            continue
        for trial in done:
            assert trial.datetime_start is not None and trial.datetime_complete is not None
            seconds_of_trial = (trial.datetime_complete - trial.datetime_start).total_seconds()
            trial_seconds += seconds_of_trial
            work_of_trial = 0.0
            for name, seconds in trial.user_attrs["phase_seconds"].items():
                phases[name] = phases.get(name, 0.0) + float(seconds)
                if name in WORK_PHASES:
                    work_of_trial += float(seconds)
            work += work_of_trial
            kind = by_kind.setdefault(
                trial_kind(trial), {"trials": 0, "trial_seconds": 0.0, "work_seconds": 0.0}
            )
            kind["trials"] += 1
            kind["trial_seconds"] += seconds_of_trial
            kind["work_seconds"] += work_of_trial
        first = min(t.datetime_start for t in done if t.datetime_start is not None)
        last = max(t.datetime_complete for t in done if t.datetime_complete is not None)
        run_seconds += (last - first).total_seconds()
        count += len(done)
    phases["other (Optuna, MLflow, files)"] = trial_seconds - sum(phases.values())
    for kind in by_kind.values():
        kind["share"] = (
            1 - kind["work_seconds"] / kind["trial_seconds"] if kind["trial_seconds"] else 0.0
        )
    return Overhead(
        trials=count,
        trial_seconds=trial_seconds,
        run_seconds=run_seconds,
        work_seconds=work,
        phases=phases,
        trial_share=1 - work / trial_seconds if trial_seconds else float("nan"),
        run_share=1 - work / run_seconds if run_seconds else float("nan"),
        by_kind=by_kind,
    )


def trial_kind(trial: optuna.trial.FrozenTrial) -> str:
    """Screened out by latency first, stopped at a rung, or fine-tuned to the end (a
    candidate with nothing to fine-tune counts with these: its file is the deployed one)."""
    kind = str(trial.user_attrs.get("accuracy_kind", ""))
    if kind == BEFORE_FINE_TUNING:
        return SCREENED
    return STOPPED if is_stopped(kind) else FINISHED
