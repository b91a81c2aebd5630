"""Shared fixtures: a tiny trained digits task (trained once per session) and a scratch home."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

from tiny_task import TINY, TINY_VIT

from search.tasks.digits import DigitsTask

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run where PyTorch sees a CUDA device, and are skipped elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; PyTorch sees none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def ctrl_c_handling_restored() -> Iterator[None]:
    """A test that calls the CLI's ``main()`` in this process installs its Ctrl-C handler
    and its quiet unraisable hook (``search/interrupt.py``); the next test gets pytest's."""
    import signal

    from search.common import interrupt

    handler, hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    yield
    interrupt.delivered()  # a flag left set would stop a later test's training
    signal.signal(signal.SIGINT, handler)
    sys.unraisablehook = hook


@pytest.fixture(scope="session", autouse=True)
def shorter_latency_limits() -> Iterator[None]:
    """Time each file for 0.5 to 2 s, and warm it up for at most 1.5 s, in this process.

    Why: the tests check what the search does with a figure, not the figure's last percent,
    and on a machine whose speed changes in phases (2026-11-25) a median reaches its 1%
    precision late or not at all, so measurements ran on towards their 5 s limit: the
    suite took 12 to 14 minutes there against 9 on a quiet machine. An anchored
    measurement times two files, candidate and baseline, for twice as long; half a second
    each keeps it at the one second a candidate alone had. The minimum of 100 calls stays.
    Spawned workers and subprocesses keep the shipped limits.
    """
    import search.measure.latency as latency

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(latency, "MIN_MEASURE_S", 0.5)
        patch.setattr(latency, "MAX_MEASURE_S", 2.0)
        patch.setattr(latency, "MAX_WARMUP_S", 1.5)
        yield


@pytest.fixture(scope="session")
def task_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("baseline-cache")
    os.environ["SEARCH_TEST_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_task(task_cache: Path) -> DigitsTask:
    """The tiny digits task with its baseline trained (about 10 s, once per session)."""
    torch.set_num_threads(os.cpu_count() or 1)
    task = DigitsTask(TINY, cache_dir=task_cache)
    task.build_model()
    return task


@pytest.fixture(scope="session")
def tiny_vit_task(task_cache: Path) -> DigitsTask:
    """The tiny digits transformer with its baseline trained (a few seconds, once)."""
    torch.set_num_threads(os.cpu_count() or 1)
    task = DigitsTask(TINY_VIT, cache_dir=task_cache)
    task.build_model()
    return task


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder: studies/ and mlruns/ land here, not in the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
