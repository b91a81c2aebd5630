"""``search prune | quantize | lowrank | distill | share | shrink``: one technique, once,
with known settings; ``search finetune``: a search's trial rebuilt with a longer fine-tune.

Each command turns its options into the technique's parameters (unset ones keep the
lever's reference setting) and calls ``search.core.oneshot.run_one_shot``, which runs them
through the search's own trial pipeline. Registered on the ``search`` app in
``search.cli``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from search.cli.options import (
    DeviceOption,
    RuntimeOption,
    StorageOption,
    TaskOption,
    TrackingOption,
)
from search.common.errors import ConfigError

OutputOption = Annotated[
    Path | None,
    typer.Option(help="Write the deployed model file here (a folder keeps its file name)."),
]
BudgetOption = Annotated[
    str | None,
    typer.Option(
        "--latency-budget",
        help="p50 the result should meet, e.g. 2ms or 0.5x the input's (default 1x): "
        "recorded as the run's feasible tag.",
    ),
]
EpochsOption = Annotated[
    int | None,
    typer.Option(help="Recovery fine-tuning epochs where the technique changes weights (10)."),
]
ThreadsOption = Annotated[int, typer.Option(help="Threads for latency measurement.")]
BatchOption = Annotated[int, typer.Option(help="Batch size for latency measurement.")]
SeedOption = Annotated[int, typer.Option(help="Seeds fine-tuning and calibration.")]


def _common_options(
    task: TaskOption = None,
    device: DeviceOption = None,
    runtime: RuntimeOption = None,
    finetune_epochs: EpochsOption = None,
    latency_budget: BudgetOption = None,
    threads: ThreadsOption = 1,
    batch_size: BatchOption = 1,
    seed: SeedOption = 0,
    tracking_uri: TrackingOption = None,
    output: OutputOption = None,
    study: Annotated[
        str | None, typer.Option(help="With --trial: the study the trial is in.")
    ] = None,
    trial: Annotated[
        int | None,
        typer.Option(help="Start from this trial of --study (rebuilt) instead of the model."),
    ] = None,
    storage: StorageOption = None,
) -> None:
    """The options every one-shot command takes, declared once (``_with_common_options``
    reads this signature; the function itself never runs)."""


def _with_common_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with ``_common_options``' parameters added to what Typer sees; they
    reach it together as ``common``, a dict by option name."""
    shared = inspect.signature(_common_options, eval_str=True).parameters
    own = inspect.signature(command, eval_str=True).parameters

    @functools.wraps(command)
    def with_common(**given: Any) -> None:
        common = {name: given.pop(name) for name in shared}
        command(**given, common=common)

    parameters = [p for name, p in own.items() if name != "common"] + list(shared.values())
    with_common.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    with_common.__annotations__ = {
        **{k: v for k, v in command.__annotations__.items() if k != "common"},
        **_common_options.__annotations__,
    }
    return with_common


