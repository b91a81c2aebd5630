"""Ctrl-C that cannot be lost: the request is remembered, not only raised.

Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread
happens to be. When that is inside a destructor or a weakref callback (SQLAlchemy and
torch both run such code while a trial trains), the interpreter prints "Exception
ignored in ..." and carries on: the Ctrl-C is gone, and a 200-epoch fine-tune runs to
its end. Seen once in CI on a fresh clone.

So the handler also sets a flag, and the loops that take long (each training step, each
phase of a trial, the wait for worker processes) call :func:`raise_if_interrupted`, which
raises again if an earlier ``KeyboardInterrupt`` was swallowed; the "Exception ignored"
traceback of the swallowed one becomes one line saying so. A checkpoint clears the flag
when it raises, and so does :func:`delivered`, called where a ``KeyboardInterrupt`` is
caught: the clean-up that follows (failing the trial, closing its MLflow runs) must not
be interrupted by the same Ctrl-C a second time.

The flag is a plain bool, not a ``threading.Event``: a signal handler runs in the main
thread between bytecodes, possibly while that thread is inside the Event's own lock.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

_requested = False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def _note_swallowed_ctrl_c(unraisable: Any) -> None:
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        print(
            "Ctrl-C arrived while Python was cleaning up; stopping at the next step "
            "(press it again if nothing stops)",
            file=sys.stderr,
        )
        return
    sys.__unraisablehook__(unraisable)


def install() -> None:
    """Make SIGINT stop the command cleanly, even where a shell started it ignored."""
    delivered()
    signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _note_swallowed_ctrl_c


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a Ctrl-C arrived and has not yet been delivered."""
    if _requested:
        delivered()
        raise KeyboardInterrupt


def delivered() -> None:
    """Note that a ``KeyboardInterrupt`` reached its handler, so no checkpoint repeats it."""
    global _requested
    _requested = False
