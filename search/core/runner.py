"""The thin orchestration of one ``search run``: wire the parts together, in order.

config -> task -> study (resume or create, baseline enqueued) -> MLflow parent run
-> study.optimize(TrialObjective), here or in N worker processes (search.core.workers)
-> Pareto front -> artifacts on the parent run
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from torch import nn

from search.common import interrupt
from search.common.errors import ConfigError
from search.core.baseline_record import (
    BaselineRecord,
    baseline_digest,
    baseline_on_validation,
    record_path,
)
from search.core.config import SearchConfig, format_ms
from search.core.levers import (
    SpaceRow,
    check_levers_and_options,
    constrain_references,
    resolve,
    space_rows,
)
from search.core.objective import RunLink, TrialSettings, deploy_baseline
from search.core.recovery import failure_streak
from search.core.rungs import RungRule
from search.core.space import explore_space, reference_trials
from search.core.study import ANCHOR_P50_KEY, open_study, quiet_library_logs, stored_figures
from search.core.workers import (
    TrialContext,
    WorkerJob,
    run_trials,
    run_workers,
    torch_threads_per_worker,
    trial_shares,
)
from search.measure.artifact import Artifact
from search.measure.intervals import per_example_correct
from search.measure.latency import Anchor, hardware_fingerprint, measure_latency
from search.measure.runtimes import check_target, predict
from search.tasks.loader import build_model, load_task
from search.track.pareto import (
    FrontRow,
    nearest_trials,
    pareto_front,
    to_rows,
    write_csv,
    write_front_markdown,
    write_plots,
)
from search.track.study_plots import write_study_plots
from search.track.tracker import STUDY_TAG, Tracker, tracker_for
from search.track.trials import baseline_trial, is_feasible
from search.track.urls import redact_url
from search.train.task import Task
from techniques import TECHNIQUES, Context

TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


@dataclass(frozen=True)
class SearchResult:
    """What the CLI shows at the end; everything else is in Optuna and MLflow."""

    study_name: str
    experiment_id: str
    parent_run_id: str
    front: list[FrontRow]
    nearest: list[FrontRow]  # filled only when the front is empty
    baseline: FrontRow | None
    trials_run: int
    trials_failed: int
    tracking_uri: str
    latency_budget_ms: float  # as resolved (a relative budget becomes milliseconds)
    latency_budget_factor: float | None = None  # a relative budget's factor (0.5 for 0.5x)
    anchor_p50_ms: float | None = None  # the baseline's p50 of record, a relative budget's base
    objective: str = "latency"  # or throughput: the front shows items/s
    not_applicable: dict[str, str] = field(default_factory=dict)  # lever -> why
    stopped_by_failures: str | None = None  # why the run stopped early, if it did


def run_search(
    config: SearchConfig, *, task: Task | None = None, on_trial: TrialCallback | None = None
) -> SearchResult:
    """Run (or continue) the study described by ``config`` and log it to MLflow.

    The baseline's deployed file lives in a scratch folder for the whole run: it is the
    anchor every candidate is timed in turn with (``search.measure.latency.measure_anchored``).
    """
    with tempfile.TemporaryDirectory(prefix="search-base-") as scratch:
        return _run_search(config, task, on_trial, Path(scratch))


def _run_search(
    config: SearchConfig, task: Task | None, on_trial: TrialCallback | None, scratch: Path
) -> SearchResult:
    check_target(config.runtime, config.device)
    task = task or load_task(config.task, cache_dir=config.cache_dir)
    config.studies_dir.mkdir(parents=True, exist_ok=True)
    config.mlruns_dir.mkdir(parents=True, exist_ok=True)
    quiet_library_logs()

    prepared = prepare_space(config, task)  # a bad model or --fix fails before any write
    ctx, notes, fixed = prepared.ctx, prepared.not_applicable, prepared.fixed
    base_model = ctx.base_model
    base_artifact = deploy_baseline(base_model, task, scratch, config.runtime)
    record = _baseline_record(config, task, base_model, base_artifact)
    baseline_accuracy = record.metric
    stored = stored_figures(config, task.name)
    measured: dict[str, float] = {}
    if config.latency_anchor or config.latency_budget_factor is not None:
        measured[ANCHOR_P50_KEY] = _anchor_p50_ms(config, task, base_artifact, stored)
    if config.latency_budget_factor is not None:
        budget_ms = config.latency_budget_factor * measured[ANCHOR_P50_KEY]
        config = replace(config, latency_budget_ms=stored.get("latency_budget_ms", budget_ms))
    references = constrain_references(reference_trials(ctx), fixed, config.levers.off)
    if not config.references:  # the baseline stays: every ratio is against it
        references = references[:1]
    study = open_study(config, task.name, references, fixed, measured=measured)
    anchor = None
    if config.latency_anchor:  # another process may have kept its figure a moment ago
        anchor = Anchor(base_artifact, float(study.user_attrs[ANCHOR_P50_KEY]))
    tracker = tracker_for(config)
    experiment_id = tracker.experiment_id(study.study_name)
    # Enqueued reference trials are WAITING, not yet run: count only finished ones.
    trials_before = sum(t.state.is_finished() for t in study.trials)
    parent_run_id = tracker.start_run(
        experiment_id,
        name=f"{study.study_name} +{trials_before}",
        tags={STUDY_TAG: study.study_name, "kind": "search"},
    )
    tracker.log(
        parent_run_id,
        params={
            **{k: v for k, v in asdict(config).items() if k not in ("home", "storage", "levers")},
            **config.levers.describe(),
            "storage": redact_url(config.storage_url),
            "tracking_uri": redact_url(config.mlflow_uri),
            "latency_budget": format_ms(config.latency_budget_ms),
            "study_name": study.study_name,
            "trials_before": trials_before,
        },
        tags={
            **{f"hardware.{k}": v for k, v in hardware_fingerprint().items()},
            **{f"not_applicable.{name}": why for name, why in notes.items()},
        },
    )
    status = "FAILED"
    try:
        tracker.log(parent_run_id, metrics={"baseline_accuracy": baseline_accuracy})
        settings = trial_settings(
            config,
            prepared,
            budget_ms=config.latency_budget_ms,
            accuracy_floor=baseline_accuracy - config.max_accuracy_drop,
            anchor=anchor,
            baseline_correct=record.correct,
        )
        if config.workers == 1:
            link = RunLink(tracker, experiment_id, parent_run_id, study.study_name)
            run_trials(
                study,
                TrialContext(task, base_model, settings, link),
                config,
                trials=config.trials,
                callbacks=[on_trial] if on_trial else None,
            )
        else:
            shares = trial_shares(config.trials, config.workers)
            threads = torch_threads_per_worker(config.workers)
            jobs = [
                WorkerJob(
                    config=config,
                    settings=replace(settings, eval_threads=threads),
                    study_name=study.study_name,
                    experiment_id=experiment_id,
                    parent_run_id=parent_run_id,
                    fixed=dict(fixed),
                    index=index,
                    trials=share,
                    torch_threads=threads,
                )
                for index, share in enumerate(shares)
                if share != 0
            ]
            run_workers(jobs, study, on_trial)
        interrupt.raise_if_interrupted()  # one swallowed after the last trial's last phase
        status = "FINISHED"
    except KeyboardInterrupt:
        interrupt.delivered()  # the summary and the run's closing below must not see it again
        status = "KILLED"
        raise
    finally:
        result = _summarise(study, tracker, experiment_id, parent_run_id, trials_before, config)
        tracker.end_run(parent_run_id, status)
    return replace(result, not_applicable=notes)


@dataclass(frozen=True)
class PreparedSpace:
    """The trained model in a context, and the space the user's lever settings leave."""

    ctx: Context
    not_applicable: dict[str, str]  # lever -> why it cannot act on this model
    space: dict[str, Any]  # every parameter name -> its Optuna distribution
    fixed: dict[str, Any]  # parameter -> value pinned by --off / --fix


