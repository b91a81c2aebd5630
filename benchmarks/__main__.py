"""``python -m benchmarks run`` writes the results file; ``compare`` checks two of them.

python -m benchmarks run [--quick] [--device cpu|cuda] [--budgets 0.5 0.25] [--seeds 0 1 2] ...
python -m benchmarks compare benchmarks/results/A.json benchmarks/results/B.json
python -m benchmarks serve-load [--model FILE.onnx] [--requests 400] [--clients 1 8 32]
python -m benchmarks replay-rungs --storage URL [--margins 0.02 0.05] [--rungs 4]
python -m benchmarks rung-ceiling --storage URL --study efficiency-1-seed0 ... --tracking-uri URL
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.arms import ARM_KEYS

if TYPE_CHECKING:
    from benchmarks.suite import Plan

RESULTS = Path(__file__).parent / "results"


def command_line() -> argparse.ArgumentParser:
    """``python -m benchmarks``'s commands and options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the benchmarks and write the results file")
    run.add_argument("--quick", action="store_true", help="minutes, to check the machinery")
    run.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    run.add_argument("--runtime", default="onnxruntime")
    run.add_argument("--seeds", type=int, nargs="+", help="efficiency runs per arm")
    run.add_argument("--arm-seconds", type=float, help="wall time per efficiency run")
    run.add_argument(
        "--arms",
        nargs="+",
        choices=tuple(ARM_KEYS),
        help="efficiency arms, the first compared with the others "
        "(default: default random no-latency-first)",
    )
    run.add_argument(
        "--budgets", type=_share, nargs="+", help="latency budgets, shares of the baseline's p50"
    )
    run.add_argument("--search-trials", type=int, help="trials per compression search")
    run.add_argument("--search-seeds", type=int, nargs="+", help="compression searches per budget")
    run.add_argument("--rounds", type=int, help="side-by-side latency rounds")
    run.add_argument(
        "--finetune-epochs",
        type=int,
        help="also rebuild each pick with N epochs (0, the default: not)",
    )
    run.add_argument(
        "--fix",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a lever setting for the searches, as search run --fix (repeatable)",
    )
    run.add_argument(
        "--early-stop",
        choices=("on", "off", "shadow"),
        help="successive halving in the searches (default on; shadow: record, never stop)",
    )
    run.add_argument(
        "--accuracy-rule",
        choices=("point", "confident"),
        help="the searches' --accuracy-rule (default point); both rules' picks are reported",
    )
    run.add_argument("--work", type=Path, help="work folder (default benchmarks/work/<time>)")
    run.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    check = commands.add_parser(
        "compare",
        help="do two results files agree? (with both work folders here, also which run's "
        "searches reached their fronts sooner)",
    )
    check.add_argument("first", type=Path)
    check.add_argument("second", type=Path)
    again = commands.add_parser(
        "replay-rungs",
        help="judge a shadow search's candidates again with other rung margins: stops, "
        "false stops and time saved for each",
    )
    again.add_argument("--storage", required=True, help="the searches' Optuna storage URL")
    again.add_argument("--study", nargs="*", help="study names (default: every study there)")
    again.add_argument("--margins", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    again.add_argument(
        "--rungs", type=int, nargs="+", default=[4], help="the epochs judged (default 4)"
    )
    again.add_argument("--keep-fraction", type=float, default=1 / 3)
    again.add_argument(
        "--tracking-uri",
        help="read every epoch's reading from the MLflow curves (for shadow searches from "
        "before 2026-12-05, which recorded their rung epochs only)",
    )
    again.add_argument("--epochs", type=int, default=10, help="the fine-tunes' length")
    bound = commands.add_parser(
        "rung-ceiling",
        help="how soon an oracle stopping every below-floor fine-tune at a rung would have "
        "reached each rule-off search's front, and the default rule replayed",
    )
    bound.add_argument("--storage", required=True, help="the searches' Optuna storage URL")
    bound.add_argument(
        "--study",
        nargs="+",
        required=True,
        help="the rule-off searches (a benchmark's store also holds the rule-on arms)",
    )
    bound.add_argument(
        "--tracking-uri",
        required=True,
        help="their MLflow store: every epoch's reading, which a rule-off search keeps there",
    )
    bound.add_argument("--rungs", type=int, nargs="+", default=[1, 2, 3, 4])
    bound.add_argument("--arm-seconds", type=float, default=600.0, help="each search's wall time")
    bound.add_argument("--epochs", type=int, default=10, help="the fine-tunes' length")
    load = commands.add_parser("serve-load", help="search serve with batching off and on")
    load.add_argument("--model", type=Path, help="ONNX file (default: the digits baseline)")
    load.add_argument("--requests", type=int, default=400, help="requests per setting")
    load.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    load.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = command_line().parse_args(argv)
    if args.command == "serve-load":
        return _serve_load(args)
    if args.command == "replay-rungs":
        return _replay_rungs(args)
    if args.command == "rung-ceiling":
        return _rung_ceiling(args)
    if args.command == "compare":
        from benchmarks.compare import agreement

        ok, lines = agreement(args.first, args.second)
        print("\n".join(lines + _speed(args.first, args.second)))
        return 0 if ok else 1
    from search.common.errors import ConfigError

    try:
        return _run(args, argv if argv is not None else sys.argv[1:])
    except ConfigError as error:  # bad input: one line, exit 2, as the search CLI says it
        print(f"python -m benchmarks run: error: {error}", file=sys.stderr)
        return 2


def _replay_rungs(args: argparse.Namespace) -> int:
    """One line per margin, pooled over the studies: what the rule would have done."""
    import optuna

    from benchmarks.early_stop import curve_readings, recorded_readings, replay
    from search.common.errors import ConfigError
    from search.core.rungs import RungRule

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        rules = [
            RungRule(epochs=tuple(args.rungs), margin=m, keep_fraction=args.keep_fraction)
            for m in args.margins
        ]
        names = args.study or optuna.get_all_study_names(args.storage)
        if not names:
            raise ConfigError(f"--storage {args.storage}: no study in it")
        studies = [optuna.load_study(study_name=n, storage=args.storage) for n in names]
        readings = curve_readings(args.tracking_uri) if args.tracking_uri else recorded_readings
    except Exception as error:  # bad input (a margin, a URL, a study name): one line
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"python -m benchmarks replay-rungs: error: {reason}", file=sys.stderr)
        return 2
    print(f"{len(studies)} searches: {', '.join(names)}; rungs at epochs {args.rungs}")
    for rule in rules:
        runs = [replay(study, rule, args.epochs, readings) for study in studies]
        stops = sum(r.stops for r in runs)
        false = sum(len(r.false_stops) for r in runs)
        saved = sum(r.seconds_saved for r in runs)
        wall = sum(r.trial_seconds for r in runs)
        print(
            f"margin {rule.margin:g}: {stops} stops, {false} of them feasible"
            + (f" ({100 * false / stops:.0f}%)" if stops else "")
            + f", {saved:.0f} s of fine-tuning saved ({100 * saved / wall:.0f}% of {wall:.0f} s)"
        )
    return 0


