"""The quant lever's int8 repairs: equalization and bias correction before export, layers
kept in float, as a search and ``search quantize`` use them."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import replace

import onnx
import optuna
import pytest
import torch

from search.measure.onnx_runtime import compact_names, export_onnx
from search.measure.runtimes import evaluate, graph_signature
from techniques import Context, TechniqueError
from techniques.quantization import (
    REFERENCE,
    Quantization,
    QuantParams,
    excluded_nodes,
    float_layers,
)

STATIC = {k: v for k, v in REFERENCE.items()}


@pytest.fixture
def ctx(tiny_task, tmp_path) -> Context:
    base = tiny_task.build_model()
    return Context(task=tiny_task, device="cpu", workdir=tmp_path, base_model=base)


def _deploy(model, params: QuantParams, ctx: Context, name: str):
    lever = Quantization()
    model = lever.before_export(model, params, ctx)
    artifact = export_onnx(model, ctx.task.example_inputs(1), ctx.workdir / f"{name}.onnx")
    return compact_names(lever.apply(artifact, params, ctx))


def test_repairs_change_values_not_the_graph_and_keep_accuracy(ctx) -> None:
    """A repaired draft and its repaired final file share a graph (the draft's latency holds
    for the final), the same operators as the plain int8 file, and the accuracy."""
    model = ctx.base_model
    plain = QuantParams("int8-static", reduce_range=True)
    repaired = replace(plain, equalize=True, bias_correction=True)
    retrained = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in retrained.parameters():
            parameter.mul_(1.01)
    draft = _deploy(retrained, repaired, replace(ctx, draft=True), "draft")
    final = _deploy(model, repaired, ctx, "final")
    assert graph_signature(draft) == graph_signature(final)
    before = _deploy(model, plain, ctx, "plain")
    assert _operators(before) == _operators(final)
    base = compact_names(export_onnx(model, ctx.task.example_inputs(1), ctx.workdir / "f.onnx"))
    fp32 = evaluate(base, ctx.task.data("val"), ctx.task.metric)
    assert evaluate(final, ctx.task.data("val"), ctx.task.metric) >= fp32 - 0.02
    assert repaired.label == "int8s-pc-u8-r7-minmax-cle-bc"


def _operators(artifact) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(artifact.path)).graph.node)


def test_fp_layers_keep_the_most_sensitive_layers_in_float(ctx) -> None:
    ranked = {"features.0.0": 3.0, "classifier.1": 9.0, "features.1.project.0": 0.5}
    ctx = replace(ctx, int8_sensitivity=ranked)
    assert float_layers(ctx, 2) == ("classifier.1", "features.0.0")
    params = QuantParams("int8-static", reduce_range=True, fp_layers=2)
    artifact = export_onnx(ctx.base_model, ctx.task.example_inputs(1), ctx.workdir / "m.onnx")
    excluded = excluded_nodes(artifact, float_layers(ctx, 2))
    assert len(excluded) == 2
    quantized = Quantization().apply(artifact, params, ctx)
    graph = onnx.load(str(quantized.path)).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    float_weights = [
        node.name for node in graph.node
        if node.op_type in ("Conv", "Gemm") and node.input[1] not in dequantized
    ]  # fmt: skip
    assert sorted(float_weights) == sorted(excluded)
    assert params.label.endswith("-fp2")


def test_fp_layers_without_a_sensitivity_say_where_to_get_one(ctx) -> None:
    with pytest.raises(TechniqueError, match="search sensitivity"):
        float_layers(ctx, 1)


def test_repairs_are_searched_with_static_int8_and_older_trials_replay_with_them_off(ctx):
    lever = Quantization()
    older = {**{k: v for k, v in STATIC.items() if k.startswith("quant.")}}
    for name in ("quant.equalize", "quant.bias_correction", "quant.fp_layers"):
        older.pop(name)
    replayed = lever.space(optuna.trial.FixedTrial(older), ctx)
    assert replayed == QuantParams("int8-static", reduce_range=True)
    qat = {**older, "quant.scheme": "int8-qat", "quant.fp_layers": 1}
    assert lever.space(optuna.trial.FixedTrial(qat), ctx).fp_layers == 1  # type: ignore[union-attr]
    with pytest.raises(TechniqueError, match="use int8-static"):
        QuantParams("fp16", equalize=True)


def test_search_quantize_takes_the_repairs(tiny_task, home) -> None:
    from test_oneshot import _config

    from search.core.oneshot import one_shot_params
    from search.core.runner import prepare_space

    prepared = prepare_space(_config(home), tiny_task)
    given = {"quant.equalize": True, "quant.bias_correction": True, "quant.fp_layers": 2}
    params = one_shot_params("quantize", given, prepared.ctx, prepared.space)
    assert params["quant.scheme"] == "int8-static" and params["quant.fp_layers"] == 2
    assert params["quant.equalize"] is True and params["quant.bias_correction"] is True


def test_search_quantize_keeps_the_most_sensitive_layers_in_float_and_says_which(
    tiny_task, home
) -> None:
    """The trial pipeline: int8 sensitivity computed once (kept in the study), the layers
    named in the MLflow run, their nodes left in float in the file."""
    from mlflow import MlflowClient
    from test_oneshot import _config

    from search.core.oneshot import EXPERIMENT, run_one_shot

    given = {"quant.scheme": "int8-static", "quant.fp_layers": 1, "quant.bias_correction": True}
    result = run_one_shot(_config(home), "quantize", given, task=tiny_task)
    assert "-bc-fp1" in result.label
    client = MlflowClient(tracking_uri=result.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    kept = run.data.params["quant.float_layers"]
    assert kept and "," not in kept  # one layer, by its module name
    assert kept in dict(tiny_task.build_model().named_modules())
