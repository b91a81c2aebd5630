"""One technique, applied once with explicit settings: ``search prune | quantize | lowrank |
distill | share | shrink`` (``shrink``: elastic depth and input resolution), and ``search
finetune`` (a search's trial rebuilt with a longer fine-tune).

Not every job needs a search. A one-shot command is one trial of the search's own pipeline
(``search.core.objective.TrialObjective``) with its parameters fixed rather than sampled, so
there is no second implementation of any technique:

    input model (the task's trained model) -> exported and measured: "before"
    -> a one-trial Optuna study in memory, the trial enqueued with every lever off except
       this command's, at the given settings (the lever's reference for the rest)
    -> TrialObjective: technique, recovery fine-tune where it changes weights, export,
       number format, accuracy and latency of the deployed file: "after"
    -> one MLflow run (experiment ``one-shot``) with both, their ratios, the model file
    -> ``--output``: the deployed file copied where the user wants it

``search finetune --study S --trial N`` is the replay alone: the trial's parameters through
the same objective with ``--finetune-epochs`` (30 by default) instead of the search's short
recovery, its recorded model as "before". A search fine-tunes each candidate briefly, as a
proxy that ranks them; the chosen model deserves the full recovery before it ships.

Without ``--latency-budget`` the budget is the input model's own p50, so the run's
``feasible`` tag reads "no slower than the input and within the accuracy drop".
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from torch import nn

from search.common.errors import ConfigError
from search.core.config import SearchConfig
from search.core.levers import LeverSettings, resolve
from search.core.objective import (
    RunLink,
    TrialObjective,
    TrialSettings,
    count_macs_and_params,
    deploy_baseline,
)
from search.core.runner import PreparedSpace, prepare_space, trial_settings
from search.core.space import (
    baseline_params,
    explore_space,
    fine_tunes,
    replay_plan,
    training_techniques,
)
from search.core.study import quiet_library_logs
from search.measure.artifact import Artifact
from search.measure.compressibility import compressed_bytes, weight_sparsity
from search.measure.latency import (
    Anchor,
    LatencyStats,
    measure_candidate,
    measure_latency,
    measurement_lock,
)
from search.measure.runtimes import check_target, evaluate
from search.tasks.loader import load_task
from search.track.tracker import Tracker, tracker_for
from search.track.trials import BEFORE_FINE_TUNING, DEPLOYED, DIRECTIONS
from search.train.task import Task
from techniques import TECHNIQUES, Context

EXPERIMENT = "one-shot"
# lever options a command needs (unstructured pruning is not in the search by default)
COMMAND_OPTIONS: dict[str, dict[str, Any]] = {
    "prune --unstructured": {"sparse.searched": True},
    "share": {"share.searched": True},
}
_HINTS = {
    "prune": "give e.g. --ratio 0.5",
    "prune --unstructured": "give e.g. --ratio 0.8",
    "quantize": "give e.g. --scheme int8-static",
    "lowrank": "give e.g. --rank-ratio 0.25",
    "distill": "give e.g. --alpha 0.9",
    "share": "give e.g. --bits 5",
    "shrink": "give e.g. --depth 0.5 or --resolution 0.75",
}
# what a command applies when the user gives no setting and the lever has no reference
# (low-rank has none: in a search it is left to be found, but a one-shot needs a value)
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {"lowrank": {"lowrank.rank_ratio": 0.5}}
FINETUNE = "finetune"  # the command that only rebuilds a trial, fine-tuned longer
# Thirty epochs, three times the search's ten, as a final fine-tune usually is. Measured on
# digits, it is no sure gain: the picks of benchmarks/results/2026-12-02.md rebuilt with 30 read
# 0.9806, 0.9806, 0.9667 on test against 0.9778, 0.9750, 0.9833 as found (one retraining
# differs from the next by up to two points on the 360 test images).
FINETUNE_EPOCHS = 30
UNIFORM_EXPAND = "width.expand"  # one expand ratio for every group (``search distill``)
RATIO_STEP = 0.05  # the grid of prune.ratio and sparse.ratio in the search space
# command -> the lever it applies (its parameters are ``<lever>.<name>``)
COMMANDS: dict[str, str] = {
    "prune": "prune",
    "prune --unstructured": "sparse",
    "quantize": "quant",
    "lowrank": "lowrank",
    "distill": "distill",
    "share": "share",
    "shrink": "depth",  # and resolution: SHRINK_LEVERS
}
# ``search shrink``: the levers that change the network's shape; those given are applied,
# both at their references when none is
SHRINK_LEVERS = ("depth", "resolution")
# levers whose parameters are one per group of blocks, each standing alone: a group the
# user did not name keeps its trained setting rather than taking the reference's
PER_GROUP_LEVERS = ("width",)


@dataclass(frozen=True)
class Measured:
    """A deployed file's figures: validation and test metric, latency, size, MACs."""

    accuracy: float  # validation split, as trials report it
    test_accuracy: float
    p50_ms: float
    p95_ms: float
    size_bytes: int
    macs: int | None
    params: int | None
    compressed_bytes: int  # gzip -9 of the file
    sparsity: float  # share of zero weights in the file

    def metrics(self, prefix: str = "") -> dict[str, float]:
        figures = {
            "accuracy": self.accuracy,
            "test_accuracy": self.test_accuracy,
            "latency_p50_ms": self.p50_ms,
            "latency_p95_ms": self.p95_ms,
            "size_bytes": self.size_bytes,
            "compressed_bytes": self.compressed_bytes,
            "sparsity": self.sparsity,
            "macs": self.macs,
            "params": self.params,
        }
        return {f"{prefix}{k}": float(v) for k, v in figures.items() if v is not None}


