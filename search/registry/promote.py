"""``search promote``: one trial's deployed file into the MLflow Model Registry, with evidence.

The search chose its candidates on the validation split; promotion re-validates the chosen
file on the held-out test split (never seen during the search) and re-measures its latency
on this machine, then registers it as a new version aliased ``challenger``. The alias
``champion`` moves to it only when the re-measured p50 meets the study's budget and its test
accuracy is at least the current champion's minus ``tolerance``; ``force`` overrides. The
version carries a model card: every figure with how it was measured.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from search.common.errors import ConfigError
from search.common.units import show_ms
from search.core.profile import trial_target
from search.measure.intervals import (
    accuracy_figures,
    per_example_correct,
    show_delta,
    show_interval,
)
from search.measure.latency import (
    LatencyStats,
    hardware_fingerprint,
    measure_latency,
    measurement_lock,
)
from search.measure.runtimes import predict
from search.track.pareto import nearest_trials
from search.track.tracker import STUDY_TAG
from search.track.trials import (
    ACCURACY_RULES,
    INTERVAL_KEYS,
    baseline_trial,
    feasible_by,
    study_rule,
)
from search.train.task import Task

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class PromotionCard:
    """What a registered version says about itself; every figure with its protocol."""

    model_name: str
    study: str
    trial: int
    mlflow_run_id: str
    params: dict[str, Any]
    test_accuracy: float
    validation_accuracy: float
    latency: dict[str, Any]  # LatencyStats.as_dict(): p50/p95/p99, spread, protocol
    latency_budget_ms: float
    size_bytes: int
    macs: int | None
    baseline: dict[str, float] = field(default_factory=dict)  # its figures, when known
    ratios: dict[str, float] = field(default_factory=dict)  # against the baseline
    hardware: dict[str, str] = field(default_factory=dict)
    # layers left in float in an int8 file (``quant.fp_layers``), most int8-sensitive first
    float_layers: list[str] = field(default_factory=list)
    # how the trial was chosen: "--trial N", or the default pick under an accuracy rule
    chosen_by: str = ""
    # on test, at promotion (search.measure.intervals): the Wilson interval of the accuracy,
    # and against the baseline's file on the same test examples the paired delta in points
    # with its interval, the examples lost and gained and McNemar's p
    test_accuracy_ci: list[float] | None = None
    test_delta: dict[str, float] = field(default_factory=dict)
    # the same figures on validation, as the search recorded them
    validation: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        latency = self.latency
        protocol = (
            f"{latency['runtime']} on {latency['device']}, {latency['threads']} thread(s), "
            f"batch {latency['batch_size']}, {latency['warmup_runs']} warm-up calls, "
            f"{latency['repeats']} timed calls"
        )
        lines = [
            f"# {self.model_name}: study {self.study}, trial {self.trial}",
            "",
            *([f"- chosen by: {self.chosen_by}"] if self.chosen_by else []),
            f"- test accuracy: {self.test_accuracy:.4f}{_ci(self.test_accuracy_ci)} "
            f"(held-out test split, deployed file in {latency['runtime']}); validation "
            f"accuracy in the search: {self.validation_accuracy:.4f}"
            + _ci(_pair(self.validation, "accuracy_ci_low", "accuracy_ci_high")),
            *_delta_lines(self.test_delta, self.validation),
            f"- latency p50 {latency['p50_ms']:.4f} ms, p95 {latency['p95_ms']:.4f} ms, "
            f"p99 {latency['p99_ms']:.4f} ms, std {latency['std_ms']:.4f} ms "
            f"(budget {show_ms(self.latency_budget_ms)}); measured at promotion: {protocol}",
            f"- size {self.size_bytes / 1e6:.4f} MB"
            + (f", {self.macs / 1e6:.2f} M MACs (thop)" if self.macs else ""),
        ]
        if self.ratios:
            shown = ", ".join(f"{k} {v:.2f}x" for k, v in self.ratios.items())
            lines.append(f"- against the baseline (as measured in the search): {shown}")
        if self.float_layers:
            kept = ", ".join(f"`{name}`" for name in self.float_layers)
            lines.append(f"- layers kept in float32 (the rest int8): {kept}")
        lines += ["", "## Parameters", ""]
        lines += [f"- `{k}` = {v}" for k, v in sorted(self.params.items())]
        lines += ["", "## Hardware", ""]
        lines += [f"- {k}: {v}" for k, v in self.hardware.items()]
        lines += ["", f"MLflow run of the trial: {self.mlflow_run_id}"]
        return "\n".join(lines) + "\n"


def _pair(figures: dict[str, float], low: str, high: str) -> list[float] | None:
    return [figures[low], figures[high]] if low in figures and high in figures else None


def _ci(pair: list[float] | None) -> str:
    return "" if pair is None else f" (95% interval {show_interval(*pair)})"


def _delta_lines(test: dict[str, float], validation: dict[str, float]) -> list[str]:
    """The paired deltas against the baseline, on test and on validation, for the card."""
    lines = []
    for split, figures in (("test", test), ("validation", validation)):
        if "delta_points" not in figures:
            continue
        delta = show_delta(
            figures["delta_points"],
            figures["delta_ci_low_points"],
            figures["delta_ci_high_points"],
            decimals=2,
        )
        p = f", McNemar p {figures['mcnemar_p']:.3g}" if "mcnemar_p" in figures else ""
        lines.append(
            f"- against the baseline on {split}: {delta} points (95% interval, paired over the "
            f"same examples); {int(figures['examples_lost'])} examples lost, "
            f"{int(figures['examples_gained'])} gained{p}"
        )
    return lines


@dataclass(frozen=True)
class Promotion:
    """What ``promote`` did: the version, whether it is now champion, and why (not)."""

    model_name: str
    version: str
    card: PromotionCard
    champion: bool
    reason: str
    already: bool = False


def choose_trial(
    study: optuna.Study, number: int | None, *, rule: str | None = None
) -> optuna.trial.FrozenTrial:
    """``number``, or the default pick under ``rule`` (None: the study's ``--accuracy-rule``).

    ``point``: the most accurate feasible trial (ties to the faster). ``confident``: among
    the trials feasible by the lower end of their paired interval, the one whose lower end
    is highest (ties to the more accurate, then the faster): the candidate whose accuracy
    is most surely kept, rather than the luckiest reading. A rule other than the study's
    re-judges its trials from what they recorded (``feasible_under``).
    """
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if number is not None:
        for trial in done:
            if trial.number == number:
                return trial
        raise ConfigError(f"--trial {number}: study {study.study_name!r} has no completed trial")
    rule = rule or study_rule(study)
    if rule not in ACCURACY_RULES:
        raise ConfigError(f"--accuracy-rule {rule!r}: use one of {', '.join(ACCURACY_RULES)}")
    feasible = feasible_by(study, rule)
    if not feasible:
        budget = float(study.user_attrs.get("latency_budget_ms", float("nan")))
        nearest = nearest_trials(study, count=1)
        if not nearest:
            raise ConfigError(f"study {study.study_name!r} has no completed trial to promote")
        best = nearest[0]
        raise ConfigError(
            f"study {study.study_name!r} has no feasible trial: the nearest, trial "
            f"{best.number}, runs at p50 {best.values[1]:.4f} ms against the {show_ms(budget)} "
            f"budget with accuracy {best.values[0]:.4f}; run more trials or pass --trial N"
        )
    if rule == "confident":
        return max(feasible, key=lambda t: (_low(t), t.values[0], -t.values[1]))
    return min(feasible, key=lambda t: (-t.values[0], t.values[1]))


def _low(trial: optuna.trial.FrozenTrial) -> float:
    low = trial.user_attrs.get("delta_ci_low_points")
    return float("-inf") if low is None else float(low)


def chosen_by(study: optuna.Study, number: int | None, rule: str | None) -> str:
    """How ``choose_trial`` chose, in words, for the card and the command's output."""
    if number is not None:
        return f"--trial {number}"
    if (rule or study_rule(study)) == "confident":
        return (
            "default pick, accuracy rule confident: feasible by the lower end of the paired "
            "95% interval against the baseline on validation, the highest such lower end"
        )
    return "default pick, accuracy rule point: the most accurate feasible trial on validation"


def promote(
    study: optuna.Study,
    task: Task,
    *,
    storage_url: str,
    tracking_uri: str,
    trial_number: int | None,
    model_name: str | None,
    tolerance: float,
    force: bool,
    lock_dir: Path,
    export_dir: Path | None = None,
    rule: str | None = None,
) -> Promotion:
    """Re-validate, re-measure, register and (maybe) crown one trial; see the module doc.

    ``rule`` is the accuracy rule of the default pick (None: the study's own).
    """
    from mlflow import MlflowClient

    trial = choose_trial(study, trial_number, rule=rule)
    name = model_name or study.study_name
    client = MlflowClient(tracking_uri=tracking_uri)
    if study.user_attrs.get("task") not in (None, task.name):
        raise ConfigError(
            f"study {study.study_name!r} searched task {study.user_attrs['task']!r}, "
            f"not {task.name!r}: pass the same --task"
        )
    existing = _version_of(client, name, study.study_name, trial.number)
    with tempfile.TemporaryDirectory(prefix="search-promote-") as scratch:
        target = trial_target(study, trial.number, tracking_uri, Path(scratch))
        artifact = target.artifact
        if existing is not None:
            card = PromotionCard(**json.loads(existing.tags["card"]))
            if export_dir is not None:
                _export(artifact.path, card, export_dir)
            crowned = _is_champion(client, name, existing)
            reason = "already registered: nothing to do"
            return Promotion(name, str(existing.version), card, crowned, reason, already=True)
        if artifact.format != "onnx":
            raise ConfigError(
                f"trial {trial.number}: only ONNX files are registered so far; this study "
                f"ran in {study.user_attrs.get('runtime')}"
            )
        settings = _protocol(study)
        test_accuracy, correct = _on_test(artifact, task, settings)
        test_figures = _test_figures(
            study, trial, task, correct, settings, tracking_uri, Path(scratch)
        )
        with measurement_lock(lock_dir, settings["device"]):
            latency = measure_latency(
                artifact,
                task.example_inputs(int(study.user_attrs.get("batch_size", 1))).numpy(),
                **settings,
            )
        card = _card(study, trial, name, artifact.size_bytes, test_accuracy, latency)
        card = replace(
            card,
            chosen_by=chosen_by(study, trial_number, rule),
            test_accuracy_ci=test_figures.pop("accuracy_ci", None),
            test_delta=test_figures,
        )
        version = _register(client, name, artifact.path, card, study.study_name, trial.number)
        client.set_registered_model_alias(name, CHALLENGER, version)
        crowned, reason = _judge(client, name, card, tolerance, force)
        if crowned:
            client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "champion_decision", reason)
        if export_dir is not None:
            _export(artifact.path, card, export_dir)
    return Promotion(name, version, card, crowned, reason)


