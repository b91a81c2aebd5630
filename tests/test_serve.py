"""`search serve`: the registered champion over HTTP, batched, cached, and hard to break."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from search.measure.onnx_runtime import export_onnx
from search.registry.serve import ServeSettings, build_app, fetch_registered, parse_inputs

NAME = "tiny-digits"


@pytest.fixture(scope="module")
def registered(tiny_task, tmp_path_factory):
    """The tiny model registered as ``tiny-digits`` version 1, alias champion."""
    import mlflow
    import onnx
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    path = export_onnx(tiny_task.build_model(), tiny_task.example_inputs(1), folder / "m.onnx")
    example = tiny_task.example_inputs(2).numpy()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("serve", artifact_location=str(folder / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.onnx.log_model(
            onnx.load(str(path.path)),
            name="model",
            onnx_execution_providers=["CPUExecutionProvider"],
            save_as_external_data=False,
            signature=infer_signature(example, np.zeros((2, 10), np.float32)),
            pip_requirements=["onnxruntime"],
        )
    version = mlflow.register_model(info.model_uri, NAME).version
    MlflowClient(uri).set_registered_model_alias(NAME, "champion", version)
    return uri, folder


@pytest.fixture(scope="module")
def server(registered):
    """``search serve``'s app on a free loopback port, in a thread; yields its URL."""
    import uvicorn

    uri, folder = registered
    served = fetch_registered(NAME, "champion", uri, folder / "served")
    app = build_app(served, ServeSettings(max_batch=8, max_wait_ms=20.0, cache_size=64))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert time.monotonic() < deadline, "the server did not start in 30 s"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


def _registered_predictions(uri: str, inputs: np.ndarray) -> np.ndarray:
    import mlflow

    mlflow.set_tracking_uri(uri)
    predicted = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(inputs)
    return np.asarray(predicted["output"] if isinstance(predicted, dict) else predicted)


def test_answers_equal_the_registered_models(server, registered, tiny_task) -> None:
    inputs = next(iter(tiny_task.data("val")))[0][:12].numpy()
    answer = requests.post(f"{server}/predict", json={"inputs": inputs.tolist()}, timeout=30)
    assert answer.status_code == 200
    outputs = np.asarray(answer.json()["outputs"], dtype=np.float32)
    np.testing.assert_allclose(outputs, _registered_predictions(registered[0], inputs), atol=1e-5)
    assert answer.json()["predictions"] == outputs.argmax(1).tolist()
    health = requests.get(f"{server}/health", timeout=10).json()
    assert (health["model"], health["version"]) == (NAME, "1")


def test_concurrent_requests_are_batched_and_repeats_cached(server, tiny_task) -> None:
    inputs = next(iter(tiny_task.data("test")))[0][:32].numpy()
    before = requests.get(f"{server}/metrics", timeout=10).json()

    def one(item: np.ndarray) -> list[float]:
        answer = requests.post(f"{server}/predict", json={"inputs": item.tolist()}, timeout=30)
        assert answer.status_code == 200
        return answer.json()["outputs"][0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = np.asarray(list(pool.map(one, inputs)), dtype=np.float32)
    alone = np.asarray([one(item) for item in inputs[:4]], dtype=np.float32)  # cache hits
    np.testing.assert_allclose(answers[:4], alone, atol=1e-5)

    after = requests.get(f"{server}/metrics", timeout=10).json()
    batches = after["batches"] - before["batches"]
    assert batches < 32  # some requests shared a batch
    assert after["cache_hits"] - before["cache_hits"] >= 4
    assert after["requests"] - before["requests"] == 36
    assert after["latency_p95_ms"] >= after["latency_p50_ms"] > 0
    assert after["throughput_per_s"] > 0


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"not json", 400, "not JSON"),
        (b'{"x": 1}', 422, '{"inputs"'),
        (b'{"inputs": [1, 2, 3]}', 422, "give one item of shape"),
        (b'{"inputs": [["a"]]}', 422, "nested list of numbers"),
    ],
)
def test_malformed_requests_get_4xx_and_the_server_goes_on(
    server, tiny_task, body, status, needle
) -> None:
    answer = requests.post(
        f"{server}/predict", data=body, headers={"content-type": "application/json"}, timeout=10
    )
    assert answer.status_code == status and needle in answer.json()["error"]
    item = tiny_task.example_inputs(1)[0].numpy()
    ok = requests.post(f"{server}/predict", json={"inputs": item.tolist()}, timeout=10)
    assert ok.status_code == 200


def test_inputs_are_checked_before_the_model_sees_them() -> None:
    assert parse_inputs({"inputs": np.zeros((1, 2, 2)).tolist()}, (1, 2, 2)).shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="NaN"):
        parse_inputs({"inputs": [[[float("nan"), 0.0], [0.0, 0.0]]]}, (1, 2, 2))


def test_an_unknown_model_is_one_line(tmp_path) -> None:
    from search.common.errors import ConfigError

    with pytest.raises(ConfigError, match="no model 'nope' with alias 'champion'"):
        fetch_registered("nope", "champion", f"sqlite:///{tmp_path / 'm.db'}", tmp_path)
