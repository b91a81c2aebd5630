"""Each quantization scheme on the tiny digits model, run by ONNX Runtime."""

import pytest

from search.measure.onnx_runtime import export_onnx
from search.measure.runtimes import evaluate
from techniques.base import TechniqueError
from techniques.quantization import QuantParams, quantize


@pytest.fixture(scope="module")
def fp32(tiny_task, tmp_path_factory):
    folder = tmp_path_factory.mktemp("quant")
    artifact = export_onnx(tiny_task.build_model(), tiny_task.example_inputs(1), folder / "m.onnx")
    accuracy = evaluate(artifact, tiny_task.data("val"), tiny_task.metric, threads=2)
    return artifact, accuracy


@pytest.mark.parametrize(
    "params",
    [
        QuantParams("int8-dynamic"),
        QuantParams("int8-static", per_channel=False, activation_type="uint8"),
        QuantParams("int8-static", per_channel=True, activation_type="uint8", reduce_range=True),
        QuantParams(
            "int8-static", per_channel=False, activation_type="int8", calibration="entropy"
        ),
        QuantParams("int8-static", per_channel=False, calibration="percentile"),
    ],
    ids=lambda p: p.label,
)
def test_int8_keeps_accuracy_and_shrinks_the_file(fp32, tiny_task, params) -> None:
    artifact, fp32_accuracy = fp32
    assert fp32_accuracy > 0.9  # a trained model, or the comparison means nothing
    quantized = quantize(artifact, params, calibration=tiny_task.data("train"))
    assert quantized.path != artifact.path and artifact.path.exists()
    accuracy = evaluate(quantized, tiny_task.data("val"), tiny_task.metric, threads=2)
    assert accuracy >= fp32_accuracy - 0.01
    assert quantized.size_bytes < 0.6 * artifact.size_bytes


def test_fp32_scheme_is_the_identity(fp32, tiny_task) -> None:
    artifact, _ = fp32
    assert quantize(artifact, QuantParams("fp32"), calibration=tiny_task.data("train")) is artifact


def test_unknown_options_are_refused() -> None:
    with pytest.raises(TechniqueError, match=r"quant\.scheme"):
        QuantParams("int4")
    with pytest.raises(TechniqueError, match="activation_type"):
        QuantParams("int8-static", activation_type="fp8")


def test_fp16_export_runs_at_float_accuracy_in_half_the_bytes(fp32, tiny_task) -> None:
    import onnx

    artifact, fp32_accuracy = fp32
    half = quantize(artifact, QuantParams("fp16"), calibration=tiny_task.data("train"))
    graph = onnx.load(str(half.path)).graph
    assert {i.data_type for i in graph.initializer} >= {onnx.TensorProto.FLOAT16}
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    accuracy = evaluate(half, tiny_task.data("val"), tiny_task.metric, threads=2)
    assert accuracy >= fp32_accuracy - 0.005
    assert half.size_bytes < 0.6 * artifact.size_bytes


def test_fp16_weights_halve_the_file_and_load_as_the_float32_graph(
    fp32, tiny_task, tmp_path
) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    artifact, fp32_accuracy = fp32
    stored = quantize(artifact, QuantParams("fp16-weights"), calibration=tiny_task.data("train"))
    assert stored.scheme == "fp16-weights" and stored.path.name.endswith(".w16.onnx")
    assert stored.size_bytes < 0.6 * artifact.size_bytes
    graph = onnx.load(str(stored.path)).graph
    big = [i for i in graph.initializer if np.prod(i.dims) >= 16]
    assert big and {i.data_type for i in big} == {onnx.TensorProto.FLOAT16}
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    # Loaded, every Cast is folded into a float32 weight: the arithmetic is float32's.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    session = ort.InferenceSession(str(stored.path), options, providers=["CPUExecutionProvider"])
    loaded = onnx.load(str(tmp_path / "loaded.onnx")).graph
    assert "Cast" not in {node.op_type for node in loaded.node}
    assert {i.data_type for i in loaded.initializer} == {onnx.TensorProto.FLOAT}

    reference = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    inputs = tiny_task.example_inputs(8).numpy()
    name = session.get_inputs()[0].name
    expected = reference.run(None, {name: inputs})[0]
    got = session.run(None, {name: inputs})[0]
    assert np.allclose(got, expected, atol=0.05) and not np.array_equal(got, expected)
    accuracy = evaluate(stored, tiny_task.data("val"), tiny_task.metric, threads=2)
    assert accuracy >= fp32_accuracy - 0.005