def _on_test(
    artifact: Any, task: Task, settings: dict[str, Any]
) -> tuple[float, np.ndarray | None]:
    """The file's test metric, and from the same outputs which examples it gets right."""
    outputs, targets = predict(artifact, task.data("test"), **settings)
    metric = task.metric(outputs, targets)
    return metric, per_example_correct(outputs, targets, metric)


def _test_figures(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    task: Task,
    correct: np.ndarray | None,
    settings: dict[str, Any],
    tracking_uri: str,
    scratch: Path,
) -> dict[str, Any]:
    """The test accuracy's interval and the paired delta against the baseline's file on
    the same test examples (the baseline's file evaluated here: the search never read
    the test split). Empty where the metric is not top-1 accuracy."""
    if correct is None:
        return {}
    base = baseline_trial(study)
    base_correct = None
    if base is not None and base.number != trial.number:
        base_file = trial_target(study, base.number, tracking_uri, scratch / "baseline")
        base_correct = _on_test(base_file.artifact, task, settings)[1]
    elif base is not None:
        base_correct = correct
    figures: dict[str, Any] = accuracy_figures(correct, base_correct).as_dict()
    figures["accuracy_ci"] = [figures.pop("accuracy_ci_low"), figures.pop("accuracy_ci_high")]
    return figures


