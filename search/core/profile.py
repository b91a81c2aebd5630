"""``search profile``: what a deployed model costs, measured the way the search measures it.

Targets are the task's uncompressed baseline (``baseline``), a model file (``.onnx`` or a
``torch.export`` ``.pt2``), or a trial of a study (``trial:N``, its model file fetched from
MLflow). For each: file size, parameters, MACs (thop, where the PyTorch model is at hand;
a trial's recorded figure), and latency percentiles, peak memory and throughput at several
batch sizes, with the search's protocol and under its measurement lock. A file runs in the
runtime its format belongs to; the baseline is exported for ``--runtime``. Several targets
are put side by side with ratios against the first, the comparison table a user would
otherwise write by hand.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from search.common.errors import ConfigError
from search.measure.artifact import Artifact
from search.measure.latency import LatencyStats, measure_latency, measurement_lock
from search.measure.runtimes import ONNXRUNTIME, TORCH
from search.train.task import Task


@dataclass(frozen=True)
class Target:
    """A model file to profile, with the counts known about it."""

    name: str
    artifact: Artifact
    params: int | None = None
    macs: int | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    path: str
    size_bytes: int
    params: int | None
    macs: int | None
    latency: dict[int, LatencyStats] = field(default_factory=dict)  # batch size -> stats

    def throughput(self, batch: int) -> float:
        """Samples per second at ``batch``, from the median call."""
        return batch / (self.latency[batch].p50_ms / 1e3)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "size_bytes": self.size_bytes,
            "params": self.params,
            "macs": self.macs,
            "latency": {
                str(batch): {**stats.as_dict(), "throughput_per_s": self.throughput(batch)}
                for batch, stats in self.latency.items()
            },
        }


def profile(
    target: Target,
    task: Task,
    *,
    batch_sizes: tuple[int, ...],
    threads: int,
    device: str,
    runtime: str,
    lock_dir: Path,
) -> Profile:
    """Measure ``target`` at every batch size, one measurement at a time on this machine."""
    latency = {}
    for batch in batch_sizes:
        inputs = np.ascontiguousarray(task.example_inputs(batch).numpy())
        with measurement_lock(lock_dir, device):
            latency[batch] = measure_latency(
                target.artifact,
                inputs,
                runtime=runtime_for(target.artifact, runtime),
                device=device,
                threads=threads,
            )
    return Profile(
        name=target.name,
        path=str(target.artifact.path),
        size_bytes=target.artifact.size_bytes,
        params=target.params,
        macs=target.macs,
        latency=latency,
    )


def runtime_for(artifact: Artifact, requested: str) -> str:
    """An ONNX file runs in ONNX Runtime; a PyTorch program in the requested PyTorch mode."""
    if artifact.format == "onnx":
        return ONNXRUNTIME
    return TORCH if requested == ONNXRUNTIME else requested


def baseline_target(task: Task, folder: Path, runtime: str) -> Target:
    """The task's trained model, exported exactly as a search exports its baseline."""
    from search.core.objective import count_macs_and_params, deploy_baseline

    model = task.build_model().eval()
    macs, params = count_macs_and_params(model, task.example_inputs(1))
    artifact = deploy_baseline(model, task, folder, runtime)
    return Target("baseline", artifact, params=params, macs=macs)


def file_target(path: Path) -> Target:
    """A model file; parameters counted from its weights, MACs unknown."""
    import onnx

    if not path.is_file():
        raise ConfigError(f"{path}: no such model file")
    if path.suffix == ".pt2":
        return Target(path.name, Artifact(path, "torch"), params=_program_params(path))
    try:
        model = onnx.load(str(path))
    except Exception as error:
        raise ConfigError(f"{path}: not an ONNX model: {error}") from None
    params = sum(int(np.prod(init.dims)) for init in model.graph.initializer)
    return Target(path.name, Artifact(path, "onnx"), params=params)


def _program_params(path: Path) -> int:
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as error:
        raise ConfigError(f"{path}: not a torch.export program: {error}") from None
    return sum(int(t.numel()) for t in program.state_dict.values())


def trial_target(study: optuna.Study, number: int, tracking_uri: str, folder: Path) -> Target:
    """Trial ``number``'s deployed file, from the MLflow run the trial points at."""
    import os

    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    study_name = study.study_name
    trials = {t.number: t for t in study.trials}
    trial = trials.get(number)
    if trial is None or trial.state != optuna.trial.TrialState.COMPLETE:
        raise ConfigError(f"trial:{number}: study {study_name!r} has no completed trial {number}")
    run_id = trial.user_attrs.get("mlflow_run_id")
    source = trial.user_attrs.get("duplicate_of")
    if source is not None:
        run_id = trials[source].user_attrs.get("mlflow_run_id")
    client = MlflowClient(tracking_uri=tracking_uri)
    downloaded = Path(client.download_artifacts(str(run_id), "model", str(folder / str(number))))
    files = sorted([*downloaded.glob("*.onnx"), *downloaded.glob("*.pt2")])
    if not files:
        raise ConfigError(f"trial:{number}: its MLflow run {run_id} has no model file")
    return Target(
        f"trial {number}",
        Artifact(files[0], str(trial.user_attrs.get("scheme", "onnx"))),
        params=trial.user_attrs.get("params"),
        macs=trial.user_attrs.get("macs"),
    )


def resolve_targets(
    specs: list[str],
    task: Task,
    *,
    storage_url: str,
    tracking_uri: str,
    study_name: str | None,
    folder: Path,
    runtime: str = ONNXRUNTIME,
) -> list[Target]:
    """``baseline``, ``trial:N`` or a path to a model file, in the order given."""
    targets = []
    study: optuna.Study | None = None
    for spec in specs:
        if spec == "baseline":
            targets.append(baseline_target(task, folder / "baseline", runtime))
        elif spec.startswith("trial:"):
            number = spec.partition(":")[2]
            if not number.isdigit():
                raise ConfigError(f"{spec}: write trial:N with N a trial number, e.g. trial:3")
            if study_name is None:
                raise ConfigError(f"{spec}: say which study with --study NAME")
            if study is None:  # loaded once, for every trial:N target
                from search.core.study import load_existing_study

                study = load_existing_study(storage_url, study_name)
            targets.append(trial_target(study, int(number), tracking_uri, folder))
        else:
            targets.append(file_target(Path(spec)))
    return targets


def profile_all(specs: list[str], task: Task, **kwargs: Any) -> list[Profile]:
    """Resolve and profile every target; files fetched into a temporary folder."""
    measure = {k: kwargs.pop(k) for k in ("batch_sizes", "threads", "device", "lock_dir")}
    runtime = kwargs.pop("runtime", ONNXRUNTIME)
    measure["runtime"] = runtime
    with tempfile.TemporaryDirectory(prefix="search-profile-") as scratch:
        targets = resolve_targets(specs, task, folder=Path(scratch), runtime=runtime, **kwargs)
        return [profile(target, task, **measure) for target in targets]
