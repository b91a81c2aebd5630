"""`search serve`: options -> ``ServeSettings`` -> uvicorn running ``search.registry.serve``'s app.

Registered on the ``search`` app in ``search.cli``; no logic beyond parsing and printing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from search.cli.options import TrackingOption


def serve(
    model: Annotated[
        str, typer.Option(help="Registered model name (search promote's --name, or the study's).")
    ],
    alias: Annotated[str, typer.Option(help="Which version: the alias it holds.")] = "champion",
    host: Annotated[
        str, typer.Option(help="Address to bind; 127.0.0.1 keeps it off the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8000,
    max_batch: Annotated[
        int, typer.Option(help="Most items run as one batch (1: no batching).")
    ] = 16,
    max_wait_ms: Annotated[
        float, typer.Option(help="How long the first request of a batch waits for others.")
    ] = 2.0,
    cache_size: Annotated[
        int, typer.Option(help="Results kept by input hash, least recently used out (0: off).")
    ] = 1024,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads.")] = 1,
    tracking_uri: TrackingOption = None,
) -> None:
    """Serve a registered model over HTTP with dynamic batching, an LRU cache and /metrics."""
    import uvicorn

    from search.common.errors import ConfigError
    from search.core.config import SearchConfig
    from search.registry.serve import ServeSettings, build_app, fetch_registered

    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: use 1 to 65535")
    settings = ServeSettings(
        max_batch=max_batch, max_wait_ms=max_wait_ms, cache_size=cache_size, threads=threads
    )
    config = SearchConfig(tracking_uri=tracking_uri, home=Path.cwd())
    with tempfile.TemporaryDirectory(prefix="search-serve-") as folder:
        served = fetch_registered(model, alias, config.mlflow_uri, Path(folder))
        app = build_app(served, settings)
        Console().print(
            f"serving {served.name} version {served.version} (@{served.alias}) at "
            f"http://{host}:{port}/predict; /metrics, /health (Ctrl-C stops it)"
        )
        uvicorn.run(app, host=host, port=port, log_level="warning")
