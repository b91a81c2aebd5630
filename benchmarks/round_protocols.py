"""Which way should a side-by-side round time its models, on this machine, now?

    python -m benchmarks.round_protocols benchmarks/results/<run>.json [--rounds 6]

Takes a benchmark run's models (its results file, and the model files in its work folder)
and times them in alternate rounds: one after another (each model once, with
``measure_latency``: the rounds of results files from before 2026-11-25) and in turn
(``interleaved_times``: the rounds since). Prints every round's ratios against the
baseline, and per model the median and min-max over rounds of each protocol. On a quiet
machine the two agree; on one whose speed changes in phases of seconds, the first spreads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.side_by_side import time_rounds
from search.core.profile import Target
from search.measure.artifact import Artifact

PROTOCOLS = {False: "one after another", True: "in turn"}


def model_files(results: dict[str, Any], work: Path) -> list[Target]:
    """Each model of ``results`` (the baseline first), found in ``work`` by its path if the
    file records one, else by its exact size (results files before 2026-11-25 hold no paths:
    same-size files there are the same graph, so they time alike)."""
    files = sorted(work.rglob("*.onnx"))
    targets = []
    for model in results["models"]:
        recorded = model.get("path")
        if recorded and Path(recorded).exists():
            path = Path(recorded)
        else:
            sized = [f for f in files if f.stat().st_size == model["size_bytes"]]
            if not sized:
                raise SystemExit(
                    f"{model['name']}: no file of {model['size_bytes']} bytes in {work}"
                )
            path = sized[0]
        targets.append(Target(model["name"], Artifact(path, model["scheme"])))
    return targets


def input_shape(path: Path) -> tuple[int, ...]:
    """The model file's input shape, a symbolic dimension (the batch) taken as 1."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value or 1 for d in dims)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--work", type=Path, help="its work folder (default: as recorded)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of each protocol")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    work = args.work or Path(results["work_folder"])
    if not work.is_dir():
        raise SystemExit(f"{work}: no such work folder (pass --work)")
    models = model_files(results, work)
    inputs = np.zeros(input_shape(models[0].artifact.path), dtype=np.float32)
    plan = results["plan"]
    timing = {"runtime": plan["runtime"], "device": plan["device"], "threads": plan["threads"]}
    ratios: dict[bool, list[list[float]]] = {False: [], True: []}
    started = time.perf_counter()
    for index in range(args.rounds):
        for interleaved in PROTOCOLS:
            (timed,) = time_rounds(models, inputs, count=1, first=index, started=started,
                                   interleaved=interleaved, **timing)  # fmt: skip
            ratios[interleaved].append([timed.p50_ms[0] / p50 for p50 in timed.p50_ms])
            shown = " ".join(f"{r:.2f}" for r in ratios[interleaved][-1])
            print(f"round {index + 1}, {PROTOCOLS[interleaved]}: ×faster {shown}", flush=True)
    for interleaved, rows in ratios.items():
        print(PROTOCOLS[interleaved])
        for column, model in enumerate(models):
            values = [row[column] for row in rows]
            print(f"  {model.name}: ×faster {statistics.median(values):.2f} "
                  f"({min(values):.2f}–{max(values):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
