"""The ``ft`` lever: the recovery fine-tune's learning rate, searched only when asked."""

import optuna
import pytest
from mlflow import MlflowClient

from search.core.config import SearchConfig
from search.core.levers import LeverSettings
from search.core.runner import run_search
from search.train.loop import Recipe, recovery_lr
from techniques import Context
from techniques.finetune_lr import FinetuneLR, FinetuneLRParams, rates


def _ctx(task, tmp_path, searched=True):
    options = {"ft.searched": True} if searched else {}
    return Context(task, "cpu", tmp_path, task.build_model(), options=options)


def test_the_rates_are_shares_of_the_tasks_own_recovery_rate(
    tiny_task, tiny_vit_task, tmp_path
) -> None:
    assert rates(_ctx(tiny_task, tmp_path)) == (0.01, 0.02, 0.05)  # SGD
    assert rates(_ctx(tiny_vit_task, tmp_path)) == (4e-4, 8e-4, 2e-3)  # AdamW
    assert recovery_lr("sgd") == 0.05 and recovery_lr("adamw") == 2e-3


def test_off_the_search_unless_asked(tiny_task, tmp_path) -> None:
    trial = optuna.create_study().ask()
    assert FinetuneLR().space(trial, _ctx(tiny_task, tmp_path, searched=False)) is None
    assert trial.params == {}


def test_a_gentler_rate_sets_the_recipe_and_the_tasks_own_is_the_lever_off(
    tiny_task, tmp_path
) -> None:
    ctx = _ctx(tiny_task, tmp_path)
    lever = FinetuneLR()
    assert lever.space(optuna.trial.FixedTrial({"ft.lr": 0.05}), ctx) is None
    params = lever.space(optuna.trial.FixedTrial({"ft.lr": 0.02}), ctx)
    assert params == FinetuneLRParams(0.02)
    assert lever.configure(Recipe(epochs=3, lr=0.05), params, ctx) == Recipe(epochs=3, lr=0.02)
    with pytest.raises(ValueError, match="must be above 0"):
        FinetuneLRParams(0.0)


def test_a_search_fine_tunes_at_the_rate_its_trial_chose(home, tiny_task) -> None:
    """Pruning fixed, the rate fixed to the gentlest: every fine-tuned trial's run says so."""
    levers = LeverSettings(
        off=("depth", "width", "lowrank", "lora", "quant", "distill", "resolution"),
        fixed=(("prune.ratio", 0.25), ("ft.lr", 0.01), ("ft.searched", True)),
    )
    config = SearchConfig(
        home=home, trials=2, latency_budget_ms=1000.0, finetune_epochs=1, levers=levers,
        max_accuracy_drop=1.0,
    )  # fmt: skip
    result = run_search(config, task=tiny_task)
    study = optuna.load_study(study_name=result.study_name, storage=config.storage_url)
    client = MlflowClient(tracking_uri=config.mlflow_uri)
    tuned = [t for t in study.trials if t.params.get("prune.ratio") == 0.25]
    assert tuned and all(t.params["ft.lr"] == 0.01 for t in tuned)
    rates_logged = {
        client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics.get("finetune_lr")
        for t in tuned
    }
    assert rates_logged == {0.01}
