"""The ``search`` command line: parse options into a config and call one function.

Heavy libraries (torch, mlflow) are imported inside commands so ``search --help`` is
instant. Errors a user can fix print one line and exit with code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer._click import exceptions as click_errors  # typer 0.29 vendors click

from search.cli import oneshot as cli_oneshot
from search.cli import serve as cli_serve
from search.cli.options import (
    ConfigOption,
    DeviceOption,
    FixOption,
    OffOption,
    RuntimeOption,
    StorageOption,
    TaskOption,
    TrackingOption,
)
from search.common import interrupt
from search.common.errors import SearchError

app = typer.Typer(
    help="Find compressed versions of a model that meet a latency budget, measured on the target.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


_DEBUG = {"on": False}


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of an unexpected error.")
    ] = False,
) -> None:
    """compression-search: an Optuna search over compression levers, tracked in MLflow."""
    _DEBUG["on"] = debug


@app.command()
def run(
    latency_budget: Annotated[
        str | None,
        typer.Option(help="p50 latency a candidate must meet, with a unit: 10ms, 800us, 0.01s."),
    ] = None,
    device: DeviceOption = None,
    runtime: RuntimeOption = None,
    task: TaskOption = None,
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
    storage: StorageOption = None,
    tracking_uri: TrackingOption = None,
    seed: Annotated[
        int | None, typer.Option(help="Seeds the sampler and fine-tuning (default 0).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Threads for latency measurement, recorded (default 1).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes on this machine running trials at once, sharing the "
            "cores; latency is measured one worker at a time (default 1)."
        ),
    ] = None,
    max_failures: Annotated[
        int | None, typer.Option(help="Stop after this many failed trials in a row (default 5).")
    ] = None,
    heartbeat: Annotated[
        int | None,
        typer.Option(
            help="Seconds between a running trial's heartbeats; one silent for four beats "
            "(its worker killed) is failed and retried once (default 30)."
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size for latency measurement (default 1).")
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option(
            help="latency (p50 of one batch, the default) or throughput (items/s at "
            "--batch-size, for servers; recorded and shown, same order as latency)."
        ),
    ] = None,
    finetune_epochs: Annotated[
        int | None,
        typer.Option(help="Recovery fine-tuning epochs after a model-stage lever (default 10)."),
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(
            help="Feasible only within this drop of the baseline's metric (default 0.01: "
            "one point of accuracy)."
        ),
    ] = None,
    accuracy_rule: Annotated[
        str | None,
        typer.Option(
            help="point (the default): feasible when the validation accuracy is within "
            "--max-accuracy-drop of the baseline's; confident: when the lower end of its "
            "paired 95% interval against the baseline is. Kept by the study.",
        ),
    ] = None,
    latency_first: Annotated[
        bool | None,
        typer.Option(
            "--latency-first/--no-latency-first",
            help="Measure each candidate's latency before fine-tuning it and stop the trial "
            "if it is over budget (default on).",
        ),
    ] = None,
    early_stop: Annotated[
        str | None,
        typer.Option(
            help="Successive halving over fine-tuning epochs: on stops a candidate whose "
            "accuracy at a rung is hopeless (the default); off never stops; shadow "
            "records where it would have stopped and never stops.",
        ),
    ] = None,
    rungs: Annotated[
        str | None,
        typer.Option(help="Epochs after which a fine-tuning candidate is judged (default 4)."),
    ] = None,
    rung_margin: Annotated[
        float | None,
        typer.Option(
            help="How far a candidate may read at a rung below every finished candidate "
            "that met the floor and still go on (default 0.05: five points).",
        ),
    ] = None,
    rung_keep_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of the candidates at a rung that go on by rank whatever they read "
            "(ASHA's 1/eta; default 0.33, a third; 0: the margin alone decides).",
        ),
    ] = None,
    latency_anchor: Annotated[
        bool | None,
        typer.Option(
            "--latency-anchor/--no-latency-anchor",
            help="Time each candidate in turn with the baseline's file and scale by their "
            "ratio, so a busy machine's slow phases cancel (default on).",
        ),
    ] = None,
    sampler: Annotated[
        str | None,
        typer.Option(help="Optuna sampler: tpe (the default) or random."),
    ] = None,
    references: Annotated[
        bool | None,
        typer.Option(
            "--references/--no-references",
            help="Start a new study with single-lever reference trials after the baseline "
            "(default on); off, the sampler proposes everything after the baseline.",
        ),
    ] = None,
    allow_mixed_hardware: Annotated[
        bool | None,
        typer.Option(
            "--allow-mixed-hardware",
            help="Resume a study whose latencies were measured on other hardware.",
        ),
    ] = None,
    use_sensitivity: Annotated[
        str | None,
        typer.Option(
            help="A sensitivity.json from `search sensitivity`: prune each layer at most as "
            "far as it took alone within --sensitivity-tolerance points.",
        ),
    ] = None,
    sensitivity_tolerance: Annotated[
        float | None,
        typer.Option(help="Points a layer may cost alone, unpruned by fine-tuning (default 5)."),
    ] = None,
    config: ConfigOption = None,
    off: OffOption = None,
    fix: FixOption = None,
) -> None:
    """Search compressed candidates of a model under a latency budget."""
    given = {
        "latency-budget": latency_budget,
        "device": device,
        "runtime": runtime,
        "task": task,
        "trials": trials,
        "timeout": timeout,
        "study": study,
        "storage": storage,
        "tracking-uri": tracking_uri,
        "seed": seed,
        "threads": threads,
        "workers": workers,
        "max-failures": max_failures,
        "heartbeat": heartbeat,
        "batch-size": batch_size,
        "objective": objective,
        "finetune-epochs": finetune_epochs,
        "max-accuracy-drop": max_accuracy_drop,
        "accuracy-rule": accuracy_rule,
        "latency-first": latency_first,
        "early-stop": early_stop,
        "rungs": rungs,
        "rung-margin": rung_margin,
        "rung-keep-fraction": rung_keep_fraction,
        "latency-anchor": latency_anchor,
        "sampler": sampler,
        "references": references,
        "allow-mixed-hardware": allow_mixed_hardware,
        "use-sensitivity": use_sensitivity,
        "sensitivity-tolerance": sensitivity_tolerance,
    }
    from search.core.config_file import search_config_from

    file, levers = _levers(config, off, fix)
    search_config = search_config_from(given, file, levers, home=Path.cwd())
    console = Console()
    from search.core.study import make_storage
    from search.track.urls import check_tracking_uri

    # fail fast, before the baseline is built; the light checks before importing PyTorch
    if search_config.storage is None:
        search_config.studies_dir.mkdir(parents=True, exist_ok=True)
    make_storage(search_config.storage_url)
    check_tracking_uri(search_config.mlflow_uri)
    from search.cli.report import TrialProgress, print_result
    from search.common.units import show_ms
    from search.core.runner import run_search
    from search.measure.runtimes import check_target
    from search.tasks.loader import load_task

    check_target(search_config.runtime, search_config.device)
    loaded = load_task(search_config.task, cache_dir=search_config.cache_dir)
    threads_used = search_config.threads
    factor = search_config.latency_budget_factor
    budget = (
        f"{factor:g}x the baseline's"
        if factor is not None
        else show_ms(search_config.latency_budget_ms)
    )
    console.print(
        f"search: task {search_config.task}, budget {budget} p50 on {search_config.device} "
        f"in {search_config.runtime} ({threads_used} thread{'s' if threads_used > 1 else ''}, "
        f"batch {search_config.batch_size}"
        + (", objective throughput" if search_config.objective == "throughput" else "")
        + (", accuracy rule confident" if search_config.accuracy_rule == "confident" else "")
        + (f", {search_config.workers} workers)" if search_config.workers > 1 else ")")
    )
    from search.core.rungs import describe
    from search.core.runner import rung_rule

    halving = describe(rung_rule(search_config), search_config.finetune_epochs)
    if halving is not None:
        console.print(halving)
    with TrialProgress(console, total=search_config.trials) as progress:
        result = run_search(search_config, task=loaded, on_trial=progress)
    print_result(console, result, tracking_uri=search_config.tracking_uri)


@app.command()
def space(
    task: TaskOption = None,
    device: DeviceOption = None,
    runtime: RuntimeOption = None,
    config: ConfigOption = None,
    off: OffOption = None,
    fix: FixOption = None,
) -> None:
    """Print the search space for this task and device, with levers off and values fixed.

    Builds (or loads the cached) trained model, as a search would: which levers apply
    depends on it.
    """
    from search.cli.report import print_space
    from search.core.config import SearchConfig
    from search.core.runner import search_space
    from search.tasks.loader import load_task

    file, levers = _levers(config, off, fix)
    search_config = SearchConfig(
        task=task or file.run.get("task", "digits"),
        device=device or file.run.get("device", "cpu"),
        runtime=runtime or file.run.get("runtime", "onnxruntime"),
        levers=levers,
        home=Path.cwd(),
    )
    loaded = load_task(search_config.task, cache_dir=search_config.cache_dir)
    print_space(Console(), search_space(search_config, loaded))


@app.command(name="profile")
def profile_command(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="baseline (the default), trial:N of --study, or a model file (.onnx, .pt2)."
        ),
    ] = None,
    task: TaskOption = None,
    device: DeviceOption = None,
    runtime: RuntimeOption = None,
    study: Annotated[
        str | None, typer.Option(help="The study that trial:N targets are in.")
    ] = None,
    storage: StorageOption = None,
    tracking_uri: TrackingOption = None,
    batch_sizes: Annotated[
        str, typer.Option(help="Comma-separated batch sizes to time (default 1,8,32).")
    ] = "1,8,32",
    threads: Annotated[int, typer.Option(help="Intra-op threads (default 1).")] = 1,
    compare: Annotated[
        bool, typer.Option("--compare", help="Ratios of every target against the first.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
) -> None:
    """Size, parameters, MACs, latency percentiles and throughput of deployed models."""
    import json

    from search.cli.report import print_profiles
    from search.common.errors import ConfigError
    from search.core.config import SearchConfig
    from search.core.profile import profile_all
    from search.tasks.loader import load_task

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(","))
    except ValueError:
        raise ConfigError(f"--batch-sizes {batch_sizes!r}: write numbers, e.g. 1,8,32") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--batch-sizes {batch_sizes!r}: each must be at least 1")
    specs = targets or ["baseline"]
    if compare and len(specs) < 2:
        raise ConfigError("--compare needs two or more targets, e.g. baseline trial:3")
    config = SearchConfig(
        task=task or "digits",
        device=device or "cpu",
        runtime=runtime or "onnxruntime",
        storage=storage,
        tracking_uri=tracking_uri,
        threads=threads,
        home=Path.cwd(),
    )
    from search.measure.runtimes import check_target

    check_target(config.runtime, config.device)
    loaded = load_task(config.task, cache_dir=config.cache_dir)
    profiles = profile_all(
        specs,
        loaded,
        storage_url=config.storage_url,
        tracking_uri=config.mlflow_uri,
        study_name=study,
        batch_sizes=sizes,
        threads=config.threads,
        device=config.device,
        runtime=config.runtime,
        lock_dir=config.studies_dir / "locks",
    )
    if json_output:
        print(json.dumps([p.as_dict() for p in profiles], indent=2))
    else:
        print_profiles(Console(), profiles, compare=compare)


StudyNameOption = Annotated[
    str | None, typer.Option("--study", help="Study name (default: the storage's only study).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")]


@app.command(name="status")
def status_command(
    study: StudyNameOption = None, storage: StorageOption = None, json_output: JsonOption = False
) -> None:
    """A study's progress: trials by state, feasible ones, the baseline and the best."""
    import json

    from search.cli.report import print_status
    from search.core.config import SearchConfig
    from search.core.study import load_existing_study
    from search.track.browse import status

    config = SearchConfig(storage=storage, home=Path.cwd())
    summary = status(load_existing_study(config.storage_url, study))
    if json_output:
        print(json.dumps(summary, indent=2))
    else:
        print_status(Console(), summary)


