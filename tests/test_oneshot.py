"""One-shot commands: one technique through the search's own trial pipeline, one MLflow run.

On the tiny digits task with one fine-tuning epoch: each command writes its model file and
a single run with the input's figures beside the result's, and the ratios between them.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import optuna
import pytest
from mlflow import MlflowClient

from search.common.errors import ConfigError
from search.core.config import SearchConfig
from search.core.oneshot import (
    EXPERIMENT,
    FINETUNE,
    UNIFORM_EXPAND,
    cubic_schedule,
    one_shot_params,
    run_one_shot,
    schedule_steps,
)
from search.core.runner import prepare_space

FIXTURE_TASK = str(Path(__file__).parent / "fixtures" / "tiny_task.py") + ":make_task"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args],
        capture_output=True, text=True, timeout=300, cwd=cwd,
    )  # fmt: skip


def _config(home: Path) -> SearchConfig:
    return SearchConfig(
        task=FIXTURE_TASK, latency_budget_factor=1.0, trials=1, finetune_epochs=1, home=home
    )


# lowrank and distill fine-tune longer (12-15 s each): scripts/test.sh --slow and CI run them
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("command", "given", "lever_label"),
    [
        ("prune", {"prune.ratio": 0.5}, "prune0.50"),
        ("quantize", {"quant.scheme": "int8-static"}, "int8s-pc-u8-r7-minmax"),
        pytest.param("lowrank", {"lowrank.rank_ratio": 0.25}, "lr0.25", marks=SLOW),
        # ema teacher: T=1
        pytest.param("distill", {"prune.ratio": 0.5, "distill.alpha": 0.5}, "kd1/0.5", marks=SLOW),
        ("share", {"share.bits": 4}, "share4b"),
    ],
)
def test_each_command_writes_its_file_and_one_run_with_before_and_after(
    command, given, lever_label, tiny_task, home
) -> None:
    output = home / "out" / f"{command}.onnx"
    # distillation here from the student's own moving average (self-distillation)
    options = {"distill.teacher": "ema"} if command == "distill" else None
    result = run_one_shot(
        _config(home), command, given, output=output, task=tiny_task, options=options
    )

    assert result.output == output and output.exists()
    onnx.checker.check_model(str(output))
    assert lever_label in result.label
    client = MlflowClient(tracking_uri=result.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [result.run_id]  # one run, no parent
    metrics = runs[0].data.metrics
    for name in ("accuracy", "test_accuracy", "latency_p50_ms", "size_bytes"):
        assert name in metrics and f"before_{name}" in metrics
    assert metrics["speedup"] == pytest.approx(
        metrics["before_latency_p50_ms"] / metrics["latency_p50_ms"]
    )
    assert metrics["size_ratio"] == pytest.approx(
        metrics["before_size_bytes"] / output.stat().st_size
    )
    assert runs[0].data.tags["one_shot.command"] == command
    if options:
        assert runs[0].data.params["one_shot.distill.teacher"] == "ema"
    if command in ("prune", "lowrank", "distill"):  # fewer weights, by the technique
        assert result.after.params < result.before.params
    else:  # int8 weights: a smaller file with the same parameter count
        assert output.stat().st_size < result.before.size_bytes
        assert result.after.params == result.before.params


def test_unset_settings_take_the_levers_reference_and_others_stay_off(tiny_task, home) -> None:
    prepared = prepare_space(_config(home), tiny_task)
    params = one_shot_params("prune", {}, prepared.ctx, prepared.space)
    assert params["prune.ratio"] == 0.5 and params["prune.importance"] == "magnitude"
    assert params["quant.scheme"] == "fp32" and params["lowrank.rank_ratio"] == 0.0
    assert params["distill.alpha"] == 0.0  # recovery on the labels alone unless asked
    narrowed = one_shot_params("distill", {UNIFORM_EXPAND: 2}, prepared.ctx, prepared.space)
    widths = {k: v for k, v in narrowed.items() if k.startswith("width.")}
    assert widths and all(v <= 2 for v in widths.values())
    assert narrowed["distill.alpha"] == 0.9  # the lever's reference
    # low-rank has no reference: the command's own default applies
    assert (
        one_shot_params("lowrank", {}, prepared.ctx, prepared.space)["lowrank.rank_ratio"] == 0.5
    )


def test_shrink_applies_the_levers_given_or_both_references(tiny_task, home) -> None:
    prepared = prepare_space(_config(home), tiny_task)
    both = one_shot_params("shrink", {}, prepared.ctx, prepared.space)
    assert both["depth.keep"] == 0.5 and both["resolution.scale"] == 0.75
    assert both["prune.ratio"] == 0.0 and both["quant.scheme"] == "fp32"
    depth = one_shot_params("shrink", {"depth.keep": 0.25}, prepared.ctx, prepared.space)
    assert depth["depth.keep"] == 0.25 and depth["resolution.scale"] == 1.0
    smaller = one_shot_params("shrink", {"resolution.scale": 0.5}, prepared.ctx, prepared.space)
    assert smaller["depth.keep"] == 1.0 and smaller["resolution.scale"] == 0.5


@pytest.mark.parametrize(
    ("command", "given", "needle"),
    [
        ("shrink", {"depth.keep": 1.0}, "leaves the technique off; give e.g. --depth"),
        ("shrink", {"resolution.scale": 0.25}, "resolution.scale=0.25: must be a number"),
        ("lowrank", {"lowrank.rank_ratio": 0.0}, "leaves the technique off; give e.g. --rank"),
        ("quantize", {"quant.scheme": "fp32"}, "leaves the technique off"),
        ("distill", {}, "needs a student"),
        ("prune", {"prune.ratio": 0.95}, "prune.ratio=0.95: must be a number from 0 to 0.7"),
    ],
)
def test_settings_that_do_nothing_or_cannot_apply_are_refused(
    command, given, needle, tiny_task, home
) -> None:
    prepared = prepare_space(_config(home), tiny_task)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        one_shot_params(command, given, prepared.ctx, prepared.space)


@pytest.mark.slow  # 30 s: a subprocess that prunes, fine-tunes and times; CI runs it
def test_the_command_line_runs_one_and_writes_its_file(tmp_path, tiny_task) -> None:
    result = run_cli(
        "prune", "--task", FIXTURE_TASK, "--ratio", "0.25", "--finetune-epochs", "1",
        "--output", "pruned.onnx", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # the measured ratio, whichever way it goes: on a Zen 4 host (AVX-512) the tiny model
    # pruned by a quarter ran slower than before, as latency is not monotonic in channels
    assert "x faster" in result.stdout or "x slower" in result.stdout
    assert "x smaller" in result.stdout
    assert (tmp_path / "pruned.onnx").exists()


def test_the_command_line_says_bad_options_in_its_own_words(tmp_path, tiny_task) -> None:
    bad = run_cli("prune", "--task", FIXTURE_TASK, "--ratio", "2", cwd=tmp_path)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --ratio 2")
    assert "must be a number from 0 to 0.7 in steps of 0.05" in lines[0]


def test_unstructured_pruning_reports_sparsity_and_compression_not_speed(tiny_task, home) -> None:
    result = run_one_shot(
        _config(home), "prune --unstructured", {"sparse.ratio": 0.8}, task=tiny_task
    )
    before, after = result.before, result.after
    assert 0.7 < after.sparsity < 0.85 and before.sparsity < 0.01  # the output layer is kept
    assert after.compressed_bytes < 0.6 * before.compressed_bytes
    assert after.size_bytes > 0.9 * before.size_bytes  # a dense file: zeros take room too
    assert after.params == before.params and after.macs == before.macs
    assert after.p50_ms > 0  # measured, whatever it is: no speed-up is assumed
    run = MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert run.data.metrics["sparsity"] == pytest.approx(after.sparsity)
    assert run.data.metrics["compressed_size_ratio"] > 1.6


@pytest.mark.slow  # 17 s: two pruning steps, each fine-tuned; scripts/test.sh --slow and CI run it
def test_iterative_pruning_steps_are_child_runs_of_one_parent(tiny_task, home) -> None:
    result = run_one_shot(
        _config(home), "prune --unstructured", {}, task=tiny_task, schedule=(0.5, 0.8)
    )
    assert result.label.count("->") == 1 and 0.7 < result.after.sparsity < 0.85
    client = MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.run_id]
    assert len(runs) == 3 and len(children) == 2
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED" and "before_accuracy" in parent.data.metrics


def test_schedules_are_ratios_of_the_input_on_the_levers_grid() -> None:
    assert schedule_steps("prune", (0.5, 0.75, 0.9)) == [
        {"prune.ratio": 0.5},
        {"prune.ratio": 0.5},  # half of the half that is left
        {"prune.ratio": 0.6},
    ]
    assert schedule_steps("prune --unstructured", (0.5, 0.9)) == [
        {"sparse.ratio": 0.5},
        {"sparse.ratio": 0.9},
    ]
    gradual = cubic_schedule(0.8, 4)
    assert gradual[-1] == 0.8 and list(gradual) == sorted(gradual)
    assert gradual[1] - gradual[0] > gradual[-1] - gradual[-2]  # fast first, slow last
    with pytest.raises(ConfigError, match="must rise"):
        schedule_steps("prune", (0.5, 0.5))
    with pytest.raises(ConfigError, match="applies to search prune"):
        schedule_steps("lowrank", (0.5,))


def test_finetune_without_a_trial_to_rebuild_is_refused_in_one_line(tiny_task, home) -> None:
    with pytest.raises(ConfigError, match="give --study and --trial"):
        run_one_shot(_config(home), FINETUNE, {}, task=tiny_task)


@pytest.mark.slow  # 30-45 s on 2 cores; scripts/test.sh --slow runs it
def test_a_trial_of_a_study_is_rebuilt_then_compressed_further_or_fine_tuned_longer(
    tiny_task, home
) -> None:
    from search.core.levers import LeverSettings
    from search.core.oneshot import TrialRef
    from search.core.runner import run_search

    searched = replace(
        _config(home), latency_budget_factor=None, latency_budget_ms=50.0, trials=2,
        study_name="tiny-study", levers=LeverSettings(off=("depth", "resolution")),
    )  # fmt: skip
    run_search(searched, task=tiny_task)  # the baseline, then pruning 50% (trial 1)
    source = TrialRef("tiny-study", 1, searched.storage_url)
    result = run_one_shot(_config(home), "quantize", {}, task=tiny_task, from_trial=source)
    original = tiny_task.build_model()
    assert result.before.params < sum(p.numel() for p in original.parameters())  # the trial
    assert result.after.params == result.before.params  # quantized, not pruned again
    assert result.after.size_bytes < 0.8 * result.before.size_bytes  # int8 weights
    client = MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.run_id]
    assert sorted(r.info.run_name.split(" ", 1)[1] for r in children)[0].startswith("int8s")
    assert len(children) == 2  # the replayed trial, then the quantization
    with pytest.raises(ConfigError, match="no completed trial"):
        run_one_shot(
            _config(home), "quantize", {}, task=tiny_task,
            from_trial=TrialRef("tiny-study", 9, searched.storage_url),
        )  # fmt: skip

    # finetune: the same trial rebuilt with three epochs instead of the search's one; its
    # recorded model is "before", so the two differ in weights only
    longer = run_one_shot(
        replace(_config(home), finetune_epochs=3), FINETUNE, {}, task=tiny_task,
        from_trial=source, output=home / "finetuned",
    )  # fmt: skip
    recorded = optuna.load_study(study_name="tiny-study", storage=searched.storage_url).trials[1]
    assert longer.before.accuracy == pytest.approx(recorded.values[0])
    assert longer.before.size_bytes == pytest.approx(longer.after.size_bytes, rel=0.01)
    assert longer.after.params == longer.before.params  # the same layers, trained longer
    assert longer.after.accuracy != longer.before.accuracy or (
        longer.after.test_accuracy != longer.before.test_accuracy
    )
    assert longer.output is not None and longer.output.stat().st_size > 0
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == longer.run_id]
    assert len(children) == 1  # the replay is the result
    assert client.get_run(longer.run_id).data.params["one_shot.command"] == FINETUNE
    assert len(client.get_metric_history(children[0].info.run_id, "finetune_loss")) == 3
    assert client.get_run(longer.run_id).data.params["one_shot.finetune_epochs"] == "3"
