"""Per-layer sensitivity: what each layer alone costs when pruned, or quantized to int8.

Before a search, an engineer wants to know which layers can take compression. For every
prunable layer (one per dependency group, ``techniques.pruning.prunable_layers``) and each
ratio, the layer alone is pruned with the pruning lever's own code, not fine-tuned, and
the deployed file's accuracy on the validation split is measured in its runtime; for
every convolution or matrix multiply of the exported graph, that node alone is quantized
to int8 with the quantization lever's code (static, its reference setting). The drop
against the unchanged model is the layer's sensitivity: a table, a heat-map and an MLflow
run (experiment ``sensitivity``) hold it.

No fine-tuning on purpose: it ranks layers by how much of their information the cut
removes, the way Distiller's and NNI's sensitivity analyses do; recovery fine-tuning
brings most of it back, so these are not the accuracies a search would reach.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from search.common.errors import ConfigError
from search.core.config import SearchConfig
from search.measure.artifact import Artifact
from search.measure.onnx_runtime import compact_names, module_of_node
from search.measure.runtimes import ONNXRUNTIME, evaluate, export
from search.train.task import Task
from techniques.pruning import prunable_layers, prune_channels
from techniques.quantization import REFERENCE as QUANT_REFERENCE
from techniques.quantization import QuantParams, calibration_inputs, quantize

EXPERIMENT = "sensitivity"
DEFAULT_RATIOS = (0.25, 0.5, 0.75)
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
INT8 = "int8"
CALIBRATION_SAMPLES = 64  # per quantized node; ranges of one layer settle on one batch


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer: accuracy drop (points, baseline minus pruned) per ratio, and for int8."""

    layer: str
    prune_drop: dict[float, float] = field(default_factory=dict)  # ratio -> points lost
    int8_drop: float | None = None


@dataclass(frozen=True)
class Sensitivity:
    """The whole analysis: the unchanged model's metric and every layer's drops."""

    baseline_accuracy: float
    ratios: tuple[float, ...]
    layers: list[LayerSensitivity]

    def ranked(self, ratio: float) -> list[LayerSensitivity]:
        """Layers pruned at ``ratio``, most sensitive (largest drop) first."""
        pruned = [row for row in self.layers if ratio in row.prune_drop]
        return sorted(pruned, key=lambda row: -row.prune_drop[ratio])

    def as_dict(self) -> dict[str, Any]:
        return {
            "baseline_accuracy": self.baseline_accuracy,
            "ratios": list(self.ratios),
            "layers": [
                {**asdict(row), "prune_drop": {str(k): v for k, v in row.prune_drop.items()}}
                for row in self.layers
            ],
        }


def analyse(
    task: Task,
    model: nn.Module,
    *,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
    int8: bool = True,
    device: str = "cpu",
    runtime: str = ONNXRUNTIME,
) -> Sensitivity:
    """Prune each layer alone at each ratio (and quantize each node alone): the drops."""
    example = task.example_inputs(1)
    with tempfile.TemporaryDirectory(prefix="search-sensitivity-") as scratch:
        folder = Path(scratch)

        def accuracy(candidate: nn.Module, name: str) -> float:
            artifact = compact_names(export(runtime, candidate, example, folder / name))
            return _accuracy(artifact, task, device, runtime)

        base = accuracy(model, "base")
        rows: dict[str, LayerSensitivity] = {}
        for index, layer in enumerate(prunable_layers(model, example)):
            drops = {}
            for ratio in ratios:
                pruned = prune_channels(model, example, ratio=0.0, layer_ratios={layer: ratio})
                if _parameters(pruned) == _parameters(model):
                    continue  # rounded to 8 channels, the layer would be empty: not pruned
                drops[ratio] = 100 * (base - accuracy(pruned, f"p{index}-{ratio:g}"))
            rows[layer] = LayerSensitivity(layer, drops)
        if int8 and runtime == ONNXRUNTIME:
            for layer, drop in _int8_drops(model, task, folder, base, device).items():
                known = rows.get(layer, LayerSensitivity(layer))
                rows[layer] = LayerSensitivity(layer, known.prune_drop, drop)
    return Sensitivity(base, tuple(ratios), list(rows.values()))