@app.command(name="pareto")
def pareto_command(
    study: StudyNameOption = None, storage: StorageOption = None, json_output: JsonOption = False
) -> None:
    """A study's Pareto front of feasible trials, with ratios against the baseline."""
    import json

    from search.cli.report import front_table
    from search.core.config import SearchConfig
    from search.core.study import load_existing_study
    from search.track.browse import front, front_as_dicts

    config = SearchConfig(storage=storage, home=Path.cwd())
    loaded = load_existing_study(config.storage_url, study)
    rows = front(loaded)
    if json_output:
        print(json.dumps(front_as_dicts(rows), indent=2))
        return
    from search.common.units import show_budget

    budget = loaded.user_attrs.get("latency_budget_ms")
    title = f"Pareto front of {loaded.study_name}"
    if budget:
        attrs = loaded.user_attrs
        shown = show_budget(
            budget,
            factor=attrs.get("latency_budget_factor"),
            baseline_ms=attrs.get("anchor_p50_ms"),
        )
        title += f", budget {shown}"
    from search.track.trials import study_rule

    title += f", accuracy rule {study_rule(loaded)}"
    throughput = loaded.user_attrs.get("objective") == "throughput"
    table = front_table(rows, title, show_throughput=throughput)
    Console().print(table if rows else "no feasible trial yet")


