"""Runtime knobs: the graph optimised offline is the deployed file, and runs as recorded."""

from __future__ import annotations

import numpy as np
import onnx
import optuna
import pytest

from search.measure.onnx_runtime import (
    OPTIMIZED_KEY,
    THREADS_KEY,
    export_onnx,
    open_session,
    session_settings,
    tensorrt_available,
    with_session_settings,
)
from search.measure.runtimes import graph_signature
from techniques import Context
from techniques.session import SessionKnobs, SessionParams


def _predictions(path, inputs: np.ndarray) -> np.ndarray:
    session = open_session(path)
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


@pytest.mark.parametrize("task_fixture", ["tiny_task", "tiny_vit_task"])
@pytest.mark.parametrize("level", ["basic", "extended", "all"])
def test_optimised_graph_predicts_as_the_exported_one(task_fixture, level, request, tmp_path):
    task = request.getfixturevalue(task_fixture)
    exported = export_onnx(task.build_model(), task.example_inputs(1), tmp_path / "m.onnx")
    optimised = with_session_settings(exported, tmp_path / f"m.{level}.onnx", level=level)

    assert session_settings(optimised.path) == {OPTIMIZED_KEY: level}
    nodes = len(onnx.load(str(exported.path)).graph.node)
    assert len(onnx.load(str(optimised.path)).graph.node) < nodes  # fused: another graph
    inputs = next(iter(task.data("val")))[0].numpy()
    np.testing.assert_allclose(
        _predictions(optimised.path, inputs), _predictions(exported.path, inputs), atol=1e-4
    )
    assert (_predictions(optimised.path, inputs).argmax(1)
            == _predictions(exported.path, inputs).argmax(1)).all()  # fmt: skip


def test_recorded_threads_are_the_sessions_and_part_of_the_signature(tiny_task, tmp_path):
    exported = export_onnx(
        tiny_task.build_model(), tiny_task.example_inputs(1), tmp_path / "m.onnx"
    )
    two = with_session_settings(exported, tmp_path / "m.t2.onnx", level=None, threads=2)
    assert session_settings(two.path) == {THREADS_KEY: "2"}
    assert open_session(two.path, threads=1).get_session_options().intra_op_num_threads == 2
    assert open_session(exported.path, threads=1).get_session_options().intra_op_num_threads == 1
    # same graph, other threads: its latency is not the exported file's
    assert graph_signature(two) != graph_signature(exported)


def test_threads_are_searched_only_above_the_targets(tiny_task, tmp_path):
    knobs = SessionKnobs()

    def ctx(max_threads: int, threads: int = 1) -> Context:
        return Context(
            tiny_task, "cpu", tmp_path, tiny_task.build_model(),
            options={"ort.max_threads": max_threads}, threads=threads,
        )  # fmt: skip

    assert dict(knobs.off_params(ctx(1))) == {}  # not asked for: not in the space
    assert knobs.space(optuna.trial.FixedTrial({}), ctx(1)) is None
    assert dict(knobs.off_params(ctx(4, threads=2))) == {"ort.level": "load", "ort.threads": 2}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        params = knobs.space(trial, ctx(4, threads=2))
        seen.add(trial.params.get("ort.threads"))
        if trial.params["ort.threads"] == 2 and trial.params["ort.level"] == "load":
            assert params is None  # the target's own setting: off
        study.tell(trial, 0.0)
    assert seen == {1, 2, 4}
    fixed = optuna.trial.FixedTrial({"ort.level": "all", "ort.threads": 4})
    assert knobs.space(fixed, ctx(4, threads=2)) == SessionParams("all", 4)


def test_tensorrt_is_a_choice_only_on_cuda_where_present(tiny_task, tmp_path):
    cpu = Context(
        tiny_task, "cpu", tmp_path, tiny_task.build_model(), options={"ort.searched": True}
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        SessionKnobs().space(trial, cpu)
        assert "ort.provider" not in trial.params
        study.tell(trial, 0.0)
    if tensorrt_available() is not None:  # this machine: the reason is one sentence
        assert (
            "TensorrtExecutionProvider" in tensorrt_available() or "CUDA" in tensorrt_available()
        )


@pytest.mark.gpu
@pytest.mark.skipif(
    tensorrt_available() is not None,
    reason=f"ONNX Runtime's TensorRT provider cannot run here: {tensorrt_available()}",
)
def test_tensorrt_runs_the_file_as_cuda_does(tiny_task, tmp_path):
    exported = export_onnx(
        tiny_task.build_model(), tiny_task.example_inputs(1), tmp_path / "m.onnx"
    )
    trt = with_session_settings(
        exported, tmp_path / "m.trt.onnx", level=None, provider="tensorrt", device="cuda"
    )
    session = open_session(trt.path, device="cuda")
    assert session.get_providers()[0] == "TensorrtExecutionProvider"
    inputs = next(iter(tiny_task.data("val")))[0].numpy()
    cuda = open_session(exported.path, device="cuda")
    np.testing.assert_allclose(
        session.run(None, {"input": inputs})[0], cuda.run(None, {"input": inputs})[0], atol=1e-3
    )
