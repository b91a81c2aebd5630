"""Do two benchmark runs agree? Same rankings, and ratios within the spreads they report.

A ranking is only claimed where the spread allows it: two entries whose intervals overlap
(×faster min–max over rounds; median hypervolume's min–max over seeds) are tied, and the
runs agree when no pair is ordered one way, apart, in one run and the other way, apart, in
the other. Rankings: the models by ×faster and by ×smaller, the efficiency arms by
hypervolume. Ratios: each fixed model's ×faster intervals must overlap between the two
runs, and its ×smaller and test accuracy must be equal (they are properties of the same
file). A model found by a search differs from seed to seed and run to run: the searches'
best models are ranked by their range over seeds, and each run's median ×faster, ×smaller
and test Δ must lie within the other run's min–max over seeds.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

Interval = tuple[float, float]


def agreement(first: Path, second: Path) -> tuple[bool, list[str]]:
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    lines: list[str] = []
    ok = True
    rankings = {
        "models by ×faster": [_model_intervals(r, "faster") for r in (a, b)],
        "models by ×smaller": [_model_intervals(r, "smaller") for r in (a, b)],
        "efficiency arms by hypervolume": [_arm_intervals(r) for r in (a, b)],
    }
    for what, (one, two) in rankings.items():
        clashes = contradictions(one, two)
        ok &= not clashes
        lines.append(f"{what}: {'same' if not clashes else 'DIFFERENT'} ranking")
        lines += [f"  first:  {ordering(one)}", f"  second: {ordering(two)}"]
        lines += [f"  {x} against {y}: opposite orders, apart in both" for x, y in clashes]
    searched_a, searched_b = _searched(a), _searched(b)
    for share in sorted(set(searched_a) & set(searched_b)):
        for key, (one, two) in _paired(searched_a[share], searched_b[share]).items():
            within = one[1] <= two[0] <= one[2] and two[1] <= one[0] <= two[2]
            ok &= within
            lines.append(
                f"best at {share}, {key}: median {one[0]:.2f} ({one[1]:.2f}–{one[2]:.2f}) vs "
                f"{two[0]:.2f} ({two[1]:.2f}–{two[2]:.2f}) "
                f"({'each within the other' if within else 'OUTSIDE the other'})"
            )
    b_models = {_kind(m["name"]): m for m in b["models"] if not _is_searched(m["name"])}
    for model in a["models"]:
        other = b_models.get(_kind(model["name"]))
        if other is None or _is_searched(model["name"]):
            continue
        _, low, high = model["faster"]
        _, other_low, other_high = other["faster"]
        overlap = low <= other_high and other_low <= high
        same_file = model["size_bytes"] == other["size_bytes"]
        same_accuracy = model["test_accuracy"] == other["test_accuracy"]
        if same_file:
            ok &= overlap and same_accuracy
        lines.append(
            f"{_kind(model['name'])}: ×faster {low:.2f}–{high:.2f} vs {other_low:.2f}–"
            f"{other_high:.2f} ({'overlap' if overlap else 'APART'}); "
            + ("same file size" if same_file else "another model (the search found another)")
            + (
                ""
                if same_accuracy or not same_file
                else f"; test accuracy {model['test_accuracy']:.4f} vs "
                f"{other['test_accuracy']:.4f} (DIFFERENT weights)"
            )
        )
    return ok, lines


def contradictions(one: dict[str, Interval], two: dict[str, Interval]) -> list[tuple[str, str]]:
    """Pairs ordered one way, apart, in ``one`` and the other way, apart, in ``two``."""
    clashes = []
    for x, y in itertools.combinations(sorted(set(one) & set(two)), 2):
        first, second = _order(one[x], one[y]), _order(two[x], two[y])
        if first and second and first != second:
            clashes.append((x, y))
    return clashes


def ordering(intervals: dict[str, Interval]) -> str:
    """Highest first, each with its interval: entries whose intervals overlap are tied."""
    names = sorted(intervals, key=lambda n: -sum(intervals[n]))
    return ", ".join(f"{n} {intervals[n][0]:.4g}–{intervals[n][1]:.4g}" for n in names)


def _order(x: Interval, y: Interval) -> int:
    """1 when x lies above y, -1 below, 0 when the intervals overlap."""
    if x[0] > y[1]:
        return 1
    if y[0] > x[1]:
        return -1
    return 0


def _model_intervals(results: dict[str, Any], key: str) -> dict[str, Interval]:
    """Each model's interval: ×faster's min–max over rounds; ×smaller is exact. The best
    models of one budget's searches (one per seed) are one entry spanning all of them."""
    found: dict[str, Interval] = {}
    for model in results["models"]:
        value = model[key]
        low, high = (value[1], value[2]) if isinstance(value, list) else (value, value)
        kind = _kind(model["name"])
        known = found.get(kind, (float(low), float(high)))
        found[kind] = (min(known[0], float(low)), max(known[1], float(high)))
    return found


Figures = dict[str, tuple[float, float, float]]  # figure -> (median, min, max)


def _searched(results: dict[str, Any]) -> dict[str, Figures]:
    """Per budget, the searches' best models over the seeds. A results file from before
    seeds were searched has one best model: its ×faster spans its rounds."""
    found: dict[str, Figures] = {}
    for share, budget in results["compression"].items():
        summary = budget.get("summary")
        if summary is not None:
            keys = ("faster", "smaller", "test_delta_points")
            found[share] = {k: tuple(summary[k]) for k in keys if k in summary}  # type: ignore[misc]
            continue
        for model in results["models"]:
            if _kind(model["name"]) == f"best at {share}":
                delta = float(model["accuracy_delta_points"])
                found[share] = {
                    "faster": tuple(model["faster"]),  # type: ignore[dict-item]
                    "smaller": (model["smaller"],) * 3,
                    "test_delta_points": (delta, delta, delta),
                }
    return found


def _paired(one: Figures, two: Figures) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    return {key: (one[key], two[key]) for key in one if key in two}


def _is_searched(name: str) -> bool:
    return name.startswith("best at ")


def _arm_intervals(results: dict[str, Any]) -> dict[str, Interval]:
    """Each arm's hypervolume, min–max over seeds."""
    summary = results["efficiency"]["summary"]
    return {arm: (float(s["final_min"]), float(s["final_max"])) for arm, s in summary.items()}


def _kind(name: str) -> str:
    """A model's role without its seed and trial number, which differ between runs."""
    return name.split(" (trial")[0].split(", seed ")[0]
