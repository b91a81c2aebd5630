"""A worker killed mid-trial, Ctrl-C, and failing trials: nothing finished is lost."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from search.core.recovery import ConsecutiveFailures, failure_streak

TINY = f"{Path(__file__).parent / 'fixtures' / 'tiny_task.py'}:make_task"
COMMON = ["--task", TINY, "--latency-budget", "1000ms", "--max-accuracy-drop", "1",
          "--heartbeat", "1", "--study", "crash"]  # fmt: skip


def start(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", "run", *COMMON, *args],
        cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_fine_tuning(home: Path, process: subprocess.Popen[str]) -> optuna.trial.FrozenTrial:
    """The first trial seen running a fine-tune (trial 1: the pruning reference)."""
    storage = f"sqlite:///{home / 'studies' / 'optuna.db'}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            study = optuna.load_study(study_name="crash", storage=storage)
        except (KeyError, Exception):
            time.sleep(0.5)
            continue
        for trial in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            if trial.number >= 1 and "latency" in trial.user_attrs:  # measured, now tuning
                time.sleep(1.0)
                return trial
        time.sleep(0.2)
    raise AssertionError("no trial reached fine-tuning")


def load(home: Path) -> tuple[optuna.Study, MlflowClient]:
    storage = f"sqlite:///{home / 'studies' / 'optuna.db'}"
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    return optuna.load_study(study_name="crash", storage=storage), client


@pytest.mark.slow  # 50 s: two processes and a 200-epoch trial killed; scripts/test.sh --slow
def test_a_killed_worker_s_trial_is_failed_closed_and_retried(tmp_path, tiny_task) -> None:
    first = start(tmp_path, "--trials", "3", "--finetune-epochs", "200")
    victim = wait_for_fine_tuning(tmp_path, first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    study, _ = load(tmp_path)
    complete_before = {
        t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
    }
    time.sleep(5)  # four missed heartbeats of a second each make the trial stale

    resumed = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", *COMMON, "--trials", "2",
         "--finetune-epochs", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    study, client = load(tmp_path)
    states = {t.number: t.state for t in study.trials}
    assert states[victim.number] == optuna.trial.TrialState.FAIL
    assert optuna.trial.TrialState.RUNNING not in states.values()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete_before <= {t.number for t in complete}
    assert len(complete) == len(complete_before) + 2  # the resumed run's two trials
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retried) == 1 and retried[0].params == victim.params
    run = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert "stopped beating" in run.data.tags["failure_reason"]


@pytest.mark.slow  # 30 s+: scripts/test.sh --slow runs it
def test_ctrl_c_fails_the_trial_closes_its_runs_and_says_how_to_resume(
    tmp_path, tiny_task
) -> None:
    process = start(tmp_path, "--trials", "3", "--finetune-epochs", "200")
    victim = wait_for_fine_tuning(tmp_path, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    study, client = load(tmp_path)
    trial = next(t for t in study.trials if t.number == victim.number)
    assert trial.state == optuna.trial.TrialState.FAIL
    assert client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    experiment = client.get_experiment_by_name("crash")
    statuses = {r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert "RUNNING" not in statuses


def test_consecutive_failures_stop_the_study_and_are_summarised() -> None:
    study = optuna.create_study()
    stop = ConsecutiveFailures(3)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("fail_reason", "ValueError: broken")
        raise ValueError("broken")

    study.optimize(objective, n_trials=10, catch=(ValueError,), callbacks=[stop])
    assert len(study.trials) == 3
    assert failure_streak(study.trials) == (3, "ValueError: broken")


@pytest.mark.slow  # 20-35 s on 2 cores; scripts/test.sh --slow runs it
def test_a_trial_whose_loss_turns_nan_fails_with_its_reason_and_the_study_goes_on(
    tmp_path, tiny_task
) -> None:
    task = f"{Path(__file__).parent / 'fixtures' / 'bad_tasks.py'}:nan_loss"
    result = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", "--task", task, "--latency-budget",
         "1000ms", "--trials", "3", "--finetune-epochs", "1", "--study", "crash",
         "--off", "depth", "--off", "width", "--off", "resolution"],  # pruning 50%, then int8
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    study, client = load(tmp_path)
    states = [t.state for t in study.trials if t.state.is_finished()]
    assert states == [
        optuna.trial.TrialState.COMPLETE,  # the baseline: nothing to fine-tune
        optuna.trial.TrialState.FAIL,  # pruning: its fine-tune's loss turned NaN
        optuna.trial.TrialState.COMPLETE,  # int8 alone: no fine-tune
    ]
    failed = study.trials[1]
    assert "FloatingPointError: loss became nan" in failed.user_attrs["fail_reason"]
    run = client.get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "loss became nan" in run.data.tags["failure_reason"]
    assert "failed: FloatingPointError" in result.stdout
