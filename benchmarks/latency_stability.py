"""How stable is one latency figure? The same model, measured in N separate processes.

    python -m benchmarks.latency_stability [--runs 10] [--task digits] [--threads 1]

Exports the task's trained baseline once, then starts a fresh Python process per run that
times it with the search's own protocol (``search.measure.latency.measure_latency``), and prints
each p50, their mean, spread and coefficient of variation. Separate processes, because
what varies between searches is the process (allocator state, thread placement), not the
loop inside one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, sys
import numpy as np
from pathlib import Path
from search.measure.latency import measure_latency
from search.measure.artifact import Artifact
path, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
inputs = np.load(path + ".npy")
stats = measure_latency(Artifact(Path(path), "fp32"), inputs, threads=threads)
print(json.dumps(stats.as_dict()))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--task", default="digits")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()

    import numpy as np

    from search.core.objective import deploy_baseline
    from search.tasks.loader import load_task

    task = load_task(args.task, cache_dir=Path.cwd() / "studies" / "cache")
    with tempfile.TemporaryDirectory(prefix="stability-") as scratch:
        artifact = deploy_baseline(task.build_model().eval(), task, Path(scratch))
        np.save(str(artifact.path) + ".npy", task.example_inputs(args.batch_size).numpy())
        p50s = []
        for run in range(args.runs):
            child = subprocess.run(
                [sys.executable, "-c", _CHILD, str(artifact.path), str(args.batch_size),
                 str(args.threads)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            stats = json.loads(child.stdout.strip().splitlines()[-1])
            p50s.append(stats["p50_ms"])
            print(f"run {run + 1}: p50 {stats['p50_ms']:.4f} ms ({stats['repeats']} repeats)")
    mean = statistics.mean(p50s)
    spread = statistics.stdev(p50s) if len(p50s) > 1 else 0.0
    print(
        f"{args.task}, {args.threads} thread(s), batch {args.batch_size}: p50 mean {mean:.4f} ms,"
        f" min {min(p50s):.4f}, max {max(p50s):.4f}, std {spread:.4f}, "
        f"coefficient of variation {100 * spread / mean:.2f}%"
    )


if __name__ == "__main__":
    main()
