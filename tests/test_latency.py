import numpy as np

from search.latency import LatencyStats, hardware_fingerprint, measure_latency
from search.runtime import compact_names, evaluate, export_onnx


def test_latency_stats_are_ordered_and_carry_their_protocol(tiny_task, tmp_path) -> None:
    artifact = export_onnx(
        tiny_task.build_model(), tiny_task.example_inputs(1), tmp_path / "m.onnx"
    )
    stats = measure_latency(artifact, tiny_task.example_inputs(2).numpy(), threads=1)
    assert isinstance(stats, LatencyStats)
    assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms
    assert stats.repeats >= 100 and stats.warmup_runs >= 20
    assert stats.threads == 1 and stats.batch_size == 2 and stats.device == "cpu"
    assert stats.runtime.startswith("onnxruntime-")


def test_compact_names_keeps_the_function_and_shrinks_the_file(tiny_task, tmp_path) -> None:
    artifact = export_onnx(
        tiny_task.build_model(), tiny_task.example_inputs(1), tmp_path / "m.onnx"
    )
    before_size = artifact.size_bytes
    before = evaluate(artifact, tiny_task.data("val"), tiny_task.metric)
    compact_names(artifact)
    assert artifact.size_bytes < before_size
    assert evaluate(artifact, tiny_task.data("val"), tiny_task.metric) == before


def test_fingerprint_names_the_hardware() -> None:
    fingerprint = hardware_fingerprint()
    assert {"cpu_model", "cpu_count", "onnxruntime", "torch", "gpu"} <= set(fingerprint)
    assert int(fingerprint["cpu_count"]) >= 1
    assert np.all([value != "" for value in fingerprint.values()])
