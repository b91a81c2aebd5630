"""What the terminal shows: progress while trials run, the front when they are done."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from search.common.units import show_budget, show_ms
from search.track.trials import BEFORE_FINE_TUNING, DEPLOYED, is_stopped

if TYPE_CHECKING:
    import optuna

    from search.core.levers import SpaceRow
    from search.core.profile import Profile
    from search.core.runner import SearchResult
    from search.track.pareto import FrontRow


class TrialProgress:
    """A rich progress bar fed by an Optuna callback: trials done, best feasible accuracy."""

    def __init__(self, console: Console, total: int | None) -> None:
        self.progress = Progress(
            TextColumn("[bold]trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task_id = self.progress.add_task("best feasible accuracy: -", total=total)
        self.best: float | None = None

    def __enter__(self) -> TrialProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from search.track.trials import is_feasible

        if is_feasible(trial) and (self.best is None or trial.values[0] > self.best):
            self.best = trial.values[0]
        best = "-" if self.best is None else f"{self.best:.4f}"
        state = trial.state.name.lower()
        if state == "fail":
            state = f"[red]failed: {trial.user_attrs.get('fail_reason', '')[:60]}[/red]"
        self.progress.console.print(f"trial {trial.number}: {_trial_line(trial)} {state}")
        self.progress.update(
            self.task_id, advance=1, description=f"best feasible accuracy: {best}"
        )


def _trial_line(trial: optuna.trial.FrozenTrial) -> str:
    name = trial.user_attrs.get("run_name", "")
    if trial.values is None:
        return str(name)
    accuracy, p50, size = trial.values
    reasons = []
    kind = str(trial.user_attrs.get("accuracy_kind", DEPLOYED))
    untuned = kind == BEFORE_FINE_TUNING
    stopped = is_stopped(kind)
    if trial.user_attrs.get("over_budget_ms", 0) > 0:
        reasons.append("over budget" + (": stopped before fine-tuning" if untuned else ""))
    if trial.user_attrs.get("below_accuracy_floor", 0) > 0 and not untuned:
        reasons.append("below accuracy floor" + (f": {kind}" if stopped else ""))
    feasible = " and ".join(reasons) or "feasible"
    acc = f"acc {accuracy:.4f}" + (" (untuned)" if untuned else " (eager)" if stopped else "")
    attrs = trial.user_attrs
    if not untuned and attrs.get("delta_points") is not None:
        from search.measure.intervals import show_delta

        low, high = attrs.get("delta_ci_low_points"), attrs.get("delta_ci_high_points")
        acc += f" Δ {show_delta(attrs['delta_points'], low, high)}"
    return f"{name}  {acc}  p50 {p50:.3f} ms  {size:.3f} MB  {feasible},"


def front_table(
    rows: Sequence[FrontRow],
    title: str,
    *,
    show_over_budget: bool = False,
    show_throughput: bool = False,
) -> Table:
    from search.track.pareto import shown_delta

    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
        collapse_padding=True,
    )  # fmt: skip
    table.add_column("#", justify="right")
    table.add_column("candidate", overflow="fold", min_width=10, ratio=1)
    # p95 and the rest are in pareto.csv and MLflow; the table must fit 80 columns, so the
    # last column is one of MMACs, items/s (a throughput study) or how far over the budget
    # (the nearest misses): rich drew nothing but "..." at 80 columns with two of them.
    # Δ with its paired 95% interval against the baseline (search.measure.intervals), the
    # interval on a second line: "-0.6" points down may be anywhere from -1.4 to +0.3.
    last = "over ms" if show_over_budget else "items/s" if show_throughput else "MMACs"
    for column in ("acc", "Δ pts (95%)", "p50 ms", "faster", "MB", "smaller", last):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        if show_over_budget:
            last_cell = f"{row.over_budget_ms:+.3f}"
        elif show_throughput:
            last_cell = _ratio(row.throughput_per_s, fmt="{:.0f}")
        else:
            last_cell = f"{row.macs / 1e6:.1f}"
        table.add_row(
            str(row.number),
            row.name.split(" ", 1)[-1],
            f"{row.accuracy:.4f}",
            shown_delta(row).replace(" (", "\n(", 1),
            f"{row.latency_p50_ms:.3f}",
            _ratio(row.speedup, fmt="{:.2f}×"),
            f"{row.size_mb:.3f}",
            _ratio(row.shrink, fmt="{:.2f}×"),
            last_cell,
        )
    return table


def print_result(console: Console, result: SearchResult, *, tracking_uri: str | None) -> None:
    """The front with ratios against the baseline, or the nearest misses, and where to look.

    ``tracking_uri`` is the one the user gave (None: the default store under ``mlruns/``),
    so the closing hint repeats it only when ``search ui`` needs it.
    """
    budget_ms = result.latency_budget_ms
    console.print(
        f"\n{result.trials_run} trials run in study [bold]{escape(result.study_name)}[/bold]"
        + (f", {result.trials_failed} failed" if result.trials_failed else "")
    )
    for lever, why in result.not_applicable.items():
        console.print(f"lever {lever}: not applicable to this model ({why}); left off")
    if result.baseline is not None:
        b = result.baseline
        budget = show_budget(
            budget_ms, factor=result.latency_budget_factor, baseline_ms=result.anchor_p50_ms
        )
        console.print(
            f"baseline (trial {b.number}): accuracy {b.accuracy:.4f}, "
            f"p50 {b.latency_p50_ms:.3f} ms, {b.size_mb:.3f} MB, {b.macs / 1e6:.1f} M MACs; "
            f"budget {budget}"
        )
    if result.front:
        console.print(
            front_table(
                result.front,
                f"Pareto front: feasible trials within {show_ms(budget_ms)}",
                show_throughput=result.objective == "throughput",
            )
        )
    else:
        console.print(
            f"[yellow]No trial met the {show_ms(budget_ms)} budget within the allowed "
            "accuracy drop yet.[/yellow] The nearest ones:"
        )
        console.print(front_table(result.nearest, "nearest trials", show_over_budget=True))
        console.print(
            "Try a looser --latency-budget or --max-accuracy-drop, more --trials, "
            "or stronger levers."
        )
    if result.stopped_by_failures:
        console.print(f"[red]{escape(result.stopped_by_failures)}[/red]")
    # unwrapped, so the command is copied whole from a narrow terminal
    console.print(f"\n{browse_hint(result, tracking_uri=tracking_uri)}", soft_wrap=True)


def browse_hint(result: SearchResult, *, tracking_uri: str | None) -> str:
    """Where to see the runs: the project's own ``search ui`` for a store it can serve
    (``mlflow`` itself is inside the virtual environment, often not on the PATH), or the
    server's address when the runs are on a server already."""
    from search.track.urls import redact_url

    where = f"experiment {result.study_name!r}, parent run {result.parent_run_id}"
    uri = redact_url(result.tracking_uri)
    if uri.partition(":")[0] in SERVED_SCHEMES:
        return escape(f"Browse it in MLflow at {uri} ({where})")
    command = "search ui"
    if tracking_uri is not None:  # the default store needs no flag
        command += f" --tracking-uri {redact_url(tracking_uri)}"
    return f"Browse it: [bold]{escape(command)}[/bold] (from this folder; {escape(where)})"