@app.command(name="promote")
def promote_command(
    study: StudyNameOption = None,
    trial: Annotated[
        int | None,
        typer.Option(help="Trial to promote (default: the most accurate feasible one)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Registered model name (default: the study's name).")
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            help="Champion moves if test accuracy >= champion's minus this (0.005: half a point)."
        ),
    ] = 0.005,
    force: Annotated[
        bool, typer.Option("--force", help="Make it champion whatever the checks say.")
    ] = False,
    export: Annotated[
        Path | None, typer.Option(help="Also write the model file and its card to this folder.")
    ] = None,
    accuracy_rule: Annotated[
        str | None,
        typer.Option(
            help="The default pick's rule (default: the study's --accuracy-rule): point, the "
            "most accurate feasible trial; confident, the highest lower end of the paired "
            "95% interval among those feasible by it."
        ),
    ] = None,
    task: TaskOption = None,
    storage: StorageOption = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """Re-validate on the test split, re-measure, and register a trial's model in MLflow."""
    from search.common.errors import ConfigError
    from search.core.config import SearchConfig
    from search.core.study import load_existing_study
    from search.registry.promote import promote
    from search.tasks.loader import load_task

    if not 0 <= tolerance < 1:
        raise ConfigError(f"--tolerance {tolerance:g}: a drop in the metric from 0 to 1")
    from search.track.trials import ACCURACY_RULES

    if accuracy_rule is not None and accuracy_rule not in ACCURACY_RULES:
        raise ConfigError(
            f"--accuracy-rule {accuracy_rule!r} is unknown: use {' or '.join(ACCURACY_RULES)}"
        )
    config = SearchConfig(
        task=task or "digits", storage=storage, tracking_uri=tracking_uri, home=Path.cwd()
    )
    loaded_study = load_existing_study(config.storage_url, study)
    loaded_task = load_task(config.task, cache_dir=config.cache_dir)
    result = promote(
        loaded_study,
        loaded_task,
        storage_url=config.storage_url,
        tracking_uri=config.mlflow_uri,
        trial_number=trial,
        model_name=name,
        tolerance=tolerance,
        force=force,
        lock_dir=config.studies_dir / "locks",
        export_dir=export,
        rule=accuracy_rule,
    )
    console = Console()
    card = result.card
    if result.already:
        console.print(
            f"trial {card.trial} of {card.study} is already {result.model_name} version "
            f"{result.version}: nothing to do"
        )
    else:
        from search.measure.intervals import show_delta

        delta, against = card.test_delta, ""
        if "delta_points" in delta:
            low, high = delta["delta_ci_low_points"], delta["delta_ci_high_points"]
            against = f" (Δ {show_delta(delta['delta_points'], low, high)} points)"
        console.print(
            f"registered {result.model_name} version {result.version} (alias challenger): "
            f"trial {card.trial} ({card.chosen_by}), test accuracy {card.test_accuracy:.4f}"
            f"{against}, p50 {card.latency['p50_ms']:.4f} ms, {card.size_bytes / 1e6:.3f} MB"
        )
        console.print(result.reason)
    if export is not None:
        console.print(f"model file and card written to {export}")


