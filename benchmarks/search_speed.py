"""Two runs' compression searches against wall time: which reached its front sooner.

``compare`` asks whether two runs found the same models; this asks how fast. It pairs the
searches the two runs ran with the same budget and seed (``compress-<budget>-seed<n>`` in
each run's work folder) and, for each pair, reports the wall time each search took, the
hypervolume of its feasible front at its end, and the other's hypervolume at the same wall
time. That is how successive halving is judged (``--early-stop on`` against ``off`` or
``shadow``, same seeds): with the rule on, a search should reach as good a front in less
time, or a better one in the same time. The 200 s efficiency part cannot show it: its runs
end before many candidates have reached a rung.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import optuna

from benchmarks.hypervolume import Box, box_of, curve, feasible_points

SEARCH_PREFIX = "compress-"
Points = list[tuple[float, tuple[float, float, float]]]


@dataclass(frozen=True)
class Search:
    """One compression search: its feasible points over time, box and wall time."""

    name: str
    points: Points
    box: Box
    seconds: float

    def hypervolume_at(self, seconds: float) -> float:
        return curve(self.points, self.box, [seconds])[0]

    @property
    def final(self) -> float:
        return self.hypervolume_at(self.seconds)

    def seconds_to_reach(self, target: float) -> float | None:
        """When this search's front first reached ``target`` (None: never)."""
        times = [seconds for seconds, _ in self.points]
        volumes = curve(self.points, self.box, times)
        reached = [t for t, v in zip(times, volumes, strict=True) if v >= target]
        return reached[0] if reached else None


def search_of(study: optuna.Study) -> Search:
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.datetime_start and t.datetime_complete]
    if not finished:
        raise ValueError(f"study {study.study_name!r} has no finished trial")
    start = min(t.datetime_start for t in finished if t.datetime_start)
    end = max(t.datetime_complete for t in finished if t.datetime_complete)
    return Search(
        study.study_name, feasible_points(trials), box_of(study), (end - start).total_seconds()
    )


def searches_in(storage: str) -> dict[str, Search]:
    """Every compression search in one run's Optuna storage, by study name."""
    return {
        summary.study_name: search_of(
            optuna.load_study(study_name=summary.study_name, storage=storage)
        )
        for summary in optuna.get_all_study_summaries(storage)
        if summary.study_name.startswith(SEARCH_PREFIX)
    }


def speed_lines(first: dict[str, Search], second: dict[str, Search]) -> list[str]:
    """One line per search both runs ran, and the medians of the ratios over them."""
    lines: list[str] = []
    time_ratios, volume_ratios = [], []
    for name in sorted(set(first) & set(second)):
        one, two = first[name], second[name]
        other_then = one.hypervolume_at(two.seconds)
        reached = two.seconds_to_reach(one.final)
        time_ratios.append(two.seconds / one.seconds)
        if other_then > 0:
            volume_ratios.append(two.final / other_then)
        lines.append(
            f"{name}: {one.seconds:.0f} s, hypervolume {one.final:.4f} vs {two.seconds:.0f} s "
            f"({two.seconds / one.seconds:.2f} of the time), {two.final:.4f}; the first's at "
            f"{two.seconds:.0f} s: {other_then:.4f}"
            + (f" ({two.final / other_then:.2f}x)" if other_then > 0 else "")
            + "; the second reached the first's final front "
            + ("never" if reached is None else f"at {reached:.0f} s ({reached / one.seconds:.2f})")
        )
    if time_ratios:
        volume = (
            f"{statistics.median(volume_ratios):.2f}x the first's"
            if volume_ratios
            else "not comparable"
        )
        lines.append(
            f"median over {len(time_ratios)} searches: the second took "
            f"{statistics.median(time_ratios):.2f} of the first's wall time; hypervolume at "
            f"equal time {volume}"
        )
    return lines


def storage_of(work_folder: Path) -> str | None:
    """The Optuna storage a benchmark run wrote in ``work_folder``, if it is still there."""
    database = work_folder / "studies" / "optuna.db"
    return f"sqlite:///{database}" if database.exists() else None
