"""The benchmark run, in order: each part measured in this one process.

baseline p50 -> compression searches at each budget (a share of that p50) -> best feasible
model per search (with ``--finetune-epochs N``, each also rebuilt by ``search finetune``
with N epochs instead of the search's ten) -> single-lever references (int8
static, pruning 50%, a distilled width-0.5 student) -> test accuracy of each; half the
side-by-side latency rounds -> search efficiency (three arms x seeds at a fixed wall time)
-> the other half of the rounds, so their spread covers the run's drift -> ratios, roofline
estimate -> overhead of every trial.

Everything runs in a work folder of its own (``studies/`` and ``mlruns/`` inside it, so
``search ui --tracking-uri sqlite:///<work>/mlruns/mlflow.db`` shows every trial);
the trained baseline is copied from the working folder's cache when it is there.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from benchmarks.arms import ARMS, DEFAULT_ARMS
from benchmarks.early_stop import rung_counts
from benchmarks.hypervolume import box_of, curve, feasible_points
from benchmarks.overhead import overhead
from benchmarks.roofline import floor_of, measure_peaks, onnx_bytes
from benchmarks.side_by_side import Compared, compare, test_scores, time_rounds
from benchmarks.student import distilled_student
from search.common.errors import ConfigError
from search.core.config import SearchConfig
from search.core.levers import LeverSettings
from search.core.oneshot import FINETUNE, TrialRef, run_one_shot
from search.core.profile import Target, baseline_target, trial_target
from search.core.runner import run_search
from search.measure.artifact import Artifact
from search.measure.intervals import paired_delta, per_example_correct
from search.measure.latency import hardware_fingerprint, measure_latency
from search.measure.runtimes import predict
from search.registry.promote import choose_trial
from search.tasks.loader import load_task
from search.track.trials import (
    ACCURACY_RULES,
    INTERVAL_KEYS,
    baseline_trial,
    feasible_by,
    is_feasible,
    study_rule,
)
from search.train.task import Task
from techniques import TECHNIQUES, Context

Say = Callable[[str], None]

CURVE_POINTS = 21


@dataclass(frozen=True)
class Plan:
    """What one benchmark run does; the defaults are the run the README quotes."""

    device: str = "cpu"
    runtime: str = "onnxruntime"
    threads: int = 1
    budgets: tuple[float, ...] = (0.5, 0.25)  # shares of the baseline's p50
    search_trials: int = 40  # per compression search
    # compression searches per budget: which trial a search finds varies with its seed (and
    # with the latencies it measures), so the best model is reported over several
    search_seeds: tuple[int, ...] = (0, 1, 2)
    seeds: tuple[int, ...] = (0, 1, 2)  # efficiency runs per arm
    arm_seconds: float = 200.0  # wall time per efficiency run
    rounds: int = 6  # side-by-side latency rounds, half before the efficiency part
    # within a round the models are timed in turn, in short blocks (results files from before
    # 2026-11-25 have no such key: their rounds timed every model once, one after another)
    interleaved: bool = True
    # the searches time each candidate in turn with the baseline's file (``--latency-anchor``;
    # files from before 2026-11-25's third run have no such key: candidates timed alone)
    anchored: bool = True
    quick: bool = False
    arms: tuple[str, ...] = DEFAULT_ARMS  # keys of ARMS
    # each search's pick also rebuilt with this many fine-tuning epochs, timed and tested
    # beside it (``--finetune-epochs 30``); 0, the default: not (rebuilt with 30, the 13th
    # run's picks gained +0.28, +0.56 and -1.67 test points: no sure gain, five more minutes)
    finetune_epochs: int = 0
    # lever settings for the searches (``--fix ft.searched=true``), as ``search run --fix``;
    # the single-lever references keep theirs alone
    fixed: tuple[tuple[str, Any], ...] = ()
    # successive halving over fine-tuning epochs in the searches and in our arms
    # (``search run --early-stop``): on, off, or shadow (records where it would stop, to
    # count false stops), on by default as in the search; results files from before
    # 2026-12-04 have no such key: off
    early_stop: str = "on"
    # the searches' ``--accuracy-rule``; the picks under every rule are reported from the
    # same trials either way (``benchmarks.rules``)
    accuracy_rule: str = "point"


def quick_plan(device: str, runtime: str) -> Plan:
    """A few minutes end to end: checks the machinery, not numbers to quote."""
    return Plan(device=device, runtime=runtime, search_trials=8, search_seeds=(0,), seeds=(0,),
                arm_seconds=60, rounds=2, quick=True, finetune_epochs=2)  # fmt: skip


def run_benchmark(plan: Plan, work: Path, say: Say) -> dict[str, Any]:
    """Run every part of ``plan`` in ``work``; the results as one JSON-ready dict."""
    started = time.perf_counter()
    durations: dict[str, float] = {}
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    task = _task(work)
    folder = work / "models"
    baseline = baseline_target(task, folder / "baseline", plan.runtime)
    base_ms = measure_latency(
        baseline.artifact,
        task.example_inputs(1).numpy(),
        runtime=plan.runtime,
        device=plan.device,
        threads=plan.threads,
    ).p50_ms
    # Every study scales its anchored latencies to this one figure, so budgets, fronts and
    # hypervolumes of all searches are in one unit: a share of this p50 is the same ratio
    # to the baseline in every study, whatever phase the machine was in when it began.
    base_config = SearchConfig(
        device=plan.device,
        runtime=plan.runtime,
        threads=plan.threads,
        home=work,
        trials=plan.search_trials,
        latency_anchor=plan.anchored,
        anchor_p50_ms=base_ms,
        levers=LeverSettings(fixed=plan.fixed),
        early_stop=plan.early_stop,
        accuracy_rule=plan.accuracy_rule,
    )
    say(f"baseline p50 {base_ms:.4f} ms; budgets {', '.join(f'{b:g}x' for b in plan.budgets)}")
    # the baseline's right/wrong per test image: every candidate's paired test delta
    base_test = test_scores([baseline], task, runtime=plan.runtime, device=plan.device)[0]

    clock = time.perf_counter()
    studies: list[optuna.Study] = []
    compression: dict[str, Any] = {}
    chosen: list[Target] = []
    for share in plan.budgets:
        runs = []
        for seed in plan.search_seeds:
            config = replace(
                base_config,
                latency_budget_ms=share * base_ms,
                study_name=f"compress-{share:g}x-seed{seed}",
                seed=seed,
            )
            study = _search(config, task, say)
            studies.append(study)
            entry = _compression_entry(
                study, task, config, folder, f"best at {share:g}x", base_test.correct
            )
            if "trial" in entry:
                target = trial_target(
                    study, entry["trial"], config.mlflow_uri, folder / study.study_name
                )
                target = replace(target, name=entry["name"])
                chosen.append(target)
                if plan.finetune_epochs:
                    longer = fine_tuned_longer(
                        study, entry["trial"], config, plan.finetune_epochs, task, target
                    )
                    entry["finetuned_name"] = longer.name
                    chosen.append(longer)
                    say(f"{entry['name']}: rebuilt with {plan.finetune_epochs} epochs")
            runs.append({"seed": seed, **entry})
        compression[f"{share:g}x"] = {"budget_ms": share * base_ms, "seeds": runs}
    durations["compression searches"] = time.perf_counter() - clock

    clock = time.perf_counter()
    references = _references(base_config, base_ms * plan.budgets[0], task, folder, say)
    studies.append(references[0])
    base_model = task.build_model()
    student = distilled_student(task, base_model, folder, plan.runtime)
    durations["references"] = time.perf_counter() - clock

    clock = time.perf_counter()
    everyone = [baseline, *chosen, *references[1], student]
    scores = test_scores(everyone, task, runtime=plan.runtime, device=plan.device)
    inputs = task.example_inputs(1).numpy()
    timing = {"runtime": plan.runtime, "device": plan.device, "threads": plan.threads}
    early = (plan.rounds + 1) // 2
    say(f"side by side: {early} of {plan.rounds} rounds, each in a fresh process")
    rounds = time_rounds(
        everyone,
        inputs,
        count=early,
        first=0,
        started=started,
        interleaved=plan.interleaved,
        **timing,
    )
    peaks = measure_peaks(plan.device, plan.threads)
    durations["side by side"] = time.perf_counter() - clock

    clock = time.perf_counter()
    efficiency = _efficiency(plan, base_config, base_ms * plan.budgets[0], task, say)
    studies += [s for runs in efficiency.pop("studies").values() for s in runs]
    durations["efficiency"] = time.perf_counter() - clock

    clock = time.perf_counter()
    say(f"side by side: the other {plan.rounds - early} rounds")
    rounds += time_rounds(
        everyone,
        inputs,
        count=plan.rounds - early,
        first=early,
        started=started,
        interleaved=plan.interleaved,
        **timing,
    )
    compared = compare(everyone, scores, rounds)
    for entry in compression.values():
        entry["summary"] = over_seeds(compared, entry["seeds"])
        if plan.finetune_epochs:
            entry["summary_finetuned"] = over_seeds(compared, entry["seeds"], "finetuned_name")
    roofline = [
        floor_of(
            macs=int(row.macs),
            n_bytes=_model_bytes(target),
            int8=row.scheme.startswith("int8"),
            measured_ms=row.p50_ms,
            peaks=peaks,
        ).as_dict()
        | {"name": row.name}
        for row, target in zip(compared, [baseline, *chosen], strict=False)
        if row.macs
    ]
    durations["side by side"] += time.perf_counter() - clock

    durations["total"] = time.perf_counter() - started
    return {
        "plan": asdict(plan),
        "hardware": hardware_fingerprint(),
        "work_folder": str(work),
        "baseline_p50_ms": base_ms,
        "compression": compression,
        "models": [row.as_dict() for row in compared],
        "rounds": [asdict(r) for r in rounds],
        "peaks": peaks.as_dict(),
        "roofline": roofline,
        "efficiency": efficiency,
        "overhead": overhead(studies).as_dict(),
        "durations_s": durations,
    }


def _compression_entry(
    study: optuna.Study,
    task: Task,
    config: SearchConfig,
    folder: Path,
    label: str,
    base_correct: np.ndarray | None,
) -> dict[str, Any]:
    """One compression search: its counts, every trial feasible under either accuracy rule
    on the test split, and its best feasible trial (named ``label, seed N (trial M)``) or
    its nearest misses. The pick is made under the study's rule; beside it, the pick (and
    promote's) under every rule, re-judged from the same trials (``benchmarks.rules``)."""
    best = best_feasible(study)
    candidates = feasible_on_test(study, task, config, folder / study.study_name, base_correct)
    entry: dict[str, Any] = {
        "trials": len(study.trials),
        "feasible": sum(is_feasible(t) for t in study.trials),
        "accuracy_rule": study_rule(study),
        "picks": {rule: _picks(study, rule) for rule in ACCURACY_RULES},
        "candidates": candidates,
        "rungs": rung_counts(study, config.finetune_epochs),
    }
    if best is None:
        entry["nearest"] = nearest_misses(study)
        return entry
    name = f"{label}, seed {config.seed} (trial {best.number})"
    return {
        **entry,
        "trial": best.number,
        "promote_trial": choose_trial(study, None).number,
        "params": best.params,
        "name": name,
    }