def _protocol(study: optuna.Study) -> dict[str, Any]:
    return {
        "runtime": str(study.user_attrs.get("runtime", "onnxruntime")),
        "device": str(study.user_attrs.get("device", "cpu")),
        "threads": int(study.user_attrs.get("threads", 1)),
    }


def _card(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    name: str,
    size_bytes: int,
    test_accuracy: float,
    latency: LatencyStats,
) -> PromotionCard:
    base = baseline_trial(study)
    baseline, ratios = {}, {}
    if base is not None:
        baseline = {"accuracy": base.values[0], "latency_p50_ms": base.values[1],
                    "size_mb": base.values[2]}  # fmt: skip
        ratios = {
            "faster (p50, search figures)": base.values[1] / trial.values[1],
            "smaller": base.values[2] * 1e6 / size_bytes,
        }
        if base.user_attrs.get("macs") and trial.user_attrs.get("macs"):
            ratios["fewer MACs"] = base.user_attrs["macs"] / trial.user_attrs["macs"]
    return PromotionCard(
        model_name=name,
        study=study.study_name,
        trial=trial.number,
        mlflow_run_id=str(trial.user_attrs.get("mlflow_run_id", "")),
        params={k: v for k, v in trial.params.items()},
        test_accuracy=test_accuracy,
        validation_accuracy=trial.values[0],
        latency=latency.as_dict(),
        latency_budget_ms=float(study.user_attrs.get("latency_budget_ms", float("nan"))),
        size_bytes=size_bytes,
        macs=trial.user_attrs.get("macs"),
        baseline=baseline,
        ratios=ratios,
        hardware=hardware_fingerprint(),
        float_layers=list(trial.user_attrs.get("float_layers", [])),
        validation={k: trial.user_attrs[k] for k in INTERVAL_KEYS if k in trial.user_attrs},
    )


