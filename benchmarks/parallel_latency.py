"""Do parallel workers disturb each other's latency figures?

    python -m benchmarks.parallel_latency [--trials 6] [--task digits] [--repeats 5]

Two checks, from the working folder's trained baseline (``studies/cache``):

1. The same search run twice in a scratch folder, once with ``--workers 1`` and once with
   ``--workers 2``: the baseline trial's p50, and every graph both studies measured,
   compared as ratios (two workers / one worker).
2. The baseline timed with the search's protocol ``--repeats`` times with the machine
   quiet, and as many times while another process fine-tunes the model (what a second
   worker does most of the time), interleaved: the median of each and their ratio.

The acceptance bar is a ratio within 10% of 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_TRAINER = """
import sys, torch
from pathlib import Path
from search.tasks.loader import load_task
from search.train.loop import fit
from search.core.workers import torch_threads_per_worker
torch.set_num_threads(torch_threads_per_worker(2))
task = load_task(sys.argv[1], cache_dir=Path(sys.argv[2]))
model = task.build_model()
print("ready", flush=True)
while True:
    fit(model, task.data("train"), epochs=1, lr=0.01, loss_fn=task.loss)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--task", default="digits")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", default="0.45ms")
    args = parser.parse_args()
    cache = Path.cwd() / "studies" / "cache"
    searches = compare_searches(args.task, args.trials, args.budget, cache)
    loaded = compare_under_load(args.task, args.repeats, cache)
    print(json.dumps({"searches": searches, "under_load": loaded}, indent=2))


def compare_searches(task: str, trials: int, budget: str, cache: Path) -> dict:
    """The same search with one and with two workers: shared graphs' p50 ratios."""
    import optuna

    latencies = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory(prefix=f"parallel-{workers}-") as scratch:
            home = Path(scratch)
            shutil.copytree(cache, home / "studies" / "cache")
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "search.cli", "run", "--task", task, "--latency-budget",
                 budget, "--trials", str(trials), "--workers", str(workers), "--study", "p"],
                cwd=home, check=True, capture_output=True, text=True,
            )  # fmt: skip
            elapsed = time.perf_counter() - started
            study = optuna.load_study(
                study_name="p", storage=f"sqlite:///{home / 'studies' / 'optuna.db'}"
            )
            by_signature = {}
            for trial in study.trials:
                stats = trial.user_attrs.get("latency")
                if (
                    stats
                    and stats["repeats"] >= 100
                    and not trial.user_attrs.get("latency_reused")
                ):
                    name = "baseline" if trial.user_attrs.get("baseline") else str(trial.number)
                    by_signature[trial.user_attrs["latency_signature"]] = (name, stats["p50_ms"])
            latencies[workers] = (by_signature, elapsed)
    one, two = latencies[1][0], latencies[2][0]
    shared = sorted(set(one) & set(two), key=lambda s: one[s][0] != "baseline")
    ratios = [
        {"graph": one[s][0], "one_worker_ms": one[s][1], "two_workers_ms": two[s][1],
         "ratio": two[s][1] / one[s][1]}
        for s in shared
    ]  # fmt: skip
    return {
        "wall_s": {"one_worker": latencies[1][1], "two_workers": latencies[2][1]},
        "graphs": ratios,
    }


def compare_under_load(task_spec: str, repeats: int, cache: Path) -> dict:
    """The baseline's p50, quiet and while another process fine-tunes, interleaved."""
    from search.core.objective import deploy_baseline
    from search.measure.latency import measure_latency
    from search.tasks.loader import load_task

    task = load_task(task_spec, cache_dir=cache)
    inputs = task.example_inputs(1).numpy()
    quiet, loaded = [], []
    with tempfile.TemporaryDirectory(prefix="under-load-") as scratch:
        artifact = deploy_baseline(task.build_model().eval(), task, Path(scratch))
        for _ in range(repeats):
            quiet.append(measure_latency(artifact, inputs).p50_ms)
            trainer = subprocess.Popen(
                [sys.executable, "-c", _TRAINER, task_spec, str(cache)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                assert trainer.stdout is not None
                trainer.stdout.readline()  # "ready": the model is built and training starts
                time.sleep(2.0)
                loaded.append(measure_latency(artifact, inputs).p50_ms)
            finally:
                trainer.kill()
                trainer.wait()
    quiet_ms, loaded_ms = statistics.median(quiet), statistics.median(loaded)
    return {
        "quiet_p50_ms": quiet,
        "while_training_p50_ms": loaded,
        "median_quiet_ms": quiet_ms,
        "median_while_training_ms": loaded_ms,
        "ratio": loaded_ms / quiet_ms,
    }


if __name__ == "__main__":
    main()
