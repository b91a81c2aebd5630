"""A pruning reference over the budget is tried again one step stronger, up to the range;
a feasible float32 reference is tried again with its weights stored in fp16, and a
feasible one with no smaller form one step stronger, while it stays feasible."""

import math

import optuna
import pytest
from mlflow import MlflowClient
from test_end_to_end import config_for, finished

from search.core.escalation import (
    escalate_reference,
    knob_rates,
    one_knob_stronger,
    smaller_params,
    stronger_params,
)
from search.core.levers import LeverSettings
from search.core.runner import run_search
from techniques.pruning import MAX_RATIO


def test_one_step_stronger_until_the_end_of_the_range() -> None:
    params = {"prune.ratio": 0.5, "quant.scheme": "int8"}
    assert stronger_params(params) == {"prune.ratio": 0.6, "quant.scheme": "int8"}
    assert stronger_params({"prune.ratio": 0.65}) == {"prune.ratio": MAX_RATIO}
    assert stronger_params({"prune.ratio": MAX_RATIO}) is None


def test_a_lever_that_is_off_or_pinned_is_never_escalated() -> None:
    assert stronger_params({"prune.ratio": 0.0, "quant.scheme": "int8"}) is None
    assert stronger_params({"prune.ratio": 0.5}, fixed={"prune.ratio"}) is None


def test_depth_and_resolution_step_down_to_the_end_of_their_ranges() -> None:
    """Fewer residual blocks, a smaller input: their faster side is the smaller value."""
    params = {"depth.keep": 0.5, "resolution.scale": 0.75, "prune.ratio": 0.0}
    assert stronger_params(params) == {**params, "depth.keep": 0.25, "resolution.scale": 0.625}
    assert stronger_params({"depth.keep": 0.0, "resolution.scale": 0.5}) is None
    assert stronger_params({"depth.keep": 1.0, "resolution.scale": 1.0}) is None  # both off
    # a model that runs at no less than 0.75 of its input: the trial's range ends there
    narrow = {"resolution.scale": optuna.distributions.FloatDistribution(0.75, 1.0, step=0.125)}
    assert stronger_params({"resolution.scale": 0.875}, distributions=narrow) == {
        "resolution.scale": 0.75
    }
    assert stronger_params({"resolution.scale": 0.75}, distributions=narrow) is None


def test_a_float32_reference_is_stored_smaller_where_the_runtime_offers_it() -> None:
    offered = ("fp32", "fp16-weights", "int8-static")
    params = {"prune.ratio": 0.5, "quant.scheme": "fp32"}
    assert smaller_params(params, formats=offered) == {
        "prune.ratio": 0.5,
        "quant.scheme": "fp16-weights",
    }
    assert smaller_params(params, formats=("fp32",)) is None  # e.g. the PyTorch runtime
    assert smaller_params(params, fixed={"quant.scheme"}, formats=offered) is None
    assert smaller_params({**params, "quant.scheme": "int8-static"}, formats=offered) is None


@pytest.mark.slow  # 20-35 s on 2 cores; scripts/test.sh --slow runs it
def test_a_feasible_reference_is_stored_smaller_on_its_fine_tuned_model(home, tiny_task) -> None:
    levers = LeverSettings(off=("depth", "width", "lowrank", "lora", "resolution"))
    config = config_for(home, trials=5, latency_budget_ms=1000.0, levers=levers)
    result = run_search(config, task=tiny_task)
    study = optuna.load_study(study_name=result.study_name, storage=config.storage_url)
    pruning = [t for t in finished(study) if t.user_attrs.get("reference") == "prune"]
    assert [t.params["quant.scheme"] for t in pruning] == ["fp32", "fp16-weights"]
    first, smaller = pruning
    assert smaller.user_attrs["escalated_from"] == first.number
    assert smaller.user_attrs["finetuned_in_trial"] == first.number  # no second fine-tune
    assert smaller.values[0] == pytest.approx(first.values[0], abs=0.02)
    assert smaller.values[2] < 0.6 * first.values[2]  # MB
    # int8 references are not float32: nothing else was stored smaller. The feasible
    # pruned ones (the fp16 one, and pruning with int8 if it held) are next tried a step
    # stronger, in their own formats; the fifth trial ended the study first.
    waiting = [t.system_attrs["fixed_params"] for t in study.trials if t.state.name == "WAITING"]
    assert {p["prune.ratio"] for p in waiting} == {0.6}
    assert "fp16-weights" in {p["quant.scheme"] for p in waiting}
    assert all(p["quant.scheme"] != "fp32" for p in waiting)


