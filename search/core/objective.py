"""One trial, start to end: the only place that knows the order of the techniques.

    sample params (each technique, define-by-run)
    -> model-stage techniques on a copy of the trained model (width, pruning, low-rank)
    -> recovery fine-tune, if any of them changed weights or the scheme is QAT
       (shaped by distillation, LoRA and QAT's fake quantization)
    -> export to ONNX -> artifact-stage techniques (fp16 / int8 quantization)
    -> accuracy on the validation split, latency, size: all of the deployed file
    -> constraint (latency budget), Optuna user attrs, MLflow child run

A failing trial records its reason in Optuna and MLflow and re-raises; the study's
``catch`` turns it into a FAILED trial and the search goes on.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import socket
import time
import traceback
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import optuna
import torch
from torch import nn

from search.common.errors import StudyError
from search.core.escalation import escalate_reference
from search.core.phases import PhaseClock
from search.core.rungs import RungRule, held_readings, judge, never_stopped, peer_readings
from search.core.sensitivity import int8_drops
from search.core.space import (
    apply_model_levers,
    artifact_techniques,
    every_parameter,
    fine_tunes,
    sample_plan,
    trained_model_key,
    training_techniques,
)
from search.measure.artifact import Artifact
from search.measure.intervals import accuracy_figures, per_example_correct
from search.measure.latency import (
    MIN_REPEATS,
    Anchor,
    LatencyStats,
    measure_candidate,
    measurement_lock,
)
from search.measure.onnx_runtime import compact_names
from search.measure.refill import Template, disagreement, refill, topology_key
from search.measure.runtimes import ONNXRUNTIME, export, formats, graph_signature
from search.measure.runtimes import predict as predict_file
from search.measure.template_store import FOLDER as TEMPLATE_FOLDER
from search.measure.template_store import Templates, TemplateStore
from search.track.curve import BufferedCurve
from search.track.tracker import STUDY_TAG, TRIAL_TAG, Tracker
from search.track.trials import (
    ACCURACY_CONSTRAINT_KEY,
    BEFORE_FINE_TUNING,
    CONSTRAINT_KEY,
    DEPLOYED,
    REFERENCE_TAGS,
    RUNG_ATTR,
    STOPPED_ATTR,
    WOULD_STOP_ATTR,
    accuracy_below_floor,
    is_stopped,
    stopped_kind,
)
from search.train.loop import Recipe, fit, predict, recovery_lr
from search.train.task import Task
from techniques import Context
from techniques.quantization import float_layers

MODEL_CACHE_SIZE = 4
REFILL_CHECK_INPUTS = 8  # examples a refilled file must agree with the model on
# how a draft's float file came from a graph another process or study exported
REFILLED_FROM_DISK = "refilled from the disk cache"
INT8_SENSITIVITY_KEY = "int8_sensitivity"  # study user attr: layer -> int8 drop (points)
UNFINISHED_VIOLATION = 1e-6  # accuracy constraint of a fine-tune stopped above the floor


@dataclass(frozen=True)
class TrialSettings:
    """The per-run settings a trial needs besides the task and the model."""

    latency_budget_ms: float
    accuracy_floor: float  # baseline metric minus the allowed drop
    device: str
    threads: int
    batch_size: int
    finetune_epochs: int
    seed: int
    latency_first: bool = True  # measure the draft before fine-tuning; stop if too slow
    lock_dir: Path = Path("studies/locks")  # this machine's cross-process measurement locks
    # where what outlives a study is kept (the int8 sensitivity of a model); None: nowhere
    cache_dir: Path | None = None
    space_names: tuple[str, ...] = ()  # every parameter name of the space, for the record
    options: Mapping[str, Any] = field(default_factory=dict)  # lever shape options
    runtime: str = ONNXRUNTIME  # what runs the deployed file (search.measure.runtimes)
    # threads for evaluation (accuracy only; latency uses ``threads``): this process's share
    eval_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    layer_caps: Mapping[str, float] = field(default_factory=dict)  # --use-sensitivity
    fixed_names: frozenset[str] = frozenset()  # parameters the user pinned (--fix / --off)
    # every candidate timed in turn with the baseline's file (``measure_anchored``); None:
    # timed alone (``--no-latency-anchor``)
    anchor: Anchor | None = None
    # successive halving over the fine-tune's epochs (``search.core.rungs``); None: off
    rungs: RungRule | None = None
    accuracy_rule: str = "point"  # how the accuracy floor reads a candidate (track/trials.py)
    # the baseline file's right/wrong per validation example (core/baseline_record.py), so a
    # trial's paired delta costs only its own evaluation; None: not top-1 accuracy
    baseline_correct: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Stopped:
    """A fine-tune that successive halving stopped at a rung."""

    epoch: int  # counted from 1
    accuracy: float  # the eager model's validation reading there


@dataclass(frozen=True)
class Deployed:
    """A file made by ``_deploy`` and how its float file came to be."""

    artifact: Artifact
    # "exported", or "refilled" from a graph already exported (search.measure.refill), by
    # this process or (REFILLED_FROM_DISK) another
    how: str


@dataclass(frozen=True)
class RunLink:
    """Where this invocation's trials are logged."""

    tracker: Tracker
    experiment_id: str
    parent_run_id: str | None  # None: each trial's run stands alone (a one-shot command)
    study_name: str


