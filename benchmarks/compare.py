"""Do two benchmark runs agree? Same rankings, and ratios within the spreads they report.

A ranking is only claimed where the spread allows it: two entries whose intervals overlap
(×faster min–max over rounds; median hypervolume's min–max over seeds) are tied, and the
runs agree when no pair is ordered one way, apart, in one run and the other way, apart, in
the other. Rankings: the models by ×faster and by ×smaller, the efficiency arms by
hypervolume. Ratios: each model's ×faster intervals must overlap between the two runs,
and its ×smaller and test accuracy must be equal (they are properties of the same file);
a model found by a search may differ between runs, and is then reported as such rather
than compared.
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
    b_models = {_kind(m["name"]): m for m in b["models"]}
    for model in a["models"]:
        other = b_models.get(_kind(model["name"]))
        if other is None:
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
    """Each model's interval: ×faster's min–max over rounds; ×smaller is exact."""
    found = {}
    for model in results["models"]:
        value = model[key]
        if isinstance(value, list):
            found[_kind(model["name"])] = (float(value[1]), float(value[2]))
        else:
            found[_kind(model["name"])] = (float(value), float(value))
    return found


def _arm_intervals(results: dict[str, Any]) -> dict[str, Interval]:
    """Each arm's hypervolume, min–max over seeds."""
    summary = results["efficiency"]["summary"]
    return {arm: (float(s["final_min"]), float(s["final_max"])) for arm, s in summary.items()}


def _kind(name: str) -> str:
    """A model's role without its trial number, which differs between runs."""
    return name.split(" (trial")[0]
