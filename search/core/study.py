"""Open or resume the Optuna study: storage, sampler, directions and the baseline trial.

Objectives are (accuracy ↑, latency p50 ms ↓, size MB ↓); the latency budget is a
constraint the trial sets itself (``trial.set_constraint``), so infeasible trials stay in
the history and the sampler learns from them rather than never seeing them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from search.common.errors import StudyError
from search.core.config import SearchConfig, format_ms
from search.core.levers import fixing_sampler
from search.core.sampler import ParallelAwareTPESampler
from search.measure.latency import COMPARABLE_FIELDS, hardware_fingerprint
from search.track.trials import DIRECTIONS, OBJECTIVE_NAMES
from search.track.urls import mask_password, redact_url

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
    "accuracy_rule",
    "latency_anchor",
)
# What a study created before a key was recorded was run with.
_BEFORE_RECORDED = {"accuracy_rule": "point"}


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
        "accuracy_rule": config.accuracy_rule,
        "latency_anchor": config.latency_anchor,
    }


STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")
# A worker that stops beating for GRACE_BEATS heartbeats is taken for dead: its running trial
# becomes FAIL and is retried once by the next worker (``RetryHeartbeatStaleTrialCallback``).
GRACE_BEATS = 4
OPEN_ATTEMPTS = 3
WAL_SWITCH_WAIT_S = 30.0


def make_storage(
    url: str,
    *,
    heartbeat_s: int | None = None,
    on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.storages.BaseStorage:
    """An RDB storage; SQLite waits for a busy database instead of failing at once.

    With ``heartbeat_s``, each running trial beats that often, and a trial whose worker
    was killed is found stale by the next ``optimize``: failed, ``on_stale`` told (to close
    its MLflow run), and retried once.
    """
    scheme = url.partition(":")[0].partition("+")[0]
    if scheme not in STORAGE_SCHEMES:
        raise StudyError(
            f"--storage {redact_url(url)}: unknown scheme {scheme!r}; use sqlite:///path, "
            "postgresql://user@host/db or mysql://user@host/db"
        )
    sqlite = scheme == "sqlite"
    engine_kwargs: dict[str, Any] = {}
    if sqlite:
        # isolation_level None: Python's sqlite3 emits no BEGIN of its own, so the one
        # SQLAlchemy's "begin" event emits (_begin_immediate) is the only one.
        engine_kwargs["connect_args"] = {"timeout": 60, "isolation_level": None}
    heartbeat: dict[str, Any] = {}
    if heartbeat_s is not None:
        heartbeat = {
            "heartbeat_interval": heartbeat_s,
            "grace_period": GRACE_BEATS * heartbeat_s,
            "heartbeat_stale_trial_callback": on_stale,
        }
    for attempt in range(OPEN_ATTEMPTS):
        try:
            if sqlite:
                _write_ahead_log(url)
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
            if sqlite:
                sqlalchemy.event.listen(storage.engine, "connect", _sync_normal)
                sqlalchemy.event.listen(storage.engine, "begin", _begin_immediate)
                storage.engine.dispose()  # the connections opened before the listeners
            return storage
        except ImportError as error:  # a driver is missing: trying again will not help
            last: Exception = error
            break
        except Exception as error:  # bad URL, unreachable server, or a concurrent set-up
            last = error
            # Processes opening a new database together race to create Optuna's tables
            # (SQLite included: a second worker, or a reader, on a fresh file); the loser's
            # "already exists" is gone a moment later. A bad SQLite path fails at once; a
            # server may be starting, so any other error is tried again too.
            if sqlite and not _lost_a_setup_race(error):
                break
            if attempt + 1 < OPEN_ATTEMPTS:
                time.sleep(0.5 * (attempt + 1))
    reason = mask_password(f"{type(last).__name__}: {last}".splitlines()[0], url)
    raise StudyError(f"--storage {redact_url(url)}: cannot open it: {reason}") from last


def _write_ahead_log(url: str) -> None:
    """Switch a SQLite file to write-ahead logging (kept by the file; a no-op once set).

    In its default rollback-journal mode every commit syncs the disk twice, and a trial
    commits about sixty times (each user attr, each suggested parameter): 3.6 ms per
    ``set_user_attr`` against 1.0 ms with the log and ``synchronous=NORMAL``
    (``_sync_normal``). Readers (``search status``, the parent of ``--workers``) no longer
    wait for a writer either. A process that crashes loses nothing committed; a power cut
    may lose the last commits, never the file. The log needs the processes on one machine,
    as SQLite does anyway: many machines share PostgreSQL.
    """
    database = sqlalchemy.engine.make_url(url).database
    if not database or database == ":memory:":
        return
    with contextlib.closing(sqlite3.connect(database, timeout=60, isolation_level=None)) as db:
        # Switching needs the file to itself and answers "locked" at once, not after the
        # timeout, while another process has it open: processes that meet on a new file
        # (workers, a reader) wait here until one of them has switched it.
        deadline = time.monotonic() + WAL_SWITCH_WAIT_S
        while True:
            try:  # the mode in force after it: "wal", or the old one where WAL cannot be
                db.execute("PRAGMA journal_mode=WAL").fetchone()
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)


def _sync_normal(connection: sqlite3.Connection, _record: Any) -> None:
    """Sync a write-ahead log at checkpoints, not at each commit (per connection)."""
    connection.execute("PRAGMA synchronous=NORMAL")


def _begin_immediate(connection: sqlalchemy.engine.Connection) -> None:
    """Open each SQLite transaction with the database's write lock.

    Optuna hands an enqueued trial to one worker by reading it WAITING and writing it
    RUNNING under ``SELECT ... FOR UPDATE``, which SQLite ignores; Python's sqlite3 also
    reads outside any transaction. Two workers could both read WAITING and both run the
    same trial, and the second to finish failed with "Cannot tell a COMPLETE trial"
    (measured: 3 processes popping 200 enqueued trials ran 16 of them twice). ``BEGIN
    IMMEDIATE`` makes read-then-write one step; the others wait (``timeout``), as
    PostgreSQL's row lock makes them wait there.
    """
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _lost_a_setup_race(error: Exception) -> bool:
    """Whether ``error`` is another process having created the schema first."""
    text = str(error).lower()
    return "already exists" in text or "unique constraint" in text


def quiet_library_logs() -> None:
    """Silence what Optuna and MLflow print on their own, for a command that reports itself.

    A failed trial is reported by the progress line and in MLflow with its reason; Optuna
    would also print its traceback as a warning. MLflow and alembic chatter while setting
    up a database on first use.
    """
    import logging
    import warnings

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# Figures measured when a study is created and kept by it: a relative budget resolved to
# milliseconds, and the anchor's p50 every anchored latency is scaled to.
ANCHOR_P50_KEY = "anchor_p50_ms"
STORED_FIGURES = ("latency_budget_ms", ANCHOR_P50_KEY)


def stored_figures(config: SearchConfig, task_name: str) -> dict[str, float]:
    """Those of ``STORED_FIGURES`` an existing study has (none for a new study)."""
    storage = make_storage(config.storage_url)
    name = config.resolved_study_name(task_name)
    for summary in optuna.get_all_study_summaries(storage):
        if summary.study_name == name:
            attrs = summary.user_attrs
            return {key: float(attrs[key]) for key in STORED_FIGURES if key in attrs}
    return {}


def open_study(
    config: SearchConfig,
    task_name: str,
    first_trials: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    fixed: Mapping[str, Any] | None = None,
    measured: Mapping[str, float] | None = None,
) -> optuna.Study:
    """Create the study, or resume it if its identity matches this run's.

    The sampler is reseeded with the seed plus the number of trials already in the study,
    so a resumed study does not replay the random start-up suggestions it already tried.
    On a new study ``first_trials`` (params, user attrs) are enqueued: the uncompressed
    baseline as trial 0, then single-lever references. ``fixed`` parameters are pinned
    for the trials this invocation samples (``search.core.levers``). ``measured`` figures
    (``STORED_FIGURES``) are kept by the study where it has none yet.
    """
    from search.core.recovery import StaleTrialHandler

    storage = make_storage(
        config.storage_url,
        heartbeat_s=config.heartbeat_s,
        on_stale=StaleTrialHandler(config.mlflow_uri),
    )
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
    try:  # exactly one of several processes starting together creates the study
        study = optuna.create_study(
            study_name=name, storage=storage, directions=list(DIRECTIONS), load_if_exists=False
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        created = False
    running = created is False and (
        name not in existing
        or bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
    )
    # A process joining workers that are running now draws its own random start-up points;
    # otherwise the seed plus the trial count keeps a resumed study reproducible.
    seed = config.seed + known_trials + (os.getpid() if running else 0)
    study.sampler = fixing_sampler(make_sampler(config.sampler, seed), fixed or {})
    if created:
        study.set_metric_names(list(OBJECTIVE_NAMES))
        for key, value in identity.items():
            study.set_user_attr(key, value)
        study.set_user_attr("hardware", hardware)
        # what its front is shown by (``search pareto``); not identity: the same p50 is kept
        study.set_user_attr("objective", config.objective)
        for params, user_attrs in first_trials:
            study.enqueue_trial(dict(params), user_attrs=dict(user_attrs))
    kept = study.user_attrs
    for key, value in (measured or {}).items():
        if key not in kept:  # a new study, or one created before it kept this figure
            study.set_user_attr(key, value)
    return study


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The study's sampler by name (``SearchConfig.sampler``), seeded.

    TPE reads the constraints trials set (``trial.set_constraint``) and ranks infeasible
    trials behind feasible ones, counting other workers' running trials only while there
    are some (``search.core.sampler``); random search ignores everything it has seen.
    """
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return ParallelAwareTPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS)


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
        had = stored.get(key, _BEFORE_RECORDED.get(key))
        if (key in stored or key in _BEFORE_RECORDED) and had != wanted[key]:
            shown = format_ms(had) if key == "latency_budget_ms" else had
            raise StudyError(
                f"study {name!r} was created with {key}={shown}, this run asks for "
                f"{wanted[key]}: repeat the original setting or choose a new --study"
            )


def load_existing_study(storage_url: str, name: str | None) -> optuna.Study:
    """An existing study by name; without a name, the storage's only study.

    Refused in one line, naming the studies there, when the name is unknown or when the
    storage holds several and none was named.
    """
    if storage_url.startswith("sqlite:///"):
        path = Path(storage_url.removeprefix("sqlite:///"))
        if not path.exists():
            raise StudyError(
                f"--study {name or '(any)'}: no such study: {path} does not exist; run "
                "`search run` in this folder first, or pass --storage"
            )
    storage = make_storage(storage_url)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    if name is None:
        if len(names) != 1:
            listed = ", ".join(names) if names else "none"
            raise StudyError(f"say which study with --study NAME (studies here: {listed})")
        name = names[0]
    if name not in names:
        listed = ", ".join(names) if names else "none"
        raise StudyError(
            f"--study {name}: no such study in {redact_url(storage_url)} (studies: {listed})"
        )
    return optuna.load_study(study_name=name, storage=storage)
