"""Runtime knobs: ONNX Runtime's graph-optimisation level and the session's thread count.

Latency depends on how the file is run as well as on its weights. Two knobs are searched:

* ``ort.level``: ``load`` (the file as exported; the session optimises it at every load,
  fully, as every other candidate is run) or ``basic`` / ``extended`` / ``all``: the graph
  optimised offline to that level and saved; the saved graph is the deployed file and is
  loaded as it is (``search.measure.onnx_runtime.with_session_settings``). Fusions change
  the file's size and which kernels run: whether a level pays on the target is measured.
* ``ort.threads``: the intra-op threads of the deployed session, powers of two up to the
  option ``ort.max_threads`` (and the target's ``--threads``); searched only where that
  allows more than ``--threads`` (``--fix ort.max_threads=4``). The file records the
  count and every measurement of it runs with that count: the latency is the deployed one.

* ``ort.provider`` on CUDA, only where ONNX Runtime has its TensorRT execution provider:
  ``cuda``, or ``tensorrt`` / ``tensorrt-fp16`` (TensorRT builds its engine from the file,
  fp16 kernels allowed in the second). TensorRT wants the graph as exported, so with it
  the level stays ``load``. Elsewhere the parameter is absent, and ``search space`` says
  why.

ONNX Runtime only; last of the artifact stage, so it optimises the quantized graph.

Measured on the digits model (pruned by half, one thread, p50): load 0.262 ms; offline
basic 0.894 ms and extended 0.860 ms (the CPU's blocked layouts come only with ``all``);
offline all 0.259 ms. For its int8 file: load 0.525 ms, all 0.524 ms and a 15% smaller
file (325.9 KB against 380.7 KB: quantize/dequantize pairs folded into integer kernels).
ONNX Runtime already applies ``all`` at load, so the level pays in file size at most,
and an ``all`` file is tied to this CPU's kernels: the lever is in the search only when
asked for (``--fix ort.searched=true``) or when ``ort.max_threads`` allows more threads
than ``--threads``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from search.measure.artifact import Artifact
from search.measure.onnx_runtime import (
    OPTIMIZATION_LEVELS,
    TENSORRT_PROVIDERS,
    tensorrt_available,
    with_session_settings,
)
from search.train.loop import Recipe
from techniques.base import Context, TechniqueError

if TYPE_CHECKING:
    import optuna
    from torch import nn

AT_LOAD = "load"
LEVELS = (AT_LOAD, *OPTIMIZATION_LEVELS)
MAX_THREADS = (1, 2, 4, 8, 16, 32, 64)
PROVIDERS = ("cuda", *TENSORRT_PROVIDERS)


@dataclass(frozen=True)
class SessionParams:
    """``level``: offline optimisation level (``load``: none); ``threads``: None keeps the
    target's own ``--threads``."""

    level: str = AT_LOAD
    threads: int | None = None
    provider: str | None = None  # None: the device's own (CPU or CUDA)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise TechniqueError(f"ort.level={self.level!r} is unknown: use one of {LEVELS}")
        if self.provider not in (None, *TENSORRT_PROVIDERS):
            raise TechniqueError(f"ort.provider={self.provider!r}: use one of {PROVIDERS}")
        if self.threads is not None and self.threads < 1:
            raise TechniqueError(f"ort.threads={self.threads} must be at least 1")

    @property
    def label(self) -> str:
        level = "" if self.level == AT_LOAD else f"opt-{self.level}"
        threads = f"t{self.threads}" if self.threads else ""
        provider = {None: "", "tensorrt": "trt", "tensorrt-fp16": "trt16"}[self.provider]
        return "-".join(part for part in (level, threads, provider) if part)


class SessionKnobs:
    name: ClassVar[str] = "ort"
    stage: ClassVar[Literal["artifact"]] = "artifact"
    options: ClassVar[Mapping[str, tuple[Any, ...]]] = {
        "ort.searched": (False, True),
        "ort.max_threads": MAX_THREADS,
    }

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        if not _searched(ctx):
            return {}
        threads = {"ort.threads": ctx.threads} if _max_threads(ctx) > ctx.threads else {}
        provider = {"ort.provider": "cuda"} if _tensorrt(ctx) else {}
        return {"ort.level": AT_LOAD} | threads | provider

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        return None

    def applicability(self, ctx: Context) -> str | None:
        if ctx.runtime != "onnxruntime":
            return "only ONNX Runtime sessions have these settings"
        return None

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> SessionParams | None:
        if not _searched(ctx):
            return None
        level = str(trial.suggest_categorical("ort.level", LEVELS))
        threads = None
        most = _max_threads(ctx)
        if most > ctx.threads:
            choices = tuple(sorted({ctx.threads, *(n for n in MAX_THREADS if n <= most)}))
            threads = int(trial.suggest_categorical("ort.threads", choices))
            threads = None if threads == ctx.threads else threads
        provider = None
        if _tensorrt(ctx) and level == AT_LOAD:
            chosen = str(trial.suggest_categorical("ort.provider", PROVIDERS))
            provider = None if chosen == "cuda" else chosen
        if level == AT_LOAD and threads is None and provider is None:
            return None  # the file as exported, run as every candidate is: off
        return SessionParams(level, threads, provider)

    def fine_tunes(self, params: SessionParams) -> bool:
        return False

    def configure(self, recipe: Recipe, params: SessionParams, ctx: Context) -> Recipe:
        return recipe

    def before_export(self, model: nn.Module, params: Any, ctx: Context) -> nn.Module:
        return model

    def apply(self, artifact: Artifact, params: SessionParams, ctx: Context) -> Artifact:
        if artifact.format != "onnx":
            raise TechniqueError("ort.level: only ONNX files run in ONNX Runtime sessions")
        output = artifact.path.with_suffix(f".{params.label}.onnx")  # beside its input
        level = None if params.level == AT_LOAD else params.level
        return with_session_settings(
            artifact,
            output,
            level=level,
            threads=params.threads,
            provider=params.provider,
            device=ctx.device,
        )


def _searched(ctx: Context) -> bool:
    """In the space: ONNX Runtime, and asked for or allowed more threads than the target's."""
    if ctx.runtime != "onnxruntime":
        return False
    asked = bool(ctx.options.get("ort.searched", False))
    return asked or _max_threads(ctx) > ctx.threads or _tensorrt(ctx)


def _tensorrt(ctx: Context) -> bool:
    """TensorRT is a choice: a CUDA target and ONNX Runtime's TensorRT provider present."""
    return ctx.device == "cuda" and tensorrt_available() is None


def _max_threads(ctx: Context) -> int:
    most = int(ctx.options.get("ort.max_threads", 1))
    if most not in MAX_THREADS:
        raise TechniqueError(f"ort.max_threads={most} must be one of {MAX_THREADS}")
    return most
