"""What a compression technique is: a slice of the search space plus a transformation.

Three kinds exist, by what they act on, applied in this order:

* a ``ModelTechnique`` changes the PyTorch model before export (expand ratios, pruning,
  low-rank); when one changes the weights the trial fine-tunes before export;
* a ``TrainingTechnique`` changes that fine-tuning (distillation, LoRA);
* an ``ArtifactTechnique`` rewrites the exported file (quantization); it may also ask
  for a fine-tune and shape it (quantization-aware training simulates int8 in it).

Each declares its parameters define-by-run under its own prefix (``prune.ratio``) with
``trial.suggest_*`` only, returns a frozen, validated params dataclass, or None when the
lever is off in this trial. Replaying a finished trial uses the same code with
``optuna.trial.FixedTrial(frozen.params)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from search.measure.artifact import Artifact
    from search.train.loop import Recipe
    from search.train.task import Task


class TechniqueError(ValueError):
    """Parameters a technique cannot apply; the message names the value and the fix."""


@dataclass(frozen=True)
class Context:
    """What techniques may read about the run; passed explicitly, never global.

    Attributes:
        task: the task being compressed (data for calibration, example inputs).
        device: ``cpu`` or ``cuda``: which schemes make sense depends on it.
        workdir: a folder private to the current trial for intermediate files.
        base_model: the uncompressed trained model (a teacher; never modified).
        seed: for anything random inside a technique.
        options: the user's choices of how a lever is shaped (not searched), by their
            namespaced name, e.g. ``{"width.per": "block"}``; see each ``options``.
        runtime: what runs the deployed model (``search.measure.runtimes``): which number formats
            exist, and the artifact's file format, depend on it.
        draft: the artifact being made is a draft that will be timed and then replaced by
            the fine-tuned model's: work that only sets values (calibration) may be lighter.
        layer_caps: the largest pruning ratio each named layer may take (from sensitivity
            analysis, ``--use-sensitivity``); layers not named take the sampled ratio.
        threads: the target's intra-op thread count (``--threads``): what a candidate runs
            with unless the ``ort`` lever chooses another.
        int8_sensitivity: accuracy points each named layer loses when it alone is
            quantized to int8 (computed once per study, or from ``search sensitivity``):
            which layers ``quant.fp_layers`` keeps in float.
        owns_model: the model handed to a ``ModelTechnique.apply`` is the trial's own,
            made by the lever before it and held by nothing else, so the lever may change
            it in place (``techniques.surgery.working_copy``); False (the default) for the
            user's model, which a lever never changes.
    """

    task: Task
    device: str
    workdir: Path
    base_model: nn.Module
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    runtime: str = "onnxruntime"
    draft: bool = False
    layer_caps: Mapping[str, float] = field(default_factory=dict)
    threads: int = 1
    int8_sensitivity: Mapping[str, float] = field(default_factory=dict)
    owns_model: bool = False


class ModelTechnique(Protocol):
    name: ClassVar[str]
    stage: ClassVar[Literal["model"]]
    # Shape options a user may set (not searched): name -> allowed values, first the default.
    options: ClassVar[Mapping[str, tuple[Any, ...]]]

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        """The parameters that leave the model unchanged (together: the baseline)."""
        ...

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        """A setting that usually pays on its own, tried early in a new study; or None."""
        ...

    def applicability(self, ctx: Context) -> str | None:
        """Why the lever cannot apply to ``ctx.base_model`` (said once), or None."""
        ...

    changes_weights: ClassVar[bool]  # True: recovery fine-tuning must follow

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> Any | None: ...

    def apply(self, model: nn.Module, params: Any, ctx: Context) -> nn.Module:
        """The transformed model: a copy, unless ``ctx.owns_model`` lets the lever change
        ``model`` in place; the user's model is never changed."""
        ...


class TrainingTechnique(Protocol):
    """Changes how a compressed model is fine-tuned (distillation, LoRA, QAT).

    Sampled only in trials where a model-stage technique changed the weights: with nothing
    to fine-tune, its parameters would mean nothing.
    """

    name: ClassVar[str]
    stage: ClassVar[Literal["training"]]
    options: ClassVar[Mapping[str, tuple[Any, ...]]]

    def off_params(self, ctx: Context) -> Mapping[str, Any]: ...

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None: ...

    def applicability(self, ctx: Context) -> str | None: ...

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> Any | None: ...

    def configure(self, recipe: Recipe, params: Any, ctx: Context) -> Recipe:
        """Return the recipe with this technique's part set."""
        ...


class ArtifactTechnique(Protocol):
    name: ClassVar[str]
    stage: ClassVar[Literal["artifact"]]
    options: ClassVar[Mapping[str, tuple[Any, ...]]]

    def off_params(self, ctx: Context) -> Mapping[str, Any]: ...

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None: ...

    def applicability(self, ctx: Context) -> str | None: ...

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> Any | None: ...

    def fine_tunes(self, params: Any) -> bool:
        """True when these params need a fine-tune before export (e.g. QAT)."""
        ...

    def configure(self, recipe: Recipe, params: Any, ctx: Context) -> Recipe:
        """The fine-tune recipe with this technique's part set (unchanged if none)."""
        ...

    def before_export(self, model: nn.Module, params: Any, ctx: Context) -> nn.Module:
        """The model to export for these params: ``model`` itself, or a changed copy
        (equalization and bias correction before int8); never changed in place."""
        ...

    def apply(self, artifact: Artifact, params: Any, ctx: Context) -> Artifact:
        """Write a new file in ``ctx.workdir`` and return it; the input file is kept."""
        ...


Technique = ModelTechnique | TrainingTechnique | ArtifactTechnique
STAGES = ("model", "training", "artifact")  # the order a trial goes through them
