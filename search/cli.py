"""The ``search`` command line: parse options into a config and call one function.

Heavy libraries (torch, mlflow) are imported inside commands so ``search --help`` is
instant. Errors a user can fix print one line and exit with code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer._click import exceptions as click_errors  # typer 0.29 vendors click

from search.errors import SearchError

app = typer.Typer(
    help="Find compressed versions of a model that meet a latency budget, measured on the target.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
EXIT_USAGE = 2


@app.callback()
def _root() -> None:
    """compression-search: an Optuna search over compression levers, tracked in MLflow."""


@app.command()
def run(
    latency_budget: Annotated[
        str,
        typer.Option(help="p50 latency a candidate must meet, with a unit: 10ms, 800us, 0.01s."),
    ],
    device: Annotated[str, typer.Option(help="Where latency is measured: cpu or cuda.")] = "cpu",
    task: Annotated[
        str, typer.Option(help="digits, pkg.module:factory or path/to/file.py:factory.")
    ] = "digits",
    trials: Annotated[
        int | None,
        typer.Option(
            help="Trials to run in this invocation (default 8; unlimited with --timeout alone)."
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting new trials after this many seconds.")
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(help="Study name; an existing one is resumed (default task-budget-device)."),
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default SQLite in studies/optuna.db).")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default SQLite in mlruns/mlflow.db).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds the sampler and fine-tuning.")] = 0,
    threads: Annotated[int, typer.Option(help="Threads for latency measurement (recorded).")] = 1,
    batch_size: Annotated[int, typer.Option(help="Batch size for latency measurement.")] = 1,
    finetune_epochs: Annotated[
        int, typer.Option(help="Recovery fine-tuning epochs after a model-stage lever.")
    ] = 10,
) -> None:
    """Search compressed candidates of a model under a latency budget."""
    from search.config import SearchConfig, parse_latency_ms

    config = SearchConfig(
        task=task,
        latency_budget_ms=parse_latency_ms(latency_budget),
        device=device,
        trials=trials if trials is not None else (None if timeout is not None else 8),
        timeout_s=timeout,
        seed=seed,
        study_name=study,
        storage=storage,
        tracking_uri=tracking_uri,
        threads=threads,
        batch_size=batch_size,
        finetune_epochs=finetune_epochs,
        home=Path.cwd(),
    )
    console = Console()
    from search.report import TrialProgress, print_result
    from search.runner import run_search
    from search.runtime import check_device
    from search.task import load_task

    check_device(config.device)  # fail fast, before the baseline is built
    loaded = load_task(config.task, cache_dir=config.cache_dir)
    console.print(
        f"search: task {config.task}, budget {latency_budget} p50 on {config.device} "
        f"({config.threads} thread{'s' if config.threads > 1 else ''}, batch {config.batch_size})"
    )
    with TrialProgress(console, total=config.trials) as progress:
        result = run_search(config, task=loaded, on_trial=progress)
    print_result(console, result, config.latency_budget_ms)


def main() -> None:
    """Console-script entry point: one line and exit code 2 for anything a user can fix."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        app(standalone_mode=False)
    except SearchError as error:
        err.print(f"error: {error}", markup=False)
        sys.exit(EXIT_USAGE)
    except click_errors.NoArgsIsHelpError:
        sys.exit(0)
    except click_errors.UsageError as error:
        command = f"search {error.ctx.info_name}" if error.ctx else "search"
        err.print(f"error: {error.format_message()} (see {command} --help)", markup=False)
        sys.exit(EXIT_USAGE)
    except (KeyboardInterrupt, typer.Abort):
        err.print(
            "interrupted: finished trials are saved; run the same command again to resume",
            markup=False,
        )
        sys.exit(130)


if __name__ == "__main__":
    main()
