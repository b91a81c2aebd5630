"""Ctrl-C that cannot be lost: the request is remembered, not only raised.

Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread
happens to be. When that is inside a destructor or a weakref callback (SQLAlchemy and
torch both run such code while a trial trains), the interpreter prints "Exception
ignored in ..." and carries on: the Ctrl-C is gone, and a 200-epoch fine-tune runs to
its end. Seen once in CI on a fresh clone.

So the handler also sets a flag, and the loops that take long (each training step, each
phase of a trial) call :func:`raise_if_interrupted`, which raises again if an earlier
``KeyboardInterrupt`` was swallowed; the "Exception ignored" report of the swallowed one
is kept off the user's terminal. Once raised, the flag is cleared: the request has been
delivered, and the clean-up that follows (failing the trial, closing its MLflow runs)
must not be interrupted by it a second time.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

_requested = threading.Event()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _requested.set()
    raise KeyboardInterrupt


def _quiet_about_swallowed_ctrl_c(unraisable: Any) -> None:
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        return  # the flag is set; the next checkpoint raises it where it can be handled
    sys.__unraisablehook__(unraisable)


def install() -> None:
    """Make SIGINT stop the command cleanly, even where a shell started it ignored."""
    _requested.clear()
    signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _quiet_about_swallowed_ctrl_c


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a Ctrl-C arrived and has not yet been delivered."""
    if _requested.is_set():
        _requested.clear()
        raise KeyboardInterrupt


def delivered() -> None:
    """Note that a ``KeyboardInterrupt`` reached its handler, so no checkpoint repeats it."""
    _requested.clear()
