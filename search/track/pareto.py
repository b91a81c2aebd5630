"""The Pareto front of feasible trials, its ratios against the baseline, and its files.

Files are written to a temporary name and renamed, so a crash never leaves half a
``pareto.csv`` behind.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from search.common.units import show_ms
from search.measure.intervals import show_delta, show_interval
from search.track.trials import (
    BEFORE_FINE_TUNING,
    OBJECTIVE_NAMES,
    baseline_trial,
    is_feasible,
)


@dataclass(frozen=True)
class FrontRow:
    """One trial with its figures and its ratios against the uncompressed baseline."""

    number: int
    name: str
    accuracy: float
    latency_p50_ms: float
    latency_p95_ms: float
    size_mb: float
    macs: int
    accuracy_delta: float | None  # accuracy minus the baseline's, in [-1, 1]
    speedup: float | None  # baseline p50 / this p50
    shrink: float | None  # baseline size / this size
    over_budget_ms: float
    throughput_per_s: float | None  # items/s at the study's batch size (None: not recorded)
    mlflow_run_id: str
    params: dict[str, object]
    # 95% intervals (search.measure.intervals): the accuracy's (Wilson), and the paired
    # delta against the baseline on the same validation examples, in points, with the
    # examples lost and gained; None where not recorded (a metric that is not accuracy)
    accuracy_ci: tuple[float, float] | None = None
    delta_points: float | None = None
    delta_ci_points: tuple[float, float] | None = None
    examples_lost: int | None = None
    examples_gained: int | None = None


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Feasible, non-dominated completed trials, most accurate first."""
    front = [t for t in study.best_trials if is_feasible(t)]
    return sorted(front, key=lambda t: (-t.values[0], t.values[1]))


def nearest_trials(study: optuna.Study, count: int = 5) -> list[optuna.trial.FrozenTrial]:
    """Completed trials nearest to feasible, for a search with no feasible one.

    Those accurate enough first, by how far over the latency budget; then the others.
    """
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))

    def distance(trial: optuna.trial.FrozenTrial) -> tuple[bool, float]:
        below = float(trial.user_attrs.get("below_accuracy_floor", 0.0))
        return _judged(trial) and below > 0, float(
            trial.user_attrs.get("over_budget_ms", float("inf"))
        )

    return sorted(done, key=distance)[:count]


