"""The share of a search's wall time spent outside the work itself.

The work is fine-tuning, evaluation and latency measurement (``search.core.phases``). Every
trial records its phases; its wall time is Optuna's start-to-complete. Two shares:

* per trial: 1 - work / (complete - start), over completed trials, time-weighted;
* per run: 1 - work / (last completion - first start) of a single-process study, which
  also counts the gaps between trials (the sampler's proposal, storage writes, callbacks).

What the rest is spent on is broken down by the recorded phases: applying the levers,
export and conversion, counting MACs, and the remainder (Optuna, MLflow, the file upload).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from search.core.phases import WORK_PHASES


@dataclass(frozen=True)
class Overhead:
    trials: int
    trial_seconds: float  # summed start-to-complete
    run_seconds: float  # summed first-start-to-last-complete per study
    work_seconds: float
    phases: dict[str, float]  # every recorded phase, summed
    trial_share: float  # 1 - work / trial_seconds
    run_share: float  # 1 - work / run_seconds

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def overhead(studies: Sequence[optuna.Study]) -> Overhead:
    """Pooled over ``studies`` (each run by one process, so its trials do not overlap)."""
    trial_seconds = run_seconds = work = 0.0
    phases: dict[str, float] = {}
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
            trial_seconds += (trial.datetime_complete - trial.datetime_start).total_seconds()
            for name, seconds in trial.user_attrs["phase_seconds"].items():
                phases[name] = phases.get(name, 0.0) + float(seconds)
                if name in WORK_PHASES:
                    work += float(seconds)
        first = min(t.datetime_start for t in done if t.datetime_start is not None)
        last = max(t.datetime_complete for t in done if t.datetime_complete is not None)
        run_seconds += (last - first).total_seconds()
        count += len(done)
    phases["other (Optuna, MLflow, files)"] = trial_seconds - sum(phases.values())
    return Overhead(
        trials=count,
        trial_seconds=trial_seconds,
        run_seconds=run_seconds,
        work_seconds=work,
        phases=phases,
        trial_share=1 - work / trial_seconds if trial_seconds else float("nan"),
        run_share=1 - work / run_seconds if run_seconds else float("nan"),
    )