@dataclass(frozen=True)
class OneShotResult:
    """What the command prints; the MLflow run holds the rest."""

    command: str
    label: str  # the technique's settings, e.g. prune0.50
    before: Measured
    after: Measured
    run_id: str
    experiment_id: str
    tracking_uri: str
    output: Path | None

    def ratios(self) -> dict[str, float]:
        """×faster, ×smaller, ×fewer MACs against the input, and the metric's change."""
        ratios = {
            "speedup": self.before.p50_ms / self.after.p50_ms,
            "size_ratio": self.before.size_bytes / self.after.size_bytes,
            "compressed_size_ratio": self.before.compressed_bytes / self.after.compressed_bytes,
            "accuracy_delta": self.after.accuracy - self.before.accuracy,
            "test_accuracy_delta": self.after.test_accuracy - self.before.test_accuracy,
        }
        if self.before.macs and self.after.macs:
            ratios["macs_ratio"] = self.before.macs / self.after.macs
        return ratios


def one_shot_params(
    command: str, given: dict[str, Any], ctx: Context, space: dict[str, Any]
) -> dict[str, Any]:
    """Every parameter of the trial: all levers off, this command's lever on.

    The lever's reference setting fills what ``given`` leaves out; ``given`` holds full
    parameter names (``prune.ratio``) and may set another lever's too where the command
    builds on one (``distill`` needs a student: ``width.*`` or ``prune.*``). Values are
    checked against the search's own space, so a one-shot accepts exactly what a search
    could have tried.
    """
    if command not in COMMANDS:
        known = ", ".join(COMMANDS)
        raise ConfigError(f"unknown one-shot command {command!r}: use one of {known}")
    lever = COMMANDS[command]
    given = dict(given)
    expand = given.pop(UNIFORM_EXPAND, None)
    defaults = baseline_params(ctx)
    for _, training in training_techniques():
        defaults.update(training.off_params(ctx))
    levers = [lever]
    if command == "shrink":
        levers = [n for n in SHRINK_LEVERS if any(k.startswith(f"{n}.") for k in given)]
        levers = levers or list(SHRINK_LEVERS)
    # the reference fills in every lever the command or the user's settings touch
    touched = dict.fromkeys([*levers, *(name.partition(".")[0] for name in given)])
    for name in touched:
        if name not in PER_GROUP_LEVERS:
            defaults.update(TECHNIQUES[name].reference_params(ctx) or {})
    defaults.update(COMMAND_DEFAULTS.get(command, {}))
    if expand is not None:
        for name, trained in TECHNIQUES["width"].off_params(ctx).items():
            defaults[name] = min(int(expand), int(trained))
    # defaults this model's space lacks (a lever that cannot apply) are dropped; the
    # user's own settings are checked, and refused with the reason
    params = {name: value for name, value in defaults.items() if name in space}
    params.update(given)
    fixed = resolve(LeverSettings(fixed=tuple(params.items())), ctx, space)
    chosen = {name: fixed[name] for name in params if name in fixed}
    plan = replay_plan(chosen, ctx)
    if command == "distill" and not fine_tunes(plan):
        raise ConfigError(
            "search distill needs a student smaller than the teacher: give --expand N "
            "(narrower inverted residual blocks) or --prune R (a share of channels removed)"
        )
    if all(plan[name] is None for name in levers):
        shown = ", ".join(f"{k}={v}" for k, v in chosen.items() if k.partition(".")[0] in levers)
        raise ConfigError(f"search {command}: {shown} leaves the technique off; {_HINTS[command]}")
    return chosen