def prepare_space(config: SearchConfig, task: Task) -> PreparedSpace:
    """Build the model, find which levers apply and the space, check the lever settings."""
    check_levers_and_options(config.levers)
    base_model = build_model(task, config.task)
    ctx = Context(
        task=task,
        device=config.device,
        workdir=config.studies_dir,
        base_model=base_model,
        seed=config.seed,
        options=config.levers.options(),
        runtime=config.runtime,
        layer_caps=sensitivity_caps(config, base_model),
        threads=config.threads,
    )
    notes = not_applicable(ctx)
    space = explore_space(ctx)
    return PreparedSpace(ctx, notes, space, resolve(config.levers, ctx, space))


def trial_settings(
    config: SearchConfig,
    prepared: PreparedSpace,
    *,
    budget_ms: float,
    accuracy_floor: float,
    latency_first: bool | None = None,
    early_stop: bool = True,
    anchor: Anchor | None = None,
    baseline_correct: np.ndarray | None = None,
) -> TrialSettings:
    """What every trial of this invocation needs to know, from the config and the space.

    ``early_stop=False`` keeps successive halving off whatever the config says (a one-shot
    command makes the model the user asked for).
    """
    return TrialSettings(
        latency_budget_ms=budget_ms,
        accuracy_floor=accuracy_floor,
        latency_first=config.latency_first if latency_first is None else latency_first,
        lock_dir=config.studies_dir / "locks",
        cache_dir=config.cache_dir,
        device=config.device,
        threads=config.threads,
        batch_size=config.batch_size,
        finetune_epochs=config.finetune_epochs,
        seed=config.seed,
        space_names=tuple(prepared.space),
        options=prepared.ctx.options,
        runtime=config.runtime,
        layer_caps=prepared.ctx.layer_caps,
        fixed_names=frozenset(prepared.fixed),
        anchor=anchor,
        accuracy_rule=config.accuracy_rule,
        baseline_correct=baseline_correct,
        rungs=rung_rule(config) if early_stop else None,
    )