def test_fp16_weights_keep_float32_what_half_precision_cannot_hold(tmp_path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from techniques.quantization import to_fp16_weights

    weights = {
        "big": np.full((4, 4), 1e6, dtype=np.float32),  # beyond fp16's 65504
        "tiny": np.ones((1, 4), dtype=np.float32),  # too small to be worth a Cast
        "plain": np.full((4, 4), 0.5, dtype=np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "big"], ["a"]),
        helper.make_node("MatMul", ["a", "plain"], ["b"]),
        helper.make_node("Add", ["b", "tiny"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    source, output = tmp_path / "m.onnx", tmp_path / "m.w16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source)
    to_fp16_weights(source, output)
    stored = {t.name: t.data_type for t in onnx.load(str(output)).graph.initializer}
    assert stored == {
        "big": TensorProto.FLOAT,
        "tiny": TensorProto.FLOAT,
        "plain.fp16": TensorProto.FLOAT16,
    }


@pytest.mark.parametrize(
    ("runtime", "device", "expected"),
    [
        (
            "onnxruntime",
            "cpu",
            {"fp32", "fp16", "fp16-weights", "int8-dynamic", "int8-static", "int8-qat"},
        ),
        ("onnxruntime", "cuda", {"fp32", "fp16", "fp16-weights", "int8-static", "int8-qat"}),
        ("torch", "cpu", {"fp32"}),
        ("torch-compile", "cuda", {"fp32", "fp16", "bf16"}),
    ],
)
def test_each_runtime_offers_only_the_formats_it_runs(
    tiny_task, tmp_path, runtime, device, expected
) -> None:
    import optuna

    from techniques import Context
    from techniques.quantization import Quantization

    ctx = Context(tiny_task, device, tmp_path, tiny_task.build_model(), runtime=runtime)
    trial = optuna.create_study().ask()
    Quantization().space(trial, ctx)
    offered = trial.distributions["quant.scheme"].choices  # type: ignore[attr-defined]
    assert set(offered) == expected


def test_a_draft_is_calibrated_by_min_max_whatever_the_trial_s_method(
    fp32, tiny_task, tmp_path
) -> None:
    """A draft is only timed: min-max gives the same QDQ graph (so the same latency), and
    the histogram methods failed whole trials on collapsed drafts ("Too many bins")."""
    from dataclasses import replace

    from search.measure.runtimes import graph_signature
    from techniques.base import Context
    from techniques.quantization import Quantization

    artifact, _ = fp32
    params = QuantParams("int8-static", calibration="entropy")
    ctx = Context(tiny_task, "cpu", tmp_path, tiny_task.build_model())
    final = Quantization().apply(artifact, params, ctx)
    draft = Quantization().apply(artifact, params, replace(ctx, draft=True))
    assert final.path.name.endswith("-entropy.onnx")
    assert draft.path.name.endswith("-minmax.onnx")
    assert graph_signature(draft) == graph_signature(final)


def test_a_calibration_cache_is_measured_once_and_then_read(tmp_path, tiny_task) -> None:
    """The second quantization reads the first one's ranges: calibrating it on other data
    (all zeros) still gives the same file; without the cache it gives another."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    model = tiny_task.build_model()
    artifact = export_onnx(model, tiny_task.example_inputs(1), tmp_path / "m.onnx")
    params = QuantParams("int8-static", per_channel=False, activation_type="uint8")
    cache = tmp_path / "ranges.json"
    train = tiny_task.data("train")
    first = quantize(artifact, params, calibration=train, calibration_cache=cache)
    assert cache.is_file()
    measured = first.path.read_bytes()
    shape = tiny_task.example_inputs(1).shape[1:]
    zeros = DataLoader(TensorDataset(torch.zeros(64, *shape), torch.zeros(64)), batch_size=16)
    again = quantize(artifact, params, calibration=zeros, calibration_cache=cache)
    assert again.path.read_bytes() == measured
    fresh = quantize(artifact, params, calibration=zeros)
    assert fresh.path.read_bytes() != measured


@pytest.mark.parametrize("samples", [1, 16, 64, 100, 256])
def test_calibration_reads_exactly_the_first_samples(samples) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from techniques.quantization import calibration_inputs

    images = torch.arange(200, dtype=torch.float32).reshape(200, 1)
    loader = DataLoader(TensorDataset(images, torch.zeros(200)), batch_size=64)
    read = torch.cat(list(calibration_inputs(loader, samples)))
    assert read.flatten().tolist() == list(range(min(samples, 200)))