def _rung_ceiling(args: argparse.Namespace) -> int:
    """One line per rule-off search and a median: the oracle's shares and the rule's."""
    import optuna

    from benchmarks.early_stop import curve_readings, fine_tuned_for
    from benchmarks.rung_ceiling import ceiling, render
    from search.common.errors import ConfigError
    from search.core.rungs import RungRule
    from search.track.urls import check_tracking_uri

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        if args.epochs < 2:
            raise ConfigError(f"--epochs {args.epochs}: a fine-tune needs 2 epochs for a rung")
        if any(not 0 < rung < args.epochs for rung in args.rungs):
            raise ConfigError(f"--rungs {args.rungs}: give epochs from 1 to {args.epochs - 1}")
        if not args.arm_seconds > 0:
            raise ConfigError(f"--arm-seconds {args.arm_seconds:g} must be above 0")
        studies = [optuna.load_study(study_name=n, storage=args.storage) for n in args.study]
        check_tracking_uri(args.tracking_uri)
        kept = args.tracking_uri.removeprefix("sqlite:///")
        if kept != args.tracking_uri and not Path(kept).is_file():
            raise ConfigError(f"--tracking-uri {args.tracking_uri}: no such file to read")
        readings = curve_readings(args.tracking_uri)
        for study in studies:  # a store without this search's curves: said, not replayed
            tuned = [t for t in study.get_trials(deepcopy=False) if fine_tuned_for(t) > 0]
            if tuned and not any(readings(t) for t in tuned):
                raise ConfigError(
                    f"--tracking-uri {args.tracking_uri}: no epoch readings of study "
                    f"{study.study_name!r} there (is it this storage's MLflow store?)"
                )
    except Exception as error:  # bad input (a URL, a study name, a number): one line
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"python -m benchmarks rung-ceiling: error: {reason}", file=sys.stderr)
        return 2
    found = [
        ceiling(
            study,
            epochs=args.epochs,
            rungs=sorted(set(args.rungs)),
            arm_seconds=args.arm_seconds,
            rule=RungRule(),
            readings_of=readings,
        )
        for study in studies
    ]
    print("\n".join(render([c for c in found if c is not None])))
    return 0


