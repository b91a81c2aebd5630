"""A Ctrl-C that lands inside a destructor must still stop the trial.

CI once lost one: SIGINT arrived while SQLAlchemy ran a weakref callback, the interpreter
printed "Exception ignored in ..." and a 200-epoch fine-tune ran on.
"""

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from search.common import interrupt
from search.core.phases import PhaseClock
from search.train.loop import fit


@pytest.fixture
def ctrl_c_handler() -> Iterator[None]:
    interrupt.install()  # the handler and hook are put back by conftest.py
    yield
    interrupt.delivered()


class SendsCtrlCWhenCollected:
    """Like a weakref callback that is running when the user presses Ctrl-C."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)


def swallow_a_ctrl_c() -> None:
    """Deliver SIGINT inside a destructor, where its KeyboardInterrupt is ignored."""
    SendsCtrlCWhenCollected()  # collected at once; "Exception ignored in ..." on stderr


def tiny_loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(32, 4, generator=generator), torch.randint(0, 3, (32,))
    return DataLoader(TensorDataset(inputs, targets), batch_size=8)


def test_a_ctrl_c_swallowed_by_a_destructor_stops_training_at_the_next_step(
    ctrl_c_handler: None,
) -> None:
    model = nn.Linear(4, 3)
    steps = []
    swallow_a_ctrl_c()
    with pytest.raises(KeyboardInterrupt):
        fit(
            model,
            tiny_loader(),
            epochs=1000,
            lr=0.01,
            loss_fn=F.cross_entropy,
            on_epoch=lambda epoch, loss: steps.append(epoch),
        )
    assert steps == []  # stopped in the first epoch, not after 1000


def test_a_swallowed_ctrl_c_resurfaces_at_the_next_phase_and_only_once(
    ctrl_c_handler: None,
) -> None:
    clock = PhaseClock()
    swallow_a_ctrl_c()
    with pytest.raises(KeyboardInterrupt), clock.phase("export"):
        pass
    with clock.phase("cleanup"):  # delivered: failing the trial must not be interrupted
        pass
    assert "cleanup" in clock.seconds


def test_the_user_sees_one_line_not_a_traceback_for_the_swallowed_ctrl_c() -> None:
    """Outside pytest (which catches unraisable errors itself), as the CLI runs."""
    script = textwrap.dedent("""
        import os, signal
        from search.common import interrupt
        class SendsCtrlCWhenCollected:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)
        interrupt.install()
        SendsCtrlCWhenCollected()
        try:
            interrupt.raise_if_interrupted()
        except KeyboardInterrupt:
            print("stopped")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.stdout == "stopped\n"
    assert result.stderr == (
        "Ctrl-C arrived while Python was cleaning up; stopping at the next step "
        "(press it again if nothing stops)\n"
    )
