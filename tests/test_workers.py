"""``search run --workers N``: several processes on one study, through the real storage."""

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from search.core.workers import trial_shares

TINY = f"{Path(__file__).parent / 'fixtures' / 'tiny_task.py'}:make_task"


def test_trials_are_shared_out_evenly() -> None:
    assert trial_shares(5, 2) == [3, 2]
    assert trial_shares(1, 3) == [1, 0, 0]
    assert trial_shares(None, 2) == [None, None]


@pytest.mark.slow  # about 45 s: spawns two workers; run by scripts/test.sh --slow
def test_two_workers_run_one_study_without_losing_or_repeating_a_trial(
    tmp_path, tiny_task
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", "--task", TINY, "--latency-budget",
         "1000ms", "--trials", "4", "--workers", "2", "--finetune-epochs", "1",
         "--max-accuracy-drop", "1", "--study", "parallel"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 workers" in result.stdout
    storage = f"sqlite:///{tmp_path / 'studies' / 'optuna.db'}"
    study = optuna.load_study(study_name="parallel", storage=storage)
    done = [t for t in study.trials if t.state.is_finished()]
    assert len(done) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in done), [
        t.user_attrs.get("fail_reason") for t in done
    ]
    assert len({t.user_attrs["pid"] for t in done}) == 2  # both workers ran trials
    assert done[0].user_attrs["baseline"] is True
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("parallel")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 5  # the parent and one run per trial
    assert {r.info.status for r in runs} == {"FINISHED"}