def _share(text: str) -> float:
    """A budget as a share of the baseline's p50: above 0 (argparse's one-line error if not)."""
    try:
        share = float(text)
    except ValueError:
        share = 0.0
    if not share > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share above 0, e.g. 0.5")
    return share


def plan_of(args: argparse.Namespace) -> Plan:
    """The benchmark ``run``'s arguments ask for: the default plan (or ``--quick``'s) with
    each option given in place of its default."""
    from benchmarks.suite import Plan, quick_plan
    from search.core.levers import LeverSettings, check_levers_and_options, parse_assignments
    from search.measure.runtimes import check_target

    check_target(args.runtime, args.device)
    fixed = parse_assignments(args.fix)
    check_levers_and_options(LeverSettings(fixed=fixed))  # names in the space: when it starts
    plan = quick_plan(args.device, args.runtime) if args.quick else Plan(args.device, args.runtime)
    overrides = {
        "seeds": tuple(args.seeds) if args.seeds else None,
        "arm_seconds": args.arm_seconds,
        "arms": tuple(ARM_KEYS[a] for a in args.arms) if args.arms else None,
        "budgets": tuple(args.budgets) if args.budgets else None,
        "search_trials": args.search_trials,
        "search_seeds": tuple(args.search_seeds) if args.search_seeds else None,
        "rounds": args.rounds,
        "finetune_epochs": args.finetune_epochs,
        "fixed": fixed or None,
        "early_stop": args.early_stop,
        "accuracy_rule": args.accuracy_rule,
    }
    return replace(plan, **{k: v for k, v in overrides.items() if v is not None})


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from benchmarks.report import results_stem, write_results
    from benchmarks.suite import run_benchmark

    plan = plan_of(args)
    work = args.work or Path("benchmarks/work") / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    results = {"commit": _commit(), **run_benchmark(plan, work.resolve(), say)}
    command = "python -m benchmarks " + shlex.join(argv)
    for path in write_results(results, results_stem(args.out, plan.quick), command):
        say(f"wrote {path}")
    return 0


def _serve_load(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from benchmarks.serve_load import load_test, markdown
    from search.core.config import SearchConfig
    from search.measure.onnx_runtime import export_onnx
    from search.tasks.loader import load_task

    config = SearchConfig(home=Path.cwd())
    task = load_task("digits", cache_dir=config.cache_dir)
    inputs = next(iter(task.data("test")))[0].numpy()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as folder:
        model = args.model
        if model is None:
            model = export_onnx(task.build_model(), task.example_inputs(1),
                                Path(folder) / "digits-baseline.onnx").path  # fmt: skip
        rows = load_test(model, inputs, clients=tuple(args.clients), requests=args.requests)
        text = markdown(rows, model)
    stem = args.out / f"serve-load-{time.strftime('%Y-%m-%d')}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({"commit": _commit(), "rows": rows}, indent=2))
    print(text + f"wrote {stem}.md and .json")
    return 0


def _speed(first: Path, second: Path) -> list[str]:
    """The searches against wall time, where both runs' work folders are still here."""
    import json

    from benchmarks.search_speed import searches_in, speed_lines, storage_of

    folders = [json.loads(path.read_text()).get("work_folder") for path in (first, second)]
    storages = [storage_of(Path(folder)) if folder else None for folder in folders]
    if None in storages:
        return ["searches against wall time: a work folder is gone; not compared"]
    lines = speed_lines(*(searches_in(s) for s in storages if s is not None))
    return ["searches against wall time (first vs second):", *(f"  {line}" for line in lines)]


def _commit() -> str:
    """The checkout the numbers came from (``+dirty`` with uncommitted changes)."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty.stdout.strip() else "")


if __name__ == "__main__":
    sys.exit(main())