def run_one_shot(
    config: SearchConfig,
    command: str,
    given: dict[str, Any],
    *,
    output: Path | None = None,
    task: Task | None = None,
    schedule: tuple[float, ...] = (),
    options: dict[str, Any] | None = None,
    from_trial: TrialRef | None = None,
) -> OneShotResult:
    """Apply ``command``'s technique once to the task's model, measure, log one MLflow run.

    ``config`` carries the target (device, runtime, threads, batch), the fine-tuning
    epochs, the seed and the stores. A relative latency budget (``latency_budget_factor``,
    1 when the user gave none) is a share of the input model's p50 measured here.

    ``schedule`` (pruning only): iterative pruning, one step per ratio, each a trial on the
    previous step's fine-tuned model, so fine-tuning runs between steps; the ratios are of
    the input model (0.5, 0.75, 0.9). The steps are child runs of one parent run, which
    holds the before/after comparison. ``options``: lever options (``distill.teacher``).

    ``from_trial``: start from a trial of a study instead of the task's model. The trial is
    rebuilt by replaying its parameters through the same objective (its own child run; the
    same seed gives the same fine-tuned weights), its deployed file is "before", and the
    technique is applied to the rebuilt model.
    """
    check_target(config.runtime, config.device)
    task = task or load_task(config.task, cache_dir=config.cache_dir)
    config.studies_dir.mkdir(parents=True, exist_ok=True)
    quiet_library_logs()
    chosen_options = tuple({**COMMAND_OPTIONS.get(command, {}), **(options or {})}.items())
    levers = LeverSettings(fixed=chosen_options)
    prepared = prepare_space(replace(config, levers=levers), task)
    if command == FINETUNE and from_trial is None:
        raise ConfigError("search finetune rebuilds a trial of a search: give --study and --trial")
    recorded = _recorded_trial(from_trial) if from_trial is not None else None
    replay = _trial_params(recorded, prepared) if recorded is not None else None
    if replay is None:  # settings checked before anything is written
        one_shot_params(command, given, prepared.ctx, prepared.space)
        schedule_steps(command, schedule)
    model = prepared.ctx.base_model
    tracker = tracker_for(config)
    experiment_id = tracker.experiment_id(EXPERIMENT)
    with tempfile.TemporaryDirectory(prefix="search-oneshot-") as scratch:
        folder = Path(scratch)
        base_artifact = deploy_baseline(model, task, folder / "input", config.runtime)
        macs, n_params = count_macs_and_params(model, task.example_inputs(1))
        before = _measure(base_artifact, task, config, macs=macs, params=n_params)
        factor = config.latency_budget_factor
        budget_ms = factor * before.p50_ms if factor is not None else config.latency_budget_ms
        settings = trial_settings(
            config,
            prepared,
            budget_ms=budget_ms,
            accuracy_floor=before.accuracy - config.max_accuracy_drop,
            latency_first=False,  # nothing to screen: the user asked for this model
            early_stop=False,  # nor to stop
            # the result timed in turn with the input file, scaled to its p50: "x faster"
            # is then their ratio in the same phases, not two moments of a busy machine
            anchor=Anchor(base_artifact, before.p50_ms) if config.latency_anchor else None,
        )
        parent = None
        if len(schedule) > 1 or from_trial is not None:
            what = f" schedule {','.join(f'{r:g}' for r in schedule)}" if schedule else ""
            source = f" on {from_trial.study} trial {from_trial.number}" if from_trial else ""
            parent = tracker.start_run(experiment_id, name=f"{command}{what}{source}")
        link = RunLink(tracker, experiment_id, parent, f"one-shot {command}")
        if command == FINETUNE:  # the trial as the search recorded it is "before"
            assert recorded is not None and replay is not None
            found = _downloaded_model(
                tracker, str(recorded.user_attrs["mlflow_run_id"]), folder / "recorded"
            )
            # timed here as the result will be (the study's figure is on its own scale)
            before = _measure(
                found, task, config, macs=recorded.user_attrs.get("macs"),
                params=recorded.user_attrs.get("params"),
                measured=_timed_as_a_trial(found, task, config, settings.anchor),
            )  # fmt: skip
        elif replay is not None:  # the trial rebuilt: what the technique starts from
            frozen, model = _trial(task, model, settings, link, replay, folder / "replay")
            before = _measure(
                _downloaded_model(tracker, str(frozen.user_attrs["mlflow_run_id"]),
                                  folder / "replayed"),
                task, config, macs=frozen.user_attrs.get("macs"),
                params=frozen.user_attrs.get("params"),
                measured=LatencyStats(**frozen.user_attrs["latency"]),
            )  # fmt: skip
            prepared = replace(
                prepared,
                ctx=replace(prepared.ctx, base_model=model),
                space=explore_space(replace(prepared.ctx, base_model=model)),
            )
            settings = replace(settings, space_names=tuple(prepared.space))
        if command == FINETUNE:  # one step: the trial's own parameters, fine-tuned longer
            assert replay is not None
            steps = [replay]
        else:
            steps = [
                one_shot_params(command, {**given, **step}, prepared.ctx, prepared.space)
                for step in schedule_steps(command, schedule)
            ] or [one_shot_params(command, given, prepared.ctx, prepared.space)]
        labels = []
        for index, params in enumerate(steps):
            frozen, model = _trial(task, model, settings, link, params, folder / f"step{index}")
            labels.append(str(frozen.user_attrs.get("run_name", "")).partition(" ")[2])
        run_id = str(frozen.user_attrs["mlflow_run_id"])
        deployed = _downloaded_model(tracker, run_id, folder / "deployed")
        after = _measure(
            deployed,
            task,
            config,
            macs=frozen.user_attrs.get("macs"),
            params=frozen.user_attrs.get("params"),
            measured=LatencyStats(**frozen.user_attrs["latency"]),
        )
        result = OneShotResult(
            command=command,
            label=" -> ".join(labels),
            before=before,
            after=after,
            run_id=parent or run_id,
            experiment_id=experiment_id,
            tracking_uri=config.mlflow_uri,
            output=_write_output(deployed, output) if output is not None else None,
        )
        logged = dict(chosen_options)
        if command == FINETUNE:  # what makes this run differ from the trial it rebuilds
            logged["finetune_epochs"] = config.finetune_epochs
        _log_comparison(tracker, result, budget_ms, logged)
        if parent is not None:
            tracker.log_artifact(parent, deployed.path, folder="model")
            tracker.end_run(parent)
    return result


