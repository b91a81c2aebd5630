"""Load test of `search serve`: throughput and p95 with dynamic batching off and on.

The server is ``search.registry.serve``'s app in a process of its own on a free 127.0.0.1 port
(loopback only); the clients are coroutines on one aiohttp session in this process, each
sending its requests one after another, so the offered load is set by how many run at
once. The
cache is off and every request is a different test image, so the model runs for each.
Bounded: a fixed number of requests per setting.

python -m benchmarks serve-load [--model FILE.onnx] [--requests 400] [--clients 1 8 32]
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from search.registry.serve import ServedModel, ServeSettings, build_app

MAX_BATCH = 16
MAX_WAIT_MS = 2.0


def load_test(
    model: Path,
    inputs: np.ndarray,
    *,
    clients: tuple[int, ...],
    requests: int,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """One row per (batching, clients): throughput and client-side p50/p95 latency."""
    rows = []
    for batching in (False, True):
        settings = ServeSettings(
            max_batch=MAX_BATCH if batching else 1,
            max_wait_ms=MAX_WAIT_MS if batching else 0.0,
            cache_size=0,
            threads=threads,
        )
        for concurrency in clients:
            with _running(model, settings) as url:
                figures = asyncio.run(_drive(url, inputs, concurrency, requests))
            rows.append({"batching": batching, "clients": concurrency, **figures})
    return rows


async def _drive(url: str, inputs: np.ndarray, clients: int, requests: int) -> dict[str, Any]:
    import aiohttp

    bodies = [{"inputs": inputs[i % len(inputs)].tolist()} for i in range(requests)]
    latencies: list[float] = []
    cursor = iter(range(requests))

    async def client(session: aiohttp.ClientSession) -> None:
        for index in cursor:
            began = time.perf_counter()
            async with session.post(f"{url}/predict", json=bodies[index]) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"request {index}: HTTP {answer.status}")
            latencies.append((time.perf_counter() - began) * 1e3)

    async with aiohttp.ClientSession() as session:
        for warm in bodies[:8]:  # connections and the session's first runs
            async with session.post(f"{url}/predict", json=warm) as answer:
                await answer.read()
        async with session.get(f"{url}/metrics") as answer:
            before = await answer.json()
        began = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - began
        async with session.get(f"{url}/metrics") as answer:
            after = await answer.json()
    batches = after["batches"] - before["batches"]
    items = _items(after) - _items(before)
    times = np.asarray(latencies)
    return {
        "requests": requests,
        "throughput_per_s": requests / wall,
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "mean_batch_size": items / batches if batches else None,  # the timed requests only
    }


def _items(metrics: dict[str, Any]) -> float:
    """Items run in batches so far, from the server's count and mean."""
    return (metrics["mean_batch_size"] or 0.0) * metrics["batches"]


def _serve(model: str, settings: ServeSettings, port: int) -> None:
    """The server process: ``search serve``'s app for ``model`` on 127.0.0.1:``port``."""
    import uvicorn

    served = ServedModel(Path(model), Path(model).stem, "file", "none")
    uvicorn.run(build_app(served, settings), host="127.0.0.1", port=port, log_level="warning")


class _running:
    """The server in a process of its own (no GIL shared with the clients), while in the
    block; stopped by terminating it."""

    def __init__(self, model: Path, settings: ServeSettings) -> None:
        import multiprocessing

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(
            target=_serve, args=(str(model), settings, self.port), daemon=True
        )

    def __enter__(self) -> str:
        self.process.start()
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if time.monotonic() > deadline or not self.process.is_alive():
                raise RuntimeError("the server did not start in 60 s")
            time.sleep(0.1)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.join(timeout=10)


def markdown(rows: list[dict[str, Any]], model: Path) -> str:
    lines = [
        f"Load test of `search serve` on {model.name} (loopback, cache off, "
        f"batching: max batch {MAX_BATCH}, max wait {MAX_WAIT_MS:g} ms).",
        "",
        "| batching | clients | requests/s | p50 ms | p95 ms | mean batch |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        batch = row["mean_batch_size"]
        shown = f"{batch:.1f}" if batch is not None else "–"
        lines.append(
            f"| {'on' if row['batching'] else 'off'} | {row['clients']} | "
            f"{row['throughput_per_s']:.0f} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | "
            f"{shown} |"
        )
    return "\n".join(lines) + "\n"
