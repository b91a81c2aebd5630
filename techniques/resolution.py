"""Elastic input resolution (EfficientNet's and Once-for-All's third dimension).

A convolutional network's cost grows with the area of its feature maps; run on a smaller
input, every layer before the global pooling costs less in proportion. The deployed file
keeps the user's input shape (callers send what they always sent) and shrinks the image
at its front, inside the graph: by average pooling where the smaller side divides the
larger (0.5: each output pixel is the mean of a 2x2 patch, the exact area average), else
by a bilinear resize (``align_corners=False``). The recovery fine-tune runs through the
same front, so the weights adapt to the smaller map.

One parameter, ``resolution.scale``: each side's share, in eighths from 1 (the lever off)
down to 0.5 or the smallest share the model accepts. A side of ``s`` pixels becomes
``floor(scale * s + 1/2)`` pixels (half rounds up), at least one: 8x8 digits at 0.875 run
at 7x7, at 0.5 at 4x4; 32x32 at 0.875 at 28x28. Which shares the model accepts is found by
trying: one forward pass at each smaller size, in turn, down to the first that fails or
returns another output shape (a model that flattens a fixed-size map into a Linear layer,
a transformer with a position embedding per patch). A model that takes none is reported
once as not applicable, with the error it gave.

The model keeps its own class, module names and weights: its copy becomes an instance of a
subclass whose ``forward`` resizes first (``ResizedInput``). So the other levers' names
(distillation's stage ends, sensitivity caps) still hold, and its ``repr`` shows the resize,
which keys the cached MAC counts. The resize itself is not counted in the MACs (a few
additions per input pixel, like the residual sums thop leaves out too).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from techniques.base import Context, TechniqueError
from techniques.surgery import working_copy

if TYPE_CHECKING:
    import optuna

SCALE_STEP = 0.125
SMALLEST_SCALE = 0.5
REFERENCE: Mapping[str, Any] = {"resolution.scale": 0.75}


@dataclass(frozen=True)
class ResolutionParams:
    """Each side of the input scaled by ``scale``; ``size`` is (height, width) in pixels."""

    scale: float
    size: tuple[int, int]

    def __post_init__(self) -> None:
        if not 0.0 < self.scale <= 1.0:
            raise TechniqueError(f"resolution.scale={self.scale} must be in (0, 1], e.g. 0.75")
        if min(self.size) < 1:
            raise TechniqueError(f"resolution: size {self.size} must be at least 1x1")

    @property
    def label(self) -> str:
        return f"res{self.size[0]}x{self.size[1]}"


def scaled_size(side: int, scale: float) -> int:
    """``side`` pixels at ``scale``: rounded half up, at least one pixel."""
    return max(1, math.floor(side * scale + 0.5 + 1e-9))


def scales() -> tuple[float, ...]:
    """The shares searched, largest first: 1, 0.875, ..., 0.5."""
    count = round((1.0 - SMALLEST_SCALE) / SCALE_STEP)
    return tuple(round(1.0 - i * SCALE_STEP, 6) for i in range(count + 1))


class InputResolution:
    name: ClassVar[str] = "resolution"
    stage: ClassVar[Literal["model"]] = "model"
    options: ClassVar[Mapping[str, tuple[Any, ...]]] = {}
    changes_weights: ClassVar[bool] = True  # fine-tuned at the smaller size

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        return {"resolution.scale": 1.0}

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        accepted = accepted_scales(ctx.base_model, ctx.task.example_inputs(1))
        if len(accepted) < 2:
            return None
        return {"resolution.scale": max(REFERENCE["resolution.scale"], min(accepted))}

    def applicability(self, ctx: Context) -> str | None:
        return refusal(ctx.base_model, ctx.task.example_inputs(1))

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> ResolutionParams | None:
        example = ctx.task.example_inputs(1)
        accepted = accepted_scales(ctx.base_model, example)
        if len(accepted) < 2:
            return None
        scale = trial.suggest_float("resolution.scale", min(accepted), 1.0, step=SCALE_STEP)
        scale = round(scale, 6)
        height, width = example.shape[-2:]
        size = (scaled_size(height, scale), scaled_size(width, scale))
        if size == (height, width):
            return None  # the input keeps its size: the lever is off
        return ResolutionParams(scale, size)

    def apply(self, model: nn.Module, params: ResolutionParams, ctx: Context) -> nn.Module:
        height, width = ctx.task.example_inputs(1).shape[-2:]
        return resize_input(model, (height, width), params.size, in_place=ctx.owns_model)


class ResizedInput(nn.Module):
    """Mixed into a copy of the user's model: resize the input, then the model's forward.

    The user's class follows this one in the method order, so ``super().forward`` is the
    model's own. The resize is a function, not a child module: an ``nn.Sequential`` model
    runs every child, and a new one would run last.
    """

    input_kernel: tuple[int, int] | None  # average pooling, or None: bilinear to input_size
    input_size: tuple[int, int]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.input_kernel is not None:
            x = F.avg_pool2d(x, self.input_kernel)
        else:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return super().forward(x, *args, **kwargs)

    def extra_repr(self) -> str:
        how = f"average pooling {self.input_kernel}" if self.input_kernel else "bilinear"
        own = super().extra_repr()
        return f"input resized to {self.input_size} by {how}" + (f", {own}" if own else "")


_CLASSES: dict[type, type] = {}  # one subclass per model class, so copies share it


def _resized_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(
            f"Resized{cls.__name__}", (ResizedInput, cls), {"__module__": __name__}
        )
    return _CLASSES[cls]


def resize_input(
    model: nn.Module,
    size: tuple[int, int],
    new_size: tuple[int, int],
    *,
    in_place: bool = False,
) -> nn.Module:
    """A copy of ``model`` (``model`` itself with ``in_place``) that takes ``size`` inputs
    and runs at ``new_size`` (height, width).

    Average pooling where ``new_size`` divides ``size``, else a bilinear resize.
    """
    if isinstance(model, ResizedInput):
        raise TechniqueError("resolution: the model already resizes its input")
    resized = working_copy(model, in_place=in_place)
    (height, width), (new_height, new_width) = size, new_size
    kernel = None
    if height % new_height == 0 and width % new_width == 0:
        kernel = (height // new_height, width // new_width)
    resized.__class__ = _resized_class(type(model))
    # plain attributes: copied with the model, not children
    object.__setattr__(resized, "input_kernel", kernel)
    object.__setattr__(resized, "input_size", (new_height, new_width))
    return resized.eval()


_ACCEPTED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[float, ...], str | None]] = (
    weakref.WeakKeyDictionary()
)


def accepted_scales(model: nn.Module, example_inputs: torch.Tensor) -> tuple[float, ...]:
    """The shares of each side the model runs at, largest first (1 always)."""
    return _probe(model, example_inputs)[0]


def refusal(model: nn.Module, example_inputs: torch.Tensor) -> str | None:
    """Why the model cannot run on a smaller input, or None when it can."""
    return _probe(model, example_inputs)[1]


def _probe(model: nn.Module, example_inputs: torch.Tensor) -> tuple[tuple[float, ...], str | None]:
    """Try each smaller size in turn, cached per model object (the space asks every trial)."""
    if model not in _ACCEPTED:
        _ACCEPTED[model] = _try_sizes(model, example_inputs)
    return _ACCEPTED[model]


def _try_sizes(
    model: nn.Module, example_inputs: torch.Tensor
) -> tuple[tuple[float, ...], str | None]:
    if example_inputs.dim() != 4 or not example_inputs.is_floating_point():
        shape = "x".join(map(str, example_inputs.shape))
        return (1.0,), f"its input ({shape}, {example_inputs.dtype}) is not a batch of images"
    height, width = example_inputs.shape[-2:]
    was_training = model.training
    model.eval()
    accepted = [1.0]
    why = None
    try:
        with torch.no_grad():
            expected = _shape(model(example_inputs))
            for scale in scales()[1:]:
                size = (scaled_size(height, scale), scaled_size(width, scale))
                smaller = nn.functional.interpolate(example_inputs, size=size, mode="bilinear")
                try:
                    got = _shape(model(smaller))
                except Exception as error:  # any failure means: not at this size
                    why = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
                else:
                    if got == expected:
                        accepted.append(scale)
                        continue
                    why = f"output shape {got} instead of {expected}"
                if len(accepted) == 1:
                    return (1.0,), f"it fails on a {size[0]}x{size[1]} input ({why})"
                break
    finally:
        model.train(was_training)
    return tuple(accepted), None


def _shape(output: Any) -> Any:
    """The output's shape(s), for comparing a smaller input's run with the full one's."""
    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    if isinstance(output, tuple | list):
        return tuple(_shape(item) for item in output)
    if isinstance(output, dict):
        return tuple((key, _shape(value)) for key, value in output.items())
    return type(output).__name__
