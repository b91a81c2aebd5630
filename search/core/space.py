"""The joint search space: which techniques a trial samples, in which order, and the
parameters it records.

Define-by-run: each technique's ``space`` asks the trial for its own parameters, so this
module only orders them (model, then artifact, then training levers, the last only when
the plan fine-tunes) and derives what the rest of the search needs from a plan. The trial
objective, the lever settings (``--off``/``--fix`` checked against the explored space),
the one-shot commands and the study's reference trials all read the space from here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import optuna

from techniques import (
    TECHNIQUES,
    ArtifactTechnique,
    Context,
    ModelTechnique,
    TrainingTechnique,
)

if TYPE_CHECKING:
    from torch import nn

EXPLORE_SAMPLES = 300
# The levers that take whole blocks or pixels away without narrowing any layer: at batch 1
# a small model's time is mostly per-operator cost, which channel levers keep. They get a
# combined reference of their own (``reference_trials``).
SHAPE_LEVERS = ("depth", "resolution")


def _of_stage(stage: str) -> list[tuple[str, Any]]:
    return [(name, tech) for name, tech in TECHNIQUES.items() if tech.stage == stage]


def model_techniques() -> list[tuple[str, ModelTechnique]]:
    return _of_stage("model")


def training_techniques() -> list[tuple[str, TrainingTechnique]]:
    return _of_stage("training")


def artifact_techniques() -> list[tuple[str, ArtifactTechnique]]:
    return _of_stage("artifact")


def fine_tunes(plan: dict[str, Any]) -> bool:
    """Whether this plan fine-tunes before export: a model lever changed weights, or QAT."""
    return any(
        plan[name] is not None and technique.changes_weights
        for name, technique in model_techniques()
    ) or any(
        plan[name] is not None and technique.fine_tunes(plan[name])
        for name, technique in artifact_techniques()
    )


def apply_model_levers(model: nn.Module, plan: dict[str, Any], ctx: Context) -> nn.Module:
    """``model`` through the plan's model levers in registry order; ``model`` is unchanged.

    The first lever that applies copies ``model``; each one after it receives that
    trial-own copy with ``ctx.owns_model`` and changes it in place, so a chain of five
    levers makes one copy, not five.
    """
    owns = ctx.owns_model
    for name, technique in model_techniques():
        if plan[name] is not None:
            applied = technique.apply(model, plan[name], replace(ctx, owns_model=owns))
            owns = owns or applied is not model  # a lever with nothing to do returns its input
            model = applied
    return model


def sample_plan(trial: optuna.trial.BaseTrial, ctx: Context) -> dict[str, Any]:
    """Each technique's params (None: off), define-by-run, stage by stage.

    Model and artifact levers first; training-stage levers only when the plan fine-tunes
    (a model lever changed the weights, or the scheme is QAT): without a fine-tune they
    would be parameters that do nothing. The returned dict is in application order.
    """
    plan = {name: technique.space(trial, ctx) for name, technique in model_techniques()}
    for name, artifact in artifact_techniques():
        plan[name] = artifact.space(trial, ctx)
    tunes = fine_tunes(plan)
    for name, training in training_techniques():
        plan[name] = training.space(trial, ctx) if tunes else None
    return {name: plan[name] for name in TECHNIQUES}


def trained_model_key(params: dict[str, Any], plan: dict[str, Any]) -> str:
    """The parameters that shape the fine-tuned model before export, as a stable string.

    Model- and training-stage parameters, plus an artifact lever's when it fine-tunes (QAT
    trains for its int8 format, so another format needs another model).
    """
    shaping = [n for n, t in TECHNIQUES.items() if t.stage in ("model", "training")]
    shaping += [
        name
        for name, technique in artifact_techniques()
        if plan.get(name) is not None and technique.fine_tunes(plan[name])
    ]
    prefixes = tuple(f"{name}." for name in shaping)
    return ";".join(f"{k}={params[k]!r}" for k in sorted(params) if k.startswith(prefixes))


NOT_APPLICABLE = "n/a"
LEVER_OFF = "off"


def every_parameter(
    params: dict[str, Any], plan: dict[str, Any], names: tuple[str, ...]
) -> dict[str, Any]:
    """Every parameter of every lever, for the run's record: sampled values as they are.

    A parameter this trial did not sample reads ``off`` when its lever is off here and
    ``n/a`` when the lever is on but the parameter does not apply to the chosen setting
    (say, ``quant.calibration`` under fp16), so every run has the same columns.
    """
    listed: dict[str, Any] = {}
    for name in [*names, *(n for n in params if n not in names)]:
        lever = name.partition(".")[0]
        if name in params:
            listed[name] = _readable(params[name])
        else:
            listed[name] = LEVER_OFF if plan.get(lever) is None else NOT_APPLICABLE
    return listed


def _readable(value: Any) -> Any:
    """A float off Optuna's step grid (0.7000000000000001) as the step meant it (0.7)."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    return value


