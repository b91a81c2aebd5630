"""Accuracy with its uncertainty in a real search: the intervals every trial records, the
baseline's per-example record kept once per study, and ``--accuracy-rule``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from test_cli import run_main
from test_end_to_end import config_for, finished

import search.core.runner as runner
from search.common.errors import ConfigError, StudyError
from search.core.baseline_record import load_record, record_path
from search.core.levers import LeverSettings
from search.core.runner import run_search
from search.track.trials import INTERVAL_KEYS, accuracy_below_floor, feasible_under, study_rule

# 70% pruning, one epoch of recovery: a candidate that loses a few validation images
PRUNED = LeverSettings(
    off=("width", "lowrank", "lora", "quant", "distill"), fixed=(("prune.ratio", 0.7),)
)


def test_the_rule_reads_the_point_or_the_paired_lower_end() -> None:
    # baseline 0.95, floor one point below; a candidate at 0.945 whose paired delta is
    # -0.5 points (-1.4, +0.3): within the drop by its point, not by its lower end
    figures = {"accuracy": 0.945, "floor": 0.94, "baseline_accuracy": 0.95}
    point = accuracy_below_floor("point", delta_low_points=-1.4, **figures)
    confident = accuracy_below_floor("confident", delta_low_points=-1.4, **figures)
    assert point == pytest.approx(-0.005) and confident == pytest.approx(0.004)
    sure = accuracy_below_floor("confident", delta_low_points=-0.8, **figures)
    assert sure == pytest.approx(-0.002)


def test_intervals_are_recorded_and_the_baseline_is_evaluated_once_per_study(
    home, tiny_task, monkeypatch, capsys
) -> None:
    evaluations = []
    measured = runner.predict  # the runner's only use: the baseline's validation record

    def counted(*args, **kwargs):
        evaluations.append(1)
        return measured(*args, **kwargs)

    monkeypatch.setattr(runner, "predict", counted)
    config = config_for(home, trials=2, study_name="ci", levers=PRUNED)  # any drop allowed
    result = run_search(config, task=tiny_task)
    assert len(evaluations) == 1
    path = record_path(config.studies_dir, "ci")
    assert path.is_file() and path.stat().st_size < 2000  # 359 examples, bit-packed
    run_search(config_for(home, trials=1, study_name="ci", levers=PRUNED), task=tiny_task)
    assert len(evaluations) == 1  # resumed: the record is reused, not measured again

    study = optuna.load_study(study_name="ci", storage=config.storage_url)
    baseline, pruned = finished(study)[:2]
    record = load_record(path, next(iter(np.load(path)["digest"].reshape(1))).__str__())
    assert record is not None and record.correct is not None
    assert record.metric == pytest.approx(baseline.values[0])
    # the baseline's own file against its record: the same examples right, a zero interval
    assert baseline.user_attrs["delta_points"] == 0.0
    assert (baseline.user_attrs["examples_lost"], baseline.user_attrs["examples_gained"]) == (0, 0)
    assert (baseline.user_attrs["delta_ci_low_points"], baseline.user_attrs["delta_ci_high_points"]) == (0.0, 0.0)  # fmt: skip  # noqa: E501
    for trial in (baseline, pruned):
        attrs = trial.user_attrs
        assert set(INTERVAL_KEYS) <= set(attrs)
        assert attrs["accuracy_ci_low"] <= trial.values[0] <= attrs["accuracy_ci_high"]
        assert attrs["delta_points"] == pytest.approx(100 * (trial.values[0] - baseline.values[0]))
        assert attrs["delta_ci_low_points"] <= attrs["delta_points"] <= attrs["delta_ci_high_points"]  # fmt: skip  # noqa: E501
        # the same figures in MLflow, as metrics of the trial's run
        metrics = MlflowClient(config.mlflow_uri).get_run(attrs["mlflow_run_id"]).data.metrics
        assert {k: metrics[k] for k in INTERVAL_KEYS} == pytest.approx(
            {k: float(attrs[k]) for k in INTERVAL_KEYS}
        )
    assert pruned.user_attrs["examples_lost"] > 0
    assert result.front and result.front[0].delta_ci_points is not None

    code, out, _ = run_main("status", "--study", "ci", "--json", cwd=home,
                            monkeypatch=monkeypatch, capsys=capsys)  # fmt: skip
    assert code == 0
    summary = json.loads(out)
    assert summary["accuracy_rule"] == "point"
    assert summary["baseline"]["delta_ci_low_points"] == 0.0
    assert set(INTERVAL_KEYS) <= set(summary["best_feasible"])
    code, out, _ = run_main("pareto", "--study", "ci", "--json", cwd=home,
                            monkeypatch=monkeypatch, capsys=capsys)  # fmt: skip
    rows = json.loads(out)
    assert code == 0 and rows and all(len(r["delta_ci_points"]) == 2 for r in rows)
    code, out, _ = run_main("pareto", "--study", "ci", cwd=home, monkeypatch=monkeypatch,
                            capsys=capsys)  # fmt: skip
    assert code == 0 and "accuracy rule point" in out and "(+0.0, +0.0)" in out

    # the same trials re-judged: between the pruned model's point delta and its lower end,
    # an allowed drop that the point rule meets and the confident rule does not
    delta, low = pruned.user_attrs["delta_points"], pruned.user_attrs["delta_ci_low_points"]
    assert low < delta < 0
    drop = -(delta + low) / 2 / 100
    judged = {"baseline_accuracy": baseline.values[0], "max_drop": drop}
    assert feasible_under(pruned, "point", **judged)
    assert not feasible_under(pruned, "confident", **judged)
    assert feasible_under(baseline, "confident", **judged)

    # the benchmark's view of the same search: both rules' picks, the paired test deltas
    from benchmarks.side_by_side import test_scores as scores_on_test
    from benchmarks.suite import _compression_entry
    from search.core.profile import trial_target

    folder = home / "models"
    base_file = trial_target(study, baseline.number, config.mlflow_uri, folder / "base")
    base_test = scores_on_test([base_file], tiny_task, runtime="onnxruntime", device="cpu")[0]
    entry = _compression_entry(study, tiny_task, config, folder, "best", base_test.correct)
    assert set(entry["picks"]) == {"point", "confident"} and entry["accuracy_rule"] == "point"
    candidates = {c["trial"]: c for c in entry["candidates"]}
    assert entry["picks"]["point"]["trial"] in candidates  # any drop allowed: all feasible
    tested = candidates[pruned.number]
    assert tested["feasible_under"] == ["point", "confident"]  # any drop allowed
    assert tested["test_delta_points"] == pytest.approx(
        100 * (tested["test_accuracy"] - base_test.metric)
    )

    # the rule is the study's: resuming with the other one is refused in one line
    with pytest.raises(StudyError, match="accuracy_rule=point"):
        run_search(config_for(home, trials=1, study_name="ci", levers=PRUNED,
                              accuracy_rule="confident"), task=tiny_task)  # fmt: skip


def test_a_confident_study_records_its_rule_and_judges_by_the_lower_end(home, tiny_task) -> None:
    config = config_for(home, trials=2, study_name="sure", levers=PRUNED, max_accuracy_drop=0.5,
                        accuracy_rule="confident")  # fmt: skip
    run_search(config, task=tiny_task)
    study = optuna.load_study(study_name="sure", storage=config.storage_url)
    assert study_rule(study) == "confident"
    baseline, pruned = finished(study)[:2]
    low = pruned.user_attrs["delta_ci_low_points"]
    # floor - (baseline + lower end) = -drop - lower end
    assert pruned.constraints["accuracy_below_floor"] == pytest.approx(-0.5 - low / 100)
    assert baseline.constraints["accuracy_below_floor"] == pytest.approx(-0.5)


def test_the_rule_is_checked_at_the_edge(tmp_path, tiny_task, monkeypatch, capsys) -> None:
    with pytest.raises(ConfigError, match="--accuracy-rule 'sure' is unknown"):
        config_for(tmp_path, accuracy_rule="sure")
    code, _, err = run_main("run", "--latency-budget", "10ms", "--accuracy-rule", "sure",
                            cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--accuracy-rule" in err


def test_resuming_with_another_rule_is_one_line_and_exit_2(
    tmp_path: Path, tiny_task, monkeypatch, capsys
) -> None:
    task = "tests/fixtures/tiny_task.py:make_task"
    args = ["run", "--task", str(Path(__file__).parent / "fixtures/tiny_task.py") + ":make_task",
            "--latency-budget", "1000ms", "--trials", "1", "--study", "r", "--finetune-epochs",
            "1", "--no-references"]  # fmt: skip
    assert task  # the fixture the CLI tests load
    code, _, err = run_main(*args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    code, _, err = run_main(*args, "--accuracy-rule", "confident", cwd=tmp_path,
                            monkeypatch=monkeypatch, capsys=capsys)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "accuracy_rule=point" in err and "confident" in err