def rung_rule(config: SearchConfig) -> RungRule | None:
    """Successive halving as the config asks for it; None when off."""
    if config.early_stop == "off":
        return None
    return RungRule(
        epochs=config.rungs,
        margin=config.rung_margin,
        keep_fraction=config.rung_keep_fraction,
        shadow=config.early_stop == "shadow",
    )


def sensitivity_caps(config: SearchConfig, model: nn.Module) -> dict[str, float]:
    """Per-layer pruning caps from ``--use-sensitivity`` (none without it), checked
    against the model: a file made for another model names layers this one lacks."""
    if config.sensitivity is None:
        return {}
    from search.core.sensitivity import layer_caps, load_sensitivity

    caps = layer_caps(load_sensitivity(Path(config.sensitivity)), config.sensitivity_tolerance)
    names = {name for name, _ in model.named_modules()}
    strangers = sorted(set(caps) - names)
    if strangers:
        raise ConfigError(
            f"--use-sensitivity {config.sensitivity}: it names layers this model lacks "
            f"({', '.join(strangers[:3])}); run `search sensitivity` on this --task"
        )
    return caps


def search_space(config: SearchConfig, task: Task) -> tuple[list[SpaceRow], dict[str, str]]:
    """What ``search space`` prints: the effective space and the levers that do not apply."""
    prepared = prepare_space(config, task)
    rows = space_rows(prepared.ctx, prepared.space, prepared.fixed, config.levers.off)
    return rows, prepared.not_applicable


def _baseline_record(
    config: SearchConfig, task: Task, base_model: nn.Module, base_artifact: Artifact
) -> BaselineRecord:
    """The baseline file's validation metric and per-example right/wrong: the study's
    record, or measured now (once per study) exactly as a trial measures its file.

    ``--accuracy-rule confident`` needs the per-example record; a task whose metric is not
    top-1 accuracy has none, and is refused here, before the study is opened.
    """

    def measure() -> tuple[float, np.ndarray | None]:
        outputs, targets = predict(
            base_artifact,
            task.data("val"),
            runtime=config.runtime,
            device=config.device,
            threads=os.cpu_count() or 1,
            batch_size=config.batch_size,
        )
        metric = task.metric(outputs, targets)
        return metric, per_example_correct(outputs, targets, metric)

    path = record_path(config.studies_dir, config.resolved_study_name(task.name))
    digest = baseline_digest(base_model, runtime=config.runtime, device=config.device)
    record = baseline_on_validation(path, digest, measure)
    if config.accuracy_rule == "confident" and record.correct is None:
        raise ConfigError(
            f"--accuracy-rule confident: task {task.name!r}'s metric is not top-1 accuracy, "
            "so there is no per-example right or wrong to pair with the baseline; use "
            "--accuracy-rule point"
        )
    return record


