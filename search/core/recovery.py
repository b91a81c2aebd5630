"""What happens when a trial or its worker dies: close the record, retry, or stop.

* A worker killed mid-trial (SIGKILL, a lost machine) stops its trial's heartbeat; the next
  ``optimize`` on the study finds the trial stale, Optuna marks it FAIL, and
  ``StaleTrialHandler`` closes its MLflow run as KILLED with the reason, then retries it
  once (``RetryHeartbeatStaleTrialCallback``), so the sampler's plan is not lost.
* ``ConsecutiveFailures`` stops this process's search after ``limit`` failed trials in a
  row: a broken task or machine fails every trial, and the user should hear it at once
  rather than after the whole budget.
"""

from __future__ import annotations

import logging

import optuna

STALE_REASON = "its worker stopped beating (killed or lost): marked failed, retried once"
_log = logging.getLogger(__name__)


class StaleTrialHandler:
    """``heartbeat_stale_trial_callback``: close the dead trial's MLflow run, then retry."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            try:
                from search.track.tracker import Tracker

                tracker = Tracker(self.tracking_uri)
                tracker.log(
                    run_id, tags={"state": "KILLED", "failure_reason": STALE_REASON,
                                  "feasible": False},
                )  # fmt: skip
                tracker.end_run(run_id, "KILLED")
            except Exception as error:  # the retry matters more than the record
                _log.warning("could not close MLflow run %s: %s", run_id, error)
        self.retry(study, trial)


class ConsecutiveFailures:
    """An ``optimize`` callback that stops the study after ``limit`` failures in a row."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL:
            self.count += 1
        elif trial.state == optuna.trial.TrialState.COMPLETE:
            self.count = 0
        if self.count >= self.limit:
            study.stop()


def failure_streak(trials: list[optuna.trial.FrozenTrial]) -> tuple[int, str]:
    """How many of the last finished ``trials`` failed in a row, and the last reason."""
    streak, reason = 0, ""
    for trial in sorted(trials, key=lambda t: t.number, reverse=True):
        if trial.state != optuna.trial.TrialState.FAIL:
            break
        streak += 1
        reason = reason or str(trial.user_attrs.get("fail_reason", "unknown"))
    return streak, reason
