"""`search serve`: the registry's champion over HTTP, with dynamic batching and a cache.

The model is the ONNX file registered under ``models:/<name>@<alias>`` (``champion`` by
default), run by ONNX Runtime exactly as it was measured: its recorded session settings
are honoured (``search.measure.onnx_runtime.onnxruntime_predictor``). FastAPI answers,
uvicorn serves, bound to 127.0.0.1 unless told otherwise.

* ``POST /predict`` with ``{"inputs": [...]}``: one item of the model's input shape, or a
  list of them; answers ``{"outputs", "predictions", "cached"}``. A body that is not that
  is refused with 4xx and one sentence, and the server goes on.
* ``GET /metrics``: requests, cache hits, refused requests (4xx, and 5xx where the model
  failed), batches and their mean size,
  p50/p95 request latency (ms, in the server) and throughput since the first request.
* ``GET /health``: the model's name, version and input shape.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request  # at module level: FastAPI resolves the route's hints
from fastapi.responses import JSONResponse

from search.common.errors import ConfigError
from search.registry.batching import DynamicBatcher, ResultCache, ServeStats, input_key


@dataclass(frozen=True)
class ServeSettings:
    """How requests are batched and cached, and the session's threads."""

    max_batch: int = 16
    max_wait_ms: float = 2.0
    cache_size: int = 1024
    threads: int = 1

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch {self.max_batch}: give at least 1 (1: no batching)")
        if self.max_wait_ms < 0:
            raise ConfigError(f"--max-wait-ms {self.max_wait_ms:g}: give 0 or more")
        if self.cache_size < 0:
            raise ConfigError(f"--cache-size {self.cache_size}: give 0 (off) or more")
        if self.threads < 1:
            raise ConfigError(f"--threads {self.threads}: give at least 1")


@dataclass(frozen=True)
class ServedModel:
    """The file that is served and where it came from."""

    path: Path
    name: str
    version: str
    alias: str


def fetch_registered(name: str, alias: str, tracking_uri: str, folder: Path) -> ServedModel:
    """Download ``models:/name@alias``'s ONNX file; a missing model or alias, one line."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        raise ConfigError(
            f"no model {name!r} with alias {alias!r} in {tracking_uri}: promote a trial first "
            f"(search promote --study S --trial N) ({error.message.splitlines()[0]})"
        ) from None
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    local = Path(
        # the version the alias named when asked: it may move while this downloads
        mlflow.artifacts.download_artifacts(
            f"models:/{name}/{version.version}", dst_path=str(folder)
        )
    )
    files = sorted(local.rglob("*.onnx"))
    if not files:
        raise ConfigError(f"models:/{name}@{alias} holds no .onnx file to serve")
    return ServedModel(files[0], name, str(version.version), alias)


def input_shape(path: Path) -> tuple[int | None, ...]:
    """The model input's shape, None for a symbolic (batch) dimension."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims.shape.dim)


def parse_inputs(payload: Any, item_shape: tuple[int, ...]) -> np.ndarray:
    """``payload["inputs"]`` as a float32 batch of ``item_shape`` items; ValueError says why."""
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise ValueError('the body must be a JSON object {"inputs": [...]}')
    try:
        array = np.asarray(payload["inputs"], dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError("inputs must be a nested list of numbers of one shape") from None
    if array.shape == item_shape:
        array = array[None]
    if array.ndim != len(item_shape) + 1 or array.shape[1:] != item_shape or not len(array):
        raise ValueError(
            f"inputs of shape {list(array.shape)}: give one item of shape {list(item_shape)} "
            f"or a list of them"
        )
    if not np.isfinite(array).all():
        raise ValueError("inputs hold NaN or infinity")
    return array


def build_app(model: ServedModel, settings: ServeSettings) -> FastAPI:
    """The FastAPI application serving ``model``; the batcher lives on its event loop."""
    from search.measure.onnx_runtime import onnxruntime_predictor

    # the same predictor evaluation and latency use: session settings, provider check
    predictor = onnxruntime_predictor(model.path, threads=settings.threads)
    shape = input_shape(model.path)
    item_shape = tuple(int(d or 1) for d in shape[1:])
    stats = ServeStats()
    cache = ResultCache(settings.cache_size)

    batcher = DynamicBatcher(
        predictor.run, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms, stats=stats
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title=f"search serve: {model.name} v{model.version}", lifespan=lifespan)

    def refuse(status: int, message: str) -> JSONResponse:
        with stats.lock:
            stats.rejected += 1
        return JSONResponse({"error": message}, status_code=status)

    @app.post("/predict")
    async def predict_route(request: Request) -> Any:
        began = stats.begin()
        try:
            payload = await request.json()
        except ValueError:
            return refuse(400, "the body is not JSON")
        try:
            inputs = parse_inputs(payload, item_shape)
        except ValueError as error:
            return refuse(422, str(error))
        key = input_key(inputs)
        outputs = cache.get(key)
        cached = outputs is not None
        if outputs is None:
            try:
                outputs = await batcher.submit(inputs)
            except Exception as error:  # the model failed on this batch: said, not raised
                return refuse(500, f"the model failed: {type(error).__name__}: {error}")
            cache.put(key, outputs)
        stats.answered(began, cached=cached)
        return {
            "outputs": outputs.tolist(),
            "predictions": outputs.argmax(axis=1).tolist(),
            "cached": cached,
        }

    @app.get("/metrics")
    async def metrics() -> dict[str, Any]:
        return stats.snapshot() | {
            "cache_entries": len(cache),
            "max_batch": settings.max_batch,
            "max_wait_ms": settings.max_wait_ms,
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "model": model.name,
            "version": model.version,
            "alias": model.alias,
            "input_shape": [d if d is not None else "batch" for d in shape],
        }

    return app
