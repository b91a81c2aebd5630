"""Feature distillation: where features are compared, the loss, the adapters, the clean-up."""

import copy

import torch
from torch import nn

from search.tasks.mobilenetv2 import InvertedResidual
from search.train.loop import Distillation, FeatureMatch, fit
from techniques.distillation import stage_ends
from techniques.pruning import prune_channels


def test_stage_ends_are_the_last_block_of_each_resolution(tiny_task) -> None:
    model, x = tiny_task.build_model(), tiny_task.example_inputs(1)
    ends = stage_ends(model, x)
    assert ends and all(isinstance(model.get_submodule(n), InvertedResidual) for n in ends)
    sizes = []
    for name in ends:
        hook = model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out: sizes.append(out.shape[-1])
        )
        model(x)
        hook.remove()
    assert sizes == sorted(set(sizes), reverse=True)  # one per resolution, coarsening


def test_a_plain_cnn_compares_its_last_convolution() -> None:
    plain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1))
    plain.append(nn.Flatten()).append(nn.LazyLinear(10))
    assert stage_ends(plain, torch.randn(1, 1, 8, 8)) == ("1",)


def test_a_model_without_convolutions_has_no_stage_ends() -> None:
    """An MLP has nothing spatial to compare: feature distillation does not apply."""
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    assert stage_ends(mlp, torch.randn(1, 1, 8, 8)) == ()


def test_the_feature_loss_is_zero_for_the_teacher_itself_and_adapters_bridge_pruning(
    tiny_task,
) -> None:
    teacher, x = tiny_task.build_model(), tiny_task.example_inputs(4)
    layers = stage_ends(teacher, x[:1])
    same_student = copy.deepcopy(teacher)
    match = FeatureMatch(same_student, teacher, layers, x)
    same_student(x), teacher(x)
    assert match.loss().item() < 1e-10
    assert all(isinstance(a, nn.Identity) for a in match.adapters.values())
    match.remove()

    pruned = prune_channels(teacher, x[:1], ratio=0.5)
    bridged = FeatureMatch(pruned, teacher, layers, x)
    assert any(isinstance(a, nn.Conv2d) for a in bridged.adapters.values())
    pruned(x), teacher(x)
    assert bridged.loss().item() > 0
    bridged.remove()


def test_fit_with_feature_distillation_trains_and_removes_its_hooks(tiny_task) -> None:
    teacher, x = tiny_task.build_model(), tiny_task.example_inputs(1)
    layers = stage_ends(teacher, x)
    student = prune_channels(teacher, x, ratio=0.5)
    kd = Distillation(teacher, 4.0, 0.9, feature_weight=1.0, feature_layers=layers)
    fit(student, tiny_task.data("train"), epochs=1, lr=0.01, loss_fn=tiny_task.loss,
        distillation=kd)  # fmt: skip
    for name in layers:
        assert not student.get_submodule(name)._forward_hooks
        assert not teacher.get_submodule(name)._forward_hooks
    assert student(tiny_task.example_inputs(2)).shape == (2, 10)


def test_the_ema_teacher_keeps_at_least_half_the_loss_on_the_labels(tiny_task, tmp_path) -> None:
    import optuna
    import pytest

    from search.train.loop import Recipe
    from techniques import Context
    from techniques.base import TechniqueError
    from techniques.distillation import EMA_MAX_ALPHA, KnowledgeDistillation

    lever = KnowledgeDistillation()
    ema = Context(
        tiny_task, "cpu", tmp_path, tiny_task.build_model(), options={"distill.teacher": "ema"}
    )
    assert lever.reference_params(ema)["distill.alpha"] == EMA_MAX_ALPHA
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        lever.space(trial, ema)
        assert trial.params["distill.alpha"] <= EMA_MAX_ALPHA
        study.tell(trial, 0.0)
    params = lever.space(
        optuna.trial.FixedTrial({"distill.alpha": 0.9, "distill.temperature": 4.0,
                                 "distill.feature_weight": 0.0}), ema)  # fmt: skip
    with pytest.raises(TechniqueError, match=r"at most 0\.5"):
        lever.configure(Recipe(epochs=1, lr=0.01), params, ema)