@_with_common_options
def prune(
    ratio: Annotated[
        float | None, typer.Option(help="Share of channels removed (default 0.5).")
    ] = None,
    importance: Annotated[
        str | None, typer.Option(help="magnitude (default), taylor or bn-scale.")
    ] = None,
    scope: Annotated[
        str | None, typer.Option(help="layer (default: every layer alike) or global.")
    ] = None,
    unstructured: Annotated[
        bool,
        typer.Option(
            "--unstructured",
            help="Zero single weights by magnitude instead of removing channels: sparsity "
            "and the compressed size go up, a dense runtime's latency does not (ratio 0.8, "
            "global by default).",
        ),
    ] = False,
    schedule: Annotated[
        str | None,
        typer.Option(
            help="Iterative pruning: ratios of the input to reach in turn, fine-tuning after "
            "each, e.g. 0.5,0.75,0.9."
        ),
    ] = None,
    gradual: Annotated[
        int | None,
        typer.Option(
            help="Gradual pruning: reach --ratio in N steps on a cubic schedule, fine-tuning "
            "--finetune-epochs after each."
        ),
    ] = None,
    common: dict[str, Any] | None = None,
) -> None:
    """Remove channels (or zero weights), fine-tune, export, measure against the input."""
    from search.core.oneshot import cubic_schedule

    if schedule is not None and gradual is not None:
        raise ConfigError("give --schedule or --gradual, not both")
    steps: tuple[float, ...] = ()
    if schedule is not None:
        steps = _ratios("--schedule", schedule)
    elif gradual is not None:
        if ratio is None:
            raise ConfigError("--gradual N needs the final --ratio, e.g. --ratio 0.8")
        steps = cubic_schedule(ratio, gradual)
    lever, command = ("sparse", "prune --unstructured") if unstructured else ("prune", "prune")
    if unstructured and importance is not None:
        raise ConfigError("--importance: unstructured pruning ranks weights by magnitude only")
    given = {f"{lever}.ratio": ratio, f"{lever}.importance": importance, f"{lever}.scope": scope}
    flags = {f"{lever}.{name}": name for name in ("ratio", "importance", "scope")}
    if steps:  # each step's ratio comes from the schedule
        given[f"{lever}.ratio"] = None
        flags[f"{lever}.ratio"] = "schedule"
    _one_shot(command, given, flags, common, schedule=steps)


@_with_common_options
def quantize(
    scheme: Annotated[
        str | None,
        typer.Option(
            help=(
                "fp16, fp16-weights, int8-static (default), int8-dynamic or int8-qat "
                "(bf16 where it runs)."
            )
        ),
    ] = None,
    per_channel: Annotated[
        bool | None,
        typer.Option("--per-channel/--per-tensor", help="int8 weight scales (per channel)."),
    ] = None,
    activation_type: Annotated[
        str | None, typer.Option(help="uint8 (default) or int8 activations.")
    ] = None,
    calibration: Annotated[
        str | None, typer.Option(help="minmax (default), entropy or percentile.")
    ] = None,
    reduce_range: Annotated[
        bool | None,
        typer.Option(
            "--reduce-range/--full-range", help="7-bit weights (the default: no saturation)."
        ),
    ] = None,
    equalize: Annotated[
        bool | None,
        typer.Option(
            "--equalize/--no-equalize",
            help="int8-static: rescale consecutive layers so their per-channel ranges match "
            "(cross-layer equalization) before export.",
        ),
    ] = None,
    bias_correction: Annotated[
        bool | None,
        typer.Option(
            "--bias-correction/--no-bias-correction",
            help="int8-static: remove the mean output shift int8 weight rounding causes, "
            "measured on calibration data.",
        ),
    ] = None,
    fp_layers: Annotated[
        int | None,
        typer.Option(
            "--fp-layers",
            help="int8: keep the K layers int8 costs most (each quantized alone) in float: "
            "0, 1, 2 or 4.",
        ),
    ] = None,
    common: dict[str, Any] | None = None,
) -> None:
    """Convert the exported model to another number format and measure it against the input."""
    given = {
        "quant.scheme": scheme,
        "quant.per_channel": per_channel,
        "quant.activation_type": activation_type,
        "quant.calibration": calibration,
        "quant.reduce_range": reduce_range,
        "quant.equalize": equalize,
        "quant.bias_correction": bias_correction,
        "quant.fp_layers": fp_layers,
    }
    flags = {name: name.partition(".")[2].replace("_", "-") for name in given}
    _one_shot("quantize", given, flags, common)


@_with_common_options
def lowrank(
    rank_ratio: Annotated[
        float | None,
        typer.Option(help="Kept rank as a share of each layer's full rank (default 0.5)."),
    ] = None,
    common: dict[str, Any] | None = None,
) -> None:
    """Factorise Linear and 1x1 layers by truncated SVD, fine-tune, measure against the input."""
    _one_shot("lowrank", {"lowrank.rank_ratio": rank_ratio}, {"lowrank.rank_ratio": "rank-ratio"},
              common)  # fmt: skip