def _picks(study: optuna.Study, rule: str) -> dict[str, int | None]:
    """Under ``rule``: the benchmark's pick and ``search promote``'s default (None: none)."""
    best = best_feasible(study, rule)
    try:
        promoted: int | None = choose_trial(study, None, rule=rule).number
    except ConfigError:  # nothing feasible under this rule
        promoted = None
    return {"trial": None if best is None else best.number, "promote_trial": promoted}


def over_seeds(
    compared: list[Compared], runs: list[dict[str, Any]], key: str = "name"
) -> dict[str, Any]:
    """The best models of one budget's searches, one per seed (``key``: ``name`` for the
    picks as found, ``finetuned_name`` for them rebuilt with the full fine-tune): median
    and min–max over the seeds of ×faster (each its median over rounds), ×smaller and
    test Δ points."""
    names = {run[key] for run in runs if key in run}
    rows = [row for row in compared if row.name in names]
    summary: dict[str, Any] = {"seeds": len(runs), "found": len(rows)}
    if not rows:
        return summary
    figures = {
        "faster": [row.faster[0] for row in rows],
        "smaller": [row.smaller for row in rows],
        "test_delta_points": [row.accuracy_delta_points for row in rows],
    }
    for key, values in figures.items():
        summary[key] = [statistics.median(values), min(values), max(values)]
    return summary