# Tracking URIs whose runs are behind a web UI already: nothing for ``search ui`` to serve.
SERVED_SCHEMES = ("http", "https", "databricks")


def _ratio(value: float | None, *, fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else fmt.format(value * scale)


def print_space(console: Console, described: tuple[list[SpaceRow], dict[str, str]]) -> None:
    """The effective search space as a table, in application order, then what is skipped."""
    rows, skipped = described
    table = Table(title="Search space", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("lever", no_wrap=True)
    table.add_column("parameter", no_wrap=True)
    table.add_column("values", overflow="fold")
    table.add_column("status", no_wrap=True)
    for row in rows:
        style = "dim" if row.status == "off" else None
        table.add_row(row.lever, row.name, row.domain, row.status, style=style)
    console.print(table)
    for lever, why in skipped.items():
        console.print(f"lever {lever}: not applicable ({why})")
    console.print(f"order: {application_order()}")


def application_order() -> str:
    """The order a trial applies the levers in, read from the registry."""
    from techniques import TECHNIQUES

    by_stage = {
        stage: [name for name, t in TECHNIQUES.items() if t.stage == stage]
        for stage in ("model", "training", "artifact")
    }
    return " -> ".join(
        [
            *by_stage["model"],
            f"fine-tune ({', '.join(by_stage['training'])}, QAT) if weights changed or QAT",
            "export",
            *by_stage["artifact"],
        ]
    )


def print_profiles(console: Console, profiles: Sequence[Profile], *, compare: bool) -> None:
    """One column per target; with ``compare``, each figure's ratio to the first target's."""
    first = next(iter(profiles[0].latency.values()))
    title = f"Profile on {first.device}, {first.threads} thread{'s' if first.threads > 1 else ''}"
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("")
    for item in profiles:
        table.add_column(item.name, justify="right")

    def cells(values: list[float | None], fmt: str, smaller_is_better: bool) -> list[str]:
        shown = []
        for index, value in enumerate(values):
            base = values[0]
            text = "-" if value is None else fmt.format(value)
            if compare and index and value and base:
                ratio = base / value if smaller_is_better else value / base
                text += f" ({ratio:.2f}×)"
            shown.append(text)
        return shown

    table.add_row("size MB", *cells([p.size_bytes / 1e6 for p in profiles], "{:.3f}", True))
    table.add_row("params", *cells([p.params for p in profiles], "{:,}", True))
    macs = [None if p.macs is None else p.macs / 1e6 for p in profiles]
    table.add_row("MMACs", *cells(macs, "{:.1f}", True))
    table.add_row("runtime", *[next(iter(p.latency.values())).runtime for p in profiles])
    for batch in profiles[0].latency:
        for label in ("p50_ms", "p95_ms", "p99_ms"):
            values: list[float | None] = [getattr(p.latency[batch], label) for p in profiles]
            name = f"batch {batch} {label.replace('_ms', ' ms')}"
            table.add_row(name, *cells(values, "{:.3f}", True))
        rates: list[float | None] = [p.throughput(batch) for p in profiles]
        table.add_row(f"batch {batch} samples/s", *cells(rates, "{:,.0f}", False))
        memory: list[float | None] = [p.latency[batch].peak_memory_mb for p in profiles]
        table.add_row(f"batch {batch} peak memory MB", *cells(memory, "{:.2f}", True))
    console.print(table)
    if compare:
        console.print("ratios: how many times smaller, faster or higher than the first target")


def print_status(console: Console, summary: dict) -> None:
    """``search status``: one study's progress as a two-column table."""
    table = Table(
        title=f"Study {summary['study']}", box=box.SIMPLE_HEAD, title_justify="left",
        show_header=False,
    )  # fmt: skip
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("", overflow="fold")
    states = ", ".join(f"{count} {state.lower()}" for state, count in summary["states"].items())
    rows = [
        ("task", str(summary["task"])),
        ("target", f"{summary['device']}, {summary['runtime']}"),
        ("budget p50", _status_budget(summary)),
        ("accuracy rule", _status_rule(summary)),
        ("trials", f"{summary['trials']} ({states or 'none'})"),
        ("feasible", str(summary["feasible"])),
        ("stopped before fine-tuning", str(summary["stopped_before_fine_tuning"])),
        ("stopped at a rung", str(summary["stopped_early"])),
        ("Pareto front", f"{summary['front_size']} trials"),
    ]
    for label in ("baseline", "best_feasible"):
        figures = summary[label]
        if figures is not None:
            rows.append((
                label.replace("_", " "),
                f"trial {figures['trial']} {figures['name']}: accuracy "
                f"{figures['accuracy']:.4f}{_status_delta(figures)}, p50 "
                f"{figures['latency_p50_ms']:.3f} ms, {figures['size_mb']:.3f} MB",
            ))  # fmt: skip
    if summary["hosts"]:
        rows.append(("hosts", ", ".join(summary["hosts"])))
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _status_rule(summary: dict) -> str:
    drop = summary.get("max_accuracy_drop")
    within = "" if drop is None else f" within {100 * drop:g} points of the baseline"
    if summary.get("accuracy_rule") == "confident":
        return "confident: the paired 95% interval's lower end" + within
    return "point: the validation accuracy" + within


def _status_delta(figures: dict) -> str:
    """`` (Δ -0.6 (-1.4, +0.3) points, 3 lost / 1 gained)`` where the trial recorded it."""
    from search.measure.intervals import show_delta

    if figures.get("delta_points") is None:
        return ""
    delta = show_delta(
        figures["delta_points"],
        figures.get("delta_ci_low_points"),
        figures.get("delta_ci_high_points"),
    )
    return (
        f" (Δ {delta} points, {figures.get('examples_lost')} lost / "
        f"{figures.get('examples_gained')} gained)"
    )


def _status_budget(summary: dict) -> str:
    budget = summary["latency_budget_ms"]
    if budget is None:
        return "-"
    factor, baseline = summary.get("latency_budget_factor"), summary.get("anchor_p50_ms")
    return show_budget(budget, factor=factor, baseline_ms=baseline)
