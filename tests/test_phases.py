"""The phase clock counts each second once, in the innermost phase open."""

from __future__ import annotations

import time

from search.core.phases import PhaseClock


def test_a_nested_phase_is_taken_out_of_the_phase_around_it() -> None:
    clock = PhaseClock()
    started = time.perf_counter()
    with clock.phase("fine_tune"):
        time.sleep(0.05)
        with clock.phase("tracking"):
            time.sleep(0.05)
        with clock.phase("tracking"):
            time.sleep(0.05)
    wall = time.perf_counter() - started
    assert 0.09 <= clock.seconds["tracking"] < 0.14
    assert 0.04 <= clock.seconds["fine_tune"] < 0.09  # its own 0.05 s, not the 0.15 s around
    assert sum(clock.seconds.values()) <= wall


def test_phases_one_after_another_add_up() -> None:
    clock = PhaseClock()
    for _ in range(2):
        with clock.phase("export"):
            time.sleep(0.02)
    assert 0.035 <= clock.seconds["export"] < 0.08