def best_feasible(study: optuna.Study, rule: str | None = None) -> optuna.trial.FrozenTrial | None:
    """The feasible trial furthest from the baseline in speed and size together.

    Feasible already means within the accuracy drop (read by ``rule``, None: the study's
    ``--accuracy-rule``) and under the budget; among those, the largest product of ×faster
    and ×smaller (the geometric mean of the two gains), then the more accurate. None when
    nothing is feasible.
    """
    base = baseline_trial(study)
    feasible = [t for t in feasible_by(study, rule) if not t.user_attrs.get("baseline")]
    if base is None or not feasible:
        return None

    def gain(trial: optuna.trial.FrozenTrial) -> tuple[float, float]:
        faster = base.values[1] / trial.values[1]
        smaller = base.values[2] / trial.values[2]
        return (round(math.log(faster * smaller), 9), trial.values[0])

    return max(feasible, key=gain)


def fine_tuned_longer(
    study: optuna.Study,
    number: int,
    config: SearchConfig,
    epochs: int,
    task: Task,
    found: Target,
) -> Target:
    """Trial ``number`` rebuilt by ``search finetune`` with ``epochs`` of fine-tuning: the
    same layers and number format as ``found``, only trained longer. Named like the pick
    with "fine-tuned N epochs" after the budget, so it is its own kind in the rankings."""
    folder = config.home / "models" / study.study_name / f"finetuned-{number}"
    result = run_one_shot(
        replace(config, finetune_epochs=epochs),
        FINETUNE,
        {},
        task=task,
        from_trial=TrialRef(study.study_name, number, config.storage_url),
        output=folder,
    )
    assert result.output is not None
    return Target(
        fine_tuned_name(found.name, epochs),
        Artifact(result.output, found.artifact.scheme),
        params=result.after.params,
        macs=result.after.macs,
    )


