"""Knowledge distillation during recovery fine-tuning: the uncompressed model teaches.

A training-stage technique: it does not change the model, it changes how the compressed
model is fine-tuned. Temperature and alpha are searched; alpha = 0 is plain fine-tuning
on the task loss (the lever off). With distillation on, ``distill.feature_weight`` adds
feature distillation at the end of each stage (the last block, or convolution, before the
resolution drops), where student and teacher still see the same spatial grid; 0 is
logits only. The losses live in ``search.train.loop`` (``Distillation``, ``FeatureMatch``).

The option ``distill.teacher`` picks who teaches: ``input`` (the default, the uncompressed
model) or ``ema``, self-distillation from an exponential moving average of the student's
own weights during the fine-tune (a "mean teacher"): no second, larger model is run, and
the average is a smoother target than the student of the moment. Such a teacher cannot
hold the student up on its own: on the digits model pruned by half (ten epochs), alpha 0.9
collapsed it to 0.21 validation accuracy (T=4) and 0.40 (T=1), while alpha 0.5 reached
0.972 (T=4) and 0.986 (T=1). With ``ema`` the labels keep at least half the loss:
``distill.alpha`` is at most ``EMA_MAX_ALPHA``, and the reference is alpha 0.5, T=1.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from search.train.loop import Distillation, Recipe
from techniques.base import Context, TechniqueError
from techniques.blocks import inverted_residual_blocks

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class DistillParams:
    """``alpha``: weight of the soft-target term in (0, 1]; ``temperature``: softening T > 0."""

    temperature: float
    alpha: float
    feature_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.feature_weight < 0:
            raise TechniqueError(f"distill.feature_weight={self.feature_weight} must be >= 0")
        if not 0.0 < self.alpha <= 1.0:
            raise TechniqueError(f"distill.alpha={self.alpha} must be in (0, 1], e.g. 0.9")
        if self.temperature <= 0:
            raise TechniqueError(f"distill.temperature={self.temperature} must be > 0, e.g. 4")

    @property
    def label(self) -> str:
        features = f"+f{self.feature_weight:g}" if self.feature_weight else ""
        return f"kd{self.temperature:g}/{self.alpha:g}{features}"


# On the digits model pruned by 40%, T=4 and alpha=0.9 recovered 0.983-0.989 validation
# accuracy over four seeds against 0.972-0.983 without distillation.
REFERENCE: Mapping[str, Any] = {
    "distill.alpha": 0.9,
    "distill.temperature": 4.0,
    "distill.feature_weight": 0.0,
}
FEATURE_WEIGHTS = (0.0, 0.5, 1.0, 2.0)


TEACHERS = ("input", "ema")
EMA_DECAY = 0.99  # per step: about the last hundred steps (three epochs of digits) count
EMA_MAX_ALPHA = 0.5
EMA_REFERENCE: Mapping[str, Any] = {
    "distill.alpha": 0.5,
    "distill.temperature": 1.0,
    "distill.feature_weight": 0.0,
}


class KnowledgeDistillation:
    name: ClassVar[str] = "distill"
    stage: ClassVar[Literal["training"]] = "training"
    options: ClassVar[Mapping[str, tuple[Any, ...]]] = {"distill.teacher": TEACHERS}

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        return {"distill.alpha": 0.0}

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        return EMA_REFERENCE if _ema(ctx) else REFERENCE

    def applicability(self, ctx: Context) -> str | None:
        return None

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> DistillParams | None:
        highest = EMA_MAX_ALPHA if _ema(ctx) else 1.0
        alpha = trial.suggest_float("distill.alpha", 0.0, highest, step=0.1)
        if alpha == 0:
            return None
        temperature = trial.suggest_float("distill.temperature", 1.0, 8.0, step=0.5)
        feature_weight = 0.0
        if stage_ends(ctx.base_model, ctx.task.example_inputs(1)):
            feature_weight = trial.suggest_categorical("distill.feature_weight", FEATURE_WEIGHTS)
        return DistillParams(temperature, round(alpha, 6), feature_weight)

    def configure(self, recipe: Recipe, params: DistillParams, ctx: Context) -> Recipe:
        ema = _ema(ctx)
        if ema and params.alpha > EMA_MAX_ALPHA:
            raise TechniqueError(
                f"distill.alpha={params.alpha:g} with the ema teacher: at most "
                f"{EMA_MAX_ALPHA:g}, or the student collapses onto its own average"
            )
        layers = stage_ends(ctx.base_model, ctx.task.example_inputs(1))
        distillation = Distillation(
            None if ema else ctx.base_model.eval(),
            params.temperature,
            params.alpha,
            feature_weight=params.feature_weight,
            feature_layers=layers if params.feature_weight else (),
            ema_decay=EMA_DECAY if ema else None,
        )
        return replace(recipe, distillation=distillation)


def _ema(ctx: Context) -> bool:
    return ctx.options.get("distill.teacher", TEACHERS[0]) == "ema"


_STAGE_ENDS: weakref.WeakKeyDictionary[nn.Module, tuple[str, ...]] = weakref.WeakKeyDictionary()


def stage_ends(model: nn.Module, example_inputs: torch.Tensor) -> tuple[str, ...]:
    """Names of the last block of each spatial resolution (cached per model object).

    ``space`` asks for every trial and ``explore_space`` a few hundred times; the answer
    needs a forward pass, and the base model does not change during a run.
    """
    if model not in _STAGE_ENDS:
        _STAGE_ENDS[model] = _find_stage_ends(model, example_inputs)
    return _STAGE_ENDS[model]


def _find_stage_ends(model: nn.Module, example_inputs: torch.Tensor) -> tuple[str, ...]:
    """Names of the last block of each spatial resolution, where features are compared.

    Blocks are the inverted residual blocks when the model has them (found by structure,
    ``techniques.blocks``: the block's own module, or its projection where the model keeps
    blocks flat), else its Conv2d layers. The names survive the model-stage levers
    (pruning keeps them; low-rank, LoRA and QAT replace a layer by a module under the same
    name with the same output shape).
    """
    blocks = [b.module or b.project for b in inverted_residual_blocks(model, example_inputs)]
    if not blocks:
        blocks = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not blocks:
        return ()  # no convolution (an MLP, a transformer): nothing spatial to compare
    sizes: dict[str, tuple[int, ...]] = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, tuple(out.shape[2:]))
        )
        for name in blocks
    ]
    try:
        with torch.no_grad():
            model.eval()(example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    ends = [
        a
        for a, b in zip(blocks, [*blocks[1:], None], strict=True)
        if b is None or sizes[a] != sizes[b]
    ]
    return tuple(name for name in ends if len(sizes[name]) == 2)
