"""Levers off, parameters fixed, options: checked against the real space, pinned in Optuna."""

from dataclasses import replace

import optuna
import pytest

from search.common.errors import ConfigError
from search.core.levers import (
    LeverSettings,
    constrain_references,
    fixing_sampler,
    parse_assignments,
    resolve,
    space_rows,
)
from search.core.space import every_parameter, explore_space, reference_trials, sample_plan
from techniques import Context


@pytest.fixture(scope="module")
def ctx(tiny_task, tmp_path_factory):
    return Context(tiny_task, "cpu", tmp_path_factory.mktemp("levers"), tiny_task.build_model())


@pytest.fixture(scope="module")
def space(ctx):
    return explore_space(ctx)


def test_exploring_reaches_conditional_parameters_of_every_lever(space) -> None:
    levers = {name.partition(".")[0] for name in space}
    assert levers == {
        "depth", "width", "prune", "lowrank", "resolution", "distill", "lora", "quant"
    }  # fmt: skip
    conditional = {"prune.importance", "distill.temperature", "quant.calibration"}
    assert conditional <= set(space)


def test_assignments_read_values_as_toml_else_text() -> None:
    assert parse_assignments(
        ["prune.ratio=0.5", "quant.per_channel=true", "quant.scheme=fp16"]
    ) == (
        ("prune.ratio", 0.5),
        ("quant.per_channel", True),
        ("quant.scheme", "fp16"),
    )
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_assignments(["prune.ratio"])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (LeverSettings(off=("nope",)), "no such lever"),
        (LeverSettings(fixed=(("prune.ratoi", 0.5),)), "no such parameter"),
        (LeverSettings(fixed=(("prune.ratio", 0.9),)), "from 0 to 0.7 in steps of 0.05"),
        (LeverSettings(fixed=(("prune.ratio", 0.33),)), "in steps of 0.05"),
        (LeverSettings(fixed=(("prune.ratio", "half"),)), "must be a number"),
        (LeverSettings(fixed=(("quant.scheme", "int4"),)), "use one of fp32, fp16"),
        (LeverSettings(fixed=(("quant.per_channel", 1),)), "use one of true, false"),
        (LeverSettings(fixed=(("lora.rank", True),)), "use one of 0, 2, 4, 8"),
        (LeverSettings(fixed=(("width.per", "row"),)), "use one of stage, block"),
        (LeverSettings(off=("prune",), fixed=(("prune.ratio", 0.5),)), "contradicts --off"),
    ],
)
def test_bad_settings_are_one_clear_error(settings, message, ctx, space) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(settings, ctx, space)


def test_off_is_the_levers_off_parameters_and_fixes_take_the_distributions_type(
    ctx, space
) -> None:
    settings = LeverSettings(off=("lora", "quant"), fixed=(("prune.ratio", 1 / 2),))
    fixed = resolve(settings, ctx, space)
    assert fixed == {"lora.rank": 0, "quant.scheme": "fp32", "prune.ratio": 0.5}
    rows = {row.name: row.status for row in space_rows(ctx, space, fixed, settings.off)}
    assert rows["lora.rank"] == "off" and rows["prune.ratio"] == "fixed: 0.5"
    assert rows["width.per"] == "option: stage" and rows["distill.alpha"] == "searched"