def _judged(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial's accuracy counts against it: that of its deployed model, or the
    reading a fine-tune was stopped at for it (not a draft's, before any tuning)."""
    return trial.user_attrs.get("accuracy_kind", "deployed") != BEFORE_FINE_TUNING


def _kind_label(trial: optuna.trial.FrozenTrial) -> str:
    """What the trial's accuracy is of, where it is not its deployed file's."""
    kind = str(trial.user_attrs.get("accuracy_kind", "deployed"))
    if kind == "deployed":
        return ""
    return " (untuned)" if kind == BEFORE_FINE_TUNING else f" ({kind})"


def to_rows(study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial]) -> list[FrontRow]:
    base = baseline_trial(study)
    rows = []
    for trial in trials:
        accuracy, p50, size = trial.values
        rows.append(
            FrontRow(
                number=trial.number,
                name=str(trial.user_attrs.get("run_name", f"t{trial.number:03d}"))
                + _kind_label(trial),
                accuracy=accuracy,
                latency_p50_ms=p50,
                latency_p95_ms=float(trial.user_attrs.get("latency_p95_ms", float("nan"))),
                size_mb=size,
                macs=int(trial.user_attrs.get("macs", 0)),
                accuracy_delta=None if base is None else accuracy - base.values[0],
                speedup=None if base is None else base.values[1] / p50,
                shrink=None if base is None else base.values[2] / size,
                over_budget_ms=float(trial.user_attrs.get("over_budget_ms", float("nan"))),
                throughput_per_s=_optional(trial.user_attrs.get("throughput_per_s")),
                mlflow_run_id=str(trial.user_attrs.get("mlflow_run_id", "")),
                params=dict(trial.params),
                **interval_fields(trial.user_attrs),
            )
        )
    return rows


def interval_fields(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's recorded intervals as ``FrontRow`` fields (None where not recorded)."""

    def pair(low: str, high: str) -> tuple[float, float] | None:
        if attrs.get(low) is None or attrs.get(high) is None:
            return None
        return float(attrs[low]), float(attrs[high])

    lost, gained = attrs.get("examples_lost"), attrs.get("examples_gained")
    return {
        "accuracy_ci": pair("accuracy_ci_low", "accuracy_ci_high"),
        "delta_points": _optional(attrs.get("delta_points")),
        "delta_ci_points": pair("delta_ci_low_points", "delta_ci_high_points"),
        "examples_lost": None if lost is None else int(lost),
        "examples_gained": None if gained is None else int(gained),
    }


def shown_delta(row: FrontRow) -> str:
    """The row's delta in points with its paired interval, ``-0.6 (-1.4, +0.3)``; the bare
    delta where no interval was recorded."""
    if row.delta_points is not None and row.delta_ci_points is not None:
        return show_delta(row.delta_points, *row.delta_ci_points)
    return show_delta(None if row.accuracy_delta is None else 100 * row.accuracy_delta)


def _optional(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def write_csv(rows: Sequence[FrontRow], path: Path) -> Path:
    columns = [
        "trial", "name", "accuracy", "accuracy_delta", "latency_p50_ms", "latency_p95_ms",
        "speedup", "size_mb", "shrink", "macs", "throughput_per_s", "mlflow_run_id", "params",
        "accuracy_ci_low", "accuracy_ci_high", "delta_points", "delta_ci_low_points",
        "delta_ci_high_points", "examples_lost", "examples_gained",
    ]  # fmt: skip
    partial = path.with_suffix(".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(
                [
                    row.number, row.name, f"{row.accuracy:.6f}", _fmt(row.accuracy_delta),
                    f"{row.latency_p50_ms:.6f}", f"{row.latency_p95_ms:.6f}", _fmt(row.speedup),
                    f"{row.size_mb:.6f}", _fmt(row.shrink), row.macs,
                    _fmt(row.throughput_per_s), row.mlflow_run_id,
                    ";".join(f"{k}={v}" for k, v in row.params.items()),
                    *_pair(row.accuracy_ci), _fmt(row.delta_points), *_pair(row.delta_ci_points),
                    _count(row.examples_lost), _count(row.examples_gained),
                ]
            )  # fmt: skip
    os.replace(partial, path)
    return path


def write_front_markdown(rows: Sequence[FrontRow], path: Path, budget_ms: float) -> Path:
    """The front as a Markdown table with ratios against the baseline, for the MLflow UI."""
    lines = [
        f"# Pareto front: feasible trials within {show_ms(budget_ms)} p50",
        "",
        "| trial | candidate | accuracy (95%) | Δ points (95%, paired) | lost / gained "
        "| p50 ms | items/s | faster | MB | smaller | MMACs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        delta = shown_delta(row)
        ci = "" if row.accuracy_ci is None else f" ({show_interval(*row.accuracy_ci)})"
        changed = (
            "" if row.examples_lost is None else f"{row.examples_lost} / {row.examples_gained}"
        )
        faster = "" if row.speedup is None else f"{row.speedup:.2f}×"
        smaller = "" if row.shrink is None else f"{row.shrink:.2f}×"
        rate = "" if row.throughput_per_s is None else f"{row.throughput_per_s:.0f}"
        lines.append(
            f"| {row.number} | {row.name} | {row.accuracy:.4f}{ci} | {delta} | {changed} | "
            f"{row.latency_p50_ms:.4f} | {rate} | {faster} | {row.size_mb:.4f} | {smaller} | "
            f"{row.macs / 1e6:.2f} |"
        )
    if not rows:
        lines.append("| - | no feasible trial yet | | | | | | | | | |")
    partial = path.with_suffix(".partial")
    partial.write_text("\n".join(lines) + "\n")
    os.replace(partial, path)
    return path


def write_plots(study: optuna.Study, folder: Path, *, budget_ms: float) -> list[Path]:
    """``pareto.html`` (Optuna's interactive 3-D front) and ``pareto.png`` (a 2-D summary).

    The PNG puts latency against accuracy, marker area by file size, the budget as a line
    and front members labelled with their trial number: a 3-D scatter does not read well
    as a still image. Infeasible trials are told apart by the constraints trials set.
    """
    from optuna.visualization import plot_pareto_front

    html, png = folder / "pareto.html", folder / "pareto.png"
    figure = plot_pareto_front(study, target_names=list(OBJECTIVE_NAMES))
    partial = folder / "pareto.partial.html"
    figure.write_html(str(partial), include_plotlyjs=True)  # offline: no CDN
    os.replace(partial, html)
    partial_png = folder / "pareto.partial.png"
    _plot_latency_accuracy(study, partial_png, budget_ms=budget_ms)
    os.replace(partial_png, png)
    return [html, png]


def _plot_latency_accuracy(study: optuna.Study, path: Path, *, budget_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    front = {t.number for t in pareto_front(study)}
    largest = max((t.values[2] for t in done), default=1.0)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = (
        ("infeasible", "#bbbbbb", [t for t in done if not is_feasible(t)]),
        ("feasible", "#6fa8dc", [t for t in done if is_feasible(t) and t.number not in front]),
        ("Pareto front", "#cc0000", [t for t in done if t.number in front]),
    )
    for label, color, trials in groups:
        if trials:
            ax.scatter(
                [t.values[1] for t in trials],
                [t.values[0] for t in trials],
                s=[30 + 300 * t.values[2] / largest for t in trials],
                c=color,
                alpha=0.8,
                label=label,
                edgecolors="black",
                linewidths=0.4,
            )
    for trial in done:
        if trial.number in front:
            ax.annotate(str(trial.number), (trial.values[1], trial.values[0]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")  # fmt: skip
    label = budget_label(budget_ms, study.user_attrs.get("latency_budget_factor"))
    ax.axvline(budget_ms, color="black", linestyle="--", linewidth=1, label=label)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    # label 0.2, 0.5, 2, 5 ... between the decades, leave the other minor ticks bare
    ax.xaxis.set_minor_formatter(
        FuncFormatter(
            lambda value, _: f"{value:g}" if f"{value:g}".strip("0.")[:1] in "25" else ""
        )
    )
    ax.set_xlabel("latency p50 (ms, log scale)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{study.study_name}: marker area ∝ file size")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def budget_label(budget_ms: float, factor: float | None) -> str:
    """The budget line's legend entry: ``budget 0.178 ms (0.5x the baseline)``."""
    return f"budget {show_ms(budget_ms)}" + (f" ({factor:g}x the baseline)" if factor else "")


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _pair(values: tuple[float, float] | None) -> list[str]:
    return ["", ""] if values is None else [_fmt(values[0]), _fmt(values[1])]


def _count(value: int | None) -> str:
    return "" if value is None else str(value)
