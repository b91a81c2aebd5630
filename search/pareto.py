"""The Pareto front of feasible trials, its ratios against the baseline, and its files.

Files are written to a temporary name and renamed, so a crash never leaves half a
``pareto.csv`` behind.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna

from search.study import OBJECTIVE_NAMES, baseline_trial, is_feasible


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
    mlflow_run_id: str
    params: dict[str, object]


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Feasible, non-dominated completed trials, most accurate first."""
    front = [t for t in study.best_trials if is_feasible(t)]
    return sorted(front, key=lambda t: (-t.values[0], t.values[1]))


def nearest_trials(study: optuna.Study, count: int = 5) -> list[optuna.trial.FrozenTrial]:
    """Completed trials closest to the latency budget, for a search with no feasible one."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sorted(done, key=lambda t: t.user_attrs.get("over_budget_ms", float("inf")))[:count]


def to_rows(study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial]) -> list[FrontRow]:
    base = baseline_trial(study)
    rows = []
    for trial in trials:
        accuracy, p50, size = trial.values
        rows.append(
            FrontRow(
                number=trial.number,
                name=str(trial.user_attrs.get("run_name", f"t{trial.number:03d}")),
                accuracy=accuracy,
                latency_p50_ms=p50,
                latency_p95_ms=float(trial.user_attrs.get("latency_p95_ms", float("nan"))),
                size_mb=size,
                macs=int(trial.user_attrs.get("macs", 0)),
                accuracy_delta=None if base is None else accuracy - base.values[0],
                speedup=None if base is None else base.values[1] / p50,
                shrink=None if base is None else base.values[2] / size,
                over_budget_ms=float(trial.user_attrs.get("over_budget_ms", float("nan"))),
                mlflow_run_id=str(trial.user_attrs.get("mlflow_run_id", "")),
                params=dict(trial.params),
            )
        )
    return rows


def write_csv(rows: Sequence[FrontRow], path: Path) -> Path:
    columns = [
        "trial", "name", "accuracy", "accuracy_delta", "latency_p50_ms", "latency_p95_ms",
        "speedup", "size_mb", "shrink", "macs", "mlflow_run_id", "params",
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
                    f"{row.size_mb:.6f}", _fmt(row.shrink), row.macs, row.mlflow_run_id,
                    ";".join(f"{k}={v}" for k, v in row.params.items()),
                ]
            )  # fmt: skip
    os.replace(partial, path)
    return path


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """``pareto.html`` (interactive, plotly) and ``pareto.png`` (matplotlib) of all trials.

    Infeasible trials are drawn apart from feasible ones: Optuna reads the constraints each
    trial set on itself.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_mpl
    from optuna.visualization import plot_pareto_front

    names = list(OBJECTIVE_NAMES)
    html, png = folder / "pareto.html", folder / "pareto.png"
    figure = plot_pareto_front(study, target_names=names)
    partial = folder / "pareto.partial.html"
    figure.write_html(str(partial), include_plotlyjs=True)
    os.replace(partial, html)
    axes = optuna_mpl.plot_pareto_front(study, target_names=names)
    partial_png = folder / "pareto.partial.png"
    canvas = axes.get_figure(root=True)
    assert canvas is not None
    canvas.savefig(partial_png, dpi=120, bbox_inches="tight")
    plt.close(canvas)
    os.replace(partial_png, png)
    return [html, png]


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"
