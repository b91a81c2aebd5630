"""Do two benchmark runs agree? Same rankings, and ratios within the spreads they report.

A ranking is only claimed where the spread allows it: two entries whose intervals overlap
(×faster min–max over rounds; median hypervolume's min–max over seeds) are tied, and the
runs agree when no pair is ordered one way, apart, in one run and the other way, apart, in
the other. Rankings: the models by ×faster and by ×smaller, the efficiency arms by
hypervolume. Ratios: each fixed model's ×faster intervals must overlap between the two
runs, and its ×smaller and test accuracy must be equal (they are properties of the same
file).

A model found by a search differs from seed to seed and run to run, so each run's best
models (one per seed) are a sample of what the search finds, and the question is whether
the two samples could come from the same search. The answer is the Mann–Whitney rank-sum
test, exact over every way of splitting the pooled seeds into two runs of the same sizes,
two-sided; the runs differ when at most ``ALPHA`` of the splits rank them as far apart as
the actual one. With three seeds a side that is only the split where every seed of one
run lies beyond every seed of the other: the min–max ranges over seeds are apart, the rule
applied to the fixed models' rounds; more seeds give the test more power, and with fewer
(a search that found nothing feasible) the runs cannot be told apart, so ``compare`` says
so and does not count it as agreement. An earlier rule (each run's median inside the
other's min–max) fails about 60% of pairs of identical searches at three seeds
(``tests/test_benchmarks.py`` simulates it), so it could not tell a reproducible search
from one that is not.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import PermutationMethod, mannwhitneyu

Interval = tuple[float, float]

# The p-value at or below which two runs' searches differ: with three seeds a side, the
# 2 of the 20 splits of the pooled seeds where the runs lie apart completely.
ALPHA = 0.10


def agreement(first: Path, second: Path) -> tuple[bool, list[str]]:
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    lines: list[str] = []
    ok = True
    settings = [r["plan"].get("fixed") or [] for r in (a, b)]
    if settings[0] != settings[1]:  # then the pick rows compare two searches, on purpose
        shown = [
            ", ".join(f"{n}={json.dumps(v)}" for n, v in fixed) or "the defaults"
            for fixed in settings
        ]
        lines.append(f"searches with other lever settings: {shown[0]} vs {shown[1]}")
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
            label = f"best at {share}, {key}: median {_spread(one)} vs {_spread(two)}"
            if not can_differ(len(one), len(two)):
                ok = False  # a check that cannot fail says nothing
                lines.append(
                    f"{label}: TOO FEW seeds with a model to tell ({len(one)}, {len(two)})"
                )
                continue
            p = same_search_p(one, two)
            ok &= p > ALPHA
            verdict = "same search" if p > ALPHA else "DIFFERENT searches"
            lines.append(f"{label}: {verdict} (p = {p:.2f} over splits of the seeds)")
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


def can_differ(first: int, second: int) -> bool:
    """Whether two runs of these many seeds can differ at ``ALPHA``: the most extreme
    split, two-sided, is 2 of the C(n1 + n2, n1) (3 and 3: 0.10; 2 and 3: 0.20)."""
    return first >= 1 and second >= 1 and 2 / math.comb(first + second, first) <= ALPHA


def chance_next_median_within(seeds: int) -> float:
    """How often the next run's median over ``seeds`` picks lies strictly inside this run's
    min–max over as many, when both runs draw from one and the same search (no ties).

    Exact, by exchangeability: each of the C(2n, n) ways of ranking the pooled 2n picks
    between the runs is equally likely, and the median (both middle values for an even
    count) must fall between this run's lowest and highest. It does not when the next run
    holds the pool's lowest (or highest) picks up to its median: n = 2k + 1 has
    C(2n - k - 1, n) such splits at each end; n = 2k has C(2n - k, n), one split counted
    at both. ``tests/test_benchmarks.py`` checks these against counting every split.
    3 picks: 0.60; 5: 0.83; 7: 0.93. Why it is reported: a min–max over three
    seeds reads like an interval the next run will land in, and for a search that is
    perfectly reproducible in distribution it misses two times in five.
    """
    if seeds < 1:
        raise ValueError("seeds must be at least 1")
    half = seeds // 2
    splits = math.comb(2 * seeds, seeds)
    if seeds % 2:
        outside = 2 * math.comb(2 * seeds - half - 1, seeds)
    else:
        outside = 2 * math.comb(2 * seeds - half, seeds) - 1
    return 1 - outside / splits


def same_search_p(one: list[float], two: list[float]) -> float:
    """Two-sided exact p-value of the Mann–Whitney rank-sum test over every split of the
    pooled seeds (a permutation null, so ties between the runs' values are handled)."""
    exact = PermutationMethod(n_resamples=np.inf)  # every split: the same answer every time
    return float(mannwhitneyu(one, two, method=exact, alternative="two-sided").pvalue)


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


Figures = dict[str, list[float]]  # figure -> its value for each seed's best model


def _searched(results: dict[str, Any]) -> dict[str, Figures]:
    """Per budget, each seed's best model's ×faster (its median over rounds), ×smaller and
    test Δ points. A results file from before seeds were searched has one best model."""
    found: dict[str, Figures] = {}
    for share, budget in results["compression"].items():
        names = {run["name"] for run in budget.get("seeds", []) if "name" in run}
        rows = [
            model
            for model in results["models"]
            if model["name"] in names or (not names and _kind(model["name"]) == f"best at {share}")
        ]
        if rows:
            found[share] = _figures(rows)
        longer = {run["finetuned_name"] for run in budget.get("seeds", [])
                  if "finetuned_name" in run}  # fmt: skip
        rows = [model for model in results["models"] if model["name"] in longer]
        if rows:  # the picks rebuilt with the full fine-tune (runs from 2026-12-02 on)
            found[f"{share} fine-tuned"] = _figures(rows)
    return found


def _figures(rows: list[dict[str, Any]]) -> Figures:
    return {
        "faster": [float(row["faster"][0]) for row in rows],
        "smaller": [float(row["smaller"]) for row in rows],
        "test_delta_points": [float(row["accuracy_delta_points"]) for row in rows],
    }


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f} to {max(values):.2f})"


def _paired(one: Figures, two: Figures) -> dict[str, tuple[list[float], list[float]]]:
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