@dataclass(frozen=True)
class TrialRef:
    """A trial of a study, to start a one-shot from: ``--study NAME --trial N``."""

    study: str
    number: int
    storage_url: str


def _recorded_trial(ref: TrialRef) -> optuna.trial.FrozenTrial:
    """The completed, deployed trial ``ref`` names; one line when there is no such trial."""
    try:
        study = optuna.load_study(study_name=ref.study, storage=ref.storage_url)
    except KeyError:
        raise ConfigError(f"--study {ref.study}: no such study in {ref.storage_url}") from None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    trial = trials.get(ref.number)
    if trial is None or trial.state != optuna.trial.TrialState.COMPLETE:
        raise ConfigError(f"--trial {ref.number}: study {ref.study!r} has no completed trial")
    kind = trial.user_attrs.get("accuracy_kind", DEPLOYED)
    if kind != DEPLOYED:
        why = "over the budget" if kind == BEFORE_FINE_TUNING else "hopeless at that rung"
        raise ConfigError(
            f"--trial {ref.number}: it {kind} ({why}), so there is no model to start from"
        )
    source = trial.user_attrs.get("duplicate_of")  # same parameters; the model is there
    return trials[int(source)] if source is not None and int(source) in trials else trial


def _trial_params(trial: optuna.trial.FrozenTrial, prepared: PreparedSpace) -> dict[str, Any]:
    """The trial's parameters, with the off setting for every lever it did not sample
    (levers the search left out), ready to replay."""
    params = baseline_params(prepared.ctx)
    for _, training in training_techniques():
        params.update(training.off_params(prepared.ctx))
    params = {name: value for name, value in params.items() if name in prepared.space}
    return {**params, **trial.params}