def _anchor_p50_ms(
    config: SearchConfig, task: Task, base_artifact: Artifact, stored: Mapping[str, float]
) -> float:
    """The baseline's p50 of record: the study's, the config's, or measured here now.

    A relative budget is a factor of this figure, and anchored latencies are scaled to
    it, so within a study a candidate's ratio to the baseline is its measured ratio.
    """
    if ANCHOR_P50_KEY in stored:
        return stored[ANCHOR_P50_KEY]
    if config.anchor_p50_ms is not None:
        return config.anchor_p50_ms
    baseline = measure_latency(
        base_artifact,
        task.example_inputs(config.batch_size).numpy(),
        runtime=config.runtime,
        device=config.device,
        threads=config.threads,
    )
    return baseline.p50_ms


def _recorded_config(config: SearchConfig) -> dict[str, Any]:
    """The run's configuration as the parent run keeps it (storage password masked)."""
    recorded = {k: v for k, v in asdict(config).items() if k not in ("home", "levers")}
    recorded["storage"] = redact_url(config.storage_url)
    recorded["tracking_uri"] = redact_url(config.mlflow_uri)
    recorded["levers"] = config.levers.describe()
    return recorded


def not_applicable(ctx: Context) -> dict[str, str]:
    """Levers that cannot act on this model, with the reason: reported once per run."""
    notes = {}
    for name, technique in TECHNIQUES.items():
        reason = technique.applicability(ctx)
        if reason is not None:
            notes[name] = reason
    return notes


def _summarise(
    study: optuna.Study,
    tracker: Tracker,
    experiment_id: str,
    parent_run_id: str,
    trials_before: int,
    config: SearchConfig,
) -> SearchResult:
    """Write the front to the parent run and tag every trial run on or off the front."""
    front_trials = pareto_front(study)
    front = to_rows(study, front_trials)
    nearest = [] if front else to_rows(study, nearest_trials(study))
    base = baseline_trial(study)
    new_trials = [t for t in study.trials if t.state.is_finished()][trials_before:]
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in new_trials)
    with tempfile.TemporaryDirectory(prefix="search-pareto-") as scratch:
        folder = Path(scratch)
        write_csv(front, folder / "pareto.csv")
        has_values = any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        files = [
            folder / "pareto.csv",
            *(
                write_plots(study, folder, budget_ms=config.latency_budget_ms)
                if has_values
                else []
            ),
        ]
        if has_values:
            plots, skipped = write_study_plots(study, folder)
            files += plots
            for name, why in skipped.items():
                tracker.set_tag(parent_run_id, f"plot_skipped.{name}", why)
        files.append(write_front_markdown(front, folder / "front.md", config.latency_budget_ms))
        config_file = folder / "config.json"
        config_file.write_text(json.dumps(_recorded_config(config), indent=2, default=str))
        files.append(config_file)
        for path in files:
            tracker.log_artifact(parent_run_id, path)
    on_front = {t.number for t in front_trials}
    # Re-tag only runs whose membership may have changed: this invocation's trials and the
    # previous front. A long study on a remote server would otherwise pay a request per trial.
    previous = set(study.user_attrs.get("front_trials", []))
    new_numbers = {t.number for t in new_trials}
    for trial in study.trials:
        run_id = trial.user_attrs.get("mlflow_run_id")
        touched = trial.number in new_numbers or trial.number in previous | on_front
        if run_id and touched and trial.state == optuna.trial.TrialState.COMPLETE:
            tracker.set_tag(run_id, "on_front", trial.number in on_front)
    study.set_user_attr("front_trials", sorted(on_front))
    tracker.log(
        parent_run_id,
        metrics={
            "trials_total": len(study.trials),
            "trials_run": len(new_trials),
            "trials_failed": failed,
            "trials_feasible": sum(is_feasible(t) for t in study.trials),
            "front_size": len(front),
        },
        tags={"front_trials": ",".join(str(n) for n in sorted(on_front))},
    )
    streak, last_reason = failure_streak(new_trials)
    stopped = (
        f"stopped after {streak} failed trials in a row (--max-failures "
        f"{config.max_failures}); the last: {last_reason}"
        if streak >= config.max_failures
        else None
    )
    return SearchResult(
        stopped_by_failures=stopped,
        study_name=study.study_name,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        front=front,
        nearest=nearest,
        baseline=to_rows(study, [base])[0] if base else None,
        trials_run=len(new_trials),
        trials_failed=failed,
        tracking_uri=config.mlflow_uri,
        latency_budget_ms=config.latency_budget_ms,
        latency_budget_factor=config.latency_budget_factor,
        anchor_p50_ms=study.user_attrs.get(ANCHOR_P50_KEY),
        objective=config.objective,
    )
