"""Running the study's trials: in this process, or in N worker processes on one machine.

``search run --workers N`` starts N processes (``spawn``: no forked torch or database
state) that each load the study from its storage and run their share of the trials, as
workers on other machines would. What keeps them apart:

* trials: Optuna hands each enqueued or new trial to exactly one worker through the
  storage; each worker's sampler has its own seed, so their random start-ups differ;
* CPU: each worker's PyTorch gets ``cores // N`` threads for fine-tuning and evaluation;
* latency: measured under the machine's per-device lock (``search.measure.latency``), so two
  workers never time each other;
* the record: SQLite waits for a busy database (``search.core.study.make_storage``) instead of
  failing, and every trial writes its own MLflow run.

The parent process prepared the study and the MLflow parent run before starting them, and
reports each finished trial as it appears in the storage.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from search.common import interrupt
from search.common.errors import SearchError
from search.core.config import SearchConfig

if TYPE_CHECKING:  # imported lazily at run time: they import torch
    from torch import nn

    from search.core.objective import RunLink, TrialSettings
    from search.train.task import Task

TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
POLL_S = 1.0
# Worker k's sampler seed is offset by k times this, so workers started together on a
# study with the same number of trials do not draw the same random start-up points.
SEED_STRIDE = 100_003


@dataclass(frozen=True)
class WorkerJob:
    """What one worker process needs; picklable, sent to a spawned process."""

    config: SearchConfig
    settings: TrialSettings
    study_name: str
    experiment_id: str
    parent_run_id: str
    fixed: dict[str, Any]
    index: int
    trials: int | None
    torch_threads: int


def trial_shares(total: int | None, workers: int) -> list[int | None]:
    """``total`` trials split as evenly as possible (None: each runs until the timeout)."""
    if total is None:
        return [None] * workers
    return [total // workers + (1 if index < total % workers else 0) for index in range(workers)]


def torch_threads_per_worker(workers: int) -> int:
    """This machine's cores shared out: each worker's PyTorch thread budget."""
    return max(1, (os.cpu_count() or 1) // workers)


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    *,
    trials: int | None,
    timeout_s: float | None,
    max_failures: int,
    callbacks: list[TrialCallback] | None = None,
) -> None:
    """``study.optimize`` as every worker calls it: a failing trial does not stop the study,
    ``max_failures`` of them in a row do (``search.core.recovery``)."""
    from search.core.recovery import ConsecutiveFailures

    study.optimize(
        objective,
        n_trials=trials,
        timeout=timeout_s,
        catch=(Exception,),
        callbacks=[ConsecutiveFailures(max_failures), *(callbacks or [])],
        # No gc.collect() after each trial: it took 0.26 s, more than a tenth of a trial
        # stopped by latency-first; the model cache bounds memory instead.
        gc_after_trial=False,
    )


@dataclass(frozen=True)
class TrialContext:
    """What the objective of every trial in one process is built from."""

    task: Task
    base_model: nn.Module
    settings: TrialSettings
    link: RunLink


def run_trials(
    study: optuna.Study,
    context: TrialContext,
    config: SearchConfig,
    *,
    trials: int | None,
    callbacks: list[TrialCallback] | None = None,
    prefix: str = "search-",
) -> None:
    """This process's share of trials, each in a scratch folder removed afterwards."""
    from search.core.objective import TrialObjective

    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        objective = TrialObjective(
            context.task, context.base_model, context.settings, context.link, Path(scratch)
        )
        optimize(
            study,
            objective,
            trials=trials,
            timeout_s=config.timeout_s,
            max_failures=config.max_failures,
            callbacks=callbacks,
        )


def run_workers(
    jobs: list[WorkerJob], study: optuna.Study, on_trial: TrialCallback | None
) -> None:
    """Start one process per job, report trials as they finish, wait for all of them.

    Ctrl-C reaches the workers too (one process group): each fails its current trial
    cleanly and exits; the parent waits for them before it summarises.
    """
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=worker_main, args=(job,), daemon=False) for job in jobs]
    for process in processes:
        process.start()
    reported = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    try:
        while any(process.is_alive() for process in processes):
            time.sleep(POLL_S)
            _report_new(study, reported, on_trial)
            interrupt.raise_if_interrupted()  # SQLAlchemy's callbacks can swallow a Ctrl-C
    finally:
        for process in processes:
            process.join()
    _report_new(study, reported, on_trial)
    interrupt.raise_if_interrupted()
    failed = [job.index for job, p in zip(jobs, processes, strict=True) if p.exitcode != 0]
    if failed:
        raise SearchError(
            f"worker{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))} stopped "
            "with an error; their finished trials are saved, the rest can be resumed"
        )


def _report_new(study: optuna.Study, reported: set[int], on_trial: TrialCallback | None) -> None:
    for trial in study.get_trials(deepcopy=False):
        if trial.state.is_finished() and trial.number not in reported:
            reported.add(trial.number)
            if on_trial is not None:
                on_trial(study, trial)


def worker_main(job: WorkerJob) -> None:
    """One worker: load task, model and study, then run its share of trials."""
    import torch

    from search.core.levers import fixing_sampler
    from search.core.objective import RunLink
    from search.core.recovery import StaleTrialHandler
    from search.core.study import make_sampler, make_storage, quiet_library_logs
    from search.tasks.loader import build_model, load_task
    from search.track.tracker import tracker_for

    interrupt.install()  # the terminal's Ctrl-C reaches every worker; none may lose it
    torch.set_num_threads(job.torch_threads)
    quiet_library_logs()
    config = job.config
    task = load_task(config.task, cache_dir=config.cache_dir)
    base_model = build_model(task, config.task)
    storage = make_storage(
        config.storage_url,
        heartbeat_s=config.heartbeat_s,
        on_stale=StaleTrialHandler(config.mlflow_uri),
    )
    known = len(optuna.load_study(study_name=job.study_name, storage=storage).trials)
    sampler = fixing_sampler(
        make_sampler(config.sampler, config.seed + known + SEED_STRIDE * (job.index + 1)),
        job.fixed,
    )
    study = optuna.load_study(study_name=job.study_name, storage=storage, sampler=sampler)
    link = RunLink(tracker_for(config), job.experiment_id, job.parent_run_id, job.study_name)
    try:
        run_trials(
            study,
            TrialContext(task, base_model, job.settings, link),
            config,
            trials=job.trials,
            prefix=f"search-w{job.index}-",
        )
    except KeyboardInterrupt:
        return  # the interrupted trial is recorded as failed; the parent reports