def int8_drops(
    task: Task, model: nn.Module, *, device: str = "cpu", cache_dir: Path | None = None
) -> dict[str, float]:
    """Each layer of ``model`` quantized to int8 alone: accuracy points lost, by layer.

    What ``quant.fp_layers`` ranks layers by; the search computes it once per study. With
    ``cache_dir`` it is kept there under a fingerprint of everything it depends on (the
    exported float file, the validation and calibration samples, ONNX Runtime's version,
    the device), so every later study of the same model reads it back: a benchmark runs a
    dozen studies of one model, each of which computed it again (about 9 s each on
    digits, over 2% of the benchmark's trial time).
    """
    with tempfile.TemporaryDirectory(prefix="search-int8-sensitivity-") as scratch:
        folder = Path(scratch)
        float_file = export(ONNXRUNTIME, model, task.example_inputs(1), folder / "named")
        cached = None
        if cache_dir is not None:
            cached = cache_dir / f"int8-sensitivity-{_fingerprint(float_file, task, device)}.json"
            if cached.exists():
                return {str(k): float(v) for k, v in json.loads(cached.read_text()).items()}
        base = _accuracy(float_file, task, device)  # node names do not change the outputs
        drops = _int8_drops(model, task, folder, base, device, float_file)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
            partial.write_text(json.dumps(drops, indent=1))
            partial.replace(cached)  # atomic: a concurrent worker reads all of it or none
        return drops


