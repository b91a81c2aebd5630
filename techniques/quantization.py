"""Post-training quantization of the exported ONNX model with ONNX Runtime's tools.

Whether int8 pays depends on the target's kernels, not on a rule: on an AVX2 CPU without
VNNI, QDQ per-channel with uint8 activations was 1.4x faster than fp32 while the default
int8 activations gave no gain and dynamic int8 convolutions were ~10x slower. So the
activation type, per-channel and calibration method are inside the lever and the search
measures which combinations pay. ``reduce_range`` (7-bit weights) is in the lever too: on
AVX2 without VNNI the u8 x s8 multiply-add can saturate, and on the digits model per-channel
QDQ lost 21 points of accuracy without it and none with it. torch.ao.quantization is
deprecated in the installed torch and is not used.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from search.runtime import INPUT_NAME, Artifact
from techniques.base import Context, TechniqueError

if TYPE_CHECKING:
    import optuna
    from torch.utils.data import DataLoader

SCHEMES = ("fp32", "int8-dynamic", "int8-static")
ACTIVATION_TYPES = ("uint8", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_SAMPLES = 256


@dataclass(frozen=True)
class QuantParams:
    """A quantization scheme; the static options only matter for ``int8-static``."""

    scheme: str
    per_channel: bool = True
    activation_type: str = "uint8"
    calibration: str = "minmax"
    reduce_range: bool = False

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise TechniqueError(f"quant.scheme={self.scheme!r} is unknown: use one of {SCHEMES}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise TechniqueError(
                f"quant.activation_type={self.activation_type!r}: use one of {ACTIVATION_TYPES}"
            )
        if self.calibration not in CALIBRATION_METHODS:
            raise TechniqueError(
                f"quant.calibration={self.calibration!r}: use one of {CALIBRATION_METHODS}"
            )

    @property
    def label(self) -> str:
        """Short human name for run names and tables, e.g. ``int8s-pc-u8``."""
        if self.scheme == "fp32":
            return "fp32"
        if self.scheme == "int8-dynamic":
            return "int8d"
        granularity = "pc" if self.per_channel else "pt"
        activation = "u8" if self.activation_type == "uint8" else "s8"
        reduced = "-r7" if self.reduce_range else ""
        return f"int8s-{granularity}-{activation}{reduced}-{self.calibration}"


# Per-channel weights, because folding batch norm into depthwise convolutions leaves
# channels with very different ranges: on the digits model pruned by half and fine-tuned
# for ten epochs, every per-tensor variant fell to chance (0.100) while per-channel kept
# 0.989. uint8 activations with 7-bit weights, because u8 x s8 multiply-adds saturate on
# AVX2 without VNNI (per-channel without reduce_range lost up to 20 points). Whether it is
# faster is left to the measurement: 1.1x faster than fp32 on the full model here, 1.5x
# slower on the half-pruned one.
REFERENCE: Mapping[str, Any] = {
    "quant.scheme": "int8-static",
    "quant.per_channel": True,
    "quant.activation_type": "uint8",
    "quant.calibration": "minmax",
    "quant.reduce_range": True,
}


class Quantization:
    name: ClassVar[str] = "quant"
    stage: ClassVar[Literal["artifact"]] = "artifact"

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        return {"quant.scheme": "fp32"}

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        return REFERENCE

    def applicability(self, ctx: Context) -> str | None:
        return None

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> QuantParams | None:
        scheme = trial.suggest_categorical("quant.scheme", SCHEMES)
        if scheme == "fp32":
            return None
        if scheme == "int8-dynamic":
            return QuantParams(scheme)
        return QuantParams(
            scheme,
            per_channel=trial.suggest_categorical("quant.per_channel", (True, False)),
            activation_type=trial.suggest_categorical("quant.activation_type", ACTIVATION_TYPES),
            calibration=trial.suggest_categorical("quant.calibration", CALIBRATION_METHODS),
            reduce_range=trial.suggest_categorical("quant.reduce_range", (False, True)),
        )

    def apply(self, artifact: Artifact, params: QuantParams, ctx: Context) -> Artifact:
        return quantize(artifact, params, calibration=ctx.task.data("train"))


def quantize(artifact: Artifact, params: QuantParams, *, calibration: DataLoader) -> Artifact:
    """Write ``<stem>.<label>.onnx`` beside ``artifact``, quantized as ``params`` say."""
    if params.scheme == "fp32":
        return artifact
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
        return _quantize(artifact, params, calibration)


def _quantize(artifact: Artifact, params: QuantParams, calibration: DataLoader) -> Artifact:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = artifact.path.with_suffix(".pre.onnx")
    # Shape inference and graph clean-up; quantize_dynamic fails on some graphs without it.
    quant_pre_process(str(artifact.path), str(prepared), skip_symbolic_shape=True)
    output = artifact.path.with_suffix(f".{params.label}.onnx")
    if params.scheme == "int8-dynamic":
        quantize_dynamic(str(prepared), str(output), weight_type=QuantType.QInt8)
    else:
        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        activation = QuantType.QUInt8 if params.activation_type == "uint8" else QuantType.QInt8
        quantize_static(
            str(prepared),
            str(output),
            _CalibrationReader(calibration, CALIBRATION_SAMPLES),
            quant_format=QuantFormat.QDQ,
            per_channel=params.per_channel,
            activation_type=activation,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[params.calibration],
            reduce_range=params.reduce_range,
        )
    prepared.unlink(missing_ok=True)
    return Artifact(path=output, scheme=params.scheme)


class _CalibrationReader:
    """Feeds the first ``limit`` training inputs to ONNX Runtime's calibrator."""

    def __init__(self, loader: DataLoader, limit: int) -> None:
        batches = []
        for inputs, _ in itertools.islice(loader, max(1, limit // (loader.batch_size or 1))):
            batches.append(np.ascontiguousarray(inputs.numpy(), dtype=np.float32))
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}