def schedule_steps(command: str, schedule: tuple[float, ...]) -> list[dict[str, float]]:
    """Each step's lever setting for ratios of the input model (iterative pruning).

    Unstructured: the ratio itself (the weights already zero rank lowest, so the next mask
    keeps them). Structured: the share of the remaining channels to cut, 1 - (1 - r_k) /
    (1 - r_(k-1)), on the lever's 0.05 grid, since each step removes channels for good.
    """
    if not schedule:
        return []
    if command not in ("prune", "prune --unstructured"):
        raise ConfigError(f"--schedule applies to search prune, not search {command}")
    if any(b <= a for a, b in zip((0.0, *schedule), schedule, strict=False)):
        raise ConfigError(
            f"--schedule {','.join(f'{r:g}' for r in schedule)}: ratios must rise, e.g. "
            "0.5,0.75,0.9"
        )
    if command == "prune --unstructured":
        return [{"sparse.ratio": _on_grid(ratio)} for ratio in schedule]
    steps, kept = [], 1.0
    for ratio in schedule:
        step = _on_grid(1 - (1 - ratio) / kept)
        steps.append({"prune.ratio": step})
        kept *= 1 - step
    return steps


def cubic_schedule(final: float, steps: int) -> tuple[float, ...]:
    """Gradual pruning's ratios (Zhu and Gupta, 2017): r_k = final (1 - (1 - k/n)^3),
    fast at first while the weights are redundant, slow at the end; on the 0.05 grid,
    repeats dropped."""
    if steps < 1:
        raise ConfigError(f"--gradual {steps}: give at least 1 step")
    ratios = [_on_grid(final * (1 - (1 - k / steps) ** 3)) for k in range(1, steps + 1)]
    return tuple(sorted({r for r in ratios if r > 0}))


def _on_grid(ratio: float) -> float:
    """The nearest ratio on the pruning levers' 0.05 grid."""
    return round(round(ratio / RATIO_STEP) * RATIO_STEP, 2)


