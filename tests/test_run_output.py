"""What ``search run`` and ``search status`` print: budgets people can read, and a way to
browse the runs that works from the project's own command line."""

from __future__ import annotations

import io
from pathlib import Path

import optuna
import pytest
from rich.console import Console

from search.cli.report import print_result, print_status
from search.common.units import show_budget, show_ms
from search.core.runner import SearchResult
from search.track.browse import status
from search.track.pareto import FrontRow, budget_label, write_front_markdown

# 0.5x of a baseline measured at 0.355806 ms: the relative budget's raw product
RELATIVE_MS, FACTOR, BASELINE_MS = 0.177903, 0.5, 0.355806


@pytest.mark.parametrize(
    ("value_ms", "shown"),
    [
        (0.177903, "0.178 ms"),
        (0.355806, "0.356 ms"),
        (10.0, "10 ms"),
        (2.5, "2.5 ms"),
        (12.3456, "12.3 ms"),
        (1234.5, "1234 ms"),  # whole milliseconds are kept, never 1.23e+03
        (99.96, "100 ms"),
        (0.000123456, "0.000123 ms"),
        (0.0, "0 ms"),
        (float("nan"), "nan ms"),
    ],
)
def test_a_latency_is_shown_to_three_significant_figures(value_ms: float, shown: str) -> None:
    assert show_ms(value_ms) == shown


def test_a_relative_budget_says_what_it_is_a_share_of() -> None:
    assert show_budget(10.0) == "10 ms"
    assert show_budget(RELATIVE_MS, factor=FACTOR, baseline_ms=BASELINE_MS) == (
        "0.178 ms (0.5x the baseline's 0.356 ms)"
    )
    assert show_budget(RELATIVE_MS, factor=FACTOR) == "0.178 ms (0.5x the baseline's)"
    assert budget_label(RELATIVE_MS, FACTOR) == "budget 0.178 ms (0.5x the baseline)"
    assert budget_label(10.0, None) == "budget 10 ms"


def row(number: int, p50_ms: float) -> FrontRow:
    return FrontRow(
        number=number, name=f"t{number:03d} baseline", accuracy=0.95, latency_p50_ms=p50_ms,
        latency_p95_ms=p50_ms * 1.1, size_mb=0.1, macs=1_000_000, accuracy_delta=0.0,
        speedup=1.0, shrink=1.0, over_budget_ms=p50_ms - RELATIVE_MS, throughput_per_s=None,
        mlflow_run_id="run0", params={},
    )  # fmt: skip


def result_for(tracking_uri: str, *, front: bool = True) -> SearchResult:
    baseline = row(0, BASELINE_MS)
    return SearchResult(
        study_name="digits-0.5x-cpu", experiment_id="1", parent_run_id="abc123",
        front=[row(3, 0.15)] if front else [], nearest=[] if front else [baseline],
        baseline=baseline, trials_run=4, trials_failed=0, tracking_uri=tracking_uri,
        latency_budget_ms=RELATIVE_MS, latency_budget_factor=FACTOR, anchor_p50_ms=BASELINE_MS,
    )  # fmt: skip


def quiet_console() -> Console:
    """A recording console that writes nowhere, 100 columns wide, without colour."""
    return Console(file=io.StringIO(), record=True, width=100, color_system=None)


def printed(result: SearchResult, *, tracking_uri: str | None) -> str:
    console = quiet_console()
    print_result(console, result, tracking_uri=tracking_uri)
    return console.export_text()


def test_the_end_of_a_run_shows_the_budget_rounded_and_what_it_is_a_share_of() -> None:
    text = printed(result_for("sqlite:////home/u/mlruns/mlflow.db"), tracking_uri=None)
    text = " ".join(text.split())  # rich wraps the baseline's line at 100 columns
    assert "budget 0.178 ms (0.5x the baseline's 0.356 ms)" in text
    assert "Pareto front: feasible trials within 0.178 ms" in text
    assert "0.177903" not in text
    missed = printed(result_for("sqlite:////m.db", front=False), tracking_uri=None)
    assert "No trial met the 0.178 ms budget" in missed and "0.177903" not in missed


def test_the_front_file_shows_the_budget_rounded(tmp_path: Path) -> None:
    path = write_front_markdown([row(3, 0.15)], tmp_path / "front.md", RELATIVE_MS)
    assert path.read_text().splitlines()[0] == (
        "# Pareto front: feasible trials within 0.178 ms p50"
    )


def test_the_browse_hint_names_the_projects_command_not_mlflows() -> None:
    default = printed(result_for("sqlite:////home/u/mlruns/mlflow.db"), tracking_uri=None)
    hint = default.strip().splitlines()[-1]
    assert "mlflow ui" not in default
    assert hint.startswith("Browse it: search ui (from this folder;")
    assert "--tracking-uri" not in hint  # the default store needs no flag
    assert "'digits-0.5x-cpu'" in hint and "abc123" in hint  # experiment and parent run

    given = "sqlite:////data/runs/mlflow.db"
    custom = printed(result_for(given), tracking_uri=given).strip().splitlines()[-1]
    assert f"search ui --tracking-uri {given}" in custom

    served = printed(result_for("http://u:pw@mlflow.lan:5000"), tracking_uri="x")
    hint = served.strip().splitlines()[-1]
    assert hint.startswith("Browse it in MLflow at http://u:***@mlflow.lan:5000")
    assert "search ui" not in hint and "pw@" not in hint


def test_search_ui_accepts_the_flags_the_hint_prints() -> None:
    from typer.testing import CliRunner

    from search.cli.app import app

    given = "sqlite:////data/runs/mlflow.db"
    hint = printed(result_for(given), tracking_uri=given).strip().splitlines()[-1]
    command = hint.split("Browse it: ", 1)[1].split(" (", 1)[0].split()
    assert command[:2] == ["search", "ui"]
    answer = CliRunner().invoke(app, [*command[1:], "--help"])  # parsed, then help: no server
    assert answer.exit_code == 0, answer.output


def test_status_shows_a_relative_budget_rounded() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for key, value in {
        "latency_budget_ms": RELATIVE_MS, "latency_budget_factor": FACTOR,
        "anchor_p50_ms": BASELINE_MS, "task": "digits", "device": "cpu",
    }.items():  # fmt: skip
        study.set_user_attr(key, value)
    console = quiet_console()
    print_status(console, status(study))
    text = console.export_text()
    assert "0.178 ms (0.5x the baseline's 0.356 ms)" in text
    assert "0.177903" not in text