@_with_common_options
def share(
    bits: Annotated[
        int | None,
        typer.Option(help="Each layer's weights take one of 2^bits shared values (default 5)."),
    ] = None,
    common: dict[str, Any] | None = None,
) -> None:
    """Cluster each layer's weights to a codebook (k-means): a smaller file, same arithmetic."""
    _one_shot("share", {"share.bits": bits}, {"share.bits": "bits"}, common)


@_with_common_options
def distill(
    expand: Annotated[
        int | None,
        typer.Option(help="Student: every inverted residual block's expand ratio at most N."),
    ] = None,
    prune_ratio: Annotated[
        float | None,
        typer.Option("--prune", help="Student: this share of channels removed."),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Softening of both models' logits (default 4).")
    ] = None,
    alpha: Annotated[
        float | None, typer.Option(help="Weight of the teacher's soft targets (default 0.9).")
    ] = None,
    feature_weight: Annotated[
        float | None,
        typer.Option(help="Weight of matching intermediate features (default 0: logits only)."),
    ] = None,
    teacher: Annotated[
        str,
        typer.Option(
            help="input (the model given) or ema (self-distillation from the student's "
            "moving average)."
        ),
    ] = "input",
    common: dict[str, Any] | None = None,
) -> None:
    """Train a smaller student (narrower or pruned) from the input model as its teacher."""
    from search.core.oneshot import UNIFORM_EXPAND

    given = {
        UNIFORM_EXPAND: expand,
        "prune.ratio": prune_ratio,
        "distill.temperature": temperature,
        "distill.alpha": alpha,
        "distill.feature_weight": feature_weight,
    }
    flags = {
        "prune.ratio": "prune",
        "distill.temperature": "temperature",
        "distill.alpha": "alpha",
        "distill.feature_weight": "feature-weight",
    }
    _one_shot("distill", given, flags, common, lever_options={"distill.teacher": teacher})


@_with_common_options
def shrink(
    depth: Annotated[
        float | None,
        typer.Option(
            help="Share of each stage's residual blocks kept, in quarters (0 to 1; 1: off)."
        ),
    ] = None,
    resolution: Annotated[
        float | None,
        typer.Option(help="Share of each input side the model runs at, in eighths (0.5 to 1)."),
    ] = None,
    common: dict[str, Any] | None = None,
) -> None:
    """Drop residual blocks and/or shrink the input inside the model, fine-tune, measure.

    Without either option both apply at their references (half the blocks, 0.75 a side).
    """
    given = {"depth.keep": depth, "resolution.scale": resolution}
    flags = {"depth.keep": "depth", "resolution.scale": "resolution"}
    _one_shot("shrink", given, flags, common)


@_with_common_options
def finetune(common: dict[str, Any] | None = None) -> None:
    """Rebuild a trial of --study with a longer fine-tune (30 epochs unless told) than the
    search's, and measure it against the trial as recorded."""
    from search.core.oneshot import FINETUNE, FINETUNE_EPOCHS

    assert common is not None
    if common["finetune_epochs"] is None:
        common = {**common, "finetune_epochs": FINETUNE_EPOCHS}
    _one_shot(FINETUNE, {}, {}, common)


def _ratios(option: str, text: str) -> tuple[float, ...]:
    """``0.5,0.75,0.9`` as numbers, or one line saying how to write them."""
    try:
        ratios = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: write ratios, e.g. 0.5,0.75,0.9") from None
    if not ratios or not all(0 < r < 1 for r in ratios):
        raise ConfigError(f"{option} {text!r}: ratios between 0 and 1, e.g. 0.5,0.75,0.9")
    return ratios


