"""Open or resume the Optuna study: storage, sampler, directions and the baseline trial.

Objectives are (accuracy ↑, latency p50 ms ↓, size MB ↓); the latency budget is a
constraint the trial sets itself (``trial.set_constraint``), so infeasible trials stay in
the history and the sampler learns from them rather than never seeing them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import optuna

from search.config import SearchConfig, format_ms
from search.errors import StudyError
from search.latency import COMPARABLE_FIELDS, hardware_fingerprint
from search.levers import fixing_sampler

DIRECTIONS: tuple[Literal["maximize", "minimize"], ...] = ("maximize", "minimize", "minimize")
OBJECTIVE_NAMES = ("accuracy", "latency_p50_ms", "size_mb")
CONSTRAINT_KEY = "latency_p50_over_budget_ms"
ACCURACY_CONSTRAINT_KEY = "accuracy_below_floor"
TPE_STARTUP_TRIALS = 6
# Recorded on a new study and checked on resume: a study mixing these would compare numbers
# measured under different rules.
_IDENTITY_KEYS = (
    "task",
    "latency_budget_factor",
    "latency_budget_ms",
    "device",
    "runtime",
    "threads",
    "batch_size",
    "max_accuracy_drop",
)


def study_identity(config: SearchConfig, task_name: str) -> dict[str, Any]:
    return {
        "task": task_name,
        "latency_budget_ms": config.latency_budget_ms,
        "latency_budget_factor": config.latency_budget_factor,
        "device": config.device,
        "runtime": config.runtime,
        "threads": config.threads,
        "batch_size": config.batch_size,
        "max_accuracy_drop": config.max_accuracy_drop,
    }


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage; SQLite waits for a busy database instead of failing at once."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as error:  # bad URL, missing driver, unreachable server
        raise StudyError(
            f"--storage {url}: cannot open it: {type(error).__name__}: {error}"
        ) from error


def stored_budget_ms(config: SearchConfig, task_name: str) -> float | None:
    """The budget an existing study was created with (how a relative budget stays fixed)."""
    storage = make_storage(config.storage_url)
    name = config.resolved_study_name(task_name)
    for summary in optuna.get_all_study_summaries(storage):
        if summary.study_name == name and "latency_budget_ms" in summary.user_attrs:
            return float(summary.user_attrs["latency_budget_ms"])
    return None


def open_study(
    config: SearchConfig,
    task_name: str,
    first_trials: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    fixed: Mapping[str, Any] | None = None,
) -> optuna.Study:
    """Create the study, or resume it if its identity matches this run's.

    The sampler is reseeded with the seed plus the number of trials already in the study,
    so a resumed study does not replay the random start-up suggestions it already tried.
    On a new study ``first_trials`` (params, user attrs) are enqueued: the uncompressed
    baseline as trial 0, then single-lever references. ``fixed`` parameters are pinned
    for the trials this invocation samples (``search.levers``).
    """
    storage = make_storage(config.storage_url)
    name = config.resolved_study_name(task_name)
    identity = study_identity(config, task_name)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    fingerprint = hardware_fingerprint()
    hardware = {k: fingerprint[k] for k in COMPARABLE_FIELDS}
    if name in existing:
        _check_identity(name, dict(existing[name].user_attrs), identity)
        if not config.allow_mixed_hardware:
            _check_hardware(name, existing[name].user_attrs.get("hardware"), hardware)
        known_trials = existing[name].n_trials
    else:
        known_trials = 0
    sampler = fixing_sampler(
        optuna.samplers.TPESampler(
            seed=config.seed + known_trials, n_startup_trials=TPE_STARTUP_TRIALS
        ),
        fixed or {},
    )
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=list(DIRECTIONS),
        sampler=sampler,
        load_if_exists=True,
    )
    if name not in existing:
        study.set_metric_names(list(OBJECTIVE_NAMES))
        for key, value in identity.items():
            study.set_user_attr(key, value)
        study.set_user_attr("hardware", hardware)
        for params, user_attrs in first_trials:
            study.enqueue_trial(dict(params), user_attrs=dict(user_attrs))
    return study


def _check_hardware(name: str, stored: Mapping[str, str] | None, here: Mapping[str, str]) -> None:
    """Refuse to add this machine's latencies to a study measured on another."""
    if not stored:
        return  # a study from before fingerprints were stored
    for key, value in here.items():
        if key in stored and stored[key] != value:
            raise StudyError(
                f"study {name!r} was measured on {key}={stored[key]!r}, this machine has "
                f"{value!r}: its latencies would not compare; use another --study, or "
                "--allow-mixed-hardware to add to it anyway"
            )


def _check_identity(name: str, stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    for key in _IDENTITY_KEYS:
        if key in stored and stored[key] != wanted[key]:
            shown = format_ms(stored[key]) if key == "latency_budget_ms" else stored[key]
            raise StudyError(
                f"study {name!r} was created with {key}={shown}, this run asks for "
                f"{wanted[key]}: repeat the original setting or choose a new --study"
            )


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Completed, and every constraint at or below zero."""
    return (
        trial.state == optuna.trial.TrialState.COMPLETE
        and bool(trial.constraints)
        and all(value <= 0 for value in trial.constraints.values())
    )


def baseline_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed uncompressed reference trial, if the study has one."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if trial.user_attrs.get("baseline"):
            return trial
    return None


def load_existing_study(storage_url: str, name: str | None) -> optuna.Study:
    """An existing study by name; without a name, the storage's only study.

    Refused in one line, naming the studies there, when the name is unknown or when the
    storage holds several and none was named.
    """
    storage = make_storage(storage_url)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    if name is None:
        if len(names) != 1:
            listed = ", ".join(names) if names else "none"
            raise StudyError(f"say which study with --study NAME (studies here: {listed})")
        name = names[0]
    if name not in names:
        listed = ", ".join(names) if names else "none"
        raise StudyError(f"--study {name}: no such study in {storage_url} (studies: {listed})")
    return optuna.load_study(study_name=name, storage=storage)