THOP_BUFFERS = ("total_ops", "total_params")


def count_macs_and_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """MACs and parameters as counted by thop, with ``model`` left as it was.

    thop adds two counting buffers and two forward hooks to every module, and takes them
    off again only from the modules it has a rule for, and only when the forward pass
    succeeds. What it leaves is taken off here, rather than counting on a deep copy: the
    copy cost twice the count on the built-in model, once per new shape in every study.
    """
    import thop

    modules = list(model.modules())
    was_training = model.training
    own_buffers = {id(m): set(m._buffers) & set(THOP_BUFFERS) for m in modules}
    own_hooks = {id(m): set(m._forward_hooks) for m in modules}
    try:
        macs, params = thop.profile(model, (example_inputs,), verbose=False)
    finally:
        model.train(was_training)
        for module in modules:
            for name in set(THOP_BUFFERS) - own_buffers[id(module)]:
                module._buffers.pop(name, None)
            for key in set(module._forward_hooks) - own_hooks[id(module)]:
                del module._forward_hooks[key]  # only where the forward pass raised
    return int(macs), int(params)


# A duplicate trial copies its original's figures, but not these: they are its own.
_OWN_ATTRS = frozenset(
    ("mlflow_run_id", "run_name", "baseline", "reference", "host", "pid", "phase_seconds",
     "trial_seconds")
)  # fmt: skip