def _one_shot(
    command: str,
    given: dict[str, Any],
    flags: dict[str, str],
    options: dict[str, Any] | None,
    *,
    schedule: tuple[float, ...] = (),
    lever_options: dict[str, Any] | None = None,
) -> None:
    """The shared part: config from the common options, the run, the printed comparison."""
    assert options is not None  # _with_common_options passes them
    from search.core.config import SearchConfig, parse_latency_budget

    budget_ms: float = 10.0
    factor: float | None = 1.0  # without a budget: the input model's own p50
    if options["latency_budget"] is not None:
        budget_ms, factor = parse_latency_budget(options["latency_budget"])
    common = {
        "task": options["task"] or "digits",
        "device": options["device"] or "cpu",
        "runtime": options["runtime"] or "onnxruntime",
        "threads": options["threads"],
        "batch_size": options["batch_size"],
        "seed": options["seed"],
        "tracking_uri": options["tracking_uri"],
    }
    if options["storage"] is not None:
        common["storage"] = options["storage"]
    if options["finetune_epochs"] is not None:
        common["finetune_epochs"] = options["finetune_epochs"]
    config = SearchConfig(
        **common,
        latency_budget_ms=budget_ms or 10.0,
        latency_budget_factor=factor,
        trials=1,
        home=Path.cwd(),
    )
    from search.core.oneshot import TrialRef, run_one_shot

    if (options["trial"] is None) != (options["study"] is None):
        raise ConfigError("give --study and --trial together: the trial to start from")
    source = None
    if options["trial"] is not None:
        source = TrialRef(options["study"], options["trial"], config.storage_url)

    chosen = {name: value for name, value in given.items() if value is not None}
    try:
        result = run_one_shot(
            config,
            command,
            chosen,
            output=options["output"],
            schedule=schedule,
            options=lever_options,
            from_trial=source,
        )
    except ConfigError as error:
        raise ConfigError(_in_option_words(str(error), flags)) from error
    _print(Console(), result)


def _in_option_words(message: str, flags: dict[str, str]) -> str:
    """A space check's ``--fix prune.ratio=2: ...`` as the user typed it: ``--ratio 2``."""
    for name, flag in flags.items():
        message = message.replace(f"--fix {name}=", f"--{flag} ")
    return message


def _print(console: Console, result: Any) -> None:
    """Before, after and the ratio of each figure, then where the run and the file are."""
    before, after, ratios = result.before, result.after, result.ratios()
    table = Table(title=f"search {result.command}: {result.label}")
    for column in ("", "input", "result", "change"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row(
        "validation accuracy",
        f"{before.accuracy:.4f}",
        f"{after.accuracy:.4f}",
        f"{100 * ratios['accuracy_delta']:+.2f} points",
    )
    table.add_row(
        "test accuracy",
        f"{before.test_accuracy:.4f}",
        f"{after.test_accuracy:.4f}",
        f"{100 * ratios['test_accuracy_delta']:+.2f} points",
    )
    table.add_row(
        "p50 latency",
        f"{before.p50_ms:.4f} ms",
        f"{after.p50_ms:.4f} ms",
        _speed(ratios["speedup"]),
    )
    table.add_row(
        "file size",
        f"{before.size_bytes / 1e3:.1f} KB",
        f"{after.size_bytes / 1e3:.1f} KB",
        f"{ratios['size_ratio']:.2f}x smaller",
    )
    table.add_row(
        "gzip -9 size",
        f"{before.compressed_bytes / 1e3:.1f} KB",
        f"{after.compressed_bytes / 1e3:.1f} KB",
        f"{ratios['compressed_size_ratio']:.2f}x smaller",
    )
    table.add_row(
        "zero weights", f"{100 * before.sparsity:.1f}%", f"{100 * after.sparsity:.1f}%", ""
    )
    if "macs_ratio" in ratios:
        table.add_row(
            "MACs",
            f"{before.macs / 1e6:.2f} M",
            f"{after.macs / 1e6:.2f} M",
            f"{ratios['macs_ratio']:.2f}x fewer",
        )
    console.print(table)
    console.print(f"MLflow run {result.run_id} (experiment one-shot) in {result.tracking_uri}")
    if result.output is not None:
        console.print(f"model file: {result.output}")


def _speed(speedup: float) -> str:
    """The measured ratio as it is: faster or slower, never a speed-up it does not have."""
    if speedup >= 1:
        return f"{speedup:.2f}x faster"
    return f"{1 / speedup:.2f}x slower"