def test_fixed_values_are_pinned_in_sampled_trials_and_the_study_can_change_them(ctx) -> None:
    """Fixing keeps Optuna's distributions, so a resumed study may fix other values."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for fixed, count in (({}, 4), ({"prune.ratio": 0.3, "quant.scheme": "int8-static"}, 6)):
        study.sampler = fixing_sampler(optuna.samplers.TPESampler(seed=1), fixed)
        for _ in range(count):
            trial = study.ask()
            sample_plan(trial, ctx)
            for name, value in fixed.items():
                assert trial.params[name] == value
            study.tell(trial, (0.5, 1.0))
    assert len(study.trials) == 10


@pytest.mark.parametrize(
    ("runtime", "device"),
    [("onnxruntime", "cpu"), ("onnxruntime", "cuda"), ("torch", "cpu"), ("torch", "cuda")],
)
def test_every_reference_is_in_the_space_of_its_runtime(ctx, runtime, device) -> None:
    """Enqueued into a real study, each reference samples without error: a value outside a
    categorical's choices fails the trial (int8 on the PyTorch runtime did, on an H200)."""
    target = replace(ctx, runtime=runtime, device=device)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    references = reference_trials(target)
    for params, _ in references:
        study.enqueue_trial(params)
    for params, _ in references:
        trial = study.ask()
        sample_plan(trial, target)
        assert {k: trial.params[k] for k in params if k in trial.params} == {
            k: v for k, v in params.items() if k in trial.params
        }
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    schemes = {p.get("quant.scheme") for p, _ in references}
    expected = {"onnxruntime": "int8-static", "torch": "fp16" if device == "cuda" else None}
    assert (expected[runtime] in schemes) if expected[runtime] else schemes == {"fp32"}


def test_the_shape_levers_have_a_combined_reference_at_full_width(ctx) -> None:
    """Depth and resolution together, every other lever as in the baseline: the
    combination that removes operators and pixels without narrowing a layer."""
    references = {a["reference"]: p for p, a in reference_trials(ctx)}
    base, shape = references["baseline"], references["depth+resolution"]
    assert {k for k in base if shape[k] != base[k]} == {"depth.keep", "resolution.scale"}
    training = {k: v for k, v in references["depth"].items() if k not in base}
    assert training and shape.items() >= training.items()  # fine-tuned as the depth one is
    assert shape["depth.keep"] == references["depth"]["depth.keep"]
    assert shape["resolution.scale"] == references["resolution"]["resolution.scale"]
    # with one of them off, it would be the other's own reference again: dropped
    kept = [a["reference"] for _, a in constrain_references(reference_trials(ctx), {}, ["depth"])]
    assert "depth+resolution" not in kept and "resolution" in kept


def test_references_obey_fixes_but_the_baseline_stays_uncompressed(ctx) -> None:
    fixed = {"prune.ratio": 0.3, "quant.scheme": "fp32"}
    trials = constrain_references(reference_trials(ctx), fixed)
    baseline, *others = trials
    assert baseline[1]["baseline"] is True and baseline[0]["prune.ratio"] == 0.0
    assert all(p["prune.ratio"] == 0.3 and p["quant.scheme"] == "fp32" for p, _ in others)
    assert len({tuple(sorted(p.items())) for p, _ in trials}) == len(trials)  # no duplicates


def test_references_of_levers_that_are_off_are_dropped(ctx) -> None:
    everything = [a["reference"] for _, a in constrain_references(reference_trials(ctx), {})]
    assert "prune" in everything and "quant" in everything
    kept = [a["reference"] for _, a in constrain_references(reference_trials(ctx), {}, ["quant"])]
    assert "quant" not in kept and "prune" in kept and "baseline" in kept
    assert not [name for name in kept if "quant" in name.split("+")]
    only_prune = [n for n in everything if n not in ("baseline", "prune")]
    off = {lever for name in only_prune for lever in name.split("+")} - {"prune"}
    kept = [a["reference"] for _, a in constrain_references(reference_trials(ctx), {}, off)]
    assert kept == ["baseline", "prune"]  # the combination would be pruning alone again


def test_every_parameter_says_off_or_not_applicable(ctx, space) -> None:
    trial = optuna.trial.FixedTrial(
        {"prune.ratio": 0.0, "lowrank.rank_ratio": 0.0, "quant.scheme": "fp16"}
        | {"depth.keep": 1.0, "resolution.scale": 1.0}
        | {f"width.expand.s{i}": 6 for i in range(4)}
    )
    plan = sample_plan(trial, ctx)
    listed = every_parameter(trial.params, plan, tuple(space))
    assert set(listed) == set(space)
    assert listed["quant.scheme"] == "fp16" and listed["quant.calibration"] == "n/a"
    assert listed["prune.importance"] == "off" and listed["distill.alpha"] == "off"
    stepped = every_parameter({"distill.alpha": 0.7000000000000001}, plan, tuple(space))
    assert stepped["distill.alpha"] == 0.7
