"""PyTorch as the runtime: ``torch.export`` programs run eager and compiled, and half types."""

import copy

import numpy as np
import pytest
import torch

from search.measure.latency import measure_latency
from search.measure.onnx_runtime import export_onnx
from search.measure.runtimes import evaluate, export, graph_signature, open_predictor
from search.measure.torch_runtime import export_program, on_device, to_half


@pytest.fixture(scope="module")
def program(tiny_task, tmp_path_factory):
    folder = tmp_path_factory.mktemp("torch-runtime")
    return export_program(tiny_task.build_model(), tiny_task.example_inputs(1), folder / "m.pt2")


def test_a_program_predicts_what_the_model_and_its_onnx_file_predict(
    program, tiny_task, tmp_path
) -> None:
    model = tiny_task.build_model().eval()
    x = tiny_task.example_inputs(7)
    with torch.no_grad():
        expected = model(x).numpy()
    with open_predictor(program, runtime="torch") as predictor:
        got = predictor.run(x.numpy())
    assert got.shape == (7, expected.shape[1])  # the batch dimension is dynamic
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    onnx_file = export_onnx(model, tiny_task.example_inputs(1), tmp_path / "m.onnx")
    val, metric = tiny_task.data("val"), tiny_task.metric
    assert evaluate(program, val, metric, runtime="torch") == pytest.approx(
        evaluate(onnx_file, val, metric), abs=0.003
    )


def test_latency_in_torch_names_the_runtime_and_its_peak_memory(program, tiny_task) -> None:
    stats = measure_latency(program, tiny_task.example_inputs(1).numpy(), runtime="torch")
    assert stats.runtime.startswith(f"torch-{torch.__version__}/eager")
    assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms
    assert stats.p50_ci_ms is not None and stats.first_ms is not None
    assert stats.peak_memory_mb is not None and stats.peak_memory_mb >= 0


def test_thread_count_is_restored_after_a_torch_predictor(program) -> None:
    before = torch.get_num_threads()
    with open_predictor(program, runtime="torch", threads=1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.slow  # 20 s of torch.compile on 2 cores; scripts/test.sh --slow runs it
def test_a_compiled_program_is_fed_its_batch_size_padded(program, tiny_task) -> None:
    x = tiny_task.example_inputs(5).numpy()
    with open_predictor(program, runtime="torch") as eager:
        expected = eager.run(x)
    with open_predictor(program, runtime="torch-compile", batch_size=4) as compiled:
        assert compiled.fixed_batch == 4 and "/compile" in compiled.label
        from search.measure.runtimes import _predict_in_batches

        got = _predict_in_batches(compiled, x)  # 4 + 1 padded to 4
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_a_half_program_keeps_float32_at_its_edges(program, tiny_task) -> None:
    half = to_half(program, "bf16")
    assert half.scheme == "bf16" and half.path.suffix == ".pt2"
    x = tiny_task.example_inputs(3).numpy()
    with open_predictor(half, runtime="torch") as predictor:
        out = predictor.run(x)
    with open_predictor(program, runtime="torch") as predictor:
        reference = predictor.run(x)
    assert out.dtype == np.float32
    assert (out.argmax(1) == reference.argmax(1)).mean() >= 2 / 3
    assert half.size_bytes < program.size_bytes


@pytest.mark.slow  # 12 s: two torch.export runs; scripts/test.sh --slow and CI run it
def test_program_signature_ignores_weight_values(tiny_task, tmp_path) -> None:
    model = tiny_task.build_model()
    first = export("torch", model, tiny_task.example_inputs(1), tmp_path / "a")
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in perturbed.parameters():
            parameter.add_(0.1)
    second = export("torch", perturbed, tiny_task.example_inputs(1), tmp_path / "b")
    assert graph_signature(first) == graph_signature(second)
    assert graph_signature(first) != graph_signature(to_half(first, "fp16"))


def test_a_program_moved_to_a_device_names_no_other_device_in_its_graph(program) -> None:
    """Half precision writes the tracing device into the graph; moving only the weights
    left it there, and the program refused CUDA inputs (on an H200)."""
    half = torch.export.load(str(to_half(program, "fp16").path))

    def devices(exported: torch.export.ExportedProgram) -> set[str]:
        return {str(n.kwargs["device"]) for n in exported.graph.nodes if "device" in n.kwargs}

    assert "cpu" in devices(half)
    moved = on_device(half, "meta")
    assert devices(moved) == {"meta"}
    assert all(t.device.type == "meta" for t in moved.state_dict.values())


@pytest.mark.gpu
@pytest.mark.parametrize("runtime", ["torch", "torch-compile"])
def test_cuda_latency_in_torch_records_peak_gpu_memory(program, tiny_task, runtime) -> None:
    for scheme in ("fp32", "fp16", "bf16"):
        artifact = program if scheme == "fp32" else to_half(program, scheme)
        stats = measure_latency(
            artifact, tiny_task.example_inputs(1).numpy(), runtime=runtime, device="cuda"
        )
        assert stats.device == "cuda" and stats.p50_ms > 0
        assert stats.peak_memory_mb is not None and stats.peak_memory_mb > 0
        accuracy = evaluate(
            artifact, tiny_task.data("val"), tiny_task.metric, runtime=runtime, device="cuda"
        )
        assert accuracy > 0.8