class TrialObjective:
    """Callable for ``study.optimize``: returns (accuracy, latency p50 ms, size MB)."""

    def __init__(
        self,
        task: Task,
        base_model: nn.Module,
        settings: TrialSettings,
        link: RunLink,
        workdir: Path,
    ) -> None:
        self.task = task
        self.base_model = base_model
        self.settings = settings
        self.link = link
        self.workdir = workdir
        # model-stage key -> (trial number that fine-tuned it, model); see _fine_tuned
        self._models: OrderedDict[str, tuple[int, nn.Module]] = OrderedDict()
        self._macs: dict[str, tuple[int, int]] = {}  # layers and shapes -> MACs, params
        # topology -> an exported graph to refill, or why there is none; see _deploy
        self._templates = Templates(
            TemplateStore(settings.cache_dir / TEMPLATE_FOLDER) if settings.cache_dir else None
        )
        self._clock = PhaseClock()  # this trial's phases; a new one per trial
        self.last_model: nn.Module | None = None  # the model the last trial deployed
        self._sensitivity: dict[str, float] | None = None  # layer -> int8 drop, points

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        workdir = self.workdir / f"trial-{trial.number:04d}"
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = Context(
            task=self.task,
            device=self.settings.device,
            workdir=workdir,
            base_model=self.base_model,
            seed=self.settings.seed,
            options=self.settings.options,
            runtime=self.settings.runtime,
            layer_caps=self.settings.layer_caps,
            threads=self.settings.threads,
        )
        self._clock = PhaseClock()
        try:
            plan = sample_plan(trial, ctx)
            kept = getattr(plan.get("quant"), "fp_layers", 0)
            if kept:  # mixed precision ranks the layers by what int8 costs each alone
                ctx = replace(ctx, int8_sensitivity=self._int8_sensitivity(trial.study))
        except BaseException as error:  # before its MLflow run: the study keeps the reason
            trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}")
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        run_id = self.link.tracker.start_run(
            self.link.experiment_id,
            name=run_name(trial.number, plan),
            parent_run_id=self.link.parent_run_id,
            tags={
                TRIAL_TAG: str(trial.number),
                STUDY_TAG: self.link.study_name,
                "host": socket.gethostname(),
                # a reference trial, and the one it escalates, are findable in the MLflow UI
                **{k: str(trial.user_attrs[k]) for k in REFERENCE_TAGS if k in trial.user_attrs},
            },
        )
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("run_name", run_name(trial.number, plan))
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        levers = {f"lever.{n}": p.label if p is not None else "off" for n, p in plan.items()}
        listed = every_parameter(trial.params, plan, self.settings.space_names)
        if kept:
            in_float = list(float_layers(ctx, kept))
            trial.set_user_attr("float_layers", in_float)
            levers["quant.float_layers"] = ",".join(in_float)[:5000]
        self.link.tracker.log(run_id, params={**listed, **levers})
        duplicate = find_duplicate(trial)
        if duplicate is not None:
            return self._reuse(trial, duplicate, run_id)
        try:
            values = self._run(trial, plan, ctx, run_id)
            over_budget_ms = values[1] - self.settings.latency_budget_ms
            escalate_reference(
                trial,
                over_budget_ms,
                feasible=bool(trial.user_attrs.get("feasible")),
                fixed=self.settings.fixed_names,
                formats=formats(self.settings.runtime, self.settings.device),
            )
        except BaseException as error:
            reason = f"{type(error).__name__}: {error}"
            trial.set_user_attr("fail_reason", reason)
            status = "FAILED" if isinstance(error, Exception) else "KILLED"
            self.link.tracker.log(
                run_id,
                tags={"state": status, "failure_reason": reason[:5000], "feasible": False},
            )
            self.link.tracker.log_artifact_text(run_id, "traceback.txt", traceback.format_exc())
            self.link.tracker.end_run(run_id, status)
            raise
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        self.link.tracker.end_run(run_id)
        return values

    def _int8_sensitivity(self, study: optuna.Study) -> dict[str, float]:
        """Accuracy points each layer of the input model loses quantized alone (cached).

        Computed once per study, on the uncompressed model: the model levers keep layer
        names, so every candidate's layers are ranked by it. The study keeps it, so
        workers and a resumed search reuse it.
        """
        if self._sensitivity is None:
            known = study.user_attrs.get(INT8_SENSITIVITY_KEY)
            if known is None:
                with self._clock.phase("int8_sensitivity"):
                    known = int8_drops(
                        self.task,
                        self.base_model,
                        device=self.settings.device,
                        cache_dir=self.settings.cache_dir,
                    )
                study.set_user_attr(INT8_SENSITIVITY_KEY, known)
            self._sensitivity = {str(k): float(v) for k, v in known.items()}
        return self._sensitivity

    def _run(
        self, trial: optuna.Trial, plan: dict[str, Any], ctx: Context, run_id: str
    ) -> tuple[float, float, float]:
        """Architecture and number format first; fine-tune only what can meet the budget.

        The draft (model levers applied, not yet fine-tuned, then exported and converted)
        has the final file's graph, shapes and number format, so its latency is the final
        one. A draft over the budget ends the trial at once with that latency and the
        draft's own accuracy, labelled "before fine-tuning"; Optuna's pruning is not
        available to multi-objective studies, so the trial completes as infeasible and the
        sampler learns from it. Latency is measured once per graph signature per study.
        """
        started = time.perf_counter()
        key = trained_model_key(trial.params, plan)
        torch.manual_seed(self.settings.seed + zlib.crc32(key.encode()))
        with self._clock.phase("levers"):
            architecture = apply_model_levers(self.base_model, plan, ctx)
        # A draft that will be fine-tuned is only timed, never shipped: its number-format
        # conversion may calibrate on fewer samples (same graph, so the same latency).
        draft_ctx = replace(ctx, draft=True) if fine_tunes(plan) else ctx
        drafted = self._deploy(architecture, plan, draft_ctx, "draft")
        trial.set_user_attr("draft_file", drafted.how)
        draft = drafted.artifact
        # The baseline is every ratio's reference: always a full measurement, never screened.
        screen = self.settings.latency_first and not trial.user_attrs.get("baseline")
        latency = self._latency(trial, draft, screen=screen)
        if not fine_tunes(plan):  # nothing to fine-tune: the draft is the deployed file
            return self._record(trial, run_id, architecture, draft, latency, started)
        if self.settings.latency_first and latency.p50_ms > self.settings.latency_budget_ms:
            return self._record(
                trial, run_id, architecture, draft, latency, started, kind=BEFORE_FINE_TUNING
            )
        model, stopped = self._fine_tuned(trial, plan, ctx, run_id, architecture, key)
        if stopped is not None:  # hopeless at a rung: the draft has its graph, size, latency
            return self._record(
                trial, run_id, model, draft, latency, started,
                kind=stopped_kind(stopped.epoch), accuracy=stopped.accuracy,
            )  # fmt: skip
        deployed = self._deploy(model, plan, ctx, "final")
        trial.set_user_attr("final_file", deployed.how)
        latency = self._latency(trial, deployed.artifact, screen=False)
        return self._record(trial, run_id, model, deployed.artifact, latency, started)

    def _deploy(self, model: nn.Module, plan: dict[str, Any], ctx: Context, kind: str) -> Deployed:
        """Export ``model`` and apply the artifact levers: the file that would ship.

        The float ONNX file is refilled rather than exported where a graph of the same
        topology was exported before (the draft, for its fine-tuned final; another width or
        weights of one network, for a draft), in this process or, through the disk cache
        (``search.measure.template_store``), another study's, and ONNX Runtime then
        computes what ``model`` computes; every export leaves its graph for the next.
        """
        example = self.task.example_inputs(1)
        with self._clock.phase("convert"):  # int8 repairs on the model (equalize, bias)
            for name, technique in artifact_techniques():
                if plan[name] is not None:
                    model = technique.before_export(model, plan[name], ctx)
        with self._clock.phase("export"):
            path = ctx.workdir / kind / "model"
            onnx_file = self.settings.runtime == ONNXRUNTIME
            topology = topology_key(model) if onnx_file else ""
            template, from_disk = (
                self._templates.find(topology, example) if onnx_file else (None, False)
            )
            artifact, how = self._refilled(template, model, path)
            if artifact is not None and from_disk:
                how = REFILLED_FROM_DISK
            if artifact is None:
                artifact = export(self.settings.runtime, model, example, path)
                if onnx_file:
                    self._templates.keep(topology, model, artifact.path.read_bytes(), example)
        with self._clock.phase("convert"):
            for name, technique in artifact_techniques():
                if plan[name] is not None:
                    artifact = technique.apply(artifact, plan[name], ctx)
        with self._clock.phase("export"):
            return Deployed(compact_names(artifact), how)

    def _refilled(
        self, template: Template | str | None, model: nn.Module, path: Path
    ) -> tuple[Artifact | None, str]:
        """``template`` refilled with ``model``'s weights and checked, or None and why not."""
        if template is None:
            return None, "exported"
        if isinstance(template, str):
            return None, f"exported: {template}"
        artifact, why = refill(template, model, path.with_suffix(".onnx"))
        if artifact is not None:
            why = disagreement(artifact, model, self.task.example_inputs(REFILL_CHECK_INPUTS))
            if not why:
                return artifact, "refilled"
        return None, f"exported: {why}"

    def _latency(self, trial: optuna.Trial, artifact: Artifact, *, screen: bool) -> LatencyStats:
        """The latency of ``artifact``'s graph: from the study if known, else measured.

        Known means recorded on this trial already (the final file has its draft's graph)
        or on a completed trial; the study is the only record, so a resumed study knows
        what it measured. With ``screen``, a clearly-too-slow graph is timed only briefly
        (``stop_above_ms``); such a figure is reused for screening, never as a full one.
        """
        signature = graph_signature(artifact)
        own = recorded_latency(trial.user_attrs, signature)
        known = own or known_latency(trial.study, signature)
        trial.set_user_attr("latency_signature", signature)
        if known is not None and (screen or known.repeats >= MIN_REPEATS):
            trial.set_user_attr("latency", known.as_dict())
            if own is None:
                trial.set_user_attr("latency_reused", True)
            return known
        with (
            measurement_lock(self.settings.lock_dir, self.settings.device),
            self._clock.phase("latency"),
        ):
            inputs = self.task.example_inputs(self.settings.batch_size).numpy()
            settings, anchor = self.settings, self.settings.anchor
            stop_above_ms = settings.latency_budget_ms if screen else None
            latency = measure_candidate(
                artifact, inputs, anchor, runtime=settings.runtime, device=settings.device,
                threads=settings.threads, stop_above_ms=stop_above_ms,
            )  # fmt: skip
        trial.set_user_attr("latency", latency.as_dict())
        return latency

    def _record(
        self,
        trial: optuna.Trial,
        run_id: str,
        model: nn.Module,
        artifact: Artifact,
        latency: LatencyStats,
        started: float,
        *,
        kind: str = DEPLOYED,
        accuracy: float | None = None,
    ) -> tuple[float, float, float]:
        """Accuracy of ``artifact`` (unless a stopped fine-tune's reading is given), the
        constraints, user attrs and the MLflow run."""
        self.last_model = model
        correct = None  # per example: none for a stopped fine-tune's eager reading
        if accuracy is None:
            with self._clock.phase("evaluate"):
                accuracy, correct = self._accuracy(artifact)
        # its interval, and the paired delta against the baseline on the same examples
        base_correct = self.settings.baseline_correct
        if (
            base_correct is not None
            and correct is not None
            and base_correct.shape != correct.shape
        ):
            raise StudyError(
                f"the baseline's validation record has {base_correct.size} examples, this "
                f"validation split {correct.size}: the task's split changed; delete "
                "studies/records/<study>/baseline-val.npz to measure the baseline again"
            )
        figures = {} if correct is None else accuracy_figures(correct, base_correct).as_dict()
        with self._clock.phase("count_macs"):
            # thop traces a forward pass (0.2 s here); the count depends only on the layers
            # and their shapes, which many trials share (one pruning, two number formats)
            layers = repr(model) + repr([(k, v.shape) for k, v in model.state_dict().items()])
            if layers not in self._macs:
                self._macs[layers] = count_macs_and_params(model, self.task.example_inputs(1))
            macs, n_params = self._macs[layers]
        over_budget_ms = latency.p50_ms - self.settings.latency_budget_ms
        low = figures.get("delta_ci_low_points")
        below_floor = accuracy_below_floor(
            self.settings.accuracy_rule,
            accuracy=accuracy,
            floor=self.settings.accuracy_floor,
            baseline_accuracy=float(base_correct.mean()) if base_correct is not None else accuracy,
            delta_low_points=None if low is None else float(low),
        )
        trial.set_constraint(CONSTRAINT_KEY, over_budget_ms)
        # A draft's accuracy before fine-tuning says nothing about the candidate's: it is not
        # held against it (the sampler ranks infeasible trials by their summed violations,
        # and the latency is what stopped this one).
        judged = kind != BEFORE_FINE_TUNING
        accuracy_violation = below_floor if judged else 0.0
        if is_stopped(kind):
            # Its fine-tune did not finish, so it cannot ship, whatever the rung read: it is
            # infeasible, and by a hair where the reading met the floor, so the sampler still
            # ranks it among the near misses.
            accuracy_violation = max(below_floor, UNFINISHED_VIOLATION)
        trial.set_constraint(ACCURACY_CONSTRAINT_KEY, accuracy_violation)
        feasible = over_budget_ms <= 0 and accuracy_violation <= 0
        size_mb = artifact.size_bytes / 1e6
        metrics = {
            "accuracy": accuracy,
            "latency_p50_ms": latency.p50_ms,
            "latency_p95_ms": latency.p95_ms,
            "latency_p99_ms": latency.p99_ms,
            "latency_mean_ms": latency.mean_ms,
            "latency_std_ms": latency.std_ms,
            # batches one after another: items per second at the measured batch size
            "throughput_per_s": self.settings.batch_size * 1e3 / latency.p50_ms,
            "size_mb": size_mb,
            "size_bytes": artifact.size_bytes,
            "params": n_params,
            "macs": macs,
            "over_budget_ms": over_budget_ms,
            "below_accuracy_floor": below_floor,
            "feasible": feasible,
            "trial_seconds": time.perf_counter() - started,
            **figures,
        }
        if latency.raw_p50_ms is not None:  # anchored: its own p50 and the baseline's, in turn
            metrics["latency_raw_p50_ms"] = latency.raw_p50_ms
            metrics["latency_anchor_ms"] = cast(float, latency.anchor_now_ms)
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("scheme", artifact.scheme)
        trial.set_user_attr("accuracy_kind", kind)
        # Where the time went (benchmarks.overhead); MLflow logging after this is not in it.
        trial.set_user_attr("phase_seconds", dict(self._clock.seconds))
        metrics.update({f"seconds_{k}": v for k, v in self._clock.seconds.items()})
        protocol = {
            f"latency.{k}": v for k, v in latency.as_dict().items() if not k.endswith("_ms")
        }
        self.link.tracker.log(
            run_id,
            params=protocol,
            metrics=metrics,
            tags={
                "state": "COMPLETE",
                "feasible": feasible,
                "scheme": artifact.scheme,
                "accuracy_kind": kind,
                "stopped_before_fine_tuning": kind == BEFORE_FINE_TUNING,
                "stopped_early": is_stopped(kind),
            },
        )
        self.link.tracker.log_artifact(run_id, artifact.path, folder="model")
        return accuracy, latency.p50_ms, size_mb

    def _accuracy(self, artifact: Artifact) -> tuple[float, np.ndarray | None]:
        """The task metric of the deployed file in its runtime, on the validation split,
        and from the same outputs which examples it gets right (None: not top-1 accuracy)."""
        outputs, targets = predict_file(
            artifact,
            self.task.data("val"),
            runtime=self.settings.runtime,
            device=self.settings.device,
            threads=self.settings.eval_threads,
            batch_size=self.settings.batch_size,
        )
        metric = self.task.metric(outputs, targets)
        return metric, per_example_correct(outputs, targets, metric)

    def _fine_tuned(
        self,
        trial: optuna.Trial,
        plan: dict[str, Any],
        ctx: Context,
        run_id: str,
        architecture: nn.Module,
        key: str,
    ) -> tuple[nn.Module, Stopped | None]:
        """``architecture`` after recovery fine-tuning (distillation, LoRA, QAT as planned),
        and where successive halving stopped it, if it did.

        Trials that share their model- and training-stage parameters (say, the same pruning
        with another quantization scheme) share the fine-tuned model: it is trained once
        per run and kept for the next ``MODEL_CACHE_SIZE`` distinct keys. The seed comes
        from those parameters, so the same key gets the same weights. A stopped fine-tune
        is not kept: its model is not the fully trained one.
        """
        cached = self._models.get(key)
        if cached is not None:
            number, model = cached
            self._models.move_to_end(key)
            trial.set_user_attr("finetuned_in_trial", number)
            return model, None
        model = copy.deepcopy(architecture) if architecture is self.base_model else architecture
        optimizer = str(getattr(self.task, "optimizer", "sgd"))
        lr = recovery_lr(optimizer)  # unless the ft lever sets another (techniques/finetune_lr.py)
        recipe = Recipe(epochs=self.settings.finetune_epochs, lr=lr, optimizer=optimizer)
        for name, training in training_techniques():
            if plan[name] is not None:
                recipe = training.configure(recipe, plan[name], ctx)
        for name, artifact in artifact_techniques():  # QAT: innermost, first to finish
            if plan[name] is not None:
                recipe = artifact.configure(recipe, plan[name], ctx)
        # the rate it trains at, whatever set it: the ``ft.lr`` parameter is recorded only
        # where that lever is searched; this metric is recorded in every fine-tuned trial
        self.link.tracker.log(run_id, metrics={"finetune_lr": recipe.lr})
        with self._clock.phase("fine_tune"):
            model, stopped = self._fine_tune(trial, model, recipe, run_id)
        if stopped is None:
            self._models[key] = (trial.number, model)
            while len(self._models) > MODEL_CACHE_SIZE:
                self._models.popitem(last=False)
        return model, stopped

    def _reuse(
        self, trial: optuna.Trial, original: optuna.trial.FrozenTrial, run_id: str
    ) -> tuple[float, float, float]:
        """Record an already-measured candidate again without re-measuring it.

        The sampler proposed the same parameters twice; measuring again would only spend
        time. The trial carries the original's figures and says whose they are.
        """
        for key, value in original.user_attrs.items():
            if key not in _OWN_ATTRS:
                trial.set_user_attr(key, value)
        trial.set_user_attr("duplicate_of", original.number)
        for key, value in original.constraints.items():
            trial.set_constraint(key, value)
        metrics = {k: v for k, v in original.user_attrs.items() if isinstance(v, int | float)}
        self.link.tracker.log(
            run_id,
            metrics={k: v for k, v in metrics.items() if not isinstance(v, bool)},
            tags={
                "state": "COMPLETE",
                "feasible": bool(original.user_attrs.get("feasible")),
                "duplicate_of_trial": original.number,
                "duplicate_of_run": original.user_attrs.get("mlflow_run_id", ""),
            },
        )
        self.link.tracker.end_run(run_id)
        accuracy, latency_p50_ms, size_mb = original.values
        return accuracy, latency_p50_ms, size_mb

    def _fine_tune(
        self, trial: optuna.Trial, model: nn.Module, recipe: Recipe, run_id: str
    ) -> tuple[nn.Module, Stopped | None]:
        val = self.task.data("val")
        stopped: list[Stopped] = []
        curve = BufferedCurve(self.link.tracker, run_id)

        def log_epoch(epoch: int, mean_loss: float) -> bool:
            outputs, targets = predict(model, val)
            model.train()
            # Eager PyTorch, before export: a curve, and the reading a rung judges; never
            # the reported accuracy of a candidate that finishes.
            accuracy = self.task.metric(outputs.numpy(), targets.numpy())
            with self._clock.phase("tracking"):  # overhead inside the work: MLflow, Optuna
                curve.add(
                    {"finetune_loss": mean_loss, "finetune_val_accuracy_eager": accuracy}, epoch
                )
                verdict = self._at_rung(trial, epoch + 1, recipe.epochs, accuracy, run_id)
            if verdict:
                stopped.append(Stopped(epoch + 1, accuracy))
            return verdict

        for step in recipe.prepare:
            model = step(model)
        try:
            fit(
                model,
                self.task.data("train"),
                epochs=recipe.epochs,
                lr=recipe.lr,
                loss_fn=self.task.loss,
                distillation=recipe.distillation,
                on_epoch=log_epoch,
                optimizer=recipe.optimizer,
                device=self.settings.device,  # on CUDA: bf16 mixed precision
            )
        except BaseException:
            with contextlib.suppress(Exception):  # keep the points; report the first error
                curve.flush()
            raise
        with self._clock.phase("tracking"):
            curve.flush()
        for step in recipe.finish:
            model = step(model)
        return model.eval(), (stopped[0] if stopped else None)

    def _at_rung(
        self, trial: optuna.Trial, epoch: int, epochs: int, accuracy: float, run_id: str
    ) -> bool:
        """Whether successive halving stops this fine-tune after ``epoch`` (from 1).

        The reading is recorded on the trial first, so the other candidates (in this
        process or another worker) are ranked against it. References never stop. In
        shadow mode every epoch's reading is recorded, judged or not, so a replay
        (``python -m benchmarks replay-rungs``) can try the rule at any epoch.
        """
        rule = self.settings.rungs
        if rule is None:
            return False
        judged = rule.judges(epoch, epochs)
        if not (judged or rule.shadow):
            return False
        readings = {**(trial.user_attrs.get(RUNG_ATTR) or {}), str(epoch): accuracy}
        trial.set_user_attr(RUNG_ATTR, readings)
        if not judged:
            return False
        if never_stopped(trial.user_attrs):
            return False
        others = trial.study.get_trials(deepcopy=False)
        peers = peer_readings(others, epoch, exclude=trial.number)
        verdict = judge(rule, accuracy=accuracy, held=held_readings(others, epoch), peers=peers)
        if not verdict.stop:
            return False
        if rule.shadow:
            if WOULD_STOP_ATTR not in trial.user_attrs:
                trial.set_user_attr(WOULD_STOP_ATTR, epoch)
                self.link.tracker.log(run_id, metrics={WOULD_STOP_ATTR: epoch})
            return False
        trial.set_user_attr(STOPPED_ATTR, epoch)
        trial.set_user_attr("stop_reason", verdict.reason)
        self.link.tracker.log(
            run_id, metrics={STOPPED_ATTR: epoch}, tags={"stop_reason": verdict.reason[:5000]}
        )
        return True


