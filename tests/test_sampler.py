"""The study's TPE: the constant liar only while another trial runs (search.core.sampler)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from search.core.sampler import ParallelAwareTPESampler
from search.core.study import make_sampler, make_storage

STARTUP = 5
SPACE: dict[str, optuna.distributions.BaseDistribution] = {
    f"p{i}": optuna.distributions.FloatDistribution(0.0, 1.0) for i in range(8)
}


def _study(tmp_path: Path, name: str) -> optuna.Study:
    """A two-objective study with some finished trials, as a search's has (SQLite, WAL)."""
    storage = make_storage(f"sqlite:///{tmp_path / name}.db")
    study = optuna.create_study(
        storage=storage,
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for _ in range(STARTUP + 3):
        trial = study.ask(SPACE)
        study.tell(trial, [trial.params["p0"], trial.params["p1"]])
    return study


def _counting_reads(study: optuna.Study) -> Callable[[], int]:
    """How many times the study's trials were read from its storage since this call."""
    storage = study._storage
    real = storage.get_all_trials
    calls = [0]

    def counted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return real(*args, **kwargs)

    storage.get_all_trials = counted  # type: ignore[method-assign]
    return lambda: calls[0]


def _sample(study: optuna.Study, sampler: optuna.samplers.BaseSampler) -> dict[str, float]:
    study.sampler = sampler
    trial = study.ask()
    return {name: trial._suggest(name, dist) for name, dist in SPACE.items()}


def test_make_sampler_gives_the_parallel_aware_tpe() -> None:
    assert isinstance(make_sampler("tpe", 0), ParallelAwareTPESampler)


def test_alone_it_reads_the_study_once_per_trial_not_per_parameter(tmp_path: Path) -> None:
    study = _study(tmp_path, "alone")
    reads = _counting_reads(study)
    sampler = ParallelAwareTPESampler(seed=1, n_startup_trials=STARTUP)
    _sample(study, sampler)
    assert not sampler.lies
    # asking (waiting trials), the running ones, the finished ones: none per parameter
    assert reads() <= 3, "the liar re-reads the storage at every parameter"

    # Optuna's own default (constant_liar=True) reads it at each of the eight parameters
    plain = _study(tmp_path, "plain")
    plain_reads = _counting_reads(plain)
    _sample(plain, optuna.samplers.TPESampler(seed=1, n_startup_trials=STARTUP))
    assert plain_reads() >= len(SPACE)


def test_alone_it_samples_what_the_default_tpe_samples(tmp_path: Path) -> None:
    ours = _sample(
        _study(tmp_path, "a"), ParallelAwareTPESampler(seed=3, n_startup_trials=STARTUP)
    )
    theirs = _sample(
        _study(tmp_path, "b"), optuna.samplers.TPESampler(seed=3, n_startup_trials=STARTUP)
    )
    assert ours == theirs


@pytest.mark.parametrize("running", [True, False])
def test_with_another_trial_running_it_lies_as_the_default_does(
    tmp_path: Path, running: bool
) -> None:
    def with_worker(name: str) -> optuna.Study:
        study = _study(tmp_path, name)
        if running:  # another worker's trial, half-sampled and not yet told
            other = study.ask()
            other._suggest("p0", SPACE["p0"])
        return study

    sampler = ParallelAwareTPESampler(seed=4, n_startup_trials=STARTUP)
    ours = _sample(with_worker("ours"), sampler)
    assert sampler.lies is running
    liar = _sample(
        with_worker("liar"),
        optuna.samplers.TPESampler(seed=4, n_startup_trials=STARTUP, constant_liar=running),
    )
    assert ours == liar
