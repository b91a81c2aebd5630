"""Sensitivity analysis on the tiny digits model: the ranking means what it says."""

from __future__ import annotations

import os

import pytest
from mlflow import MlflowClient

from search.core.config import SearchConfig
from search.core.sensitivity import (
    LayerSensitivity,
    Sensitivity,
    layer_caps,
    layer_of,
    run_sensitivity,
)
from search.measure.onnx_runtime import compact_names
from search.measure.runtimes import evaluate, export
from techniques.pruning import prunable_layers, prune_channels


def _val_accuracy(model, task, folder, name) -> float:
    artifact = compact_names(export("onnxruntime", model, task.example_inputs(1), folder / name))
    return evaluate(artifact, task.data("val"), task.metric, threads=os.cpu_count() or 1)


@pytest.mark.slow  # 50 s: scripts/test.sh --slow runs it
def test_the_most_sensitive_layers_cost_more_than_the_least_when_pruned(tiny_task, home) -> None:
    config = SearchConfig(task="tiny", home=home)
    result = run_sensitivity(
        config, ratios=(0.5,), int8=True, output=home / "sens", task=tiny_task
    )
    found = result.sensitivity
    model = tiny_task.build_model().eval()
    example = tiny_task.example_inputs(1)
    assert {row.layer for row in found.layers} >= set(prunable_layers(model, example))

    ranked = found.ranked(0.5)
    most, least = [r.layer for r in ranked[:2]], [r.layer for r in ranked[-2:]]
    assert ranked[0].prune_drop[0.5] > ranked[-1].prune_drop[0.5]
    costly = prune_channels(model, example, ratio=0.0, layer_ratios=dict.fromkeys(most, 0.5))
    cheap = prune_channels(model, example, ratio=0.0, layer_ratios=dict.fromkeys(least, 0.5))
    assert _val_accuracy(costly, tiny_task, home, "most") < _val_accuracy(
        cheap, tiny_task, home, "least"
    )

    # int8, node by node, lands on the model's own layer names
    modules = {name for name, _ in model.named_modules()}
    quantized = [row for row in found.layers if row.int8_drop is not None]
    assert quantized and all(row.layer in modules for row in quantized)

    names = {path.name for path in result.files}
    assert names == {"sensitivity.csv", "sensitivity.md", "sensitivity.json", "sensitivity.png"}
    assert (home / "sens" / "sensitivity.png").stat().st_size > 10_000
    table = (home / "sens" / "sensitivity.md").read_text()
    assert "| layer | prune 0.5 | int8 |" in table and ranked[0].layer in table
    run = MlflowClient(tracking_uri=result.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics[f"drop.prune0.5.{ranked[0].layer}"] == pytest.approx(
        ranked[0].prune_drop[0.5]
    )
    logged = {a.path for a in MlflowClient(result.tracking_uri).list_artifacts(result.run_id)}
    assert {"sensitivity.png", "sensitivity.csv"} <= logged


def test_exported_node_names_map_back_to_modules() -> None:
    modules = {"layer1.0.conv1", "features.3.conv.0.0"}
    assert layer_of("/layer1/layer1.0/conv1/Conv", modules) == "layer1.0.conv1"
    assert layer_of("/features/features.3/conv/conv.0/conv.0.0/Conv", modules) == (
        "features.3.conv.0.0"
    )
    assert layer_of("/head/Gemm", modules) == "/head/Gemm"  # not a module: the node's name


def test_caps_are_the_largest_ratio_within_the_tolerance() -> None:
    found = Sensitivity(
        0.99,
        (0.25, 0.5, 0.75),
        [
            LayerSensitivity("robust", {0.25: 0.0, 0.5: 1.0, 0.75: 3.0}),
            LayerSensitivity("fragile", {0.25: 9.0, 0.5: 40.0, 0.75: 80.0}),
            LayerSensitivity("only int8", {}, int8_drop=0.5),
        ],
    )
    assert layer_caps(found, tolerance_points=2.0) == {"robust": 0.5, "fragile": 0.0}


def test_a_capped_layer_keeps_its_channels_when_the_rest_is_pruned(tiny_task, tmp_path) -> None:
    from techniques import Context
    from techniques.pruning import PruneParams, StructuredPruning

    model = tiny_task.build_model().eval()
    layers = prunable_layers(model, tiny_task.example_inputs(1))
    kept, other = layers[0], layers[1]
    ctx = Context(
        task=tiny_task,
        device="cpu",
        workdir=tmp_path,
        base_model=model,
        layer_caps={kept: 0.0},
    )
    pruned = StructuredPruning().apply(model, PruneParams(0.5), ctx)
    width = {
        name: m.out_channels for name, m in pruned.named_modules() if hasattr(m, "out_channels")
    }
    before = {
        name: m.out_channels for name, m in model.named_modules() if hasattr(m, "out_channels")
    }
    assert width[kept] == before[kept]
    assert width[other] < before[other]


def test_use_sensitivity_reads_caps_for_this_model_and_refuses_another(
    tiny_task, tmp_path
) -> None:
    from search.common.errors import ConfigError
    from search.core.runner import sensitivity_caps
    from search.core.sensitivity import write_table

    model = tiny_task.build_model().eval()
    first = prunable_layers(model, tiny_task.example_inputs(1))[0]
    found = Sensitivity(0.99, (0.25, 0.5), [LayerSensitivity(first, {0.25: 1.0, 0.5: 30.0})])
    write_table(found, tmp_path / "ours")
    config = SearchConfig(sensitivity=str(tmp_path / "ours" / "sensitivity.json"))
    assert sensitivity_caps(config, model) == {first: 0.25}
    alien = Sensitivity(0.99, (0.5,), [LayerSensitivity("encoder.block9", {0.5: 1.0})])
    write_table(alien, tmp_path / "theirs")
    config = SearchConfig(sensitivity=str(tmp_path / "theirs" / "sensitivity.json"))
    with pytest.raises(ConfigError, match="names layers this model lacks"):
        sensitivity_caps(config, model)


@pytest.mark.slow  # 40 s: a whole int8 pass on the tiny model
def test_int8_drops_are_kept_for_one_model_and_missed_for_another(tiny_task, tmp_path) -> None:
    """A benchmark runs a dozen studies of one model: the pass runs once for all of them."""
    import copy
    import json

    import torch

    from search.core.sensitivity import _fingerprint, int8_drops

    model = tiny_task.build_model()
    drops = int8_drops(tiny_task, model, cache_dir=tmp_path)
    (kept,) = tmp_path.glob("int8-sensitivity-*.json")
    assert json.loads(kept.read_text()) == pytest.approx(drops) and len(drops) > 3
    kept.write_text(json.dumps(dict.fromkeys(drops, 12.5)))  # read back, not recomputed
    assert int8_drops(tiny_task, model, cache_dir=tmp_path) == dict.fromkeys(drops, 12.5)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.parameters()).mul_(0.5)
    files = [
        export("onnxruntime", m, tiny_task.example_inputs(1), tmp_path / name)
        for m, name in ((model, "a"), (model, "b"), (changed, "c"))
    ]
    same, again, other = (_fingerprint(f, tiny_task, "cpu") for f in files)
    assert same == again != other and kept.name == f"int8-sensitivity-{same}.json"
