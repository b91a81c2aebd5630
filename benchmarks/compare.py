"""Do two benchmark runs agree? Same rankings, and ratios within the spreads they report.

Rankings: the models by ×faster and by ×smaller, and the efficiency arms by median
hypervolume. Ratios: each model's ×faster intervals (min–max over rounds) must overlap
between the two runs, and its ×smaller and test accuracy must be equal (they are properties
of the same file); a model found by a search may differ between runs, and is then
reported as such rather than compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def agreement(first: Path, second: Path) -> tuple[bool, list[str]]:
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    lines: list[str] = []
    ok = True
    for what, key in (("×faster", "faster"), ("×smaller", "smaller")):
        ranks = [_ranking(r["models"], key) for r in (a, b)]
        same = [_kind(n) for n in ranks[0]] == [_kind(n) for n in ranks[1]]
        ok &= same
        lines.append(f"models by {what}: {'same' if same else 'DIFFERENT'} ranking")
        if not same:
            lines += [f"  first:  {ranks[0]}", f"  second: {ranks[1]}"]
    arms = [sorted(r["efficiency"]["summary"], key=lambda k, r=r: -_median(r, k)) for r in (a, b)]
    same_arms = arms[0] == arms[1]
    ok &= same_arms
    lines.append(f"efficiency arms by hypervolume: {'same' if same_arms else 'DIFFERENT'} order")
    b_models = {_kind(m["name"]): m for m in b["models"]}
    for model in a["models"]:
        other = b_models.get(_kind(model["name"]))
        if other is None:
            continue
        _, low, high = model["faster"]
        _, other_low, other_high = other["faster"]
        overlap = low <= other_high and other_low <= high
        same_file = model["size_bytes"] == other["size_bytes"]
        if same_file:
            ok &= overlap
        lines.append(
            f"{_kind(model['name'])}: ×faster {low:.2f}–{high:.2f} vs {other_low:.2f}–"
            f"{other_high:.2f} ({'overlap' if overlap else 'APART'}); "
            + ("same file size" if same_file else "another model (the search found another)")
        )
    return ok, lines


def _ranking(models: list[dict[str, Any]], key: str) -> list[str]:
    def value(m: dict[str, Any]) -> float:
        v = m[key]
        return float(v[0] if isinstance(v, list) else v)

    return [m["name"] for m in sorted(models, key=lambda m: -value(m))]


def _median(results: dict[str, Any], arm: str) -> float:
    return float(results["efficiency"]["summary"][arm]["final_median"])


def _kind(name: str) -> str:
    """A model's role without its trial number, which differs between runs."""
    return name.split(" (trial")[0]