def deploy_baseline(
    model: nn.Module, task: Task, workdir: Path, runtime: str = ONNXRUNTIME
) -> Artifact:
    """``model`` exported exactly as a trial exports the uncompressed baseline."""
    return compact_names(export(runtime, model, task.example_inputs(1), workdir / "base"))


def run_name(number: int, plan: dict[str, Any]) -> str:
    """A readable child-run name, e.g. ``t007 prune0.40 int8s-pc-u8-minmax``."""
    labels = [params.label for params in plan.values() if params is not None]
    return f"t{number:03d} " + (" ".join(labels) if labels else "baseline")


def known_latency(study: optuna.Study, signature: str) -> LatencyStats | None:
    """A full measurement of this graph signature from an earlier trial of the study.

    Screened (brief) figures are returned only when no full one exists; the caller decides
    whether a screened figure is good enough.
    """
    found: LatencyStats | None = None
    for other in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        stats = recorded_latency(other.user_attrs, signature)
        if stats is not None and stats.repeats >= MIN_REPEATS:
            return stats
        found = found or stats
    return found


def recorded_latency(user_attrs: Mapping[str, Any], signature: str) -> LatencyStats | None:
    """The measurement a trial recorded for this graph signature, if it has one."""
    recorded = user_attrs.get("latency")
    if user_attrs.get("latency_signature") != signature or not recorded:
        return None
    return LatencyStats(**recorded)


def find_duplicate(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """A completed trial with exactly these parameters, whose measurements can be reused."""
    for other in trial.study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
    ):
        if other.params == trial.params and other.number != trial.number:
            return other
    return None