def fine_tuned_name(pick: str, epochs: int) -> str:
    """``best at 0.5x, seed 1 (trial 8)`` -> ``best at 0.5x fine-tuned 30 epochs, seed 1
    (trial 8)``: its own kind for ``compare`` (which drops the seed and trial), still a
    searched model (it starts ``best at``)."""
    label, _, seed_and_trial = pick.partition(", seed ")
    return f"{label} fine-tuned {epochs} epochs, seed {seed_and_trial}"


def feasible_on_test(
    study: optuna.Study,
    task: Task,
    config: SearchConfig,
    folder: Path,
    base_correct: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Every trial feasible under either accuracy rule, with its test-split accuracy beside
    the validation figures it was chosen on (the search's own latency and size ratios, the
    paired validation interval) and, given the baseline's right/wrong per test image, its
    paired test delta: how far the choice holds."""
    base = baseline_trial(study)
    feasible = {rule: {t.number for t in feasible_by(study, rule)} for rule in ACCURACY_RULES}
    rows = []
    for trial in study.trials:
        if base is None or trial.user_attrs.get("baseline"):
            continue
        if not any(trial.number in numbers for numbers in feasible.values()):
            continue
        target = trial_target(study, trial.number, config.mlflow_uri, folder)
        outputs, targets = predict(
            target.artifact,
            task.data("test"),
            runtime=config.runtime,
            device=config.device,
            threads=os.cpu_count() or 1,
        )
        test = task.metric(outputs, targets)
        correct = per_example_correct(outputs, targets, test)
        row = {
            **_figures(trial, base),
            **{k: trial.user_attrs[k] for k in INTERVAL_KEYS if k in trial.user_attrs},
            "feasible_under": [
                rule for rule, numbers in feasible.items() if trial.number in numbers
            ],
            "test_accuracy": test,
        }
        if correct is not None and base_correct is not None:
            paired = paired_delta(base_correct, correct)
            row |= {
                "test_delta_points": paired.delta_points,
                "test_delta_ci_points": [paired.low_points, paired.high_points],
                "test_lost": paired.lost,
                "test_gained": paired.gained,
            }
        rows.append(row)
    return rows


def nearest_misses(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """With nothing feasible: the most accurate fine-tuned trial under the budget, and the
    fastest within the accuracy floor (validation figures), to say by how much it missed.

    With no fine-tuned trial under the budget, the fastest candidate measured at all, a
    draft stopped before fine-tuning included: how far the architectures tried are from
    the budget, whatever their accuracy.
    """
    base = baseline_trial(study)
    if base is None:
        return {}
    budget = float(study.user_attrs["latency_budget_ms"])
    floor = base.values[0] - float(study.user_attrs.get("max_accuracy_drop", 0.01))
    measured = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not t.user_attrs.get("baseline")
    ]
    judged = [t for t in measured if t.user_attrs.get("accuracy_kind") == "deployed"]
    under = [t for t in judged if t.values[1] <= budget]
    accurate = [t for t in judged if t.values[0] >= floor]

    found = {}
    if under:
        best = max(under, key=lambda t: t.values[0])
        found["most accurate under the budget"] = _figures(best, base)
    elif measured:  # no fine-tuned model under it: how near did any architecture come?
        fastest = min(measured, key=lambda t: t.values[1])
        found["fastest candidate measured"] = {
            **_figures(fastest, base),
            "accuracy_kind": fastest.user_attrs.get("accuracy_kind", "deployed"),
        }
    if accurate:
        fastest = min(accurate, key=lambda t: t.values[1])
        found["fastest within the accuracy floor"] = _figures(fastest, base)
    return found


def _figures(trial: optuna.trial.FrozenTrial, base: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial's validation accuracy and the search's own ratios against its baseline."""
    accuracy, p50_ms, size_mb = trial.values
    return {
        "trial": trial.number,
        "accuracy": accuracy,
        "delta_points": 100 * (accuracy - base.values[0]),
        "p50_ms": p50_ms,
        "faster": base.values[1] / p50_ms,
        "smaller": base.values[2] / size_mb,
    }


def _task(work: Path) -> Task:
    """The digits task in ``work``, its trained baseline copied from here when cached."""
    cache = work / "studies" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for trained in (Path.cwd() / "studies" / "cache").glob("digits-*.pt"):
        if not (cache / trained.name).exists():
            shutil.copy2(trained, cache / trained.name)
    return load_task("digits", cache_dir=cache)


def _search(config: SearchConfig, task: Task, say: Say) -> optuna.Study:
    name = config.study_name
    say(f"{name}: budget {config.latency_budget_ms:.4f} ms, "
        + (f"{config.trials} trials" if config.trials else f"{config.timeout_s:g} s"))  # fmt: skip

    def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            accuracy, p50, size = trial.values
            flag = "feasible" if is_feasible(trial) else "-"
            say(f"  {name} #{trial.number}: {accuracy:.4f} {p50:.4f} ms {size:.3f} MB {flag}")
        else:
            reason = trial.user_attrs.get("fail_reason", "")
            say(f"  {name} #{trial.number}: {trial.state.name} {reason}")

    run_search(config, task=task, on_trial=progress)
    return optuna.load_study(study_name=str(name), storage=config.storage_url)


def _references(
    base_config: SearchConfig, budget_ms: float, task: Task, folder: Path, say: Say
) -> tuple[optuna.Study, list[Target]]:
    """int8 static alone and pruning 50% alone, each through the search's own pipeline.

    One study, started with the baseline alone; each reference is one trial with every
    other lever off and its own fixed at the lever's reference setting (no distillation:
    the pruned model fine-tunes on the labels alone).
    """
    targets = []
    study = None
    ctx = Context(
        task, base_config.device, folder, task.build_model(), runtime=base_config.runtime
    )
    references = {
        name: reference
        for name in ("quant", "prune")
        if (reference := TECHNIQUES[name].reference_params(ctx)) is not None
    }
    for index, (lever, reference) in enumerate(references.items()):
        levers = LeverSettings(
            off=tuple(name for name in TECHNIQUES if name != lever),
            fixed=tuple(reference.items()),
        )
        config = replace(
            base_config,
            latency_budget_ms=budget_ms,
            study_name="references",
            references=False,
            # A reference is measured whatever its speed: with latency first, a draft a
            # fraction over the budget (drift) would stop before its fine-tune, as the
            # pruning reference of 2026-11-24-4 did (0.2894 ms against 0.2870 ms).
            latency_first=False,
            trials=2 if index == 0 else 1,  # the first invocation also runs the baseline
            levers=levers,
        )
        study = _search(config, task, say)
        last = study.trials[-1]
        label = (
            f"{reference['quant.scheme'].replace('-', ' ')} alone"  # int8 static, or fp16
            if lever == "quant"
            else "pruning 50% alone"
        )
        target = trial_target(study, last.number, config.mlflow_uri, folder / "references")
        targets.append(replace(target, name=f"{label} (trial {last.number})"))
    assert study is not None
    return study, targets


def _efficiency(
    plan: Plan, base_config: SearchConfig, budget_ms: float, task: Task, say: Say
) -> dict[str, Any]:
    """Each arm once per seed, seed by seed (drift hits every arm alike), at one wall time."""
    times = list(np.linspace(0, plan.arm_seconds, CURVE_POINTS))
    curves: dict[str, list[list[float]]] = {arm: [] for arm in plan.arms}
    studies: dict[str, list[optuna.Study]] = {arm: [] for arm in plan.arms}
    counts: dict[str, list[dict[str, int]]] = {arm: [] for arm in plan.arms}
    for seed in plan.seeds:
        for index, arm in enumerate(plan.arms):
            config = replace(
                base_config,
                latency_budget_ms=budget_ms,
                study_name=f"efficiency-{index}-seed{seed}",
                seed=seed,
                trials=None,
                timeout_s=plan.arm_seconds,
                **ARMS[arm],
            )
            study = _search(config, task, say)
            studies[arm].append(study)
            points = feasible_points(study.trials)
            curves[arm].append(curve(points, box_of(study), times))
            counts[arm].append(
                {
                    "trials": sum(t.state.is_finished() for t in study.trials),
                    "feasible": len(points),
                }
            )
    summary = {
        arm: {
            "final_median": statistics.median(c[-1] for c in curves[arm]),
            "final_min": min(c[-1] for c in curves[arm]),
            "final_max": max(c[-1] for c in curves[arm]),
            "runs": counts[arm],
        }
        for arm in plan.arms
    }
    return {
        "budget_ms": budget_ms,
        "times_s": times,
        "curves": curves,
        "summary": summary,
        "studies": studies,
    }


def _model_bytes(target: Target) -> int:
    """Bytes an inference touches at least once (ONNX), or the file's size (programs)."""
    if target.artifact.format == "onnx":
        return onnx_bytes(target.artifact.path)
    return target.artifact.size_bytes