def _register(
    client: Any, name: str, path: Path, card: PromotionCard, study: str, trial: int
) -> str:
    """The ONNX file as a new version of ``name``, logged in a promotion run of the study."""
    import mlflow
    import numpy as np
    import onnx
    import onnxruntime
    from mlflow.models import infer_signature

    from search.measure.onnx_runtime import onnxruntime_predictor

    experiment = client.get_experiment_by_name(study)
    run = client.create_run(
        experiment.experiment_id,
        run_name=f"promote t{trial:03d}",
        tags={"kind": "promotion", STUDY_TAG: study, "promoted_trial": str(trial)},
    )
    mlflow.set_tracking_uri(client.tracking_uri)
    model = onnx.load(str(path))
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    example = np.zeros(shape, dtype=np.float32)
    signature = infer_signature(example, onnxruntime_predictor(path).run(example))
    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_dict(card.as_dict(), "card.json")
        mlflow.log_text(card.markdown(), "card.md")
        info = mlflow.onnx.log_model(
            model,
            name="model",
            onnx_execution_providers=["CPUExecutionProvider"],
            save_as_external_data=False,
            signature=signature,
            pip_requirements=[
                f"onnxruntime=={onnxruntime.__version__}",
                f"onnx=={onnx.__version__}",
            ],
        )
    version = mlflow.register_model(info.model_uri, name).version
    client.update_model_version(name, version, description=card.markdown())
    tags = {
        "search.study": study,
        "search.trial": str(trial),
        "test_accuracy": f"{card.test_accuracy:.6f}",
        "latency_p50_ms": f"{card.latency['p50_ms']:.6f}",
        "card": json.dumps(card.as_dict()),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_terminated(run.info.run_id)
    return str(version)


def _judge(
    client: Any, name: str, card: PromotionCard, tolerance: float, force: bool
) -> tuple[bool, str]:
    """Whether the new version becomes champion, and the reason in words with figures."""
    p50, budget = card.latency["p50_ms"], card.latency_budget_ms
    if force:
        return True, "forced"
    if p50 > budget:
        return False, (
            f"not champion: re-measured p50 {p50:.4f} ms is over the {show_ms(budget)} budget"
        )
    current = _champion(client, name)
    if current is None:
        return True, "first champion"
    current_accuracy = float(current.tags.get("test_accuracy", "nan"))
    if card.test_accuracy < current_accuracy - tolerance:
        return False, (
            f"not champion: test accuracy {card.test_accuracy:.4f} is below the champion's "
            f"(version {current.version}) {current_accuracy:.4f} minus the tolerance "
            f"{tolerance:g}"
        )
    return True, (
        f"champion: test accuracy {card.test_accuracy:.4f} against the previous champion's "
        f"{current_accuracy:.4f} (version {current.version}), p50 {p50:.4f} ms within "
        f"{show_ms(budget)}"
    )


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _is_champion(client: Any, name: str, version: Any) -> bool:
    current = _champion(client, name)
    return current is not None and str(current.version) == str(version.version)


def _version_of(client: Any, name: str, study: str, trial: int) -> Any | None:
    """The registered version of this study's trial, if it was promoted before."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for version in versions:
        tags = version.tags or {}
        if tags.get("search.study") == study and tags.get("search.trial") == str(trial):
            return version
    return None


def _export(model_path: Path, card: PromotionCard, folder: Path) -> None:
    """The model file and its card, for deployment outside MLflow."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, folder / f"model{model_path.suffix}")
    (folder / "card.json").write_text(json.dumps(card.as_dict(), indent=2))
    (folder / "card.md").write_text(card.markdown())