def _fingerprint(float_file: Artifact, task: Task, device: str) -> str:
    """What the int8 drops depend on, hashed: a change to any of it misses the cache."""
    import onnxruntime

    digest = hashlib.sha256(float_file.path.read_bytes())
    for batch in task.data("val"):
        for tensor in batch:
            digest.update(tensor.numpy().tobytes())
    for inputs in calibration_inputs(task.data("train"), CALIBRATION_SAMPLES):
        digest.update(inputs.numpy().tobytes())
    digest.update(json.dumps([onnxruntime.__version__, device, CALIBRATION_SAMPLES]).encode())
    digest.update(json.dumps(dict(QUANT_REFERENCE), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def _int8_drops(
    model: nn.Module,
    task: Task,
    folder: Path,
    base: float,
    device: str,
    float_file: Artifact | None = None,
) -> dict[str, float]:
    """Each Conv/Gemm/MatMul node quantized alone, by the layer its node belongs to.

    ``float_file``: ``model`` already exported with its module-path node names."""
    import onnx

    if float_file is None:
        float_file = export(ONNXRUNTIME, model, task.example_inputs(1), folder / "named")
    graph = onnx.load(str(float_file.path)).graph
    params = QuantParams(
        **{k.partition(".")[2]: v for k, v in QUANT_REFERENCE.items()}  # static, its reference
    )
    modules = {name for name, _ in model.named_modules()}
    # one calibration for every layer: the float file's activation ranges do not depend on
    # which node is quantized (about 0.5 s a layer on digits' 52 layers before this)
    ranges = folder / "calibration.json"
    drops = {}
    for node in graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        quantized = quantize(
            float_file,
            params,
            calibration=task.data("train"),
            samples=CALIBRATION_SAMPLES,
            nodes=[node.name],
            calibration_cache=ranges,
        )
        drops[layer_of(node.name, modules)] = 100 * (base - _accuracy(quantized, task, device))
        quantized.path.unlink(missing_ok=True)
    return drops


def layer_of(node_name: str, modules: set[str]) -> str:
    """The module a TorchScript-exported node came from (``module_of_node``)."""
    return module_of_node(node_name, modules)


def _accuracy(artifact: Artifact, task: Task, device: str, runtime: str = ONNXRUNTIME) -> float:
    return evaluate(
        artifact,
        task.data("val"),
        task.metric,
        runtime=runtime,
        device=device,
        threads=os.cpu_count() or 1,
    )


def layer_caps(sensitivity: Sensitivity, tolerance_points: float) -> dict[str, float]:
    """The largest tested ratio each layer takes alone within ``tolerance_points``.

    A layer over the tolerance even at the smallest ratio gets 0: left unpruned. What the
    search's ``--use-sensitivity`` turns into per-layer pruning bounds.
    """
    caps = {}
    for row in sensitivity.layers:
        if not row.prune_drop:
            continue
        within = [r for r, drop in sorted(row.prune_drop.items()) if drop <= tolerance_points]
        caps[row.layer] = max(within) if within else 0.0
    return caps


def load_sensitivity(path: Path) -> Sensitivity:
    """A ``sensitivity.json`` back as a ``Sensitivity``; a file that is not one, one line."""
    try:
        document = json.loads(path.read_text())
        layers = [
            LayerSensitivity(
                row["layer"],
                {float(r): float(d) for r, d in row["prune_drop"].items()},
                row.get("int8_drop"),
            )
            for row in document["layers"]
        ]
        return Sensitivity(float(document["baseline_accuracy"]), tuple(document["ratios"]), layers)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(
            f"--use-sensitivity {path}: not a sensitivity.json from `search sensitivity` "
            f"({type(error).__name__}: {error})"
        ) from None


def write_table(sensitivity: Sensitivity, folder: Path) -> list[Path]:
    """``sensitivity.csv``, ``sensitivity.md`` (most sensitive first) and the JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    ratios = sensitivity.ratios
    order = _display_order(sensitivity)
    header = ["layer", *(f"prune {r:g}" for r in ratios), INT8]
    cells = [
        [
            row.layer,
            *(_points(row.prune_drop.get(r)) for r in ratios),
            _points(row.int8_drop),
        ]
        for row in order
    ]
    csv_path = folder / "sensitivity.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(cells)
    md_path = folder / "sensitivity.md"
    lines = [
        f"Accuracy drop in points against the unchanged model "
        f"({sensitivity.baseline_accuracy:.4f} on validation), each layer alone, "
        "no fine-tuning; most sensitive first. A dash: not pruned at that ratio (rounded to "
        "multiples of 8 channels the layer would be empty, so pruning leaves it whole), or "
        "pruned with another layer's group.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in cells),
    ]
    md_path.write_text("\n".join(lines) + "\n")
    json_path = folder / "sensitivity.json"
    json_path.write_text(json.dumps(sensitivity.as_dict(), indent=2))
    return [csv_path, md_path, json_path]


def write_heatmap(sensitivity: Sensitivity, path: Path) -> Path:
    """Layers down, pruning ratios (and int8) across, the drop as colour and number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    order = _display_order(sensitivity)
    columns = [f"prune {r:g}" for r in sensitivity.ratios] + [INT8]
    values = np.array(
        [
            [row.prune_drop.get(r, np.nan) for r in sensitivity.ratios]
            + [np.nan if row.int8_drop is None else row.int8_drop]
            for row in order
        ],
        dtype=float,
    )
    height = max(3.0, 0.28 * len(order) + 1.5)
    figure, axes = plt.subplots(figsize=(2.0 + 1.1 * len(columns), height))
    image = axes.imshow(values, cmap="Reds", aspect="auto", vmin=0)
    axes.set_xticks(range(len(columns)), columns)
    axes.set_yticks(range(len(order)), [row.layer for row in order], fontsize=7)
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            axes.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6)
    figure.colorbar(image, ax=axes, label="accuracy drop (points)")
    axes.set_title("Sensitivity: each layer alone, no fine-tuning")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _display_order(sensitivity: Sensitivity) -> list[LayerSensitivity]:
    """Most sensitive first: by the drop at the middle ratio, then int8."""
    middle = sensitivity.ratios[len(sensitivity.ratios) // 2] if sensitivity.ratios else None

    def key(row: LayerSensitivity) -> tuple[float, float]:
        pruned = row.prune_drop.get(middle, -1.0) if middle is not None else -1.0
        return (-pruned, -(row.int8_drop if row.int8_drop is not None else -1.0))

    return sorted(sensitivity.layers, key=key)


def _points(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


@dataclass(frozen=True)
class SensitivityRun:
    """Where the analysis went: the files and the MLflow run that keeps them."""

    sensitivity: Sensitivity
    files: list[Path]
    run_id: str
    tracking_uri: str


def run_sensitivity(
    config: SearchConfig,
    *,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
    int8: bool = True,
    output: Path,
    task: Task | None = None,
) -> SensitivityRun:
    """Analyse the task's trained model, write the table and heat-map to ``output``, and
    log them with every layer's drops to one MLflow run (experiment ``sensitivity``)."""
    from search.measure.runtimes import check_target
    from search.tasks.loader import build_model, load_task
    from search.track.tracker import tracker_for

    check_target(config.runtime, config.device)
    for ratio in ratios:
        if not 0 < ratio < 1:
            raise ConfigError(f"--ratios {ratio:g}: each ratio must be between 0 and 1")
    task = task or load_task(config.task, cache_dir=config.cache_dir)
    model = build_model(task, config.task)
    tracker = tracker_for(config)
    experiment_id = tracker.experiment_id(EXPERIMENT)
    run_id = tracker.start_run(experiment_id, name=f"sensitivity {task.name}")
    status = "FAILED"
    try:
        found = analyse(
            task, model, ratios=ratios, int8=int8, device=config.device, runtime=config.runtime
        )
        files = [*write_table(found, output), write_heatmap(found, output / "sensitivity.png")]
        metrics: dict[str, float] = {"baseline_accuracy": found.baseline_accuracy}
        for row in found.layers:
            for ratio, drop in row.prune_drop.items():
                metrics[f"drop.prune{ratio:g}.{row.layer}"[:250]] = drop
            if row.int8_drop is not None:
                metrics[f"drop.int8.{row.layer}"[:250]] = row.int8_drop
        tracker.log(
            run_id,
            params={
                "task": config.task,
                "ratios": ",".join(f"{r:g}" for r in ratios),
                "int8": int8,
                "runtime": config.runtime,
                "device": config.device,
            },
            metrics=metrics,
            tags={"kind": "sensitivity"},
        )
        for path in files:
            tracker.log_artifact(run_id, path)
        status = "FINISHED"
    finally:
        tracker.end_run(run_id, status)
    return SensitivityRun(found, files, run_id, config.mlflow_uri)
