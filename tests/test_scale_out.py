"""Two workers on one study through PostgreSQL and an MLflow server, as on two machines."""

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from servers import mlflow_server, postgres_binaries, postgres_server

from search.track.tracker import TRIAL_TAG

TINY = f"{Path(__file__).parent / 'fixtures' / 'tiny_task.py'}:make_task"


@pytest.mark.slow  # 90 s: scripts/test.sh --slow runs it
def test_two_workers_share_a_postgres_study_and_an_mlflow_server(tmp_path, tiny_task) -> None:
    if postgres_binaries() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it with apt where root)")
    with postgres_server() as storage, mlflow_server(tmp_path) as tracking:
        command = [
            sys.executable, "-m", "search.cli", "run", "--task", TINY, "--latency-budget",
            "1000ms", "--trials", "2", "--finetune-epochs", "1", "--max-accuracy-drop", "1",
            "--storage", storage, "--tracking-uri", tracking, "--study", "shared",
        ]  # fmt: skip
        homes = [tmp_path / "machine-a", tmp_path / "machine-b"]
        workers = []
        for home in homes:
            home.mkdir()
            pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
            workers.append(subprocess.Popen(command, cwd=home, text=True, **pipes))
        outputs = [worker.communicate(timeout=600) for worker in workers]
        for worker, (stdout, stderr) in zip(workers, outputs, strict=True):
            assert worker.returncode == 0, stderr
            assert "s3cret-pw" not in stdout + stderr

        study = optuna.load_study(study_name="shared", storage=storage)
        finished = [t for t in study.trials if t.state.is_finished()]
        assert len(finished) == 4  # two each
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in finished)
        assert len({t.user_attrs["pid"] for t in finished}) == 2
        assert all(t.user_attrs["host"] for t in finished)
        references = [t for t in study.trials if t.user_attrs.get("reference") == "baseline"]
        assert len(references) == 1  # the study was created, and its baseline queued, once

        client = MlflowClient(tracking_uri=tracking)
        experiment = client.get_experiment_by_name("shared")
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        by_trial: dict[int, int] = {}
        for run in runs:
            if TRIAL_TAG in run.data.tags:
                number = int(run.data.tags[TRIAL_TAG])
                by_trial[number] = by_trial.get(number, 0) + 1
                assert run.data.tags["host"] == study.trials[number].user_attrs["host"]
        assert by_trial == {t.number: 1 for t in finished}  # once each in MLflow too
        parents = [r for r in runs if r.data.tags.get("kind") == "search"]
        assert len(parents) == 2
        for parent in parents:
            assert "s3cret-pw" not in str(parent.data.params) + str(parent.data.tags)
