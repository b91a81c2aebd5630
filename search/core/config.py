"""The run's configuration: frozen, validated at the edge, with fix-it messages."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from search.common.errors import ConfigError
from search.core.levers import LeverSettings
from search.core.rungs import DEFAULT_EPOCHS as DEFAULT_RUNG_EPOCHS
from search.core.rungs import DEFAULT_KEEP_FRACTION as DEFAULT_RUNG_KEEP_FRACTION
from search.core.rungs import DEFAULT_MARGIN as DEFAULT_RUNG_MARGIN
from search.track.trials import ACCURACY_RULES

_UNIT_TO_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
_LATENCY_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|us|µs|s)\s*$")
_RELATIVE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*x\s*$")
DEVICES = ("cpu", "cuda")
MAX_WORKERS = 64
# The names of search.measure.runtimes.RUNTIMES, here so that parsing a config imports no torch.
RUNTIMES = ("onnxruntime", "torch", "torch-compile")
# Optuna samplers a study can use: TPE (the default; learns from the trials so far) and
# random search (the plain baseline a benchmark compares it with).
SAMPLERS = ("tpe", "random")
EARLY_STOP_MODES = ("on", "off", "shadow")  # search.core.rungs


def parse_latency_ms(text: str) -> float:
    """Parse a latency such as ``10ms``, ``2.5 ms``, ``800us`` or ``0.01s`` into milliseconds.

    A bare number is refused: a budget without a unit is a guess waiting to go wrong.
    """
    match = _LATENCY_PATTERN.match(text)
    if match is None:
        raise ConfigError(
            f"--latency-budget {text!r} is not a latency: give a positive number with a unit, "
            "e.g. 10ms, 2.5 ms, 800us or 0.01s"
        )
    value = float(match.group(1)) * _UNIT_TO_MS[match.group(2)]
    if value <= 0:
        raise ConfigError(f"--latency-budget {text!r} must be greater than zero, e.g. 10ms")
    return value


def parse_latency_budget(text: str) -> tuple[float, float | None]:
    """(milliseconds, None) for ``10ms``; (0, factor) for ``0.5x``, a share of the baseline.

    A relative budget is resolved once, when its study is created, from the baseline's
    latency measured on this machine; the study keeps the figure it was created with.
    """
    match = _RELATIVE_PATTERN.match(text)
    if match is None:
        return parse_latency_ms(text), None
    factor = float(match.group(1))
    if not 0 < factor <= 100:
        raise ConfigError(
            f"--latency-budget {text!r}: a relative budget is a factor of the baseline's "
            "latency above 0, e.g. 0.5x"
        )
    return 0.0, factor


def format_ms(value_ms: float) -> str:
    """The exact figure with its unit, for study names, MLflow params and mismatch messages.

    Exact because a study is found again by its name; what is only read is rounded to
    three significant figures by ``search.common.units.show_ms``.
    """
    return f"{value_ms:g}ms"


OBJECTIVES = ("latency", "throughput")


@dataclass(frozen=True)
class SearchConfig:
    """Everything one ``search run`` needs; built by the CLI, read by the runner.

    Attributes:
        task: ``digits`` or ``pkg.module:factory`` or ``path/to/file.py:factory``.
        latency_budget_ms: the p50 latency a candidate must not exceed (0 until a relative
            budget is resolved).
        latency_budget_factor: for ``--latency-budget 0.5x``, the share of the baseline's
            measured p50 that makes the budget; None for an absolute budget.
        device: where latency is measured: ``cpu`` or ``cuda``.
        runtime: what runs the deployed model: ``onnxruntime`` (default), ``torch`` (eager)
            or ``torch-compile`` (``search.measure.runtimes``).
        trials: new trials to run in this invocation (None: until ``timeout_s``).
        timeout_s: wall-clock limit of this invocation (None: until ``trials``).
        seed: seeds the sampler, data split and fine-tuning.
        study_name: Optuna study name; None derives one from task, budget and device.
        storage: Optuna storage URL; None means SQLite under ``studies/``.
        tracking_uri: MLflow tracking URI; None means SQLite under ``mlruns/``.
        threads: intra-op threads for latency measurement (recorded with every number).
        workers: processes on this machine running trials of the study at once
            (``search.core.workers``); each fine-tunes with its share of the cores.
        max_failures: stop after this many failed trials in a row (``search.core.recovery``).
        heartbeat_s: how often a running trial tells the storage it is alive; a trial
            silent for four beats is failed and retried once by the next worker.
        batch_size: batch size for latency measurement.
        objective: ``latency`` (the p50 of one batch, the default) or ``throughput``, for
            server-side targets: items per second at ``batch_size``, N / p50. For batches
            run one after another the two order candidates alike, so the study minimises
            the batch's p50 either way (and the budget stays a p50 per batch); throughput
            is what every trial records and the front shows.
        finetune_epochs: recovery fine-tuning epochs after a model-changing technique.
        sampler: ``tpe`` (the default) or ``random``: how Optuna proposes the next trial.
        references: start a new study with the single-lever reference trials after the
            baseline (pruning 50%, int8 static, both); off, the baseline alone.
        latency_first: measure each candidate's architecture and number format before
            fine-tuning it, and stop a trial whose draft is over the budget.
        early_stop: successive halving over the fine-tune's epochs (``search.core.rungs``):
            ``on`` stops a candidate hopeless at a rung, ``off`` never does, ``shadow``
            records where it would have stopped and never does (to measure the rule).
        rungs: the epochs (from 1) after which a fine-tuning candidate is judged.
        rung_margin: how far a candidate may read at a rung below the lowest reading there
            of a finished candidate that met the floor, and still go on (metric's units).
        rung_keep_fraction: ASHA's 1/eta: the share of the candidates at a rung that go on
            by rank, whatever they read (0: the bar alone decides).
        latency_anchor: time each candidate in turn with the baseline's file and scale
            its figures by their ratio (``search.measure.latency.measure_anchored``), so a shared
            machine's slow phases cancel; off, each candidate is timed alone.
        anchor_p50_ms: the baseline file's p50 the anchored figures are scaled to, for
            studies that must share one scale (the benchmark's); None measures it when
            the study is created (the same measurement a relative budget is taken from).
        allow_mixed_hardware: resume a study created on other hardware (its latencies
            then mix two machines' figures; refused by default).
        max_accuracy_drop: how far below the baseline's metric a candidate may fall and
            still count as feasible, in the metric's units (0.01 = one point of accuracy).
        accuracy_rule: ``point`` (the default): a candidate's validation accuracy is within
            ``max_accuracy_drop`` of the baseline's; ``confident``: the lower end of its
            paired 95% interval against the baseline is (``search.measure.intervals``), so
            a lucky reading on a small split does not make a candidate feasible. Per study.
        sensitivity: a ``sensitivity.json`` from ``search sensitivity``: each layer is
            pruned at most to the largest ratio it took alone within
            ``sensitivity_tolerance`` points (``search.core.sensitivity.layer_caps``).
        sensitivity_tolerance: accuracy points a layer may cost alone, before fine-tuning.
        levers: levers switched off, parameters fixed, shape options (``search.core.levers``).
        home: folder that holds ``studies/`` and ``mlruns/`` by default.
    """

    task: str = "digits"
    latency_budget_ms: float = 10.0
    latency_budget_factor: float | None = None
    device: str = "cpu"
    runtime: str = "onnxruntime"
    trials: int | None = 8
    timeout_s: float | None = None
    seed: int = 0
    study_name: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    threads: int = 1
    workers: int = 1
    max_failures: int = 5
    heartbeat_s: int = 30
    batch_size: int = 1
    objective: str = "latency"
    # Ten epochs: on the digits model pruned by half (distilled, four seeds) five epochs gave
    # 0.969-0.986 validation accuracy, ten gave 0.983-0.992.
    finetune_epochs: int = 10
    # One point, the tolerance Intel Neural Compressor and NNCF's accuracy-aware modes
    # default to (about 1%). Besides its meaning to the user, it focuses the sampler: TPE
    # puts infeasible trials in its "bad" group, so small but ruined models stop attracting
    # the search the way they do as members of an accuracy-size-latency front.
    max_accuracy_drop: float = 0.01
    accuracy_rule: str = "point"
    latency_first: bool = True
    # On, at the rung and margin measured safe: replayed on six 40-trial shadow searches
    # (every candidate finished), 59 stops, none of a candidate that ended feasible
    # (search.core.rungs).
    early_stop: str = "on"
    # After four of the ten epochs, five points of allowance: as measured (search.core.rungs).
    rungs: tuple[int, ...] = DEFAULT_RUNG_EPOCHS
    rung_margin: float = DEFAULT_RUNG_MARGIN
    rung_keep_fraction: float = DEFAULT_RUNG_KEEP_FRACTION
    latency_anchor: bool = True
    anchor_p50_ms: float | None = None
    sampler: str = "tpe"
    references: bool = True
    allow_mixed_hardware: bool = False
    sensitivity: str | None = None
    # Five points: alone and not fine-tuned, layers that recover split from those that do
    # not at a few points on digits (most cost under 2 at half their channels, a few 10+).
    sensitivity_tolerance: float = 5.0
    levers: LeverSettings = field(default_factory=LeverSettings)
    home: Path = field(default_factory=Path.cwd)

    def __post_init__(self) -> None:
        if self.latency_budget_factor is None and self.latency_budget_ms <= 0:
            raise ConfigError("--latency-budget must be greater than zero, e.g. 10ms")
        if self.device not in DEVICES:
            raise ConfigError(
                f"--device {self.device!r} is unknown: use one of {', '.join(DEVICES)}"
            )
        if self.runtime not in RUNTIMES:
            raise ConfigError(
                f"--runtime {self.runtime!r} is unknown: use one of {', '.join(RUNTIMES)}"
            )
        if self.sampler not in SAMPLERS:
            raise ConfigError(
                f"--sampler {self.sampler!r} is unknown: use one of {', '.join(SAMPLERS)}"
            )
        if self.trials is not None and self.trials < 1:
            raise ConfigError(f"--trials {self.trials} must be at least 1")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(f"--timeout {self.timeout_s:g} must be a positive number of seconds")
        if self.trials is None and self.timeout_s is None:
            raise ConfigError("give --trials or --timeout, or the search would never end")
        if self.threads < 1:
            raise ConfigError(f"--threads {self.threads} must be at least 1")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers {self.workers} must be from 1 to {MAX_WORKERS}")
        if self.max_failures < 1:
            raise ConfigError(f"--max-failures {self.max_failures} must be at least 1")
        if not 1 <= self.heartbeat_s <= 3600:
            raise ConfigError(f"--heartbeat {self.heartbeat_s} must be from 1 to 3600 seconds")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size} must be at least 1")
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"--objective {self.objective!r} is unknown: use latency (p50 of one batch) "
                "or throughput (items per second at --batch-size)"
            )
        if not 0 <= self.max_accuracy_drop < float("inf"):
            raise ConfigError(
                f"--max-accuracy-drop {self.max_accuracy_drop:g} must be a finite number >= 0, "
                "e.g. 0.01 for one point of accuracy"
            )
        if self.early_stop not in EARLY_STOP_MODES:
            raise ConfigError(
                f"--early-stop {self.early_stop!r} is unknown: use on (stop hopeless "
                "candidates at a rung), off, or shadow (record where it would stop)"
            )
        if not self.rungs or min(self.rungs) < 1:
            raise ConfigError(f"--rungs {self.rungs}: give epochs from 1 up, e.g. --rungs 2,5")
        if not 0 <= self.rung_margin < 1:
            raise ConfigError(
                f"--rung-margin {self.rung_margin:g} must be from 0 to below 1 (the metric's "
                "units: 0.05 is five points of accuracy)"
            )
        if not 0 <= self.rung_keep_fraction < 1:
            raise ConfigError(
                f"--rung-keep-fraction {self.rung_keep_fraction:g} must be from 0 to below 1 "
                "(the share of the candidates at a rung that go on by rank: 0.33 keeps a third)"
            )
        if self.accuracy_rule not in ACCURACY_RULES:
            raise ConfigError(
                f"--accuracy-rule {self.accuracy_rule!r} is unknown: use point (the accuracy "
                "within the drop) or confident (its paired 95% interval's lower end within it)"
            )
        if self.finetune_epochs < 0:
            raise ConfigError(f"--finetune-epochs {self.finetune_epochs} must be 0 or more")
        if self.sensitivity is not None and not Path(self.sensitivity).is_file():
            raise ConfigError(
                f"--use-sensitivity {self.sensitivity}: no such file; `search sensitivity` "
                "writes sensitivity/sensitivity.json"
            )
        if not 0 <= self.sensitivity_tolerance < float("inf"):
            raise ConfigError(
                f"--sensitivity-tolerance {self.sensitivity_tolerance:g} must be a number of "
                "points >= 0, e.g. 5"
            )
        if self.study_name is not None and not self.study_name.strip():
            raise ConfigError("--study must not be empty")

    @property
    def studies_dir(self) -> Path:
        return self.home / "studies"

    @property
    def mlruns_dir(self) -> Path:
        return self.home / "mlruns"

    @property
    def cache_dir(self) -> Path:
        """Trained baselines, models' int8 sensitivities and exported graphs to refill,
        keyed by hashes of what they depend on; safe to delete."""
        return self.studies_dir / "cache"

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.studies_dir / 'optuna.db').resolve()}"

    @property
    def mlflow_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{(self.mlruns_dir / 'mlflow.db').resolve()}"

    def resolved_study_name(self, task_name: str) -> str:
        """The study name: given, or ``<task>-<budget>-<device>[-<runtime>]`` for reruns.

        The runtime joins the name only when it is not the default, so studies made before
        runtimes were a choice keep their names.
        """
        budget = (
            f"{self.latency_budget_factor:g}x"
            if self.latency_budget_factor is not None
            else format_ms(self.latency_budget_ms)
        )
        runtime = "" if self.runtime == "onnxruntime" else f"-{self.runtime}"
        throughput = f"-throughput-b{self.batch_size}" if self.objective == "throughput" else ""
        return self.study_name or f"{task_name}-{budget}-{self.device}{runtime}{throughput}"