def _trial(
    task: Task,
    model: nn.Module,
    settings: TrialSettings,
    link: RunLink,
    params: dict[str, Any],
    folder: Path,
) -> tuple[optuna.trial.FrozenTrial, nn.Module]:
    """One trial of the search's objective on ``model`` with ``params`` fixed: the trial
    as recorded, and the model it deployed (the next step's input)."""
    study = optuna.create_study(directions=list(DIRECTIONS), study_name=link.study_name)
    study.enqueue_trial(params)
    objective = TrialObjective(task, model, settings, link, folder)
    trial = study.ask()
    study.tell(trial, objective(trial))
    assert objective.last_model is not None
    return study.trials[-1], objective.last_model


def _measure(
    artifact: Artifact,
    task: Task,
    config: SearchConfig,
    *,
    macs: int | None,
    params: int | None,
    measured: LatencyStats | None = None,
) -> Measured:
    """The metric on both splits and the latency (``measured``: the trial's own figures)."""
    scores = [
        evaluate(
            artifact,
            task.data(split),
            task.metric,
            runtime=config.runtime,
            device=config.device,
            threads=os.cpu_count() or 1,
            batch_size=config.batch_size,
        )
        for split in ("val", "test")
    ]
    if measured is None:
        with measurement_lock(config.studies_dir / "locks", config.device):
            measured = measure_latency(
                artifact,
                task.example_inputs(config.batch_size).numpy(),
                runtime=config.runtime,
                device=config.device,
                threads=config.threads,
            )
    return Measured(
        accuracy=scores[0],
        test_accuracy=scores[1],
        p50_ms=measured.p50_ms,
        p95_ms=measured.p95_ms,
        size_bytes=artifact.size_bytes,
        macs=macs,
        params=params,
        compressed_bytes=compressed_bytes(artifact.path),
        sparsity=weight_sparsity(artifact.path),
    )


def _timed_as_a_trial(
    artifact: Artifact, task: Task, config: SearchConfig, anchor: Anchor | None
) -> LatencyStats:
    """``artifact``'s latency as the trial objective takes it, under the same lock."""
    inputs = task.example_inputs(config.batch_size).numpy()
    with measurement_lock(config.studies_dir / "locks", config.device):
        return measure_candidate(
            artifact, inputs, anchor, runtime=config.runtime, device=config.device,
            threads=config.threads,
        )  # fmt: skip


def _downloaded_model(tracker: Tracker, run_id: str, folder: Path) -> Artifact:
    """The trial's deployed file, as its MLflow run keeps it (the trial's folder is gone)."""
    folder.mkdir(parents=True, exist_ok=True)
    downloaded = Path(tracker.client.download_artifacts(run_id, "model", str(folder)))
    files = sorted([*downloaded.glob("*.onnx"), *downloaded.glob("*.pt2")])
    if not files:
        raise ConfigError(f"the one-shot run {run_id} logged no model file")
    scheme = tracker.client.get_run(run_id).data.tags.get("scheme", "fp32")
    return Artifact(files[0], scheme)


def _write_output(artifact: Artifact, output: Path) -> Path:
    """Copy the deployed file to ``output`` (a folder gets the file's own name)."""
    target = output / artifact.path.name if output.is_dir() else output
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(artifact.path, target)
    return target


def _log_comparison(
    tracker: Tracker, result: OneShotResult, budget_ms: float, options: dict[str, Any]
) -> None:
    """Before figures, ratios and the command on the trial's run (already closed by the
    objective; MLflow takes metrics on a finished run)."""
    tracker.log(
        result.run_id,
        params={
            "one_shot.command": result.command,
            "one_shot.budget_ms": budget_ms,
            **{f"one_shot.{name}": value for name, value in options.items()},
        },
        metrics={
            **result.before.metrics("before_"),
            "test_accuracy": result.after.test_accuracy,
            "compressed_bytes": result.after.compressed_bytes,
            "sparsity": result.after.sparsity,
            **result.ratios(),
        },
        tags={"kind": "one-shot", "one_shot.command": result.command},
    )
