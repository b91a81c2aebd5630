"""Optuna's own views of a study, as files for the MLflow parent run.

``importance.html``: which parameters mattered for each objective (Optuna's default
importance evaluator); ``history.html``: each objective over trial numbers. Both need a few
completed trials with differing parameters; with fewer, the plot is left out and the
reason returned, never a failed run.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna

from search.track.trials import OBJECTIVE_NAMES


def write_study_plots(study: optuna.Study, folder: Path) -> tuple[list[Path], dict[str, str]]:
    """(files written, {plot: why it was skipped})."""
    from optuna.visualization import plot_optimization_history, plot_param_importances

    written: list[Path] = []
    skipped: dict[str, str] = {}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return written, {"importance": "fewer than 2 completed trials", "history": "same"}
    plots = {
        "importance": lambda: plot_param_importances(study),  # one bar set per objective
        "history": lambda: _history(study, plot_optimization_history),
    }
    for name, make in plots.items():
        try:
            with warnings.catch_warnings():  # experimental-feature and sampling notices
                warnings.simplefilter("ignore")
                figure = make()
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            skipped[name] = f"{type(error).__name__}: {error}"
            continue
        path = folder / f"{name}.html"
        partial = folder / f"{name}.partial.html"
        figure.write_html(str(partial), include_plotlyjs=True)
        os.replace(partial, path)
        written.append(path)
    return written, skipped


def _history(study: optuna.Study, plot: object) -> object:
    """Accuracy over trials, with p50 and size as further figures' traces."""
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=len(OBJECTIVE_NAMES), cols=1, subplot_titles=OBJECTIVE_NAMES)
    for row, name in enumerate(OBJECTIVE_NAMES, start=1):
        single = plot(  # type: ignore[operator]
            study, target=lambda t, i=row - 1: t.values[i], target_name=name
        )
        for trace in single.data:
            figure.add_trace(trace, row=row, col=1)
    figure.update_layout(height=300 * len(OBJECTIVE_NAMES), title=f"{study.study_name}: history")
    return figure