def test_a_study_escalates_its_pruning_reference_while_it_misses_the_budget(
    home, tiny_task
) -> None:
    """A budget nothing meets: pruning 50%, then 60%, then 70%, each stopped early."""
    levers = LeverSettings(off=("depth", "width", "lowrank", "lora", "quant", "resolution"))
    config = config_for(home, trials=4, latency_budget_ms=0.0001, levers=levers)
    result = run_search(config, task=tiny_task)
    study = optuna.load_study(study_name=result.study_name, storage=config.storage_url)
    pruning = [t for t in finished(study) if t.user_attrs.get("reference") == "prune"]
    assert [t.params["prune.ratio"] for t in pruning] == pytest.approx([0.5, 0.6, MAX_RATIO])
    first, *escalated = pruning
    assert "escalated_from" not in first.user_attrs
    assert [t.user_attrs["escalated_from"] for t in escalated] == [first.number, pruning[1].number]
    for trial in pruning:
        assert trial.user_attrs["accuracy_kind"] == "before fine-tuning"
        others = {k: v for k, v in trial.params.items() if k != "prune.ratio"}
        assert others == {k: v for k, v in first.params.items() if k != "prune.ratio"}
    client = MlflowClient(tracking_uri=config.mlflow_uri)
    tags = client.get_run(pruning[1].user_attrs["mlflow_run_id"]).data.tags
    assert tags["reference"] == "prune" and tags["escalated_from"] == str(first.number)
    # the end of the range: nothing more enqueued
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]


@pytest.mark.slow  # 25 s: a whole escalation; scripts/test.sh --slow and CI run it
def test_a_feasible_reference_is_tried_stronger_while_it_holds(home, tiny_task) -> None:
    """No smaller format to try (quantization off): pruning 50%, 60%, 70%, each fine-tuned
    and feasible (any accuracy is within a 100-point drop), then the range ends."""
    levers = LeverSettings(off=("depth", "width", "lowrank", "lora", "quant", "resolution"))
    config = config_for(home, trials=4, latency_budget_ms=1000.0, levers=levers)
    result = run_search(config, task=tiny_task)
    study = optuna.load_study(study_name=result.study_name, storage=config.storage_url)
    pruning = [t for t in finished(study) if t.user_attrs.get("reference") == "prune"]
    assert [t.params["prune.ratio"] for t in pruning] == pytest.approx([0.5, 0.6, MAX_RATIO])
    assert [t.user_attrs.get("escalated_from") for t in pruning[1:]] == [
        pruning[0].number,
        pruning[1].number,
    ]
    assert all(t.user_attrs["accuracy_kind"] == "deployed" for t in pruning)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]


def test_a_reference_below_the_accuracy_floor_ends_its_line() -> None:
    """Under the budget but not feasible: the accuracy gave out, nothing follows it."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    params = {"prune.ratio": 0.6, "quant.scheme": "fp16-weights"}
    for _ in range(2):
        study.enqueue_trial(params, user_attrs={"reference": "prune"})
    formats = ("fp32", "fp16-weights")
    for feasible, expected in ((False, None), (True, {**params, "prune.ratio": 0.7})):
        trial = study.ask()
        trial.suggest_float("prune.ratio", 0.0, 0.7)
        trial.suggest_categorical("quant.scheme", formats)
        following = escalate_reference(trial, -0.01, feasible=feasible, formats=formats)
        assert following == expected
        study.tell(trial, [0.9, 0.1, 0.1])


def _finished(study: optuna.Study, params: dict, p50_ms: float, **attrs) -> None:
    """A completed trial with ``params`` (floats in 0..1) and a measured p50."""
    trial = optuna.trial.create_trial(
        params=params,
        distributions={k: optuna.distributions.FloatDistribution(0.0, 1.0) for k in params},
        values=[0.9, p50_ms, 1.0],
        user_attrs={"latency": {"p50_ms": p50_ms}, **attrs},
    )
    study.add_trial(trial)


def test_each_knob_s_rate_is_the_speed_its_own_reference_bought_per_step() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    _finished(study, {"prune.ratio": 0.0}, 0.25, baseline=True, reference="baseline")
    _finished(study, {"prune.ratio": 0.5}, 0.16, reference="prune")  # 5 steps of 0.1
    _finished(study, {"depth.keep": 0.5}, 0.17, reference="depth")  # 2 steps of 0.25
    _finished(study, {"depth.keep": 0.0}, 0.075, reference="depth", escalated_from=2)
    _finished(study, {"depth.keep": 0.5, "prune.ratio": 0.5}, 0.1, reference="depth+prune")
    rates = knob_rates(study)
    assert set(rates) == {"prune.ratio", "depth.keep"}  # the combination is no knob's own
    assert rates["prune.ratio"] == pytest.approx(math.log(0.25 / 0.16) / 5)
    assert rates["depth.keep"] == pytest.approx(math.log(0.25 / 0.075) / 4)  # the furthest


def test_a_combination_over_the_budget_moves_its_fastest_knob_one_step() -> None:
    """The knob with the highest rate moves; at the end of its range, the next one."""
    params = {"prune.ratio": 0.5, "depth.keep": 0.25, "resolution.scale": 0.75}
    rates = {"prune.ratio": 0.09, "depth.keep": 0.3, "resolution.scale": 0.2}
    assert one_knob_stronger(params, rates=rates) == {**params, "depth.keep": 0.0}
    at_end = {**params, "depth.keep": 0.0}
    assert one_knob_stronger(at_end, rates=rates) == {**at_end, "resolution.scale": 0.625}
    assert one_knob_stronger(at_end, {"resolution.scale"}, rates=rates) == {
        **at_end,
        "prune.ratio": 0.6,
    }
    # unknown rates: STEPS order, so pruning first
    assert one_knob_stronger(params) == {**params, "prune.ratio": 0.6}
    done = {"prune.ratio": MAX_RATIO, "depth.keep": 0.0, "resolution.scale": 1.0}
    assert one_knob_stronger(done, rates=rates) is None