def baseline_params(ctx: Context) -> dict[str, Any]:
    """The parameters of the uncompressed reference: every model and artifact lever off.

    Training-stage levers are not sampled when nothing is fine-tuned, so they have none.
    """
    params: dict[str, Any] = {}
    for technique in TECHNIQUES.values():
        if technique.stage != "training":
            params.update(technique.off_params(ctx))
    return params


def reference_trials(ctx: Context) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(params, user_attrs) of the trials a new study starts with, baseline first.

    After the baseline: each model- or artifact-stage technique's reference setting alone
    (the single-lever references a report needs), then all of them together (the textbook
    prune-then-quantize recipe), then the shape levers together (``SHAPE_LEVERS``, Once-for-
    All's elastic depth and resolution) with every layer at its trained width. Why the
    last: at 0.25x of the digits CNN the all-together reference, escalated, lost 1.4 to 2.2
    points (benchmark run 2026-12-05-2), while no residual blocks at half the input side
    with the widths kept held within one point at 9.5x faster. Whenever a reference
    fine-tunes, it does so with the training-stage references (e.g. distillation at T=4,
    alpha=0.9). They are cheap, informative first points; the sampler takes over from there.
    """
    base = baseline_params(ctx)
    training: dict[str, Any] = {}
    for _, trainer in training_techniques():
        training.update(trainer.reference_params(ctx) or trainer.off_params(ctx))
    trials = [(base, {"baseline": True, "reference": "baseline"})]
    combined: dict[str, Any] = {}
    by_name: dict[str, dict[str, Any]] = {}
    names: list[str] = []
    for name, technique in TECHNIQUES.items():
        reference = technique.reference_params(ctx)
        if technique.stage == "training" or reference is None:
            continue
        fine_tunes = technique.stage == "model" and cast(ModelTechnique, technique).changes_weights
        extra = training if fine_tunes else {}
        trials.append(({**base, **reference, **extra}, {"reference": name}))
        by_name[name] = dict(reference)
        combined.update({**reference, **extra})
        names.append(name)
    if len(names) > 1:
        trials.append(({**base, **combined}, {"reference": "+".join(names)}))
    shape = [name for name in SHAPE_LEVERS if name in names]
    if len(shape) > 1 and len(shape) < len(names):
        together = {k: v for name in shape for k, v in by_name[name].items()}
        trials.append(({**base, **together, **training}, {"reference": "+".join(shape)}))
    return trials


def replay_plan(params: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """The technique params of a finished trial, through the same ``space`` code."""
    fixed = optuna.trial.FixedTrial(params)
    return {name: tech.space(fixed, ctx) for name, tech in TECHNIQUES.items()}


def explore_space(ctx: Context, samples: int = EXPLORE_SAMPLES) -> dict[str, Any]:
    """Every parameter the space can suggest, with its distribution, in first-seen order.

    Conditional parameters (``quant.calibration`` only for static int8) appear only in some
    samples; a few hundred random samples of the real ``space`` code reach them all without
    a second description of the space that could drift from the code.
    """
    if optuna.logging.get_verbosity() < optuna.logging.WARNING:  # no "study created in memory"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    found: dict[str, Any] = {}
    for _ in range(samples):
        trial = study.ask()
        sample_plan(trial, ctx)
        for name, distribution in trial.distributions.items():
            found.setdefault(name, distribution)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return found
