"""The two accuracy rules' picks from the same searches, judged on the test split.

Each search runs under one ``--accuracy-rule``; every trial records its validation delta's
paired interval, so the pick under the other rule is re-judged from the same trials
(``search.track.trials.feasible_by``), no extra trials. For each budget, seed and rule:
the pick's validation delta with its interval, its test delta, and whether the test delta
fell inside the validation interval (a pick chosen for a lucky validation reading lands
below it: the winner's curse). Summed per budget and rule: the median test delta of the
picks and how many landed inside.
"""

from __future__ import annotations

import statistics
from typing import Any

from search.measure.intervals import show_delta


def rule_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per budget, search seed and rule: its pick on validation and on test."""
    base_test = results["models"][0]["test_accuracy"]
    rows = []
    for share, budget in results["compression"].items():
        for entry in budget["seeds"]:
            candidates = {c["trial"]: c for c in entry.get("candidates", [])}
            for rule, picks in entry.get("picks", {}).items():
                row: dict[str, Any] = {
                    "budget": share, "seed": entry["seed"], "rule": rule,
                    "trial": picks.get("trial"),
                }  # fmt: skip
                found = candidates.get(picks.get("trial"))
                if found is not None:
                    row |= _judged(found, base_test)
                rows.append(row)
    return rows


def _judged(candidate: dict[str, Any], base_test: float) -> dict[str, Any]:
    """A pick's validation delta and interval, its test delta, and whether it is inside."""
    test = candidate.get("test_delta_points")
    if test is None:  # the metric is not per-image right/wrong: the accuracies' difference
        test = 100 * (candidate["test_accuracy"] - base_test)
    low, high = candidate.get("delta_ci_low_points"), candidate.get("delta_ci_high_points")
    return {
        "validation_delta_points": candidate["delta_points"],
        "validation_interval_points": None if low is None else [low, high],
        "test_delta_points": test,
        "inside": None if low is None or high is None else bool(low <= test <= high),
    }


def rule_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per budget and rule: picks found, median (min, max) test delta, how many inside."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        cell = summary.setdefault(row["budget"], {}).setdefault(
            row["rule"], {"searches": 0, "picks": 0, "test_deltas": [], "inside": 0, "judged": 0}
        )
        cell["searches"] += 1
        if "test_delta_points" not in row:
            continue
        cell["picks"] += 1
        cell["test_deltas"].append(row["test_delta_points"])
        if row["inside"] is not None:
            cell["judged"] += 1
            cell["inside"] += int(row["inside"])
    for rules in summary.values():
        for cell in rules.values():
            deltas = cell.pop("test_deltas")
            if deltas:
                cell["test_delta_points"] = [statistics.median(deltas), min(deltas), max(deltas)]
    return summary


def rules_section(results: dict[str, Any]) -> list[str]:
    """The report's section; nothing for results files from before picks were kept."""
    rows = rule_rows(results)
    if not rows:
        return []
    searched = {e.get("accuracy_rule", "point") for b in results["compression"].values()
                for e in b["seeds"]}  # fmt: skip
    lines = [
        "## Accuracy rules: point against confident",
        "",
        f"The searches ran with `--accuracy-rule {'/'.join(sorted(searched))}`. Each search's "
        "pick (the feasible trial with the largest ×faster × ×smaller) under both rules, from "
        "the same trials: **point**, feasible when the validation accuracy is within the "
        "drop; **confident**, when the lower end of the paired 95% interval of its "
        "validation Δ against the baseline is. Test Δ is paired on the test images; "
        '"inside" says whether it fell inside the pick\'s validation interval.',
        "",
        "| budget | rule | searches with a pick | test Δ points, median (min to max) "
        "| test Δ inside the validation interval |",
        "|---|---|---|---|---|",
    ]
    for share, rules in rule_summary(rows).items():
        for rule, cell in rules.items():
            spread = cell.get("test_delta_points")
            shown = "–"
            if spread is not None:
                shown = f"{spread[0]:+.2f} ({spread[1]:+.2f} to {spread[2]:+.2f})"
            lines.append(
                f"| {share} | {rule} | {cell['picks']} of {cell['searches']} | {shown} | "
                f"{cell['inside']} of {cell['judged']} |"
            )
    lines += [
        "",
        "| budget | seed | rule | pick | validation Δ (95%) | test Δ | inside |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "test_delta_points" not in row:
            lines.append(f"| {row['budget']} | {row['seed']} | {row['rule']} | none | | | |")
            continue
        interval = row["validation_interval_points"] or [None, None]
        inside = {True: "yes", False: "no", None: "–"}[row["inside"]]
        lines.append(
            f"| {row['budget']} | {row['seed']} | {row['rule']} | trial {row['trial']} | "
            f"{show_delta(row['validation_delta_points'], *interval, decimals=2)} | "
            f"{row['test_delta_points']:+.2f} | {inside} |"
        )
    return [*lines, ""]
