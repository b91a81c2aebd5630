"""``search promote`` into MLflow's registry, and ``search status``/``pareto``, on a real study."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from search.common.errors import ConfigError
from search.core.config import SearchConfig
from search.core.runner import run_search
from search.measure.onnx_runtime import open_session
from search.registry.promote import promote

TINY = f"{Path(__file__).parent / 'fixtures' / 'tiny_task.py'}:make_task"


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_task):
    """Baseline, width reference, pruning reference without fine-tuning (a worse model)."""
    home = tmp_path_factory.mktemp("promote")
    config = SearchConfig(
        latency_budget_ms=1000.0, trials=3, finetune_epochs=0, home=home,
        max_accuracy_drop=1.0, study_name="promo",
    )  # fmt: skip
    run_search(config, task=tiny_task)
    study = optuna.load_study(study_name="promo", storage=config.storage_url)
    return config, study


def promote_in(config, study, tiny_task, **kwargs):
    settings = {"trial_number": None, "model_name": "tiny", "tolerance": 0.005,
                "force": False, "lock_dir": config.studies_dir / "locks"}  # fmt: skip
    settings.update(kwargs)
    return promote(
        study, tiny_task, storage_url=config.storage_url, tracking_uri=config.mlflow_uri,
        **settings,
    )  # fmt: skip


def test_promotion_registers_a_champion_that_loads_back_with_its_accuracy(
    searched, tiny_task, tmp_path
) -> None:
    config, study = searched
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(done, key=lambda t: (t.values[0], -t.values[1]))
    first = promote_in(config, study, tiny_task, export_dir=tmp_path / "out")
    assert first.card.trial == best.number and first.champion
    assert first.reason == "first champion"
    assert {"model.onnx", "card.json", "card.md"} <= {p.name for p in (tmp_path / "out").iterdir()}
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["latency"]["threads"] == 1 and "cpu_model" in card["hardware"]
    # the pick's rule, the test accuracy's interval, the paired test delta against the
    # baseline's file on the same test examples, and the validation figures it was chosen on
    assert card["chosen_by"].startswith("default pick, accuracy rule point")
    low, high = card["test_accuracy_ci"]
    assert low <= card["test_accuracy"] <= high
    assert {"delta_points", "delta_ci_low_points", "examples_lost", "mcnemar_p"} <= set(
        card["test_delta"]
    )
    assert card["validation"]["delta_points"] == best.user_attrs["delta_points"]
    text = (tmp_path / "out" / "card.md").read_text()
    assert "against the baseline on test" in text and "95% interval" in text

    mlflow.set_tracking_uri(config.mlflow_uri)
    client = MlflowClient(tracking_uri=config.mlflow_uri)
    version = client.get_model_version_by_alias("tiny", "champion")
    assert str(version.version) == first.version
    assert str(client.get_model_version_by_alias("tiny", "challenger").version) == first.version
    model = mlflow.onnx.load_model("models:/tiny@champion")
    saved = tmp_path / "loaded.onnx"
    saved.write_bytes(model.SerializeToString())
    session = open_session(saved)
    outputs, targets = [], []
    for inputs, labels in tiny_task.data("test"):
        outputs.append(session.run(None, {"input": inputs.numpy()})[0])
        targets.append(labels.numpy())
    accuracy = tiny_task.metric(np.concatenate(outputs), np.concatenate(targets))
    assert accuracy == first.card.test_accuracy

    again = promote_in(config, study, tiny_task)
    assert again.already and again.version == first.version

    worst = min(done, key=lambda t: t.values[0])
    assert worst.values[0] < best.values[0] - 0.05  # pruned and not fine-tuned
    refused = promote_in(config, study, tiny_task, trial_number=worst.number)
    assert not refused.champion and "below the champion's" in refused.reason
    assert refused.card.chosen_by == f"--trial {worst.number}"
    assert refused.card.test_delta["examples_lost"] > 0
    assert str(client.get_model_version_by_alias("tiny", "champion").version) == first.version

    # Another model: the worse trial is its first champion; the better one then takes over.
    low = promote_in(config, study, tiny_task, trial_number=worst.number, model_name="seq")
    high = promote_in(config, study, tiny_task, trial_number=best.number, model_name="seq")
    assert low.champion and high.champion and high.reason.startswith("champion: test accuracy")
    assert str(client.get_model_version_by_alias("seq", "champion").version) == high.version


@pytest.mark.slow  # 18 s: a search with no feasible trial; scripts/test.sh --slow and CI run it
def test_a_study_without_a_feasible_trial_is_refused_with_figures(home, tiny_task) -> None:
    config = SearchConfig(latency_budget_ms=0.0001, trials=1, finetune_epochs=0, home=home,
                          study_name="tight")  # fmt: skip
    run_search(config, task=tiny_task)
    study = optuna.load_study(study_name="tight", storage=config.storage_url)
    with pytest.raises(ConfigError, match=r"no feasible trial: the nearest, trial 0, runs at"):
        promote_in(config, study, tiny_task)
    refused = subprocess.run(
        [sys.executable, "-m", "search.cli", "promote", "--study", "tight", "--task", TINY],
        capture_output=True, text=True, timeout=120, cwd=home,
    )  # fmt: skip
    assert refused.returncode == 2 and "budget" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_the_confident_pick_is_the_highest_lower_end_among_those_feasible_by_it(
    searched,
) -> None:
    from search.registry.promote import choose_trial
    from search.track.trials import baseline_trial, feasible_under

    _, study = searched
    base = baseline_trial(study)
    assert base is not None
    judged = {"baseline_accuracy": base.values[0], "max_drop": 1.0}
    sure = [t for t in study.trials if feasible_under(t, "confident", **judged)]
    pick = choose_trial(study, None, rule="confident")
    assert pick.user_attrs["delta_ci_low_points"] == max(
        t.user_attrs["delta_ci_low_points"] for t in sure
    )
    with pytest.raises(ConfigError, match="--accuracy-rule"):
        choose_trial(study, None, rule="lucky")


def test_status_and_pareto_print_tables_and_json(searched) -> None:
    config, _ = searched

    def cli(*args: str, study: str = "promo") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "search.cli", *args, "--study", study],
            capture_output=True, text=True, timeout=120, cwd=config.home,
        )  # fmt: skip

    status = json.loads(cli("status", "--json").stdout)
    assert status["trials"] >= 3 and status["feasible"] >= 1 and status["baseline"]["trial"] == 0
    assert "feasible" in cli("status").stdout
    front = json.loads(cli("pareto", "--json").stdout)
    assert front and {"number", "accuracy", "speedup", "shrink"} <= set(front[0])
    assert "Pareto front of promo" in cli("pareto").stdout
    missing = cli("status", "--json", study="nope")
    assert missing.returncode == 2 and "no such study" in missing.stderr
