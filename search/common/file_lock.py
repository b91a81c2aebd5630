"""One machine-wide lock held across processes: an advisory ``flock`` on a file.

Two things on one machine must not run side by side: timing a model (parallel workers would
time each other's contention) and training the task's baseline (two searches started
together would both train it, each on the pinned threads). The kernel releases the lock
when its holder dies, so a crash never leaves it held.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def held(path: Path) -> Iterator[None]:
    """Block until this process holds the exclusive lock on ``path``; release it after.

    The file (and its folder) is created if missing and left behind: removing it while
    another process waits on it would let a third lock a new file beside them.
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
