"""The machine-wide lock: a second process waits for the first to let go."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from search.common.file_lock import held

HOLD_IN_CHILD = """
import sys, time
from pathlib import Path
from search.common.file_lock import held
with held(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_process_waits_until_the_first_releases(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "x.lock"  # the folder does not exist yet
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_IN_CHILD, str(lock), "1.0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    started = time.perf_counter()
    with held(lock):
        waited = time.perf_counter() - started
    assert child.wait(timeout=30) == 0
    assert waited > 0.5  # blocked for most of the child's second


def test_the_lock_is_free_again_after_an_error(tmp_path: Path) -> None:
    lock = tmp_path / "y.lock"
    try:
        with held(lock):
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    started = time.perf_counter()
    with held(lock):
        assert time.perf_counter() - started < 0.5