@app.command(name="ui")
def ui_command(
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 5000,
    host: Annotated[
        str, typer.Option(help="Address to bind; 127.0.0.1 keeps it off the network.")
    ] = "127.0.0.1",
    tracking_uri: TrackingOption = None,
) -> None:
    """Serve the MLflow UI on the project's store (127.0.0.1 unless told otherwise)."""
    import subprocess

    from search.common.errors import ConfigError
    from search.core.config import SearchConfig

    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: use 1 to 65535")
    config = SearchConfig(tracking_uri=tracking_uri, home=Path.cwd())
    config.mlruns_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", config.mlflow_uri,
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    if config.tracking_uri is None:
        command += ["--default-artifact-root", str((config.mlruns_dir / "artifacts").resolve())]
    Console().print(f"MLflow UI at http://{host}:{port} (Ctrl-C stops it)")
    with subprocess.Popen(command) as server:
        try:
            server.wait()
        except KeyboardInterrupt:
            server.terminate()
            server.wait()


@app.command(name="sensitivity")
def sensitivity_command(
    task: TaskOption = None,
    device: DeviceOption = None,
    runtime: RuntimeOption = None,
    ratios: Annotated[
        str, typer.Option(help="Comma-separated pruning ratios to try per layer.")
    ] = "0.25,0.5,0.75",
    int8: Annotated[
        bool, typer.Option("--int8/--no-int8", help="Also quantize each layer alone to int8.")
    ] = True,
    output: Annotated[
        Path, typer.Option(help="Folder for sensitivity.csv/.md/.json/.png.")
    ] = Path("sensitivity"),
    tracking_uri: TrackingOption = None,
) -> None:
    """Prune (and quantize) each layer alone: the accuracy it costs, as table and heat-map."""
    from search.common.errors import ConfigError
    from search.core.config import SearchConfig
    from search.core.sensitivity import run_sensitivity

    try:
        parsed = tuple(float(part) for part in ratios.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--ratios {ratios!r}: write numbers, e.g. 0.25,0.5,0.75") from None
    if not parsed:
        raise ConfigError("--ratios is empty: write numbers, e.g. 0.25,0.5,0.75")
    config = SearchConfig(
        task=task or "digits",
        device=device or "cpu",
        runtime=runtime or "onnxruntime",
        tracking_uri=tracking_uri,
        home=Path.cwd(),
    )
    result = run_sensitivity(config, ratios=parsed, int8=int8, output=output)
    console = Console()
    middle = parsed[len(parsed) // 2]
    ranked = result.sensitivity.ranked(middle)
    console.print(
        f"most sensitive at prune {middle:g}: "
        + ", ".join(f"{row.layer} ({row.prune_drop[middle]:.1f} points)" for row in ranked[:5])
    )
    console.print(
        "least sensitive: "
        + ", ".join(f"{row.layer} ({row.prune_drop[middle]:.1f})" for row in ranked[-5:])
    )
    console.print(f"wrote {', '.join(str(p) for p in result.files)}")
    console.print(f"MLflow run {result.run_id} (experiment sensitivity) in {result.tracking_uri}")


# One technique, once, through the search's own pipeline (search.cli.oneshot).
for _one_shot in (cli_oneshot.prune, cli_oneshot.quantize, cli_oneshot.lowrank,
                  cli_oneshot.distill, cli_oneshot.share, cli_oneshot.shrink,
                  cli_oneshot.finetune):  # fmt: skip
    app.command(name=_one_shot.__name__)(_one_shot)
app.command(name="serve")(cli_serve.serve)


def _levers(config: Path | None, off: list[str] | None, fix: list[str] | None) -> tuple:
    """The config file's contents and its lever settings with the command line's on top."""
    from search.core.config_file import load_config_file
    from search.core.levers import LeverSettings, parse_assignments

    file = load_config_file(config)
    given = LeverSettings(off=tuple(off or ()), fixed=parse_assignments(fix or ()))
    return file, file.levers.merged(given)


def main() -> None:
    """Console-script entry point: one line and exit code 2 for anything a user can fix."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    # Ctrl-C (SIGINT) always means "stop cleanly": a shell starts background jobs with it
    # ignored, and an explicit `kill -INT` must still fail the trial and close its runs.
    # The handler remembers the request, so one swallowed by a destructor is raised again.
    interrupt.install()
    # MLflow draws a progress bar for every model it downloads (a baseline, a trial's file):
    # noise between the lines the commands print. The user's own setting wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    interrupted = (
        "interrupted: the current trial is recorded as failed, finished trials are saved; "
        "run the same command again to resume"
    )
    try:
        # Outside standalone mode Typer turns Ctrl-C into a returned 130, not an exception.
        code = app(standalone_mode=False)
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
        code = EXIT_INTERRUPTED
    except Exception as error:  # a bug, or a failure nothing above anticipated
        if _DEBUG["on"]:
            raise
        first = str(error).splitlines()[0] if str(error) else ""
        err.print(
            f"error: unexpected {type(error).__name__}: {first[:500]} "
            "(search --debug ... shows the traceback)",
            markup=False,
        )
        sys.exit(1)
    if code == EXIT_INTERRUPTED:
        err.print(interrupted, markup=False)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
