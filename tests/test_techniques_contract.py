"""Every registered technique honours the same contract (one suite over TECHNIQUES)."""

from dataclasses import replace

import optuna
import pytest
import torch

from search.core.space import baseline_params, reference_trials
from techniques import TECHNIQUES, Context

TRANSFORMER_LEVERS = {"attn"}  # checked on the tiny transformer, the rest on the tiny CNN


@pytest.fixture
def task(request):
    callspec = getattr(request.node, "callspec", None)
    name = callspec.params.get("name") if callspec else None
    return request.getfixturevalue("tiny_vit_task" if name in TRANSFORMER_LEVERS else "tiny_task")


@pytest.fixture
def ctx(task, tmp_path):
    base = task.build_model()
    # every lever in the space, those the search leaves out unless asked included
    options = {
        "sparse.searched": True, "share.searched": True, "ort.searched": True, "ft.searched": True
    }  # fmt: skip
    return Context(task=task, device="cpu", workdir=tmp_path, base_model=base, options=options)


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_off_params_mean_not_applied(name, ctx) -> None:
    technique = TECHNIQUES[name]
    assert technique.name == name
    off = dict(technique.off_params(ctx))
    assert all(key.startswith(f"{name}.") for key in off)
    assert technique.space(optuna.trial.FixedTrial(off), ctx) is None


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_space_is_namespaced_and_replayable(name, ctx) -> None:
    technique = TECHNIQUES[name]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(8):
        trial = study.ask()
        params = technique.space(trial, ctx)
        assert all(key.startswith(f"{name}.") for key in trial.params)
        replayed = technique.space(optuna.trial.FixedTrial(trial.params), ctx)
        assert replayed == params
        study.tell(trial, 0.0)


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_applied_technique_yields_a_runnable_candidate(name, ctx, task) -> None:
    from search.measure.onnx_runtime import export_onnx
    from search.measure.runtimes import evaluate

    technique = TECHNIQUES[name]
    params = _applied_params(technique, ctx)
    model = task.build_model()
    if technique.stage == "training":
        from search.train.loop import Recipe, fit
        from techniques.pruning import prune_channels

        plain = Recipe(epochs=1, lr=0.001)  # a rate no lever picks, so setting one shows
        recipe = technique.configure(plain, params, ctx)
        assert recipe != plain
        model = prune_channels(model, task.example_inputs(1), ratio=0.25)
        for step in recipe.prepare:
            model = step(model)
        fit(model, task.data("train"), epochs=1, lr=0.01, loss_fn=task.loss,
            distillation=recipe.distillation)  # fmt: skip
        for step in recipe.finish:
            model = step(model)
        artifact = export_onnx(model, task.example_inputs(1), ctx.workdir / "m.onnx")
    elif technique.stage == "model":
        model = technique.apply(model, params, ctx)
        artifact = export_onnx(model, task.example_inputs(1), ctx.workdir / "m.onnx")
    else:
        artifact = export_onnx(model, task.example_inputs(1), ctx.workdir / "m.onnx")
        artifact = technique.apply(artifact, params, ctx)
    assert 0.0 <= evaluate(artifact, task.data("val"), task.metric) <= 1.0


def _applied_params(technique, ctx):
    """The lever's reference setting, or else the first sampled setting that applies it."""
    params_dict = dict(technique.reference_params(ctx) or {})
    if params_dict:
        return technique.space(optuna.trial.FixedTrial(params_dict), ctx)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask()
    params = None
    while params is None:
        params = technique.space(trial, ctx)
        trial = trial.study.ask()
    return params


MODEL_LEVERS = [name for name, technique in TECHNIQUES.items() if technique.stage == "model"]


@pytest.mark.parametrize("name", MODEL_LEVERS)
def test_a_model_lever_changes_only_a_model_it_owns(name, ctx, task) -> None:
    """Without ``owns_model`` the given model is left as it was; with it, the lever makes
    of the given model itself what it would have made of a copy."""
    technique = TECHNIQUES[name]
    params = _applied_params(technique, ctx)
    given = task.build_model()
    before = {key: value.clone() for key, value in given.state_dict().items()}
    structure = str(given)

    copied = technique.apply(given, params, ctx)

    assert copied is not given
    assert str(given) == structure
    assert given.state_dict().keys() == before.keys()
    assert all(torch.equal(given.state_dict()[key], value) for key, value in before.items())
    owned = technique.apply(given, params, replace(ctx, owns_model=True))
    assert owned is given
    assert str(owned) == str(copied)
    expected = copied.state_dict()
    assert str(copied) != structure or any(  # the lever did something
        key not in before or not torch.equal(before[key], value) for key, value in expected.items()
    )
    assert owned.state_dict().keys() == expected.keys()
    assert all(torch.equal(owned.state_dict()[key], value) for key, value in expected.items())


def test_a_chain_of_levers_leaves_the_users_model_as_it_was(ctx, task) -> None:
    """Every model lever at once, each after the first changing the chain's own copy: the
    user's model is unchanged, and the result is what lever after lever on copies makes."""
    from search.core.space import apply_model_levers, model_techniques

    plan = {name: None for name in TECHNIQUES}
    for name, technique in model_techniques():
        if name not in TRANSFORMER_LEVERS:
            plan[name] = _applied_params(technique, ctx)
    base = ctx.base_model
    before = {key: value.clone() for key, value in base.state_dict().items()}

    chained = apply_model_levers(base, plan, ctx)

    stepwise = base
    for name, technique in model_techniques():
        if plan[name] is not None:
            stepwise = technique.apply(stepwise, plan[name], ctx)
    assert all(torch.equal(base.state_dict()[key], value) for key, value in before.items())
    assert str(chained) == str(stepwise)
    expected = stepwise.state_dict()
    assert chained.state_dict().keys() == expected.keys()
    assert all(torch.equal(chained.state_dict()[key], value) for key, value in expected.items())


def test_registry_lists_stages_in_application_order() -> None:
    from techniques import STAGES

    order = [STAGES.index(technique.stage) for technique in TECHNIQUES.values()]
    assert order == sorted(order)


def test_baseline_and_references_cover_every_technique(ctx) -> None:
    first, *others = reference_trials(ctx)
    assert first[0] == baseline_params(ctx) and first[1]["baseline"] is True
    for params, _ in others:
        assert set(baseline_params(ctx)) <= set(params)
