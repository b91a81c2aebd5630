"""Weight sharing: codebooks per layer, indices in the file, the same arithmetic at run time."""

from __future__ import annotations

import numpy as np
import onnx

from search.measure.onnx_runtime import export_onnx
from search.measure.runtimes import evaluate
from techniques.weight_sharing import cluster, share_weights


def test_cluster_keeps_at_most_2_to_the_bits_values_close_to_the_weights() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(32, 16, 3, 3)).astype(np.float32)
    codebook, indices = cluster(values, 4)
    assert codebook.shape == (16,) and indices.dtype == np.uint8
    assert indices.shape == values.shape
    rebuilt = codebook[indices]
    assert np.abs(rebuilt - values).max() < 1.0  # 16 levels over about 8 sd, sparse tails
    assert np.abs(rebuilt - values).mean() < 0.1
    few = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    assert cluster(few, 4)[0].shape == (2,)  # never more centroids than distinct values


def test_a_shared_file_is_a_quarter_the_size_and_keeps_the_accuracy(tiny_task, tmp_path) -> None:
    model = tiny_task.build_model().eval()
    plain = export_onnx(model, tiny_task.example_inputs(1), tmp_path / "m.onnx")
    shared = share_weights(plain, 6)
    assert shared.size_bytes < 0.4 * plain.size_bytes
    graph = onnx.load(str(shared.path)).graph
    assert any(node.op_type == "Gather" for node in graph.node)
    val = tiny_task.data("val")
    before = evaluate(plain, val, tiny_task.metric)
    assert evaluate(shared, val, tiny_task.metric) >= before - 0.02
